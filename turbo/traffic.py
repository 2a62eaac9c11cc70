"""The checkpoint's memory traffic per decoded token, as plain data, and the decode rate it allows.

Single-stream decode is bound by memory bandwidth: every weight a token touches is read once
per token. :class:`Traffic` holds those bytes by component and storage kind (NVFP4 data,
e4m3 block scales, fp32 global scales, bf16), the per-sequence state (KV cache per context
token, the linear-attention state) and what an MTP draft step adds.

The roofline is bandwidth / bytes per token. With MTP a step reads the weights once for 1 + k
tokens (k drafts) but the MoE touches more distinct experts for more tokens, and the drafts
run the MTP layer and the LM head k times; the accepted length from vLLM's counters turns that
into tokens per second (:func:`pass_bytes`, :func:`mtp_roofline`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# safetensors dtype -> bytes per element
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
}
# Bytes per KV-cache element by vLLM's --kv-cache-dtype ("auto": the model's bf16).
KV_BYTES = {"auto": 2, "bfloat16": 2, "float16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}
# vLLM keeps the Gated DeltaNet recurrent and conv state in the model dtype (bf16).
STATE_BYTES = 2
# Storage kinds, the table's columns.
NVFP4, BLOCK_SCALES, GLOBAL_SCALES, BF16, OTHER = (
    "NVFP4 data",
    "e4m3 block scales",
    "global scales",
    "bf16/fp16",
    "other",
)
KINDS = (NVFP4, BLOCK_SCALES, GLOBAL_SCALES, BF16, OTHER)


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class Quant:
    """What the quantisation config says: algorithm, block size, modules left unquantised."""

    algo: str
    group_size: int | None
    exclude: tuple[str, ...]
    kv_cache_algo: str | None
    source: str


@dataclass
class Row:
    """One component: how many tensors, their stored bytes, and the bytes one token reads."""

    component: str
    rule: str
    tensors: int = 0
    stored: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    per_token: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))

    @property
    def per_token_total(self) -> float:
        return sum(self.per_token.values())

    @property
    def stored_total(self) -> int:
        return sum(self.stored.values())


@dataclass(frozen=True)
class Traffic:
    """The checkpoint's memory traffic per decoded token, as plain data."""

    model: str
    quant: str
    weight_rows: tuple[Row, ...]
    # All routed-expert bytes (every expert of every layer) and the routing (top-k of E).
    routed_all: float
    top_k: int
    num_experts: int
    lm_head: float
    # Per-sequence state: KV bytes per context token; linear-attention state bytes.
    kv_per_context_token: float
    kv_dtype: str
    linear_state: float
    # The MTP module (not read by a plain decode step): per draft token, LM head included.
    mtp_per_draft: float
    mtp_rule: str
    notes: tuple[str, ...] = ()

    @property
    def weights_per_token(self) -> float:
        return sum(r.per_token_total for r in self.weight_rows)

    def state_rows(self, context: int) -> list[Row]:
        kv = Row(
            "KV cache reads",
            f"{context} context tokens x {self.kv_per_context_token:,.0f} B ({self.kv_dtype})",
        )
        kv.per_token[OTHER] = self.kv_per_context_token * context
        state = Row("linear-attention state", "recurrent + conv state, read and written")
        state.per_token[OTHER] = 2 * self.linear_state
        return [r for r in (kv, state) if r.per_token_total > 0]

    def rows(self, context: int) -> list[Row]:
        return [*self.weight_rows, *self.state_rows(context)]


def bytes_per_token(t: Traffic, context: int) -> float:
    """Bytes one single-stream decode step reads at ``context`` tokens of context."""
    return t.weights_per_token + t.kv_per_context_token * context + 2 * t.linear_state


