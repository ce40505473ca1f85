"""Core ML (`.mlpackage`) through coremltools' `MLModel.predict`, which exists only on macOS."""

from __future__ import annotations

import sys

import numpy as np

from kdpipe.deploy.artifact import Artifact
from kdpipe.deploy.runtimes.base import RUNTIMES, Runtime, Session, with_normalization


class CoreMLSession:
    """`MLModel.predict` on the model's input; returns scores [B, K] in class order.

    A Core ML classifier (metadata `output_kind: probabilities`) returns a dict keyed by class
    name; it is laid out in the metadata's class order, so argmax and top-1 work as for logits.
    """

    def __init__(self, model, artifact: Artifact) -> None:
        description = model.get_spec().description
        meta = artifact.metadata
        self.model = model
        self.input_name = meta.get("input_name") or description.input[0].name
        self.output_name = meta.get("output_name") or description.output[0].name
        self.classes = list(artifact.classes)

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self.model.predict({self.input_name: x})[self.output_name]
        if isinstance(out, dict):
            return np.asarray([[out[c] for c in self.classes]], dtype=np.float32)
        return np.asarray(out, dtype=np.float32)


@RUNTIMES.register("coreml")
class CoreML(Runtime):
    name = "coreml"
    formats = ("coreml",)
    package = "coremltools"
    install_hint = "pip install 'kdpipe[coreml]'"
    snippet_language = "swift"
    note = ("Core ML picks its compute units itself (ComputeUnit.ALL: CPU, GPU, Neural Engine); "
            "it has no thread-count setting")

    def available(self) -> tuple[bool, str]:
        if sys.platform != "darwin":
            return False, (f"Core ML runs only on macOS (this is {sys.platform}); conversion works "
                           "anywhere, prediction needs a Mac")
        return super().available()

    def load(self, artifact: Artifact, threads: int) -> Session:
        import coremltools as ct

        model = ct.models.MLModel(str(artifact.path), compute_units=ct.ComputeUnit.ALL)
        return with_normalization(CoreMLSession(model, artifact), artifact)

    def snippet(self, artifact: Artifact) -> str:
        _, height, width = artifact.input_shape
        meta = artifact.metadata
        normalize, value = "", "(Float(rgba[(y * w + x) * 4 + c]) / 255)"
        if artifact.mean is not None and artifact.std is not None:
            normalize = (f"    let mean: [Float] = {list(artifact.mean)}, "
                         f"std: [Float] = {list(artifact.std)}\n")
            value = "(Float(rgba[(y * w + x) * 4 + c]) / 255 - mean[c]) / std[c]"
        label = meta.get("label_output_name")
        # A batch-1 export is a Core ML classifier: it names the class itself.
        ending = (SWIFT_LABEL.format(label=label) if label
                  else SWIFT_ARGMAX.format(output=meta.get("output_name") or "logits"))
        return SWIFT_TEMPLATE.format(stem=artifact.path.stem, name=artifact.name, w=width,
                                     h=height, normalize=normalize, value=value,
                                     input=meta.get("input_name") or "input", ending=ending)


SWIFT_TEMPLATE = """\
import CoreGraphics
import CoreML
import Foundation

/// Classifies `image`: RGB, resized to {w}x{h}, float in [0, 1], NCHW, batch of one.
func classify(_ image: CGImage) throws -> String {{
    // Xcode compiles {name} into {stem}.mlmodelc inside the app bundle.
    let model = try MLModel(contentsOf: Bundle.main.url(forResource: "{stem}",
                                                        withExtension: "mlmodelc")!)

    // Resize to {w}x{h} and read the pixels as RGBA bytes.
    let w = {w}, h = {h}
    var rgba = [UInt8](repeating: 0, count: w * h * 4)
    let context = CGContext(data: &rgba, width: w, height: h, bitsPerComponent: 8,
                            bytesPerRow: w * 4, space: CGColorSpaceCreateDeviceRGB(),
                            bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue)!
    context.interpolationQuality = .medium
    context.draw(image, in: CGRect(x: 0, y: 0, width: w, height: h))

    // NCHW float32 in [0, 1].
{normalize}    let input = try MLMultiArray(shape: [1, 3, NSNumber(value: h), NSNumber(value: w)],
                                 dataType: .float32)
    for c in 0..<3 {{ for y in 0..<h {{ for x in 0..<w {{
        input[[0, c, y, x] as [NSNumber]] = NSNumber(value: {value})
    }} }} }}
    let features = try MLDictionaryFeatureProvider(dictionary: ["{input}": input])
    let output = try model.prediction(from: features)
{ending}}}
"""

SWIFT_LABEL = """\
    // The classifier's "{label}" output is the most probable class name (labels.txt order).
    return output.featureValue(for: "{label}")!.stringValue
"""

SWIFT_ARGMAX = """\
    // argmax of the logits -> line of labels.txt
    let labels = try String(contentsOf: Bundle.main.url(forResource: "labels",
                                                        withExtension: "txt")!, encoding: .utf8)
        .split(separator: "\\n").map(String.init)
    let logits = output.featureValue(for: "{output}")!.multiArrayValue!
    var best = 0
    for i in 0..<logits.count where logits[i].floatValue > logits[best].floatValue {{ best = i }}
    return labels[best]
"""
