"""`bench --roofline`: the decode roofline of a checkpoint alone, no server: bytes read per
decoded token by component (:mod:`turbo.traffic_count`, from the checkpoint's headers), over
the machine's bandwidth (:mod:`turbo.bandwidth`), with the rates MTP allows at a few accepted
lengths.

The names of the computation are re-exported here, where `bench --roofline` and its tests find
them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from turbo.ceiling import Bandwidth, bandwidth_data
from turbo.checkpoint_read import read_checkpoint as read_checkpoint
from turbo.checkpoint_read import read_header as read_header
from turbo.checkpoint_read import read_quant as read_quant
from turbo.errors import UsageError
from turbo.limit import default_kv_dtype as default_kv_dtype
from turbo.limit import traffic as traffic
from turbo.outcome import Outcome, done
from turbo.traffic import BF16 as BF16
from turbo.traffic import BLOCK_SCALES as BLOCK_SCALES
from turbo.traffic import DTYPE_BYTES as DTYPE_BYTES
from turbo.traffic import GLOBAL_SCALES as GLOBAL_SCALES
from turbo.traffic import KINDS as KINDS
from turbo.traffic import KV_BYTES as KV_BYTES
from turbo.traffic import NVFP4 as NVFP4
from turbo.traffic import OTHER as OTHER
from turbo.traffic import Quant as Quant
from turbo.traffic import Row as Row
from turbo.traffic import Tensor as Tensor
from turbo.traffic import Traffic as Traffic
from turbo.traffic import bytes_per_token as bytes_per_token
from turbo.traffic import gbs as gbs
from turbo.traffic import mtp_roofline as mtp_roofline
from turbo.traffic import pass_bytes as pass_bytes
from turbo.traffic import roofline_tok_s as roofline_tok_s
from turbo.traffic import size as size
from turbo.traffic import summary as summary
from turbo.traffic import table_markdown as table_markdown
from turbo.traffic_count import traffic_of as traffic_of

DEFAULT_CONTEXT = 2048
# MTP rows shown before any server has measured an acceptance: the mtp profile's 2 drafts.
SHOWN_ACCEPTED = (1.5, 2.0, 2.5, 3.0)


def bandwidth_lines(bw: Bandwidth) -> list[str]:
    """The machine's figures, both shown."""
    if bw.spec_gbs:
        stated = f"{gbs(bw.spec_gbs)} ({bw.gpu})"
    else:
        stated = f"none known for {bw.gpu}" if bw.gpu else "none (no NVIDIA GPU found here)"
    measured = (
        f"{gbs(bw.measured_gbs)} ({bw.measured_how})"
        if bw.measured_gbs
        else (f"none ({bw.measured_how})")
    )
    lines = [f"bandwidth stated: {stated}", f"bandwidth measured: {measured}"]
    if bw.given_gbs:
        lines.append(f"bandwidth given: {gbs(bw.given_gbs)} (--bandwidth-gbs)")
    return lines


def render(t: Traffic, context: int, bw: Bandwidth, drafts: int = 2) -> str:
    total = bytes_per_token(t, context)
    out = [
        f"Decode roofline: {t.model}",
        f"quantisation {t.quant}; KV cache {t.kv_dtype}; context {context} tokens",
        "",
        table_markdown(t, context),
        "",
        f"bytes per decoded token: {size(total)}",
        *bandwidth_lines(bw),
    ]
    figures = [("given", bw.given_gbs), ("stated", bw.spec_gbs), ("measured", bw.measured_gbs)]
    for label, figure in figures:
        if figure:
            out.append(
                f"roofline at {gbs(figure)} ({label}): "
                f"{roofline_tok_s(figure, total):.1f} tok/s single stream"
            )
    used = bw.used_gbs
    if not used:
        out.append("roofline: no bandwidth known here; pass --bandwidth-gbs (GB10: 273)")
    elif t.mtp_per_draft:
        step = pass_bytes(t, 1 + drafts, context, drafts)
        out.append(
            f"MTP, {drafts} drafts: a step reads {size(step)} (verify pass over "
            f"{1 + drafts} tokens + {drafts} draft steps); at {gbs(used)}:"
        )
        for acc in SHOWN_ACCEPTED:
            out.append(
                f"  accepted length {acc:g}: {mtp_roofline(t, used, context, acc, drafts):.1f}"
                " tok/s"
            )
    out += [f"note: {n}" for n in t.notes]
    return "\n".join(out)


def data(t: Traffic, context: int, bw: Bandwidth) -> dict[str, Any]:
    """The computation as plain data, for --json."""
    out = summary(t, context, bw.used_gbs)
    out["bandwidth"] = bandwidth_data(bw)
    if bw.used_gbs and t.mtp_per_draft:
        out["mtp_rooflines"] = {
            str(acc): mtp_roofline(t, bw.used_gbs, context, acc, 2) for acc in SHOWN_ACCEPTED
        }
    return out


def command(
    *,
    model: str,
    bandwidth_gbs: float,
    context: int,
    kv_dtype: str,
    measure: bool = True,
) -> Outcome:
    """What `invoke bench --roofline` does: the computation alone, no server."""
    from turbo import bandwidth as bwm
    from turbo import paths
    from turbo.pins import load_pins

    if bandwidth_gbs < 0 or context < 0:
        raise UsageError(
            "bench --roofline",
            "--bandwidth-gbs and --context must not be negative",
            "For example --bandwidth-gbs 273 --context 2048.",
        )
    model_dir = Path(model) if model else paths.model_dir(load_pins())
    t = traffic(model_dir, kv_dtype or default_kv_dtype())
    bw = bwm.bandwidth(bandwidth_gbs or None, measure=measure)
    ctx = context or DEFAULT_CONTEXT
    return done(render(t, ctx, bw), data(t, ctx, bw))
