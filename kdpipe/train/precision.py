"""Where `--amp` trains in bf16: devices whose matrix units compute bf16 natively.

bf16 autocast halves the bytes every convolution moves and, on hardware with bf16 matrix
instructions, runs them at a multiple of the fp32 rate: CUDA GPUs (tensor cores), and CPUs with
Intel AMX or AVX512-BF16, where oneDNN picks bf16 kernels. On the project's 2-core Sapphire Rapids
(AMX) box a ResNet110 training step runs 1.9x faster and its inference 2.1x
(`benchmarks/RESULTS.md`). Elsewhere bf16 would be emulated, slower than fp32, so it stays off.
Losses are computed in fp32 whatever this says (`kdpipe.train.methods.distill_objective`).
"""

from __future__ import annotations

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether `device` has bf16 matrix instructions (so autocast is a speed-up there)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # Private probes (torch >= 2.3), read defensively: a missing one means "not known to".
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def uses_bf16(amp: bool, device: torch.device) -> bool:
    """Whether a run with `--amp` set to `amp` trains (and runs its teacher) in bf16 autocast."""
    return amp and native_bf16(device)


def precision_name(amp: bool, device: torch.device) -> str:
    """`bf16` or `fp32`: the autocast dtype, as recorded in summaries and cache keys."""
    return "bf16" if uses_bf16(amp, device) else "fp32"
