"""The Python usage snippets of `kdpipe deploy`: one shape for every runtime.

Each reads an image file, converts it to RGB, resizes it to the model's size, makes a float32
NCHW batch in [0, 1] (plus mean/std only for files that do not fold normalization in), runs the
runtime, and prints the label of the argmax.
"""

from __future__ import annotations

from kdpipe.deploy.artifact import Artifact


def python_snippet(artifact: Artifact, imports: list[str], run: str) -> str:
    """The whole script: `imports` are the runtime's, `run` turns `x` into `logits` (numpy)."""
    _, height, width = artifact.input_shape
    lines = [
        '"""Classify one image: python predict.py IMAGE"""',
        "import sys",
        "",
        *sorted(["import numpy as np", "from PIL import Image", *imports],
                key=lambda line: line.split()[1].lower()),  # by module, as isort orders them
        "",
        'labels = open("labels.txt", encoding="utf-8").read().splitlines()',
        f'image = Image.open(sys.argv[1]).convert("RGB").resize(({width}, {height}), '
        "Image.BILINEAR)",
        "# HWC uint8 -> NCHW float32 in [0, 1], a batch of one: the input the model expects",
        "x = np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None] "
        "/ 255.0)",
    ]
    if artifact.mean is not None and artifact.std is not None:
        lines += [
            "# this file expects normalized input (normalization is not folded into it)",
            f"mean = np.array({list(artifact.mean)}, dtype=np.float32).reshape(1, 3, 1, 1)",
            f"std = np.array({list(artifact.std)}, dtype=np.float32).reshape(1, 3, 1, 1)",
            "x = (x - mean) / std",
        ]
    lines += ["", run.rstrip(), "print(labels[int(np.argmax(logits, axis=1)[0])])"]
    return "\n".join(lines) + "\n"


def kotlin_snippet(artifact: Artifact) -> str:
    """An Android class (ONNX Runtime for Android) that classifies a `Bitmap` with the file."""
    _, height, width = artifact.input_shape
    names = artifact.metadata
    static = artifact.batch_sizes == (1,)
    nnapi = ("OrtSession.SessionOptions().apply { addNnapi() }" if static
             else "OrtSession.SessionOptions()  // dynamic batch: NNAPI would take no node")
    return f'''// Classifies one image with {artifact.name} on Android.
// Gradle: implementation("com.microsoft.onnxruntime:onnxruntime-android:<version>")
// Ship {artifact.name} and labels.txt as assets; pass their bytes and lines in.
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import android.graphics.Bitmap
import java.nio.FloatBuffer

class Classifier(model: ByteArray, private val labels: List<String>) {{
    private val env = OrtEnvironment.getEnvironment()
    private val session = env.createSession(model, {nnapi})

    fun classify(image: Bitmap): String {{
        // RGB, resized to {width}x{height} (bilinear), scaled to [0, 1], NCHW: the model's input.
        val scaled = Bitmap.createScaledBitmap(image, {width}, {height}, true)
        val pixels = IntArray({width} * {height})
        scaled.getPixels(pixels, 0, {width}, 0, 0, {width}, {height})
        val input = FloatBuffer.allocate(3 * pixels.size)
        for (channel in 0 until 3) {{
            for (p in pixels) input.put(((p shr (16 - 8 * channel)) and 0xFF) / 255f)
        }}
        input.rewind()
        val shape = longArrayOf(1, 3, {height}, {width})
        OnnxTensor.createTensor(env, input, shape).use {{ tensor ->
            session.run(mapOf("{names.get("input_name", "input")}" to tensor)).use {{ result ->
                @Suppress("UNCHECKED_CAST")
                val logits = (result[0].value as Array<FloatArray>)[0]
                return labels[logits.indices.maxBy {{ logits[it] }}]
            }}
        }}
    }}
}}
'''


def react_native_snippet(artifact: Artifact) -> str:
    """A TypeScript function (onnxruntime-react-native) that classifies RGBA pixels."""
    _, height, width = artifact.input_shape
    names = artifact.metadata
    labels = ", ".join(f'"{c}"' for c in artifact.classes)
    return f'''// Classifies one image with {artifact.name} in a React Native app.
// npm install onnxruntime-react-native; bundle {artifact.name} with the app.
import {{ InferenceSession, Tensor }} from "onnxruntime-react-native";

const LABELS = [{labels}];
const WIDTH = {width};
const HEIGHT = {height};

let session: InferenceSession | undefined;

/** `rgba`: the image resized to WIDTH x HEIGHT (bilinear), RGBA bytes row by row. */
export async function classify(modelPath: string, rgba: Uint8Array): Promise<string> {{
  session ??= await InferenceSession.create(modelPath);
  const plane = WIDTH * HEIGHT;
  const x = new Float32Array(3 * plane); // RGB in [0, 1], NCHW: the model's input
  for (let i = 0; i < plane; i++) {{
    for (let c = 0; c < 3; c++) x[c * plane + i] = rgba[4 * i + c] / 255;
  }}
  const input = new Tensor("float32", x, [1, 3, HEIGHT, WIDTH]);
  const out = await session.run({{ "{names.get("input_name", "input")}": input }});
  const logits = out["{names.get("output_name", "logits")}"].data as Float32Array;
  return LABELS[logits.indexOf(Math.max(...logits))];
}}
'''
