"""The Swift usage snippet of `kdpipe deploy` for Core ML packages (an iOS/macOS app's code)."""

from __future__ import annotations

from kdpipe.runtime.artifact import Artifact


def swift_snippet(artifact: Artifact) -> str:
    """A `classify(CGImage) -> String` function: resize, [0, 1] NCHW, predict, label."""
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
