"""build-vllm inside pixi: vLLM's requirements are checked against pixi.toml, not pip-installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.test_build import PINS, PY, SparkHost
from turbo import build, toolchain
from turbo.console import TaskLog
from turbo.errors import TurboError


def _plan(env: dict[str, str], **opts: object) -> build.BuildPlan:
    h = SparkHost(fake_env=env)
    tc = toolchain.quick_probe(PINS, python=PY, target="cuda", host=h)
    return build.make_plan(build.BuildOptions(python=PY, **opts), PINS, h, tc)  # type: ignore[arg-type]


def test_inside_pixi_nothing_is_pip_installed_but_vllm_itself() -> None:
    plan = _plan({"CUDA_HOME": "/spark/env", "PIXI_ENVIRONMENT_NAME": "default"})
    names = [s.name for s in plan.steps]
    assert "check requirements" in names
    assert not any(n.startswith("install") and "requirements" in n for n in names)
    pip_steps = [s.argv for s in plan.steps if s.argv and "pip" in s.argv]
    assert pip_steps and all("--no-deps" in argv for argv in pip_steps)
    assert "no network" in build.render_plan(plan)


def test_outside_pixi_or_with_pip_deps_pip_installs_them() -> None:
    outside = [s.name for s in _plan({"CUDA_HOME": "/spark/env"}).steps]
    forced = [s.name for s in _plan({"PIXI_ENVIRONMENT_NAME": "default"}, pip_deps=True).steps]
    for names in (outside, forced):
        assert "install build requirements" in names and "install runtime requirements" in names
        assert "check requirements" not in names


def _tree(tmp_path: Path, lines: str) -> Path:
    req = tmp_path / "tree" / "requirements"
    req.mkdir(parents=True)
    (req / "common.txt").write_text(lines)
    (req / "cuda.txt").write_text("-r common.txt\ntorch==2.9.1\n")
    (req / "build.txt").write_text("cmake>=3.26.1\n")
    return tmp_path / "tree"


def _checked(tmp_path: Path, lines: str) -> dict[str, object]:
    plan = _plan({"PIXI_ENVIRONMENT_NAME": "default"})
    plan.src_dir = _tree(tmp_path, lines)
    plan.options = build.BuildOptions(python=sys.executable, target="cuda")
    with TaskLog("t", tmp_path) as log:
        return build.check_requirements(plan, log, lambda _: None)


def test_declared_and_installed_requirements_pass(tmp_path: Path) -> None:
    # packaging is declared in pixi.toml and installed here (turbo depends on it).
    got = _checked(tmp_path, "packaging>=20\n")
    assert got["differences"] == [] and got["checked"] == 1


def test_a_difference_is_named_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(TurboError) as err:
        _checked(tmp_path, "packaging>=999\nnot-a-declared-package>=1\n")
    line = err.value.line()
    assert "\n" not in line
    assert "not declared in pixi.toml: not-a-declared-package" in line
    assert "installed outside the tree's range: packaging" in line and "needs >=999" in line
    assert "--pip-deps" in line


def test_second_build_is_a_no_op_without_network(
    vllm_sdist_pristine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pixi run serve` depends on build-vllm: once built, it must not need the network."""
    import socket

    from turbo import stamp

    host = SparkHost(fake_env={"PIXI_ENVIRONMENT_NAME": "default", "CUDA_HOME": "/spark/env"})
    opts = build.BuildOptions(python=PY, src=vllm_sdist_pristine)
    plan = build.make_plan(opts, PINS, host)
    stamp.write_stamp({"result": "ok", "inputs": plan.inputs,
                       "inputs_digest": stamp.inputs_digest(plan.inputs),
                       "vllm_version": None, "finished_at": "earlier"})

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network used: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    said: list[str] = []
    result = build.build(opts, PINS, host=host, echo=said.append)
    assert result.noop and "nothing to do" in said[-1]


def test_toolchain_check_stops_on_conda_forge_layout_without_the_view(tmp_path: Path) -> None:
    from tests.test_cuda_layout import conda_forge_prefix

    prefix = conda_forge_prefix(tmp_path, "sbsa-linux")
    host = SparkHost(fake_env={"CUDA_HOME": str(prefix)})
    with pytest.raises(TurboError) as err:
        toolchain.check_toolchain(PINS, python=PY, target="cuda", host=host)
    line = err.value.line()
    assert "cuda headers" in line and "include/cuda_runtime.h" in line
    assert str(prefix / "targets" / "sbsa-linux" / "include") in line
