"""Bytes read per decoded token, from the checkpoint itself, and the decode rate they allow.

Single-stream decode is bound by memory bandwidth: every weight a token touches is read once
per token. This module counts them from ``config.json``, the quantisation config and the
safetensors headers (names, dtypes, shapes; never the weights), at their stored size: NVFP4
data (packed 4-bit, ``U8``), e4m3 block scales, fp32 global scales, bf16 for excluded layers.
Per token it counts one embedding row, every dense weight, the MoE's routed top-k of its
experts plus its shared experts, the LM head once, and the per-sequence state: the KV cache
read at the context length and the linear-attention (Gated DeltaNet) state, read and written.

The roofline is bandwidth / bytes per token. With MTP a step reads the weights once for 1 + k
tokens (k drafts) but the MoE touches more distinct experts for more tokens, and the drafts
run the MTP layer and the LM head k times; the accepted length from vLLM's counters turns that
into tokens per second (:func:`pass_bytes`, :func:`mtp_roofline`).

:func:`traffic_of` is the pure function (plain data in, plain data out); :func:`read_checkpoint`
does the reading.
"""

from __future__ import annotations

import fnmatch
import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from turbo.errors import TurboError, UsageError

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
_HEADER_MAX = 100 * 2**20
_LAYER = re.compile(r"\.layers\.(\d+)\.")


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


