"""Will the profile fit? Weights (from the model manifest) plus overhead plus the KV cache for
one full-length sequence, against the share of unified memory the profile claims.

On a Spark, CPU and GPU share one pool: ``--gpu-memory-utilization`` is a share of all of it,
and whatever other processes hold is not available to vLLM even if the share says so. vLLM
refuses to start when one ``--max-model-len`` sequence does not fit the KV budget, and runs the
machine out of memory when the claimed share exceeds what is free; both are cheaper to catch
here than after a 10-minute start.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turbo.checks import FAIL as FAIL
from turbo.checks import PASS as PASS
from turbo.checks import WARN as WARN
from turbo.errors import TurboError

GB = 1e9
# Bytes per KV element by --kv-cache-dtype; "auto" means the model's bf16.
_KV_BYTES = {"fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "auto": 2, "bfloat16": 2, "float16": 2}
# vLLM keeps the linear-attention (Gated DeltaNet) state in the model dtype.
_STATE_BYTES = 2


@dataclass(frozen=True)
class ModelShape:
    num_hidden_layers: int
    full_attention_interval: int
    num_key_value_heads: int
    head_dim: int
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int

    @property
    def attention_layers(self) -> int:
        return self.num_hidden_layers // self.full_attention_interval

    @property
    def linear_layers(self) -> int:
        return self.num_hidden_layers - self.attention_layers

    def kv_bytes_per_token(self, kv_dtype: str) -> int:
        per = _KV_BYTES.get(kv_dtype, 2)
        return 2 * self.attention_layers * self.num_key_value_heads * self.head_dim * per

    def state_bytes_per_sequence(self) -> int:
        recurrent = (
            self.linear_num_value_heads * self.linear_key_head_dim * self.linear_value_head_dim
        )
        conv_dim = (
            2 * self.linear_num_key_heads * self.linear_key_head_dim
            + self.linear_num_value_heads * self.linear_value_head_dim
        )
        conv = conv_dim * (self.linear_conv_kernel_dim - 1)
        return self.linear_layers * (recurrent + conv) * _STATE_BYTES


def load_shape(model_dir: Path, fallback: Mapping[str, Any]) -> tuple[ModelShape, str]:
    """The shape from the model's config.json when present, else the data file's copy.

    A config.json that is there but unusable (not JSON, not an object, a shape field that is
    not a positive whole number) is refused in one line: vLLM could not load that model
    either, and a zero would divide the estimate by zero."""
    names = ModelShape.__dataclass_fields__
    cfg_path = model_dir / "config.json"
    try:
        text = cfg_path.read_text(encoding="utf-8")
    except OSError:
        return ModelShape(**{k: int(fallback[k]) for k in names}), "profiles.toml [model_shape]"
    try:
        cfg = json.loads(text)
    except ValueError as exc:
        raise _bad_config(cfg_path, f"is not JSON ({exc})") from exc
    if isinstance(cfg, dict) and isinstance(cfg.get("text_config"), dict):
        cfg = cfg["text_config"]
    if not isinstance(cfg, dict):
        raise _bad_config(cfg_path, f"holds a JSON {type(cfg).__name__}, not an object")
    if not all(k in cfg for k in names):
        # Another architecture: its shape is not ours to guess; use the pinned model's.
        return ModelShape(**{k: int(fallback[k]) for k in names}), "profiles.toml [model_shape]"
    for k in names:
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise _bad_config(cfg_path, f"has {k} = {v!r}; it must be a whole number of 1 or more")
    return ModelShape(**{k: int(cfg[k]) for k in names}), str(cfg_path)


def _bad_config(path: Path, why: str) -> TurboError:
    return TurboError(
        f"model config {path}",
        why,
        "Re-fetch it with `invoke fetch-model --verify`, or pass --model with a good copy.",
    )


@dataclass(frozen=True)
class MemFit:
    status: str
    total_gb: float
    available_gb: float | None
    utilization: float
    claimed_gb: float
    weights_gb: float
    overhead_gb: float
    kv_budget_gb: float
    one_sequence_gb: float
    max_model_len: int
    sequences_fit: int
    detail: str
    fix: str


def estimate(
    *,
    weights_bytes: int,
    tensor_parallel: int,
    utilization: float,
    max_model_len: int,
    kv_dtype: str,
    shape: ModelShape,
    total_gb: float,
    available_gb: float | None,
    overhead_gb: float,
    max_safe_utilization: float,
) -> MemFit:
    """The fit of one node's share of the model (weights split evenly by tensor parallelism)."""
    tp = max(1, tensor_parallel)
    claimed = utilization * total_gb
    weights = weights_bytes / tp / GB
    budget = claimed - weights - overhead_gb
    # Attention KV heads are split across TP ranks too (2 heads, TP=2: one each).
    per_token = shape.kv_bytes_per_token(kv_dtype) / tp
    one_seq = (max_model_len * per_token + shape.state_bytes_per_sequence() / tp) / GB
    fit = int(budget // one_seq) if budget > 0 and one_seq > 0 else 0
    head = (
        f"claims {claimed:.1f} of {total_gb:.0f} GB ({utilization:.2f}); weights "
        f"{weights:.1f} + overhead ~{overhead_gb:.0f} leaves {budget:.1f} GB KV, "
        f"{fit} x {max_model_len}-token sequences"
    )
    status, fix = PASS, ""
    if budget < one_seq:
        status = FAIL
        if weights + overhead_gb + one_seq > max_safe_utilization * total_gb:
            fix = (
                f"This machine's {total_gb:.0f} GB cannot hold the weights safely; serve on a "
                "DGX Spark (128 GB) or split it over two (tp2 profiles)."
            )
        else:
            fix = (
                "Raise --set gpu-memory-utilization (<= "
                f"{max_safe_utilization}) or lower --set max-model-len."
            )
    elif available_gb is not None and claimed > available_gb:
        status = WARN
        head += f"; only {available_gb:.1f} GB is free now"
        fix = (
            "Stop other memory users, or lower --set gpu-memory-utilization: unified memory "
            "runs out otherwise."
        )
    elif utilization > max_safe_utilization:
        status = WARN
        fix = (
            f"Above {max_safe_utilization} leaves the OS too little of the unified memory; "
            "expect out-of-memory on first start."
        )
    return MemFit(
        status=status,
        total_gb=total_gb,
        available_gb=available_gb,
        utilization=utilization,
        claimed_gb=claimed,
        weights_gb=weights,
        overhead_gb=overhead_gb,
        kv_budget_gb=budget,
        one_sequence_gb=one_seq,
        max_model_len=max_model_len,
        sequences_fit=fit,
        detail=head,
        fix=fix,
    )
