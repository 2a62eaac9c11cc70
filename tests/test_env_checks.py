"""doctor's environment rows: pixi version, CUDA headers where the build looks, declared vs
installed versions, vLLM in this pixi environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_cuda_layout import TRIPLES, conda_forge_prefix
from turbo import activation, env_checks
from turbo import vllm_requirements as vr
from turbo.doctor import FAIL, PASS, WARN


@pytest.mark.parametrize(("found", "status"), [
    ("pixi 0.66.1", PASS), ("pixi 0.65.0", PASS), ("pixi 0.64.2", FAIL), (None, WARN)])
def test_pixi_version_against_requires_pixi(found: str | None, status: str) -> None:
    required = activation.load_manifest(REPO / "pixi.toml")["workspace"]["requires-pixi"]
    row = env_checks.check_pixi_version(found, required)
    assert row.status == status, row
    if status != PASS:
        assert ">=0.65" in row.detail + row.fix


@pytest.mark.parametrize("triple", TRIPLES)
def test_cuda_headers_found_through_the_view(tmp_path: Path, triple: str) -> None:
    prefix = conda_forge_prefix(tmp_path, triple)
    env = activation.emulate(prefix, base_env={"PATH": os.environ["PATH"]})
    row = env_checks.check_cuda_layout(env["CUDA_HOME"], str(prefix))
    assert row.status == PASS and f"targets/{triple}/include" in row.detail


@pytest.mark.parametrize("triple", TRIPLES)
def test_raw_conda_forge_prefix_is_named_with_where_the_headers_are(
    tmp_path: Path, triple: str
) -> None:
    prefix = conda_forge_prefix(tmp_path, triple)
    row = env_checks.check_cuda_layout(str(prefix), str(prefix))
    assert row.status == FAIL
    assert "include/cuda_runtime.h" in row.detail and "lib64/libcudart.so" in row.detail
    assert str(prefix / "targets" / triple / "include") in row.detail
    assert "activate-cuda-home.sh" in row.fix


def test_declared_vs_installed() -> None:
    declared = vr.declared(activation.load_manifest(REPO / "pixi.toml"))
    good = {"torch": "2.10.0+cu130", "triton": "3.6.0", "transformers": "4.57.6",
            "huggingface-hub": "0.36.2", "setuptools": "80.9.0",
            "flashinfer-python": "0.6.3", "numba": "0.61.2"}
    assert env_checks.check_declared_versions(declared, good, True).status == PASS
    # What pip and pixi fought over: pip's hub 1.x and setuptools 84 over pixi's.
    bad = {**good, "huggingface-hub": "1.2.0", "setuptools": "84.2.1"}
    row = env_checks.check_declared_versions(declared, bad, True)
    assert row.status == FAIL and "pixi install" in row.fix
    assert "huggingface-hub 1.2.0 (>=0.34,<1.0)" in row.detail
    assert "setuptools 84.2.1" in row.detail and "transformers" not in row.detail
    assert env_checks.check_declared_versions(declared, bad, False).status == WARN


def test_vllm_in_the_cluster_environment() -> None:
    stamp = {"result": "ok", "vllm_version": "0.16.0rc2.dev236+g3b30e6150.cu130"}
    row = env_checks.check_vllm_here("cluster", None, stamp)
    assert row is not None and row.status == FAIL
    assert "pixi run -e cluster install-wheel" in row.fix
    assert "pixi run -e cluster build-vllm" in row.fix
    same = env_checks.check_vllm_here("cluster", stamp["vllm_version"], stamp)
    assert same is not None and same.status == PASS
    assert env_checks.check_vllm_here("default", None, None) is None
