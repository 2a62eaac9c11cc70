"""Count a checkpoint's bytes per decoded token from its config, quantisation config and tensor
headers (names, dtypes, shapes; never the weights), at their stored size.

Per token it counts one embedding row, every dense weight, the MoE's routed top-k of its
experts plus its shared experts, the LM head once, and the per-sequence state: the KV cache
read at the context length and the linear-attention (Gated DeltaNet) state, read and written.
The MTP module is counted apart: a plain decode step does not read it, a draft step does.

:func:`traffic_of` is pure: plain data in (:mod:`turbo.traffic`), plain data out.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from turbo.errors import TurboError, UsageError
from turbo.traffic import (
    BF16,
    BLOCK_SCALES,
    GLOBAL_SCALES,
    KINDS,
    KV_BYTES,
    NVFP4,
    OTHER,
    STATE_BYTES,
    Quant,
    Row,
    Tensor,
    Traffic,
)

_LAYER = re.compile(r"\.layers\.(\d+)\.")
EVERY = "every weight, every token"
# The weight rows in the order the table shows them (the MTP module is not one of them).
ORDER = (
    "embedding",
    "attention",
    "linear attention",
    "dense MLP",
    "routed experts",
    "shared experts",
    "routers",
    "norms and other",
    "lm head",
)


def _kind(x: Tensor) -> str:
    leaf = x.name.rsplit(".", 1)[-1]
    if leaf == "weight_scale" and x.dtype.startswith("F8"):
        return BLOCK_SCALES
    if leaf in ("weight_scale_2", "input_scale", "k_scale", "v_scale"):
        return GLOBAL_SCALES
    if x.dtype in ("U8", "I8") and leaf in ("weight", "weight_packed"):
        return NVFP4
    if x.dtype in ("BF16", "F16"):
        return BF16
    return OTHER


def _component(name: str) -> str:
    if name.startswith("mtp.") or ".mtp." in name:
        return "mtp"
    if "embed_tokens" in name:
        return "embedding"
    if name.startswith("lm_head"):
        return "lm head"
    if ".experts." in name or name.endswith(".experts"):
        return "routed experts"
    if ".shared_expert." in name or ".shared_experts." in name:
        return "shared experts"
    if ".mlp.gate." in name or "shared_expert_gate" in name or ".router." in name:
        return "routers"
    if ".linear_attn." in name:
        return "linear attention"
    if ".self_attn." in name:
        return "attention"
    if ".mlp." in name:
        return "dense MLP"
    return "norms and other"


def _cfg(config: Mapping[str, Any]) -> Mapping[str, Any]:
    inner = config.get("text_config")
    return inner if isinstance(inner, Mapping) else config


def _int(cfg: Mapping[str, Any], *keys: str, default: int = 0) -> int:
    for k in keys:
        v = cfg.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return default


def _layers_with(tensors: Sequence[Tensor], part: str) -> int:
    return len(
        {
            m.group(1)
            for x in tensors
            if part in x.name
            and not x.name.startswith("mtp.")
            and (m := _LAYER.search(x.name)) is not None
        }
    )


def _excluded(module: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(module, p) for p in patterns)


def _rules(top_k: int, num_experts: int) -> dict[str, str]:
    """What each component's per-token figure counts, as the table says it."""
    return {
        "embedding": "one row of the table (vocab rows)",
        "attention": EVERY,
        "linear attention": EVERY,
        "dense MLP": EVERY,
        "routed experts": f"top-{top_k} of {num_experts} experts per layer",
        "shared experts": EVERY,
        "routers": EVERY,
        "norms and other": EVERY,
        "lm head": "the whole matrix, once per token",
        "mtp": "not read by a plain decode step (see MTP)",
    }


@dataclass
class _Weights:
    """The weights by component, and the sums the per-token rules need."""

    rows: dict[str, Row] = field(default_factory=dict)
    routed_all: float = 0.0
    mtp_fixed: float = 0.0
    mtp_routed: float = 0.0
    embed_full: float = 0.0


def _weights(tensors: Sequence[Tensor], top_k: int, num_experts: int) -> _Weights:
    rules = _rules(top_k, num_experts)
    w = _Weights()
    for x in tensors:
        comp = _component(x.name)
        row = w.rows.setdefault(comp, Row(comp, rules[comp]))
        kind = _kind(x)
        row.tensors += 1
        row.stored[kind] += x.nbytes
        if comp == "embedding":
            w.embed_full += x.nbytes
            rows_in = x.shape[0] if x.shape else 1
            row.per_token[kind] += x.nbytes / max(1, rows_in)
        elif comp == "routed experts":
            w.routed_all += x.nbytes
            row.per_token[kind] += x.nbytes * top_k / num_experts
        elif comp == "mtp":
            if ".experts." in x.name:
                w.mtp_routed += x.nbytes
            else:
                w.mtp_fixed += x.nbytes
        else:
            row.per_token[kind] += x.nbytes
    return w