def pass_bytes(t: Traffic, tokens: int, context: int, drafts: int = 0) -> float:
    """Bytes of one forward pass over ``tokens`` tokens (a verify pass of 1 + k tokens, or one
    token of each of ``tokens`` streams), plus ``drafts`` MTP draft steps. The MoE reads each
    distinct expert once: with p = top_k / E, n tokens touch E * (1 - (1 - p)^n) experts per
    layer on average (independent routing), not n * top_k."""
    n = max(1, tokens)
    routed_one = t.routed_all * t.top_k / t.num_experts if t.num_experts else 0.0
    routed_n = t.routed_all * (1 - (1 - t.top_k / t.num_experts) ** n) if t.num_experts else 0.0
    fixed = t.weights_per_token - routed_one
    state = n * (t.kv_per_context_token * context + 2 * t.linear_state)
    return fixed + routed_n + state + drafts * t.mtp_per_draft


def roofline_tok_s(bandwidth_gbs: float, nbytes: float) -> float:
    return bandwidth_gbs * 1e9 / nbytes if nbytes > 0 else 0.0


def mtp_roofline(
    t: Traffic, bandwidth_gbs: float, context: int, accepted_len: float, drafts: int
) -> float:
    """Decode tok/s that MTP allows: ``accepted_len`` tokens (1 + accepted drafts, from vLLM's
    spec-decode counters) per step of one verify pass over 1 + ``drafts`` tokens and
    ``drafts`` draft steps."""
    step = pass_bytes(t, 1 + drafts, context, drafts)
    return bandwidth_gbs * 1e9 * accepted_len / step if step > 0 else 0.0


# ----------------------------------------------------------------------- output
def size(n: float) -> str:
    """Bytes in the unit that reads best: 4.374 GB, 622.3 MB, 12.3 kB, 96 B."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.{3 if unit == 'GB' else 1}f} {unit}"
    return f"{n:.0f} B"


def gbs(x: float) -> str:
    """A bandwidth figure: 273 GB/s, 4,252 GB/s, 0.5 GB/s."""
    return f"{x:,.0f} GB/s" if x >= 10 else f"{x:.3g} GB/s"


def table_markdown(t: Traffic, context: int) -> str:
    """The per-component table (GB read per token, by storage kind)."""
    head = ["component", "counted", *KINDS, "per token"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(KINDS) + 1)]
    for r in t.rows(context):
        cells = [size(r.per_token[k]) if r.per_token[k] else "-" for k in KINDS]
        lines.append(
            f"| {r.component} | {r.rule} | " + " | ".join(cells) + f" | {size(r.per_token_total)} |"
        )
    total = bytes_per_token(t, context)
    lines.append("| **total** | | " + " | ".join("" for _ in KINDS) + f" | **{size(total)}** |")
    return "\n".join(lines)


def summary(
    t: Traffic,
    context: int,
    bandwidth_gbs: float | None,
    accepted_len: float | None = None,
    drafts: int = 0,
) -> dict[str, Any]:
    """Plain data for --json and for bench's report."""
    total = bytes_per_token(t, context)
    out: dict[str, Any] = {
        "model": t.model,
        "quantisation": t.quant,
        "context": context,
        "kv_dtype": t.kv_dtype,
        "bytes_per_token": total,
        "components": [
            {
                "component": r.component,
                "counted": r.rule,
                "tensors": r.tensors,
                "stored_bytes": r.stored_total,
                "bytes_per_token": r.per_token_total,
                "by_kind": r.per_token,
            }
            for r in t.rows(context)
        ],
        "mtp_bytes_per_draft": t.mtp_per_draft,
        "notes": list(t.notes),
        "bandwidth_gbs": bandwidth_gbs,
        "roofline_tok_s": roofline_tok_s(bandwidth_gbs, total) if bandwidth_gbs else None,
    }
    if bandwidth_gbs and accepted_len and drafts:
        out["mtp"] = {
            "accepted_len": accepted_len,
            "drafts": drafts,
            "step_bytes": pass_bytes(t, 1 + drafts, context, drafts),
            "roofline_tok_s": mtp_roofline(t, bandwidth_gbs, context, accepted_len, drafts),
            "ideal_tok_s": roofline_tok_s(bandwidth_gbs, total) * accepted_len,
        }
    return out
