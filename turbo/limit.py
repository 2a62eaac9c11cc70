"""bench's view of the roofline: for each grid cell, the decode rate memory bandwidth allows at
that cell's context, concurrency and (with MTP) measured acceptance, so every figure bench
prints comes with its share of the machine's limit."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from turbo import bandwidth, roofline
from turbo.errors import TurboError


@dataclass(frozen=True)
class Limit:
    traffic: roofline.Traffic
    bw: bandwidth.Bandwidth

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
    plain = gbs * 1e9 * concurrency / roofline.pass_bytes(t, concurrency, ctx)
    mtp = None
    if accepted_len and draft_len and concurrency == 1 and t.mtp_per_draft:
        mtp = roofline.mtp_roofline(t, gbs, ctx, accepted_len, round(draft_len))
    elif accepted_len and concurrency == 1:
        # No MTP weights to count (another drafter): the ideal, accepted tokens per pass.
        mtp = plain * accepted_len
    return CellLimit(ctx, plain, accepted_len if mtp else None, mtp)


def load(
    model: str, bandwidth_gbs: float | None, kv_dtype: str, measure: bool
) -> tuple[Limit | None, str]:
    """The limit for bench's report, or None and why (bench runs without it). ``measure``:
    the server runs on this machine, so its GPU's figures are this machine's."""
    model_dir = Path(model)
    if not (model_dir / "config.json").is_file():
        return None, f"no checkpoint at {model_dir} (pass --model DIR for the roofline)"
    try:
        t = roofline.traffic(model_dir, kv_dtype or roofline.default_kv_dtype())
    except TurboError as err:
        return None, f"roofline not computed: {err.line()}"
    if measure:
        bw = bandwidth.bandwidth(bandwidth_gbs, measure=True)
    else:
        # The server runs elsewhere: this machine's GPU (or lack of one) says nothing about it.
        bw = bandwidth.Bandwidth(
            None, None, None, "the server is on another machine", given_gbs=bandwidth_gbs
        )
    if not bw.used_gbs:
        return None, (
            f"no bandwidth known for {bw.gpu or 'this machine'} and none measured "
            f"({bw.measured_how}); pass --bandwidth-gbs (GB10: 273)"
        )
    return Limit(t, bw), ""


def describe(limit: Limit, context: int) -> dict[str, Any]:
    """Plain data for bench.json: the table at one context, both bandwidth figures."""
    data = roofline.summary(limit.traffic, context, limit.gbs)
    data["bandwidth"] = asdict(limit.bw) | {
        "used_gbs": limit.gbs,
        "used": limit.bw.used_source,
    }
    return data
