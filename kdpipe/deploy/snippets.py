"""The usage snippets of `kdpipe deploy`, one registry entry per runtime an app would use.

`SNIPPETS` maps a runtime name to a function `Artifact -> Snippets`: the main example (a Python
script that reads an image file, converts it to RGB, resizes it to the model's size, makes a
float32 NCHW batch in [0, 1], plus mean/std only for files that do not fold normalization in,
runs the runtime and prints the label of the argmax; Swift for Core ML) and, for phone formats,
app files (Kotlin for Android, TypeScript for React Native). Snippets live here, not in the
runtime classes, so the runtime room knows nothing of app code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kdpipe.deploy.swift import swift_snippet
from kdpipe.registry import Registry
from kdpipe.runtime.artifact import Artifact


@dataclass(frozen=True)
class Snippets:
    """A runtime's usage example for one artifact: its language and text, and phone-app files."""

    language: str  # "python" or "swift"
    text: str
    apps: dict[str, str] = field(default_factory=dict)  # file name -> source


SNIPPETS: Registry[Callable[[Artifact], Snippets]] = Registry("usage snippet")


def python_snippet(artifact: Artifact, imports: list[str], run: str) -> str:
    """The whole script: `imports` are the runtime's, `run` turns `x` into `logits` (numpy)."""
    _, height, width = artifact.input_shape
    lines = [
        '"""Classify one image: python predict.py IMAGE"""',
        "import sys",
        "from pathlib import Path",
        "",
        *sorted(["import numpy as np", "from PIL import Image", *imports],
                key=lambda line: line.split()[1].lower()),  # by module, as isort orders them
        "",
        "# labels.txt lies beside this script, wherever it is run from",
        'labels = Path(__file__).with_name("labels.txt").read_text(encoding="utf-8").splitlines()',
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


@SNIPPETS.register("onnxruntime")
def onnxruntime_snippets(artifact: Artifact) -> Snippets:
    """ONNX Runtime in Python; for ORT format (what ONNX Runtime Mobile and React Native load),
    Android and React Native examples too."""
    text = python_snippet(artifact, ["import onnxruntime as ort"], (
        f'session = ort.InferenceSession(str(Path(__file__).with_name("{artifact.name}")), '
        'providers=["CPUExecutionProvider"])\n'
        "logits = session.run(None, {session.get_inputs()[0].name: x})[0]"))
    apps = ({"Classifier.kt": kotlin_snippet(artifact),
             "classify.ts": react_native_snippet(artifact)} if artifact.format == "ort" else {})
    return Snippets("python", text, apps)


@SNIPPETS.register("torchscript")
def torchscript_snippets(artifact: Artifact) -> Snippets:
    return Snippets("python", python_snippet(artifact, ["import torch"], (
        f'model = torch.jit.load(str(Path(__file__).with_name("{artifact.name}")), '
        'map_location="cpu").eval()\n'
        "with torch.inference_mode():\n"
        "    logits = model(torch.from_numpy(x)).numpy()")))


@SNIPPETS.register("executorch")
def executorch_snippets(artifact: Artifact) -> Snippets:
    imports = ["import torch", "from executorch.runtime import Runtime"]
    return Snippets("python", python_snippet(artifact, imports, (
        f'path = str(Path(__file__).with_name("{artifact.name}"))\n'
        'method = Runtime.get().load_program(path).load_method("forward")\n'
        "logits = method.execute([torch.from_numpy(x)])[0].numpy()")))


@SNIPPETS.register("coreml")
def coreml_snippets(artifact: Artifact) -> Snippets:
    return Snippets("swift", swift_snippet(artifact))


def litert_kotlin_snippet(artifact: Artifact) -> str:
    """An Android class (LiteRT's `org.tensorflow.lite.Interpreter`) that classifies a `Bitmap`."""
    _, height, width = artifact.input_shape
    batch = artifact.batch_sizes[0] if artifact.batch_sizes else 1
    classes = len(artifact.classes)
    int8 = artifact.quantization == "int8"
    fill, output = (_KOTLIN_INT8_INPUT, _KOTLIN_INT8_OUTPUT) if int8 else (
        _KOTLIN_FLOAT_INPUT, _KOTLIN_FLOAT_OUTPUT)
    return f'''// Classifies one image with {artifact.name} on Android with LiteRT (TF Lite).
// Gradle: implementation("com.google.ai.edge.litert:litert:<version>")
// Ship {artifact.name} and labels.txt as assets; pass the model memory-mapped, e.g.
// FileInputStream(assets.openFd(name).fileDescriptor).channel.map(READ_ONLY, offset, length).
import android.graphics.Bitmap
import java.nio.ByteBuffer
import java.nio.ByteOrder
{"import kotlin.math.roundToInt" + chr(10) if int8 else ""}import org.tensorflow.lite.Interpreter

private const val BATCH = {batch}
private const val WIDTH = {width}
private const val HEIGHT = {height}

class Classifier(model: ByteBuffer, private val labels: List<String>, threads: Int = 4) {{
    // XNNPACK (the CPU delegate) is on by default; threads as in `kdpipe bench --threads`.
    private val interpreter = Interpreter(model, Interpreter.Options().setNumThreads(threads))

    fun classify(image: Bitmap): String {{
        // RGB, resized to {width}x{height} (bilinear), scaled to [0, 1], NCHW: the model's input
        // (its normalization is inside the model).
        val scaled = Bitmap.createScaledBitmap(image, WIDTH, HEIGHT, true)
        val pixels = IntArray(WIDTH * HEIGHT)
        scaled.getPixels(pixels, 0, WIDTH, 0, 0, WIDTH, HEIGHT)
        // The file takes exactly BATCH images per call (its shape is static): the image fills
        // every slot, and the first output is its answer.
{fill}
        input.rewind()
{output.format(classes=classes)}
        interpreter.run(input, logits)
        return labels[logits[0].indices.maxBy {{ logits[0][it] }}]
    }}
}}
'''


_KOTLIN_FLOAT_INPUT = """\
        val input = ByteBuffer.allocateDirect(4 * BATCH * 3 * pixels.size)
            .order(ByteOrder.nativeOrder())
        repeat(BATCH) {
            for (channel in 0 until 3) {
                for (p in pixels) input.putFloat(((p shr (16 - 8 * channel)) and 0xFF) / 255f)
            }
        }"""
_KOTLIN_INT8_INPUT = """\
        // An int8 file: each [0, 1] value quantized with the input's own scale and zero point
        // (a scale near 1/255 and zero point -128: close to the 8-bit value minus 128).
        val q = interpreter.getInputTensor(0).quantizationParams()
        val input = ByteBuffer.allocateDirect(BATCH * 3 * pixels.size)
            .order(ByteOrder.nativeOrder())
        repeat(BATCH) {
            for (channel in 0 until 3) {
                for (p in pixels) {
                    val v = ((p shr (16 - 8 * channel)) and 0xFF) / 255f
                    input.put((v / q.scale + q.zeroPoint).roundToInt().coerceIn(-128, 127).toByte())
                }
            }
        }"""
_KOTLIN_FLOAT_OUTPUT = "        val logits = Array(BATCH) {{ FloatArray({classes}) }}"
_KOTLIN_INT8_OUTPUT = """\
        // int8 logits (scale and zero point in getOutputTensor(0).quantizationParams()):
        // the argmax needs no dequantization
        val logits = Array(BATCH) {{ ByteArray({classes}) }}"""


@SNIPPETS.register("litert")
def litert_snippets(artifact: Artifact) -> Snippets:
    """LiteRT's Interpreter in Python, and an Android (Kotlin) class."""
    batch = artifact.batch_sizes[0] if artifact.batch_sizes else 1
    repeat = (f"# this file takes exactly {batch} images per call: repeat the one image\n"
              f"x = np.repeat(x, {batch}, axis=0)\n" if batch > 1 else "")
    text = python_snippet(artifact, ["from ai_edge_litert.interpreter import Interpreter"], (
        f'interpreter = Interpreter(model_path=str(Path(__file__).with_name("{artifact.name}")), '
        "num_threads=4)\n"
        "interpreter.allocate_tensors()  # XNNPACK, the CPU delegate, is applied by default\n"
        "inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]\n"
        f"{repeat}"
        'if inp["dtype"] != np.float32:  # an int8 file: quantize x with its scale, zero point\n'
        '    scale, zero_point = inp["quantization"]\n'
        '    x = np.clip(np.rint(x / scale) + zero_point, -128, 127).astype(inp["dtype"])\n'
        'interpreter.set_tensor(inp["index"], x)\n'
        "interpreter.invoke()\n"
        'logits = interpreter.get_tensor(out["index"]).astype(np.float32)\n'
        'scale, zero_point = out["quantization"]  # int8 files return quantized logits\n'
        'if out["dtype"] != np.float32:\n'
        "    logits = (logits - zero_point) * scale"))
    return Snippets("python", text, {"Classifier.kt": litert_kotlin_snippet(artifact)})


@SNIPPETS.register("openvino")
def openvino_snippets(artifact: Artifact) -> Snippets:
    weights = Path(artifact.name).with_suffix(".bin").name
    return Snippets("python", python_snippet(artifact, ["import openvino as ov"], (
        f"# {weights} (the weights) must lie beside {artifact.name}\n"
        "# f32: CPUs with bf16 would otherwise run float layers in bf16\n"
        f'model = ov.Core().compile_model(str(Path(__file__).with_name("{artifact.name}")), '
        '"CPU", {"INFERENCE_PRECISION_HINT": "f32"})\n'
        "logits = model(x)[model.output(0)]")))


@SNIPPETS.register("ncnn")
def ncnn_snippets(artifact: Artifact) -> Snippets:
    weights = Path(artifact.name).with_suffix(".bin").name
    meta = artifact.metadata
    exact = ("# an fp32 file: compute in fp32, as kdpipe's parity check did\n"
             "net.opt.use_fp16_storage = net.opt.use_fp16_packed = False\n"
             "net.opt.use_fp16_arithmetic = net.opt.use_bf16_storage = False\n"
             if artifact.quantization == "fp32" else "")
    return Snippets("python", python_snippet(artifact, ["import ncnn"], (
        "net = ncnn.Net()\n"
        f"{exact}"
        f'net.load_param(str(Path(__file__).with_name("{artifact.name}")))\n'
        f'net.load_model(str(Path(__file__).with_name("{weights}")))\n'
        "extractor = net.create_extractor()\n"
        "# ncnn takes one CHW image per call\n"
        f'extractor.input("{meta.get("input_name") or "in0"}", ncnn.Mat(x[0]))\n'
        f'logits = np.array(extractor.extract("{meta.get("output_name") or "out0"}")[1])[None]')))