# ----------------------------------------------------------------------- the pure function
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
    hidden = _int(cfg, "hidden_size")
    num_experts = _int(cfg, "num_experts", "n_routed_experts", "num_local_experts")
    top_k = _int(cfg, "num_experts_per_tok", "moe_topk")
    tied = bool(cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
    if any(_component(x.name) == "routed experts" for x in tensors) and not (num_experts and top_k):
        raise TurboError(
            "config.json",
            "the checkpoint has routed experts but no num_experts / num_experts_per_tok",
            "Check the model directory: the config does not match the weights.",
        )
    rules = {
        "embedding": "one row of the table (vocab rows)",
        "attention": "every weight, every token",
        "linear attention": "every weight, every token",
        "dense MLP": "every weight, every token",
        "routed experts": f"top-{top_k} of {num_experts} experts per layer",
        "shared experts": "every weight, every token",
        "routers": "every weight, every token",
        "norms and other": "every weight, every token",
        "lm head": "the whole matrix, once per token",
        "mtp": "not read by a plain decode step (see MTP)",
    }
    rows: dict[str, Row] = {}
    routed_all = 0.0
    mtp_all: dict[str, float] = {"fixed": 0.0, "routed": 0.0}
    embed_full = 0.0
    for x in tensors:
        comp = _component(x.name)
        row = rows.setdefault(comp, Row(comp, rules[comp]))
        kind = _kind(x)
        row.tensors += 1
        row.stored[kind] += x.nbytes
        if comp == "embedding":
            embed_full += x.nbytes
            rows_in = x.shape[0] if x.shape else 1
            row.per_token[kind] += x.nbytes / max(1, rows_in)
        elif comp == "routed experts":
            routed_all += x.nbytes
            row.per_token[kind] += x.nbytes * top_k / num_experts
        elif comp == "mtp":
            mtp_all["routed" if ".experts." in x.name else "fixed"] += x.nbytes
        else:
            row.per_token[kind] += x.nbytes
    lm_head = rows["lm head"].stored_total if "lm head" in rows else 0.0
    notes: list[str] = []
    if "lm head" not in rows and tied and embed_full:
        row = Row("lm head", "tied to the embedding: the whole table, once per token")
        emb = rows["embedding"]
        for kind in KINDS:
            row.per_token[kind] = emb.stored[kind]
        rows["lm head"] = row
        lm_head = embed_full
        notes.append("LM head tied to the embedding (tie_word_embeddings): read as the head")
    elif "lm head" not in rows and embed_full:
        notes.append("no lm_head tensor and tie_word_embeddings is false: no LM head counted")

    # Per-sequence state, from the layers the checkpoint has.
    attn_layers = _layers_with(tensors, ".self_attn.")
    kv_heads = _int(cfg, "num_key_value_heads", "num_attention_heads")
    heads = _int(cfg, "num_attention_heads")
    head_dim = _int(cfg, "head_dim") or (hidden // heads if heads else 0)
    kv_per_ctx = 2.0 * attn_layers * kv_heads * head_dim * KV_BYTES[kv_dtype]
    gdn_layers = _layers_with(tensors, ".linear_attn.")
    k_heads = _int(cfg, "linear_num_key_heads")
    v_heads = _int(cfg, "linear_num_value_heads")
    k_dim = _int(cfg, "linear_key_head_dim")
    v_dim = _int(cfg, "linear_value_head_dim")
    kernel = _int(cfg, "linear_conv_kernel_dim")
    conv_dim = 2 * k_heads * k_dim + v_heads * v_dim
    per_layer_state = v_heads * k_dim * v_dim + conv_dim * max(0, kernel - 1)
    linear_state = float(gdn_layers * per_layer_state * STATE_BYTES)

    # MTP: each draft runs the MTP layer once (its routed experts top-k) and the LM head.
    mtp_per_draft = 0.0
    mtp_rule = "no MTP weights in the checkpoint"
    if mtp_all["fixed"] or mtp_all["routed"]:
        share = top_k / num_experts if num_experts else 1.0
        mtp_per_draft = mtp_all["fixed"] + mtp_all["routed"] * share + lm_head
        mtp_rule = "per draft: the MTP layer (routed top-k) and the LM head"
    order = [
        "embedding",
        "attention",
        "linear attention",
        "dense MLP",
        "routed experts",
        "shared experts",
        "routers",
        "norms and other",
        "lm head",
    ]
    weight_rows = tuple(rows[c] for c in order if c in rows)
    quant_label = (
        f"{quant.algo}" + (f" (group {quant.group_size})" if quant.group_size else "")
        if quant
        else "none (unquantised)"
    )
    if quant and quant.exclude:
        odd = [
            x.name
            for x in tensors
            if _kind(x) == NVFP4 and _excluded(x.name.rsplit(".", 1)[0], quant.exclude)
        ]
        if odd:
            notes.append(f"{len(odd)} tensors quantised although excluded, e.g. {odd[0]}")
    return Traffic(
        model=model,
        quant=quant_label,
        weight_rows=weight_rows,
        routed_all=routed_all,
        top_k=top_k,
        num_experts=num_experts,
        lm_head=lm_head,
        kv_per_context_token=kv_per_ctx,
        kv_dtype=kv_dtype,
        linear_state=linear_state,
        mtp_per_draft=mtp_per_draft,
        mtp_rule=mtp_rule,
        notes=tuple(notes),
    )


def _excluded(module: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(module, p) for p in patterns)


# ----------------------------------------------------------------------- reading
def read_header(path: Path) -> list[Tensor]:
    """The tensor table of one safetensors file: 8-byte length, then JSON; data untouched."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > _HEADER_MAX:
                raise ValueError(f"header length {n} is implausible")
            meta = json.loads(f.read(n))
        size = path.stat().st_size
    except (OSError, ValueError) as exc:
        raise TurboError(
            str(path), f"is not a readable safetensors file ({exc})", "Re-fetch the model."
        ) from exc
    if not isinstance(meta, dict):
        raise TurboError(str(path), "has a header that is not a JSON object", "Re-fetch it.")
    out: list[Tensor] = []
    end = 0
    for name, info in meta.items():
        if name == "__metadata__":
            continue
        try:
            dtype = str(info["dtype"])
            shape = tuple(int(d) for d in info["shape"])
            begin, stop = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TurboError(
                str(path), f"tensor {name!r} has a malformed entry", "Re-fetch it."
            ) from exc
        out.append(Tensor(name, dtype, shape, stop - begin))
        end = max(end, stop)
    if 8 + n + end > size:
        raise TurboError(
            str(path),
            f"is truncated ({size} bytes, its header says {8 + n + end})",
            "Re-fetch the model (`invoke fetch-model --verify`).",
        )
    return out


def _inside(root: Path, name: str) -> Path:
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise TurboError(
            str(root / "model.safetensors.index.json"),
            f"names a shard outside the model directory ({name!r})",
            "Use a checkpoint whose index names files inside it.",
        )
    return path


def read_quant(model_dir: Path, config: Mapping[str, Any]) -> Quant | None:
    """ModelOpt's ``hf_quant_config.json`` or a ``quantization_config`` in config.json."""
    qfile = model_dir / "hf_quant_config.json"
    if qfile.is_file():
        try:
            data = json.loads(qfile.read_text())
            q = data.get("quantization", data)
        except (OSError, ValueError, AttributeError) as exc:
            raise TurboError(str(qfile), f"is not valid JSON ({exc})", "Re-fetch it.") from exc
        source = qfile.name
    elif isinstance(config.get("quantization_config"), Mapping):
        q, source = config["quantization_config"], "config.json quantization_config"
    else:
        return None
    if not isinstance(q, Mapping):
        return None
    exclude = q.get("exclude_modules") or q.get("ignore") or []
    group = q.get("group_size")
    kv = q.get("kv_cache_quant_algo")
    return Quant(
        algo=str(q.get("quant_algo") or q.get("quant_method") or "?"),
        group_size=group if isinstance(group, int) else None,
        exclude=tuple(str(p) for p in exclude if isinstance(p, str)),
        kv_cache_algo=str(kv) if kv else None,
        source=source,
    )


def read_checkpoint(
    model_dir: Path,
) -> tuple[dict[str, Any], Quant | None, list[Tensor]]:
    """config.json, the quantisation config and every shard's tensor headers."""
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise TurboError(
            str(model_dir),
            "has no config.json",
            "Pass --model with a checkpoint directory (`invoke fetch-model` makes one).",
        )
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise TurboError(str(cfg_path), f"is not valid JSON ({exc})", "Re-fetch it.") from exc
    if not isinstance(config, dict):
        raise TurboError(str(cfg_path), "is not a JSON object", "Re-fetch it.")
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted({str(v) for v in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TurboError(str(index), f"is not a valid index ({exc})", "Re-fetch it.") from exc
        shards = [_inside(model_dir, n) for n in names]
    else:
        shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise TurboError(
            str(model_dir), "has no *.safetensors files", "Fetch the model: `invoke fetch-model`."
        )
    tensors = [t for s in shards for t in read_header(s)]
    return config, read_quant(model_dir, config), tensors


def traffic(model_dir: Path, kv_dtype: str = "auto") -> Traffic:
    config, quant, tensors = read_checkpoint(model_dir)
    return traffic_of(config, quant, tensors, kv_dtype, model=str(model_dir))


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


def as_dict(t: Traffic) -> dict[str, Any]:
    return asdict(t)


# ----------------------------------------------------------------------- the command
DEFAULT_CONTEXT = 2048
# MTP rows shown before any server has measured an acceptance: the mtp profile's 2 drafts.
SHOWN_ACCEPTED = (1.5, 2.0, 2.5, 3.0)


def default_kv_dtype() -> str:
    """The serve profiles' --kv-cache-dtype (fp8 on the Spark), else vLLM's "auto"."""
    from turbo.profiles import load_book

    try:
        value = load_book().defaults_args.get("kv-cache-dtype", "auto")
    except TurboError:
        return "auto"
    return str(value) if str(value) in KV_BYTES else "auto"


def bandwidth_lines(bw: Any) -> list[str]:
    """The machine's figures, both shown (a turbo.bandwidth.Bandwidth)."""
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


def render(t: Traffic, context: int, bw: Any, drafts: int = 2) -> str:
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


def command(
    *,
    model: str,
    bandwidth_gbs: float,
    context: int,
    kv_dtype: str,
    as_json: bool,
    measure: bool = True,
) -> str:
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
    if as_json:
        data = summary(t, ctx, bw.used_gbs)
        data["bandwidth"] = asdict(bw) | {"used_gbs": bw.used_gbs, "used": bw.used_source}
        if bw.used_gbs and t.mtp_per_draft:
            data["mtp_rooflines"] = {
                str(acc): mtp_roofline(t, bw.used_gbs, ctx, acc, 2) for acc in SHOWN_ACCEPTED
            }
        return json.dumps(data, indent=2)
    return render(t, ctx, bw)
