"""Where and with what a result was measured: machine, versions, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import kdpipe


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux, `platform` elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# The instruction sets that decide how int8 and bf16 arithmetic runs: x86 int8 dot products without
# VNNI go through 16-bit saturating adds (vpmaddubsw), VNNI/AMX accumulate in int32, and ARM's
# dot-product extensions (asimddp, i8mm) do too.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve",
             "bf16")


def cpu_isa() -> list[str]:
    """The ISA flags of `ISA_FLAGS` this CPU reports in /proc/cpuinfo (empty where unknown)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return []
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith(("flags", "Features")):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in ISA_FLAGS if flag in present]
    return []


def cpu_facts() -> dict[str, Any]:
    """What a numerical check depends on: the CPU's name, architecture and relevant ISA flags."""
    return {"cpu": cpu_model(), "arch": platform.machine(), "isa": cpu_isa()}


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The commit of the kdpipe checkout (or of `cwd`), with `-dirty` when it has changes."""
    where = cwd or Path(kdpipe.__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def environment(device: torch.device | None = None) -> dict[str, Any]:
    """A record of the machine and library versions, for summaries and benchmark reports."""
    device = device or torch.device("cpu")
    info: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "kdpipe": kdpipe.__version__,
        "git_commit": git_commit(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info
