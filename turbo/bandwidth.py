"""The machine's memory bandwidth: the figure its maker states for known GPUs, and one measured
here (a device-to-device copy through torch on the GPU, when there is one).

Single-stream decode reads every weight a token touches once per token, so this figure over
the bytes per token is the ceiling on decode tok/s (turbo/ceiling.py, which also holds the
stated figures). The stated figure is what the machine is sold with; the measured copy is what
a kernel can reach on it today.
"""

from __future__ import annotations

import shutil
import time

from turbo import proc
from turbo.ceiling import Bandwidth as Bandwidth
from turbo.ceiling import spec_for as spec_for

# Bytes per copy buffer: well above any GPU's L2 (H200: 60 MB), small beside what a serving
# vLLM leaves free on a Spark.
_COPY_BYTES = 512 * 2**20


def gpu_name() -> str | None:
    """This machine's first GPU, from nvidia-smi (no torch import needed)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    res = proc.capture([smi, "--query-gpu=name", "--format=csv,noheader"], timeout=20)
    lines = res.stdout.strip().splitlines()
    return lines[0].strip() if res.ok and lines else None


def measure_copy_gbs(nbytes: int = _COPY_BYTES, iters: int = 20) -> tuple[float | None, str]:
    """Device-to-device copy bandwidth in GB/s, counting the read and the write (2 x bytes per
    copy), as a kernel that streams weights would see it. (None, why) without torch or CUDA."""
    try:
        import torch
    except ImportError:
        return None, "torch is not importable here"
    try:
        if not torch.cuda.is_available():
            return None, "no CUDA device visible to torch"
        src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        for _ in range(3):  # first touches, clocks up
            dst.copy_(src)
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            dst.copy_(src)
        stop.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(stop) / 1000.0
        name = torch.cuda.get_device_name(0)
        del src, dst
        torch.cuda.empty_cache()
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # busy or full GPU
        return None, f"copy failed on the GPU ({str(exc).splitlines()[0][:120]})"
    if seconds <= 0:
        return None, "copy too fast to time"
    gbs = 2 * nbytes * iters / seconds / 1e9
    return gbs, f"torch copy of {nbytes // 2**20} MiB x {iters} on {name}"


def measure_host_copy_gbs(nbytes: int = 128 * 2**20, iters: int = 5) -> tuple[float, str]:
    """Host memory copy bandwidth (read + write), for a server without a GPU (vLLM's CPU
    backend reads its weights from host memory). A C memcpy through memoryview slices."""
    src = bytearray(nbytes)
    dst = bytearray(nbytes)
    view = memoryview(dst)
    view[:] = src  # first touch: page faults, not bandwidth
    t0 = time.perf_counter()
    for _ in range(iters):
        view[:] = src
    seconds = time.perf_counter() - t0
    return (
        2 * nbytes * iters / seconds / 1e9,
        f"host memory copy of {nbytes // 2**20} MiB x {iters}",
    )


def bandwidth(given_gbs: float | None = None, measure: bool = True) -> Bandwidth:
    """Both figures for this machine; without a GPU the measured one is host memory's, which
    is what a CPU-backend server reads its weights from."""
    name = gpu_name()
    measured, how = measure_copy_gbs() if measure else (None, "not measured")
    if measure and measured is None and name is None:
        measured, how = measure_host_copy_gbs()
        how += " (no GPU here)"
    return Bandwidth(name, spec_for(name), measured, how, given_gbs)
