"""The decode ceiling as plain data: the machine's memory bandwidth (the figure its maker
states, one measured here, one given), and what it allows each bench cell.

Single-stream decode reads every weight a token touches once per token, so bandwidth over the
bytes per token (:mod:`turbo.traffic`) is the ceiling on decode tok/s. For a grid cell it is
taken at the cell's context, over its concurrency (one pass reads the weights once for all
streams) and, with MTP, at the measured acceptance; every figure bench prints comes with its
share of that ceiling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from turbo import traffic

# Stated memory bandwidth in GB/s (1e9 bytes), matched against the GPU's name, most specific
# first. DGX Spark's GB10: LPDDR5X, 273 GB/s, shared by CPU and GPU.
SPEC_GBS: tuple[tuple[str, float], ...] = (
    ("GB10", 273.0),
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIE", 2000.0),
    ("H100", 3350.0),
    ("A100 80GB PCIE", 1935.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100", 1555.0),
)


@dataclass(frozen=True)
class Bandwidth:
    gpu: str | None
    spec_gbs: float | None
    measured_gbs: float | None
    measured_how: str
    given_gbs: float | None = None

    @property
    def used_gbs(self) -> float | None:
        """The figure rooflines use: the user's, else the stated one, else the measured one."""
        return self.given_gbs or self.spec_gbs or self.measured_gbs

    @property
    def used_source(self) -> str:
        if self.given_gbs:
            return "--bandwidth-gbs"
        if self.spec_gbs:
            return f"{self.gpu} stated figure"
        if self.measured_gbs:
            return "measured copy"
        return "none"


def spec_for(gpu_name: str | None) -> float | None:
    if not gpu_name:
        return None
    name = gpu_name.upper()
    for key, gbs in SPEC_GBS:
        if key.upper() in name:
            return gbs
    return None


@dataclass(frozen=True)
class Limit:
    traffic: traffic.Traffic
    bw: Bandwidth

    @property
    def gbs(self) -> float | None:
        return self.bw.used_gbs


@dataclass(frozen=True)
class CellLimit:
    context: int
    roofline_tok_s: float
    # With MTP: tokens per weight pass (1 + accepted per draft step) and the raised roofline.
    tokens_per_pass: float | None
    mtp_roofline_tok_s: float | None

    @property
    def applicable(self) -> float:
        return self.mtp_roofline_tok_s or self.roofline_tok_s


def cell_context(prompt_len: int, output_len: int) -> int:
    """The mean context over a cell's decode: the prompt plus half the output."""
    return prompt_len + output_len // 2


def for_cell(
    limit: Limit,
    prompt_len: int,
    output_len: int,
    concurrency: int,
    accepted_len: float | None,
    draft_len: float | None,
) -> CellLimit | None:
    """The cell's roofline (total tok/s over its ``concurrency`` streams: one pass reads the
    weights once for all of them) and, with MTP measured, the roofline MTP raises."""
    gbs = limit.gbs
    if not gbs:
        return None
    t = limit.traffic
    ctx = cell_context(prompt_len, output_len)
    plain = gbs * 1e9 * concurrency / traffic.pass_bytes(t, concurrency, ctx)
    mtp = None
    if accepted_len and draft_len and concurrency == 1 and t.mtp_per_draft:
        mtp = traffic.mtp_roofline(t, gbs, ctx, accepted_len, round(draft_len))
    elif accepted_len and concurrency == 1:
        # No MTP weights to count (another drafter): the ideal, accepted tokens per pass.
        mtp = plain * accepted_len
    return CellLimit(ctx, plain, accepted_len if mtp else None, mtp)


def bandwidth_data(bw: Bandwidth) -> dict[str, Any]:
    """Both figures and the one used, for --json and bench.json."""
    return asdict(bw) | {"used_gbs": bw.used_gbs, "used": bw.used_source}


def describe(limit: Limit, context: int) -> dict[str, Any]:
    """Plain data for bench.json: the table at one context, both bandwidth figures."""
    data = traffic.summary(limit.traffic, context, limit.gbs)
    data["bandwidth"] = bandwidth_data(limit.bw)
    return data
