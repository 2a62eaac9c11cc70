"""Patch 0002: vLLM's own ModelOpt ``is_layer_excluded`` keeps the unquantised MTP branch
(``mtp.fc``) out of NVFP4 and still quantises what it should.

Importing vllm needs torch and all of requirements/common.txt, far too heavy for the CPU test
machines. So the functions are loaded in isolation: their source is cut with ``ast`` from the
patched (and the pristine) tree and executed in a namespace holding exactly what they use
(``fnmatch``, ``Mapping``, ``MappingProxyType`` and vLLM's own ``is_layer_skipped``, cut the
same way from quant_utils.py). Nothing is re-implemented: a change to either file changes what
runs here.
"""

from __future__ import annotations

import ast
import json
import os
import textwrap
from collections.abc import Callable, Mapping
from fnmatch import fnmatch
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from turbo import patching
from turbo.pins import load_pins

MODELOPT = "vllm/model_executor/layers/quantization/modelopt.py"
QUANT_UTILS = "vllm/model_executor/layers/quantization/utils/quant_utils.py"
MTP_MODEL = "vllm/model_executor/models/qwen3_next_mtp.py"
DATA = Path(__file__).parent / "data" / "qwen3_next_nvfp4_exclude_modules.json"


def _source_of(tree: ast.Module, text: str, name: str, cls: str | None = None) -> str:
    body = tree.body
    if cls is not None:
        body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
    for node in body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            seg = ast.get_source_segment(text, node)
            assert seg is not None
            return seg
    raise LookupError(name)


def load_is_layer_excluded(root: Path) -> Callable[[Any, str], bool]:
    """vLLM's ModelOptQuantConfigBase.is_layer_excluded (and helpers) from ``root``."""
    ns: dict[str, Any] = {"fnmatch": fnmatch, "Mapping": Mapping,
                          "MappingProxyType": MappingProxyType}
    qu = (root / QUANT_UTILS).read_text()
    exec(compile(_source_of(ast.parse(qu), qu, "is_layer_skipped"), QUANT_UTILS, "exec"), ns)
    mo = (root / MODELOPT).read_text()
    mod = ast.parse(mo)
    if "def _mtp_branch_excluded" in mo:  # only the patched file has the helper
        exec(compile(_source_of(mod, mo, "_mtp_branch_excluded"), MODELOPT, "exec"), ns)
    method = _source_of(mod, mo, "is_layer_excluded", cls="ModelOptQuantConfigBase")
    exec(compile(textwrap.dedent(method), MODELOPT, "exec"), ns)
    fn: Callable[[Any, str], bool] = ns["is_layer_excluded"]
    return fn


def mtp_packed_mapping(root: Path) -> dict[str, list[str]]:
    text = (root / MTP_MODEL).read_text()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef) and node.name == "Qwen3NextMTP":
            for stmt in node.body:
                if (isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name)
                        and stmt.targets[0].id == "packed_modules_mapping"):
                    value: dict[str, list[str]] = ast.literal_eval(stmt.value)
                    return value
    raise LookupError("packed_modules_mapping")


def checkpoint_excludes() -> list[str]:
    """The model's own hf_quant_config.json when downloaded; else the recorded list."""
    model = Path(os.environ.get("MODEL") or load_pins().model.path)
    real = model / "hf_quant_config.json"
    if real.is_file():
        excludes: list[str] = json.loads(real.read_text())["quantization"]["exclude_modules"]
        return excludes
    recorded: list[str] = json.loads(DATA.read_text())["exclude_modules"]
    return recorded


class Cfg:
    def __init__(self, fn: Callable[[Any, str], bool], excludes: list[str],
                 packed: dict[str, list[str]]) -> None:
        self._fn = fn
        self.exclude_modules = excludes
        self.packed_modules_mapping = packed

    def excluded(self, prefix: str) -> bool:
        return self._fn(self, prefix)


@pytest.fixture(scope="module")
def patched_root(tmp_path_factory: pytest.TempPathFactory, vllm_sdist_pristine: Path) -> Path:
    root = tmp_path_factory.mktemp("modelopt") / "vllm"
    for rel in (MODELOPT, QUANT_UTILS, MTP_MODEL, "CMakeLists.txt",
                "csrc/quantization/fp4/nvfp4_utils.cuh"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((vllm_sdist_pristine / rel).read_bytes())
    patching.apply_series(root, load_pins().vllm.sdist_version)
    return root


def test_checkpoint_list_has_the_mtp_entry_only_for_layers() -> None:
    mtp = [e for e in checkpoint_excludes() if e.startswith("mtp")]
    assert mtp and all(e.startswith("mtp.layers.") for e in mtp)


def test_unpatched_vllm_builds_mtp_fc_as_nvfp4(vllm_sdist_pristine: Path) -> None:
    """The bug, shown with vLLM's unpatched function."""
    cfg = Cfg(load_is_layer_excluded(vllm_sdist_pristine), checkpoint_excludes(),
              mtp_packed_mapping(vllm_sdist_pristine))
    assert not cfg.excluded("mtp.fc")
    assert cfg.excluded("mtp.layers.0.self_attn.qkv_proj")


@pytest.mark.parametrize("mapped", [False, True])
def test_patched_excludes_mtp_branch_and_quantises_the_rest(
    patched_root: Path, vllm_sdist_pristine: Path, mapped: bool
) -> None:
    excludes = checkpoint_excludes()
    if mapped:
        # ModelOpt's apply_vllm_mapper splits "x*" into "x" and "x.*"; both forms must work.
        excludes = [v for e in excludes for v in
                    ((e[:-1], e[:-1] + ".*") if e.endswith("*") and e[-2] != "." else (e,))]
    cfg = Cfg(load_is_layer_excluded(patched_root), excludes, mtp_packed_mapping(patched_root))
    for prefix in ("mtp.fc", "mtp.layers.0.self_attn.qkv_proj", "mtp.layers.0.self_attn.o_proj",
                   "mtp.layers.0.mlp.experts", "mtp.layers.0.mlp.shared_expert.gate_up_proj"):
        assert cfg.excluded(prefix), prefix
    # The routed experts are what NVFP4 quantises in every such checkpoint.
    for prefix in ("model.layers.0.mlp.experts", "model.layers.47.mlp.experts"):
        assert not cfg.excluded(prefix), prefix
    # Outside the MTP branch the patched function decides exactly as vLLM's own.
    before = Cfg(load_is_layer_excluded(vllm_sdist_pristine), excludes,
                 mtp_packed_mapping(vllm_sdist_pristine))
    for prefix in ("lm_head", "model.layers.0.linear_attn.in_proj_qkvz",
                   "model.layers.3.self_attn.qkv_proj", "model.layers.3.self_attn.o_proj",
                   "model.layers.0.mlp.gate", "model.layers.0.mlp.shared_expert.gate_up_proj",
                   "model.layers.0.mlp.shared_expert.down_proj", "model.layers.12.mlp.experts"):
        assert cfg.excluded(prefix) == before.excluded(prefix), prefix


def test_quantised_mtp_checkpoint_keeps_mtp_fc_quantised(patched_root: Path) -> None:
    """A checkpoint that quantises its MTP layers (no mtp.* exclusion) is not overridden."""
    excludes = [e for e in checkpoint_excludes() if not e.startswith("mtp")]
    cfg = Cfg(load_is_layer_excluded(patched_root), excludes, mtp_packed_mapping(patched_root))
    assert not cfg.excluded("mtp.fc")
    assert not cfg.excluded("mtp.layers.0.self_attn.qkv_proj")