def _lm_head(w: _Weights, tied: bool, notes: list[str]) -> float:
    """The LM head's bytes; a head tied to the embedding is read as the whole table."""
    rows = w.rows
    if "lm head" in rows:
        return rows["lm head"].stored_total
    if tied and w.embed_full:
        row = Row("lm head", "tied to the embedding: the whole table, once per token")
        emb = rows["embedding"]
        for kind in KINDS:
            row.per_token[kind] = emb.stored[kind]
        rows["lm head"] = row
        notes.append("LM head tied to the embedding (tie_word_embeddings): read as the head")
        return w.embed_full
    if w.embed_full:
        notes.append("no lm_head tensor and tie_word_embeddings is false: no LM head counted")
    return 0.0


def _kv_per_context_token(cfg: Mapping[str, Any], tensors: Sequence[Tensor], kv: str) -> float:
    """K and V of every full-attention layer the checkpoint has, per token of context."""
    attn_layers = _layers_with(tensors, ".self_attn.")
    kv_heads = _int(cfg, "num_key_value_heads", "num_attention_heads")
    heads = _int(cfg, "num_attention_heads")
    head_dim = _int(cfg, "head_dim") or (_int(cfg, "hidden_size") // heads if heads else 0)
    return 2.0 * attn_layers * kv_heads * head_dim * KV_BYTES[kv]


def _linear_state(cfg: Mapping[str, Any], tensors: Sequence[Tensor]) -> float:
    """The Gated DeltaNet recurrent and conv state of every linear-attention layer."""
    gdn_layers = _layers_with(tensors, ".linear_attn.")
    k_heads = _int(cfg, "linear_num_key_heads")
    v_heads = _int(cfg, "linear_num_value_heads")
    k_dim = _int(cfg, "linear_key_head_dim")
    v_dim = _int(cfg, "linear_value_head_dim")
    kernel = _int(cfg, "linear_conv_kernel_dim")
    conv_dim = 2 * k_heads * k_dim + v_heads * v_dim
    per_layer_state = v_heads * k_dim * v_dim + conv_dim * max(0, kernel - 1)
    return float(gdn_layers * per_layer_state * STATE_BYTES)


def _mtp(w: _Weights, top_k: int, num_experts: int, lm_head: float) -> tuple[float, str]:
    """Bytes per draft: each draft runs the MTP layer once (its routed top-k) and the LM head."""
    if not (w.mtp_fixed or w.mtp_routed):
        return 0.0, "no MTP weights in the checkpoint"
    share = top_k / num_experts if num_experts else 1.0
    return (
        w.mtp_fixed + w.mtp_routed * share + lm_head,
        "per draft: the MTP layer (routed top-k) and the LM head",
    )


def _quant_label(quant: Quant | None) -> str:
    if not quant:
        return "none (unquantised)"
    return f"{quant.algo}" + (f" (group {quant.group_size})" if quant.group_size else "")


def _excluded_but_quantised(quant: Quant | None, tensors: Sequence[Tensor]) -> list[str]:
    if not (quant and quant.exclude):
        return []
    odd = [
        x.name
        for x in tensors
        if _kind(x) == NVFP4 and _excluded(x.name.rsplit(".", 1)[0], quant.exclude)
    ]
    return [f"{len(odd)} tensors quantised although excluded, e.g. {odd[0]}"] if odd else []


def traffic_of(
    config: Mapping[str, Any],
    quant: Quant | None,
    tensors: Sequence[Tensor],
    kv_dtype: str = "auto",
    model: str = "",
) -> Traffic:
    """Bytes per decoded token from a checkpoint's config, quantisation config and tensor
    headers. Pure: plain data in, plain data out."""
    if kv_dtype not in KV_BYTES:
        raise UsageError(
            f"--kv-dtype {kv_dtype}",
            "is not a KV-cache dtype",
            f"Choose one of {sorted(KV_BYTES)}.",
        )
    cfg = _cfg(config)
    num_experts = _int(cfg, "num_experts", "n_routed_experts", "num_local_experts")
    top_k = _int(cfg, "num_experts_per_tok", "moe_topk")
    tied = bool(cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
    if any(_component(x.name) == "routed experts" for x in tensors) and not (num_experts and top_k):
        raise TurboError(
            "config.json",
            "the checkpoint has routed experts but no num_experts / num_experts_per_tok",
            "Check the model directory: the config does not match the weights.",
        )
    w = _weights(tensors, top_k, num_experts)
    notes: list[str] = []
    lm_head = _lm_head(w, tied, notes)
    mtp_per_draft, mtp_rule = _mtp(w, top_k, num_experts, lm_head)
    notes += _excluded_but_quantised(quant, tensors)
    return Traffic(
        model=model,
        quant=_quant_label(quant),
        weight_rows=tuple(w.rows[c] for c in ORDER if c in w.rows),
        routed_all=w.routed_all,
        top_k=top_k,
        num_experts=num_experts,
        lm_head=lm_head,
        kv_per_context_token=_kv_per_context_token(cfg, tensors, kv_dtype),
        kv_dtype=kv_dtype,
        linear_state=_linear_state(cfg, tensors),
        mtp_per_draft=mtp_per_draft,
        mtp_rule=mtp_rule,
        notes=tuple(notes),
    )
