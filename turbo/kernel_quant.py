"""The NVFP4 quantisation kernel (kernels/nvfp4_quant.cu) as a torch extension: building it,
calling it, and measuring it against a device-to-device copy.

torch is imported only by the functions that need it (it is not a dependency of the CLI).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from turbo.console import render_table
from turbo.errors import TurboError, UsageError
from turbo.kernel_sources import (
    DEFAULT_LAYOUT,
    KERNELS_DIR,
    LAYOUTS,
    QUANT_SOURCES,
    VARIANT_LABELS,
    VARIANTS,
    BenchResult,
    BenchRow,
    Quantized,
    arch_for,
    digest,
    gencode,
    quant_build_dir,
)


def _check_choices(variants: Sequence[str], layouts: Sequence[str]) -> None:
    for v in variants:
        if v not in VARIANTS:
            raise UsageError("variant", f"{v!r} is unknown", f"Use one of {sorted(VARIANTS)}.")
    for lay in layouts:
        if lay not in LAYOUTS:
            raise UsageError("layout", f"{lay!r} is unknown", f"Use one of {sorted(LAYOUTS)}.")


def load_quant_extension(verbose: bool = False) -> Any:
    """Build (first call, about a minute) or load the torch extension of nvfp4_quant.cu."""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:
        raise TurboError(
            "NVFP4 quantisation kernel",
            "torch is not installed",
            "Run inside the pixi environment (torch 2.10 cu130).",
        ) from exc
    if not torch.cuda.is_available():
        raise TurboError(
            "NVFP4 quantisation kernel",
            "torch sees no CUDA GPU",
            "Run it on a machine with an NVIDIA GPU.",
        )
    major, minor = torch.cuda.get_device_capability()
    arch = arch_for(f"{major}.{minor}")
    flags = ["-O3", "-std=c++17", *gencode(arch), f"-I{KERNELS_DIR}"]
    name = f"turbo_nvfp4_{arch}_{digest(list(QUANT_SOURCES), flags)}"
    build_dir = quant_build_dir() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    # Only our -gencode: torch would otherwise add its own for every arch in its list.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}{'a' if major >= 10 else ''}")
    return cpp_extension.load(
        name=name,
        sources=[str(QUANT_SOURCES[0]), str(QUANT_SOURCES[2])],
        extra_cflags=["-O2", "-std=c++17", f"-I{KERNELS_DIR}"],
        extra_cuda_cflags=flags,
        build_directory=str(build_dir),
        verbose=verbose,
    )


def nvfp4_quantize(
    x: Any,
    global_scale: Any,
    variant: str = "turbo",
    linear: bool = True,
    ext: Any = None,
    layout: str = DEFAULT_LAYOUT,
) -> Quantized:
    """Quantise a 2-D fp16/bf16 CUDA tensor with vLLM 0.16's NVFP4 algorithm."""
    import torch

    _check_choices([variant], [layout])
    if x.dim() != 2 or x.dtype not in (torch.float16, torch.bfloat16) or not x.is_cuda:
        raise UsageError(
            "input",
            f"got {tuple(x.shape)} {x.dtype} on {x.device}",
            "Pass a 2-D float16/bfloat16 CUDA tensor.",
        )
    rows, cols = x.shape
    if cols % 16:
        raise UsageError(
            "input",
            f"{cols} columns is not a multiple of 16",
            "NVFP4 blocks are 16 elements: pad the columns.",
        )
    ext = ext or load_quant_extension()
    x = x.contiguous()
    gs = global_scale.to(device=x.device, dtype=torch.float32).reshape(1).contiguous()
    data = torch.empty((rows, cols // 2), dtype=torch.uint8, device=x.device)
    kb = cols // 16
    sfs = torch.empty(
        ((rows + 127) // 128 * 128, (kb + 3) // 4 * 4), dtype=torch.uint8, device=x.device
    )
    sfl = torch.empty((rows, kb), dtype=torch.uint8, device=x.device) if linear else None
    ext.quantize(x, gs, data, sfs, sfl, VARIANTS[variant], LAYOUTS[layout])
    return Quantized(data, sfs, sfl)


def _time_ms(fn: Callable[[], None], iters: int) -> float:
    import torch

    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end)) / iters


def _quant_call(
    ext: Any, x: Any, gs: Any, data: Any, sfs: Any, code: int, layout: int
) -> Callable[[], None]:
    def call() -> None:
        ext.quantize(x, gs, data, sfs, None, code, layout)

    return call


def bench_quant(
    rows: int = 16384,
    cols: int = 32768,
    iters: int = 20,
    repeats: int = 3,
    variants: Sequence[str] = ("none", "turbo", "chain", "cuda"),
    dtypes: Sequence[str] = ("bfloat16",),
    log: Callable[[str], None] = print,
    layouts: Sequence[str] = (DEFAULT_LAYOUT,),
) -> BenchResult:
    """Throughput of the quantisation kernel per conversion variant and thread layout, as a
    share of a device-to-device copy moving the same bytes (read + write), on random data.

    Bytes moved per call: the input, the packed output and the swizzled scales (what vLLM's
    kernel writes). Kernel and copy alternate within each repeat (same clocks, same run); the
    best of the repeats is kept for each, since interference only ever slows a run down.
    """
    _check_choices(variants, layouts)
    if cols % 16:
        raise UsageError("cols", f"{cols} is not a multiple of 16", "Pick a multiple of 16.")
    ext = load_quant_extension()  # says so in one line when torch is missing
    import torch

    dev = torch.device("cuda")
    n = rows * cols
    kb = cols // 16
    sf_shape = ((rows + 127) // 128 * 128, (kb + 3) // 4 * 4)
    moved = 2 * n + n // 2 + sf_shape[0] * sf_shape[1]
    half = moved // 2
    src = torch.randint(0, 256, (half,), dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    gen = torch.Generator(device=dev).manual_seed(1234)
    results: list[BenchRow] = []
    copy_best = float("inf")
    combos = [(v, lay) for lay in layouts for v in variants]
    for dname in dtypes:
        dtype = getattr(torch, dname)
        # Random data, spread over the E2M1 range after scaling: never zeros or constants.
        x = torch.randn((rows, cols), generator=gen, device=dev, dtype=torch.float32)
        x = (x * 3).to(dtype)
        gs = torch.tensor([448.0 * 6.0 / float(x.abs().max())], device=dev)
        data = torch.empty((rows, cols // 2), dtype=torch.uint8, device=dev)
        sfs = torch.empty(sf_shape, dtype=torch.uint8, device=dev)
        best = {c: float("inf") for c in combos}
        for rep in range(repeats):
            copy_best = min(copy_best, _time_ms(lambda: dst.copy_(src), iters))
            for v, lay in combos:
                call = _quant_call(ext, x, gs, data, sfs, VARIANTS[v], LAYOUTS[lay])
                best[(v, lay)] = min(best[(v, lay)], _time_ms(call, iters))
            log(
                f"{dname} repeat {rep + 1}/{repeats}: copy {copy_best:.3f} ms, "
                + ", ".join(f"{v}/{lay} {best[(v, lay)]:.3f} ms" for v, lay in combos)
            )
        copy_gbps = 2 * half / copy_best / 1e6
        for v, lay in combos:
            ms = best[(v, lay)]
            gbps = moved / ms / 1e6
            results.append(
                BenchRow(v, lay, dname, round(ms, 4), round(gbps, 1), round(gbps / copy_gbps, 4))
            )
    return BenchResult(
        torch.cuda.get_device_name(0),
        rows,
        cols,
        moved,
        round(copy_best, 4),
        round(2 * half / copy_best / 1e6, 1),
        results,
    )


def render_bench(r: BenchResult) -> str:
    head = (
        f"{r.device}: {r.rows}x{r.cols} input, {r.bytes_moved / 1e9:.3f} GB moved per call; "
        f"D2D copy of the same bytes: {r.copy_ms:.3f} ms = {r.copy_gbps:.0f} GB/s"
    )
    rows = [
        (
            row.dtype,
            row.layout,
            VARIANT_LABELS[row.variant],
            f"{row.ms:.3f}",
            f"{row.gbps:.0f}",
            f"{100 * row.share_of_copy:.1f} %",
        )
        for row in r.table
    ]
    headers = ("dtype", "layout", "conversion", "ms", "GB/s", "share of copy")
    return head + "\n" + render_table(headers, rows)
