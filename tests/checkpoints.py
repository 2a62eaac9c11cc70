"""Checkpoints made in the test: real safetensors files (8-byte header length, JSON header,
data) with the tensor names, dtypes and shapes of ModelOpt NVFP4 Qwen-style checkpoints.

numpy has no bf16 or e4m3, so the files are written here byte for byte (the data is zeros:
only the headers matter to the roofline) and read back with the safetensors library in the
tests to prove they are valid. ``sparse=True`` writes the data as a hole (for the full-size
Qwen3-Next headers used by docs/serve.md's estimate: tens of GB that take no disk)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from math import prod
from pathlib import Path

from turbo.roofline import DTYPE_BYTES

Spec = tuple[str, str, tuple[int, ...]]  # name, safetensors dtype, shape


def write_safetensors(path: Path, tensors: Iterable[Spec], sparse: bool = False) -> int:
    header: dict[str, object] = {}
    offset = 0
    for name, dtype, shape in tensors:
        n = prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        if sparse:
            f.truncate(8 + len(raw) + offset)
        else:
            f.write(bytes(offset))
    return offset


def linear(name: str, out_f: int, in_f: int, nvfp4: bool) -> list[Spec]:
    """One linear layer as ModelOpt stores it: NVFP4 = packed 4-bit data (two per byte), one
    e4m3 scale per 16 inputs, fp32 global weight and input scales; else bf16."""
    if not nvfp4:
        return [(f"{name}.weight", "BF16", (out_f, in_f))]
    return [
        (f"{name}.weight", "U8", (out_f, in_f // 2)),
        (f"{name}.weight_scale", "F8_E4M3", (out_f, in_f // 16)),
        (f"{name}.weight_scale_2", "F32", ()),
        (f"{name}.input_scale", "F32", ()),
    ]


def linear_bytes(out_f: int, in_f: int, nvfp4: bool) -> int:
    """What :func:`linear` stores, by construction: 0.5 B + 1/16 B per weight + 8 B, or 2 B."""
    if not nvfp4:
        return 2 * out_f * in_f
    return out_f * in_f // 2 + out_f * in_f // 16 + 4 + 4


def make_checkpoint(
    root: Path,
    config: Mapping[str, object],
    tensors: list[Spec],
    quant: Mapping[str, object] | None = None,
    shards: int = 1,
    sparse: bool = False,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    if quant is not None:
        (root / "hf_quant_config.json").write_text(json.dumps(quant))
    per = -(-len(tensors) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = tensors[i * per : (i + 1) * per]
        write_safetensors(root / name, part, sparse)
        weight_map.update({t[0]: name for t in part})
    (root / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return root


def qwen3_next(
    cfg: Mapping[str, int | bool], exclude: list[str], mtp: bool = True
) -> list[Spec]:
    """Tensor names and shapes of a Qwen3-Next checkpoint (vLLM 0.16's and transformers'
    layout) for ``cfg``, NVFP4 except what ``exclude`` (ModelOpt globs) names."""
    from fnmatch import fnmatchcase

    h, e = int(cfg["hidden_size"]), int(cfg["num_experts"])
    heads, kvh, hd = (int(cfg[k]) for k in ("num_attention_heads", "num_key_value_heads",
                                             "head_dim"))
    kh, vh = int(cfg["linear_num_key_heads"]), int(cfg["linear_num_value_heads"])
    kd, vd = int(cfg["linear_key_head_dim"]), int(cfg["linear_value_head_dim"])
    moe, shared = int(cfg["moe_intermediate_size"]), int(cfg["shared_expert_intermediate_size"])
    vocab, kernel = int(cfg["vocab_size"]), int(cfg["linear_conv_kernel_dim"])
    interval = int(cfg["full_attention_interval"])

    def lin(name: str, out_f: int, in_f: int) -> list[Spec]:
        return linear(name, out_f, in_f, not any(fnmatchcase(name, p) for p in exclude))

    def layer(p: str, full: bool) -> list[Spec]:
        out: list[Spec] = [(f"{p}.input_layernorm.weight", "BF16", (h,)),
                           (f"{p}.post_attention_layernorm.weight", "BF16", (h,))]
        if full:
            a = f"{p}.self_attn"
            out += lin(f"{a}.q_proj", heads * hd * 2, h)  # query and its output gate
            out += lin(f"{a}.k_proj", kvh * hd, h) + lin(f"{a}.v_proj", kvh * hd, h)
            out += lin(f"{a}.o_proj", h, heads * hd)
            out += [(f"{a}.q_norm.weight", "BF16", (hd,)), (f"{a}.k_norm.weight", "BF16", (hd,))]
        else:
            a = f"{p}.linear_attn"
            out += lin(f"{a}.in_proj_qkvz", 2 * kh * kd + 2 * vh * vd, h)
            out += lin(f"{a}.in_proj_ba", 2 * vh, h)
            out += [(f"{a}.conv1d.weight", "BF16", (2 * kh * kd + vh * vd, 1, kernel)),
                    (f"{a}.dt_bias", "BF16", (vh,)), (f"{a}.A_log", "F32", (vh,)),
                    (f"{a}.norm.weight", "F32", (vd,))]
            out += lin(f"{a}.out_proj", h, vh * vd)
        m = f"{p}.mlp"
        out += lin(f"{m}.gate", e, h)
        for i in range(e):
            x = f"{m}.experts.{i}"
            out += lin(f"{x}.gate_proj", moe, h) + lin(f"{x}.up_proj", moe, h)
            out += lin(f"{x}.down_proj", h, moe)
        s = f"{m}.shared_expert"
        out += lin(f"{s}.gate_proj", shared, h) + lin(f"{s}.up_proj", shared, h)
        out += lin(f"{s}.down_proj", h, shared) + lin(f"{m}.shared_expert_gate", 1, h)
        return out

    specs: list[Spec] = [("model.embed_tokens.weight", "BF16", (vocab, h))]
    for i in range(int(cfg["num_hidden_layers"])):
        specs += layer(f"model.layers.{i}", (i + 1) % interval == 0)
    specs += [("model.norm.weight", "BF16", (h,))]
    if not cfg.get("tie_word_embeddings"):
        specs += lin("lm_head", vocab, h)
    if mtp:
        # Stored bf16 although the exclude list does not name it (facts.md section 3).
        specs += linear("mtp.fc", h, 2 * h, nvfp4=False)
        specs += [("mtp.pre_fc_norm_embedding.weight", "BF16", (h,)),
                  ("mtp.pre_fc_norm_hidden.weight", "BF16", (h,)),
                  ("mtp.norm.weight", "BF16", (h,))]
        specs += layer("mtp.layers.0", True)
    return specs


# Qwen3-Next-80B-A3B's config.json fields that shape its tensors (the published config;
# profiles.toml [model_shape] carries the attention/state subset). Used to synthesise the
# headers behind docs/serve.md's roofline estimate until it runs on the real checkpoint.
QWEN3_NEXT_80B: dict[str, int | bool] = {
    "hidden_size": 2048, "vocab_size": 151936, "num_hidden_layers": 48,
    "full_attention_interval": 4, "num_attention_heads": 16, "num_key_value_heads": 2,
    "head_dim": 256, "num_experts": 512, "num_experts_per_tok": 10,
    "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512,
    "linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_key_head_dim": 128,
    "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "tie_word_embeddings": False,
}
