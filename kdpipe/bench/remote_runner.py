"""kdpipe's device runner: time one ONNX, ExecuTorch or LiteRT file on this machine, print JSON.

`kdpipe bench --device ssh://...` copies this single file (and the artifact) to a phone or an
edge board and runs it with the device's python3. It must stay self-contained: the standard
library at import time, numpy and the runtime (onnxruntime, executorch.runtime or
ai_edge_litert) only when benching; never kdpipe. It follows kdpipe's latency protocol
(docs/latency-protocol.md): warm-up calls, timed calls with time.perf_counter_ns on one
pre-allocated input, numpy's linear percentiles, throughput = batch x calls / total time. A
kdpipe test checks that its statistics match kdpipe.runtime.latency's.

    python3 remote_runner.py probe
    python3 remote_runner.py bench --backend onnxruntime --artifact model.onnx \
        --input-shape 3,32,32 --batch-sizes 1,32 --threads 4 [--images x.npy --labels y.npy]
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time

MIN_TIMED_CALLS = 5
# Import names: `ai_edge_litert` is the module of the `ai-edge-litert` distribution.
PACKAGES = ("numpy", "onnxruntime", "executorch", "ai_edge_litert")
BACKEND_PACKAGES = {"onnxruntime": "onnxruntime", "executorch": "executorch",
                    "litert": "ai_edge_litert"}  # backend -> the module it imports
EMULATED_MARKER = "/etc/kdpipe-emulated"  # benchmarks/arm64_board.sh writes it on its board
# /proc/cpuinfo keys of x86 CPUs that ARM kernels do not print (ARM has "Features", "CPU part"):
# an arm machine showing them is qemu-user passing the x86 host's file through.
X86_CPUINFO_KEYS = {"vendor_id", "cpu family", "flags"}
CPUINFO = "/proc/cpuinfo"


# ---------------------------------------------------------------- what this device has


def cpu_model():
    """The CPU's name: /proc/cpuinfo on Linux and Android, sysctl on macOS."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("model name", "hardware", "cpu model"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                  capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def package_version(name):
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def emulated():
    """Whether this device is emulated, so its latencies say nothing of real hardware."""
    if os.path.exists(EMULATED_MARKER):
        return True
    if not platform.machine().lower().startswith(("aarch64", "arm")):
        return False
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            keys = {line.split(":", 1)[0].strip().lower() for line in f if ":" in line}
    except OSError:
        return False
    return bool(keys & X86_CPUINFO_KEYS)


def probe():
    is_emulated = emulated()
    cpu = cpu_model()
    if is_emulated:  # qemu-user shows the host's CPU: say whose it is
        cpu = f"qemu-user {platform.machine()} on {cpu}"
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "emulated": is_emulated,
    }


def peak_rss_bytes():
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


# ---------------------------------------------------------------- backends


