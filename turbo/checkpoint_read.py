"""Read what the roofline needs from a checkpoint directory: ``config.json``, the quantisation
config and every shard's safetensors header (the tensor table; the weights stay unread)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from turbo import contain, safetensors_header
from turbo.errors import TurboError
from turbo.traffic import Quant, Tensor


def read_header(path: Path) -> list[Tensor]:
    """The tensor table of one safetensors file: 8-byte length, then JSON; data untouched."""
    try:
        header = safetensors_header.read(path)
    except OSError as exc:
        raise TurboError(
            str(path), f"is not a readable safetensors file ({exc})", "Re-fetch the model."
        ) from exc
    except safetensors_header.BadHeader as exc:
        raise TurboError(str(path), str(exc), "Re-fetch the model.") from exc
    if header.expected_size > header.size:
        raise TurboError(
            str(path),
            f"is truncated ({header.size} bytes, its header says {header.expected_size})",
            "Re-fetch the model (`invoke fetch-model --verify`).",
        )
    return [Tensor(t.name, t.dtype, t.shape, t.nbytes) for t in header.tensors]


def _inside(root: Path, name: str) -> Path:
    index = root / "model.safetensors.index.json"
    fix = "Use a checkpoint whose index names files inside it."
    try:
        return contain.inside(root, name, source=str(index), fix=fix)
    except contain.Escape:
        raise TurboError(
            str(index), f"names a shard outside the model directory ({name!r})", fix
        ) from None


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
