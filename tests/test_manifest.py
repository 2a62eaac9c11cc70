"""pixi.toml is right without pixi: TOML 1.0, pixi's schema, tasks that exist, pins equal."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from typing import Any

import pytest
from invoke import Collection

from tests.conftest import REPO
from turbo.pins import load_pins

# pixi's published manifest schema (v0.77.0), carried with the tests so
# every clone validates against it (reference data, not code).
SCHEMA = REPO / "tests" / "data" / "pixi-manifest-schema-v0.77.0.json"


def load_manifest(text: str | None = None) -> dict[str, Any]:
    return tomllib.loads(text if text is not None else (REPO / "pixi.toml").read_text())


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [e.message for e in validator.iter_errors(manifest)]


def invoke_task_names() -> set[str]:
    import tasks  # the repo root is on sys.path (rootdir conftest)

    ns = tasks.ns
    assert isinstance(ns, Collection)
    return set(ns.task_names)


def nox_session_names() -> set[str]:
    tree = ast.parse((REPO / "noxfile.py").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for deco in node.decorator_list:
                target = deco.func if isinstance(deco, ast.Call) else deco
                if isinstance(target, ast.Attribute) and target.attr == "session":
                    names.add(node.name)
    return names


def task_targets(manifest: dict[str, Any]) -> dict[str, str]:
    """task name -> its cmd string, across the top level and every feature."""
    out: dict[str, str] = {}
    tables = [manifest.get("tasks", {})]
    tables += [f.get("tasks", {}) for f in manifest.get("feature", {}).values()]
    for table in tables:
        for name, spec in table.items():
            cmd = spec if isinstance(spec, str) else spec.get("cmd", "")
            out[name] = cmd if isinstance(cmd, str) else " ".join(cmd)
    return out


def dangling_tasks(manifest: dict[str, Any]) -> list[str]:
    invoke_names, nox_names = invoke_task_names(), nox_session_names()
    bad = []
    for name, cmd in task_targets(manifest).items():
        words = cmd.split()
        if words[:1] == ["invoke"]:
            target = next((w for w in words[1:] if not w.startswith("-")), "")
            if target not in invoke_names:
                bad.append(f"{name} -> invoke {target}")
        elif words[:1] == ["nox"]:
            target = words[words.index("-s") + 1] if "-s" in words else ""
            if target not in nox_names:
                bad.append(f"{name} -> nox -s {target}")
        else:
            bad.append(f"{name} -> neither invoke nor nox: {cmd!r}")
    return bad


def pin_mismatches(manifest: dict[str, Any]) -> list[str]:
    pins = load_pins().toolchain
    deps, pypi = manifest["dependencies"], manifest["pypi-dependencies"]
    torch = pypi["torch"]
    pairs = {
        "python": (deps["python"], f"{pins.python}.*"),
        "cuda-version": (deps["cuda-version"], f"{pins.cuda}.*"),
        "system cuda": (manifest["system-requirements"]["cuda"], pins.cuda),
        "torch version": (torch["version"], f"=={pins.torch}"),
        "torch index": (torch["index"], pins.torch_index),
        "triton": (pypi["triton"], f"=={pins.triton}"),
        "gcc": (deps["gcc"], f"{pins.gcc}.*"),
        "gxx": (deps["gxx"], f"{pins.gcc}.*"),
        "TORCH_CUDA_ARCH_LIST": (manifest["activation"]["env"]["TORCH_CUDA_ARCH_LIST"],
                                 pins.arch_list),
    }
    return [f"{k}: pixi.toml {a!r} != pins {b!r}" for k, (a, b) in pairs.items() if a != b]


def test_requires_pixi_with_task_arg_choices() -> None:
    """Task-arg `choices` (serve) exist since pixi 0.65: older ones reject the manifest."""
    manifest = load_manifest()
    assert manifest["workspace"]["requires-pixi"] == ">=0.65"
    assert any("choices" in a for a in manifest["tasks"]["serve"]["args"])
    first = (REPO / "pixi.toml").read_text().splitlines()[0]
    assert "pixi run serve mtp" in first and "--profile" not in first


def test_manifest_is_toml_1_0() -> None:
    manifest = load_manifest()
    assert manifest["workspace"]["platforms"] == ["linux-aarch64", "linux-64"]
    assert "project" not in manifest, "use [workspace], not the old [project] table"


def test_manifest_validates_against_pixi_schema() -> None:
    assert schema_errors(load_manifest()) == []


def test_schema_rejects_unknown_key() -> None:
    broken = (REPO / "pixi.toml").read_text().replace("[workspace]\n", "[workspace]\nflavour = 1\n")
    errors = schema_errors(load_manifest(broken))
    assert any("flavour" in e for e in errors), errors


def test_every_task_points_at_something_that_exists() -> None:
    assert dangling_tasks(load_manifest()) == []


def test_task_pointing_at_missing_invoke_task_is_caught() -> None:
    broken = (REPO / "pixi.toml").read_text().replace('"invoke verify"', '"invoke verfiy"')
    assert dangling_tasks(load_manifest(broken)) == ["verify -> invoke verfiy"]


def test_required_tasks_present_with_descriptions() -> None:
    tasks_table = load_manifest()["tasks"]
    for name in ["build-vllm", "fetch-model", "serve", "verify", "bench", "doctor", "test",
                 "kernel-tests", "lint"]:
        spec = tasks_table[name]
        assert isinstance(spec, dict) and spec.get("description"), name
    assert set(tasks_table["serve"]["depends-on"]) == {"build-vllm", "fetch-model"}


def test_pins_equal_pins_file() -> None:
    assert pin_mismatches(load_manifest()) == []


def test_torch_pin_drift_is_caught() -> None:
    broken = (REPO / "pixi.toml").read_text().replace('"==2.10.0"', '"==2.9.1"')
    assert any(m.startswith("torch version") for m in pin_mismatches(load_manifest(broken)))


def test_environments_for_cluster_and_dev() -> None:
    manifest = load_manifest()
    assert "ray" in manifest["feature"]["cluster"]["pypi-dependencies"]
    assert set(manifest["environments"]) >= {"cluster", "dev"}


def test_activation_points_triton_at_cuda13_ptxas() -> None:
    env = load_manifest()["activation"]["env"]
    # Triton 3.6 assembles GB10 (sm_12x) code with the Blackwell ptxas this variable names.
    assert env["TRITON_PTXAS_BLACKWELL_PATH"] == "$CONDA_PREFIX/bin/ptxas"
    assert env["TRITON_PTXAS_PATH"] == "$CONDA_PREFIX/bin/ptxas"
    assert env["CUDA_HOME"] == "$CONDA_PREFIX/share/vllm-turbo/cuda"
    assert re.fullmatch(r"\d+\.\d+a", env["TORCH_CUDA_ARCH_LIST"])