def load_onnxruntime(path, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    feed, fetch = session.get_inputs()[0].name, [session.get_outputs()[0].name]
    return lambda x: session.run(fetch, {feed: x})[0]


def load_executorch(path, threads):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        portable_lib._unsafe_reset_threadpool(threads)
        method = Runtime.get().load_program(path).load_method("forward")
    return lambda x: method.execute((torch.from_numpy(x),))[0].numpy()


def load_litert(path, threads):
    """LiteRT's Interpreter (XNNPACK by default). kdpipe's .tflite files have a static batch:
    bench runs only their own batch size, and resizing their input would compute garbage. An
    int8 file's input and output are int8 with a scale and zero point: the float images are
    quantized and the logits dequantized around each call, as kdpipe.runtime.litert does."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    quantized_in = np.dtype(inp["dtype"]) != np.float32
    quantized_out = np.dtype(out["dtype"]) != np.float32
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]

    def run(x):
        if quantized_in:
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.rint(x / np.float32(in_scale)) + in_zero, info.min,
                        info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        return (y.astype(np.float32) - out_zero) * np.float32(out_scale) if quantized_out else y

    return run


BACKENDS = {"onnxruntime": load_onnxruntime, "executorch": load_executorch,
            "litert": load_litert}


# ---------------------------------------------------------------- the latency protocol


def summarize(durations_ns, batch_size):
    import numpy as np

    ms = np.asarray(durations_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99], method="linear")
    total_s = float(ms.sum()) / 1e3
    return {"batch_size": batch_size, "calls": len(ms), "p50_ms": float(p50),
            "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(ms.mean()),
            "throughput_ips": batch_size * len(ms) / total_s if total_s > 0 else float("inf")}


def time_calls(run, x, warmup, iters, budget_s, min_time_s=0.0):
    for _ in range(warmup):
        run(x)
    budget_ns = None if budget_s is None else int(budget_s * 1e9)
    min_ns = int(min_time_s * 1e9)
    durations, spent = [], 0
    while len(durations) < iters or spent < min_ns:
        start = time.perf_counter_ns()
        run(x)
        durations.append(time.perf_counter_ns() - start)
        spent += durations[-1]
        if budget_ns is not None and spent >= budget_ns and len(durations) >= MIN_TIMED_CALLS:
            break
    return durations


def random_input(batch_size, input_shape, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(rng.random((batch_size, *input_shape), dtype=np.float32))


def top1(run, images, labels, chunk, pad):
    """Accuracy on uint8 images, in chunks of `chunk`; `pad` fills a short last chunk with zeros
    (a fixed-batch file) and drops their outputs."""
    import numpy as np

    correct = 0
    for start in range(0, len(labels), chunk):
        part = images[start:start + chunk]
        n = len(part)
        if pad and n < chunk:
            part = np.concatenate([part, np.zeros((chunk - n, *part.shape[1:]), np.uint8)])
        x = np.ascontiguousarray(part, dtype=np.float32) / np.float32(255)
        correct += int((np.asarray(run(x))[:n].argmax(axis=1) == labels[start:start + n]).sum())
    return 100.0 * correct / len(labels)


def normalizing(run, mean, std):
    """For files that expect normalized input: [0, 1] in, normalized inside the timed call."""
    import numpy as np

    mean = np.array(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.array(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return lambda x: run((x - mean) / std)


def bench(args):
    import numpy as np

    run = BACKENDS[args.backend](args.artifact, args.threads)
    if args.mean:
        run = normalizing(run, floats(args.mean), floats(args.std))
    result = {"top1": None, "n_test": 0, "latency": []}
    if args.images:
        images, labels = np.load(args.images), np.load(args.labels)
        result["top1"] = top1(run, images, labels, args.eval_batch, args.pad)
        result["n_test"] = len(labels)
    shape = ints(args.input_shape)
    for batch_size in ints(args.batch_sizes):
        x = random_input(batch_size, shape)
        durations = time_calls(run, x, args.warmup, args.iters, args.budget_s, args.min_time_s)
        result["latency"].append(summarize(durations, batch_size))
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result


def ints(text):
    return [int(v) for v in text.split(",") if v]


def floats(text):
    return [float(v) for v in text.split(",") if v]


def main(argv=None):
    parser = argparse.ArgumentParser(description="kdpipe device runner")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("probe", help="print this device's CPU, Python and runtime versions")
    b = sub.add_parser("bench", help="time one artifact")
    b.add_argument("--backend", choices=sorted(BACKENDS), required=True)
    b.add_argument("--artifact", required=True)
    b.add_argument("--input-shape", default="3,32,32")
    b.add_argument("--batch-sizes", default="1")
    b.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    b.add_argument("--warmup", type=int, default=20)
    b.add_argument("--iters", type=int, default=100)
    b.add_argument("--budget-s", type=float, default=None)
    b.add_argument("--min-time-s", type=float, default=0.0)
    b.add_argument("--images", help=".npy of uint8 [N, C, H, W] test images (optional)")
    b.add_argument("--labels", help=".npy of int64 [N] labels")
    b.add_argument("--eval-batch", type=int, default=100)
    b.add_argument("--pad", action="store_true", help="fixed-batch file: pad the last chunk")
    b.add_argument("--mean", default="", help="normalize inside (files without folded mean/std)")
    b.add_argument("--std", default="")
    args = parser.parse_args(argv)
    result = probe() if args.command == "probe" else bench(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
