"""The real build path on a CPU machine, as far as it goes: vLLM 0.16.0 from a local git upstream
(made from the real sdist), fetched at one commit, patched, installed from source with
VLLM_TARGET_DEVICE=empty into a fresh venv with a CPU torch, and imported; then the stamp's
no-op, a rebuild after a patch changes, and (issue #8) a wheel installed on "another node".

`import vllm` is what is checked: vLLM's engine needs requirements/common.txt (transformers,
fastapi, xgrammar, ...), hundreds of MB that CI's budget does not pay for; the CUDA extension
cannot be built without a GPU toolchain for sm_121a and a pinned CUDA torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.build_helpers import fresh_env, make_upstream, torch_base_env
from turbo import build, patching, paths, stamp, wheel
from turbo.errors import TurboError
from turbo.pins import load_pins

PINS = load_pins()
MODELOPT = "vllm/model_executor/layers/quantization/modelopt.py"


@pytest.fixture(scope="module")
def world(vllm_sdist_pristine: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One upstream, one torch base env, one TURBO_HOME and one build for the whole module."""
    base_python = torch_base_env()
    root = tmp_path_factory.mktemp("bworld")
    url, (_, commit) = make_upstream(vllm_sdist_pristine, root)
    series = Path(shutil.copytree(patching.series_dir(), root / "patches"))
    return {"url": url, "commit": commit, "base": base_python, "root": root, "series": series,
            "pristine": vllm_sdist_pristine,
            "home": root / "turbo-home", "python": fresh_env(root / "env", base_python)}


@pytest.fixture
def env(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("TURBO_HOME", str(world["home"]))
    monkeypatch.setattr(patching, "series_dir", lambda: world["series"])
    return world


def _opts(w: dict[str, Any], **kw: Any) -> build.BuildOptions:
    return build.BuildOptions(python=str(w["python"]), target="empty", repo=w["url"],
                              ref=w["commit"], patch_ref=PINS.vllm.sdist_version,
                              runtime_deps=False, **kw)


def _run(python: Path, code: str) -> str:
    return subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True,
                          cwd="/").stdout.strip()


def test_1_builds_from_the_fetched_commit_and_imports(env: dict[str, Any]) -> None:
    out: list[str] = []
    res = build.build(_opts(env), PINS, echo=out.append)
    assert not res.noop
    st = stamp.read_stamp()
    assert st is not None and st["result"] == "ok" and st["commit"] == env["commit"]
    assert st["patch_digest"] == patching.series_digest() and st["target"] == "empty"
    assert st["torch"].startswith("2.") and st["machine"] and st["finished_at"]
    assert st["patches"]["applied"], "the 0.16.0 patches were applied"
    src = paths.vllm_src_dir()
    assert (src / patching.STATE_FILE).exists()
    # The installed vLLM is the patched tree.
    origin = Path(_run(env["python"], "import vllm, os; print(os.path.dirname(vllm.__file__))"))
    installed = (origin.parent / MODELOPT).read_bytes()
    assert installed == (src / MODELOPT).read_bytes() != (env["pristine"] / MODELOPT).read_bytes()
    # Not the pinned commit, so no known describe: setuptools-scm names it by its hash.
    version = _run(env["python"], "import vllm; print(vllm.__version__)")
    assert f"g{env['commit'][:9]}" in version
    assert st["vllm_version"] == _run(env["python"], "import importlib.metadata as m; "
                                      "print(m.version('vllm'))")
    assert any("==> fetch vLLM" in line for line in out)


def test_2_second_run_is_a_noop(env: dict[str, Any]) -> None:
    before = sorted(paths.log_dir().iterdir())
    out: list[str] = []
    res = build.build(_opts(env), PINS, echo=out.append)
    assert res.noop and "nothing to do" in out[-1]
    assert sorted(paths.log_dir().iterdir()) == before, "a no-op runs no step and writes no log"


def test_3_changed_patch_rebuilds_and_repatches(env: dict[str, Any]) -> None:
    old = stamp.read_stamp()
    assert old is not None
    patch = next(p for p in sorted(env["series"].glob("*.patch")) if p.name in
                 old["patches"]["applied"])
    patch.write_text(patch.read_text() + "\n")
    out: list[str] = []
    res = build.build(_opts(env), PINS, echo=out.append)
    assert not res.noop and any("patch_digest" in line for line in out)
    assert any("reverted the previous series" in line for line in out)
    new = stamp.read_stamp()
    assert new is not None and new["result"] == "ok"
    assert new["patch_digest"] != old["patch_digest"] == old["inputs"]["patch_digest"]
    state = json.loads((paths.vllm_src_dir() / patching.STATE_FILE).read_text())
    assert state["series_digest"] == new["patch_digest"]


# --------------------------------------------------------------------------- issue 8: wheels
@pytest.fixture(scope="module")
def made_wheel(world: dict[str, Any]) -> wheel.WheelResult:
    mp = pytest.MonkeyPatch()
    mp.setenv("TURBO_HOME", str(world["home"]))
    mp.setattr(patching, "series_dir", lambda: world["series"])
    try:
        res = wheel.make_wheel(world["root"] / "dist", python=str(world["python"]),
                               echo=lambda s: None)
    finally:
        mp.undo()
    assert isinstance(res, wheel.WheelResult)
    return res


def test_5_wheel_carries_a_correct_stamp(env: dict[str, Any],
                                         made_wheel: wheel.WheelResult) -> None:
    built = stamp.read_stamp()
    assert built is not None
    rec = stamp.read_stamp(made_wheel.stamp_path)
    assert rec is not None and rec["wheel_sha256"] == wheel.sha256_file(made_wheel.wheel)
    for key in ("commit", "patch_digest", "arch_list", "torch", "cuda", "machine", "target"):
        assert rec[key] == built[key]
    with zipfile.ZipFile(made_wheel.wheel) as zf:
        packed = zf.read(MODELOPT)
    assert packed == (paths.vllm_src_dir() / MODELOPT).read_bytes(), "the wheel is the patched tree"


def _other_node(world: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh venv and state dir standing in for a second Spark."""
    monkeypatch.setenv("TURBO_HOME", str(world["root"] / f"{name}-home"))
    return fresh_env(world["root"] / f"{name}-env", world["base"])


def test_6_install_into_a_fresh_env_works_and_is_recorded(
        world: dict[str, Any], made_wheel: wheel.WheelResult,
        monkeypatch: pytest.MonkeyPatch) -> None:
    py = _other_node(world, "node2", monkeypatch)
    rec = wheel.install_wheel(str(made_wheel.wheel), PINS, python=str(py), target="empty",
                              no_deps=True, echo=lambda s: None)
    version = _run(py, "import vllm; print(vllm.__version__)")
    assert f"g{world['commit'][:9]}" in version
    here = stamp.read_stamp()
    assert here is not None and here["result"] == "ok"
    assert here["installed_from"]["sha256"] == rec["wheel_sha256"]
    built = stamp.read_stamp(made_wheel.stamp_path)
    assert built is not None and stamp.compare(built, here) == []


def _forged(made: wheel.WheelResult, tmp: Path, **changes: Any) -> Path:
    w = Path(shutil.copy2(made.wheel, tmp / made.wheel.name))
    rec = stamp.read_stamp(made.stamp_path)
    assert rec is not None
    stamp.write_stamp({**rec, **changes}, wheel.stamp_for(w))
    return w


@pytest.mark.parametrize(("changes", "says"), [
    ({"torch": "2.10.0+cu130"}, "was built for torch 2.10.0+cu130, this environment has"),
    ({"cuda": "13.0"}, "was built for CUDA (torch's) 13.0, this environment has None"),
    ({"machine": "aarch64"}, "was built for machine aarch64"),
])
def test_7_wheel_for_another_env_is_refused(world: dict[str, Any],
                                           made_wheel: wheel.WheelResult, tmp_path: Path,
                                           changes: dict[str, Any], says: str) -> None:
    w = _forged(made_wheel, tmp_path, **changes)
    with pytest.raises(TurboError) as err:
        wheel.check_wheel(w, PINS, python=str(world["python"]), target="empty")
    assert says in err.value.line()


def test_8_cpu_wheel_is_refused_for_a_gb10_install(world: dict[str, Any],
                                                  made_wheel: wheel.WheelResult) -> None:
    with pytest.raises(TurboError, match="was built for target empty, this install asks for cuda"):
        wheel.check_wheel(made_wheel.wheel, PINS, python=str(world["python"]), target="cuda")


def test_9_cuda_wheel_without_gb10_cubin_is_refused(world: dict[str, Any],
                                                   made_wheel: wheel.WheelResult,
                                                   tmp_path: Path) -> None:
    w = _forged(made_wheel, tmp_path, target="cuda",
                cubins={"targets": {"_C.abi3.so": ["sm_90"]}, "gb10": False})
    with pytest.raises(TurboError, match="records no GB10 cubin"):
        wheel.check_wheel(w, PINS, python=str(world["python"]), target="cuda")


def test_10_tampered_wheel_is_refused(world: dict[str, Any], made_wheel: wheel.WheelResult,
                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = _forged(made_wheel, tmp_path)
    with zipfile.ZipFile(w, "a") as zf:
        zf.writestr("vllm/evil.py", "print('changed')\n")
    py = _other_node(world, "node3", monkeypatch)
    with pytest.raises(TurboError, match="does not match its stamp"):
        wheel.install_wheel(str(w), PINS, python=str(py), target="empty", no_deps=True)
    assert stamp.read_stamp() is None, "nothing recorded"
    with pytest.raises(subprocess.CalledProcessError):
        _run(py, "import vllm")


def test_11_wheel_without_stamp_is_refused(made_wheel: wheel.WheelResult,
                                           tmp_path: Path, world: dict[str, Any]) -> None:
    w = Path(shutil.copy2(made_wheel.wheel, tmp_path / made_wheel.wheel.name))
    with pytest.raises(TurboError, match="has no usable stamp beside it"):
        wheel.check_wheel(w, PINS, python=str(world["python"]), target="empty")


# --------------------------------------------------------------------------- resumability
TOY_SETUP = '''
from pathlib import Path
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class record(build_ext):
    def build_extensions(self):
        Path(__file__).with_name("seen_build_temp.txt").write_text(str(self.build_temp))
        for ext in self.extensions:
            out = Path(self.get_ext_fullpath(ext.name))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(b"")


setup(name="toy", version="1", packages=["toy"], ext_modules=[Extension("toy._x", [])],
      cmdclass={"build_ext": record})
'''


def test_regular_install_keeps_the_build_dir_and_editable_does_not(world: dict[str, Any],
                                                                   tmp_path: Path) -> None:
    """Why build-vllm installs vLLM non-editable: only then does DIST_EXTRA_CONFIG's
    [build_ext] build_temp (the persistent CMake directory a re-run resumes in) take effect."""
    proj = tmp_path / "toy"
    (proj / "toy").mkdir(parents=True)
    (proj / "toy" / "__init__.py").write_text("")
    (proj / "setup.py").write_text(TOY_SETUP)
    (proj / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\n'
                                         'build-backend = "setuptools.build_meta"\n')
    keep = tmp_path / "cmake-build"
    cfg = tmp_path / "extra.cfg"
    cfg.write_text(f"[build_ext]\nbuild_temp = {keep}\n")
    py = fresh_env(tmp_path / "env", world["base"])
    env = {**os.environ, "DIST_EXTRA_CONFIG": str(cfg)}
    pip = [str(py), "-m", "pip"]
    flags = ["-q", "--no-build-isolation", "--no-deps"]
    subprocess.run([*pip, "install", *flags, str(proj)], check=True, capture_output=True,
                   env=env)
    assert (proj / "seen_build_temp.txt").read_text() == str(keep)
    subprocess.run([*pip, "wheel", *flags, "-w", str(tmp_path / "w"), str(proj)], check=True,
                   capture_output=True, env=env)
    assert (proj / "seen_build_temp.txt").read_text() == str(keep)
    # The editable install ignores it and builds in a fresh temporary directory.
    subprocess.run([*pip, "install", *flags, "--force-reinstall", "-e", str(proj)], check=True,
                   capture_output=True, env=env)
    assert (proj / "seen_build_temp.txt").read_text() != str(keep)


def test_interrupted_build_leaves_no_ok_stamp_and_resumes(
        env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    real = build.run_step

    def ctrl_c(step: build.Step, *a: Any, **kw: Any) -> list[str]:
        if step.name.startswith("build and install"):
            raise KeyboardInterrupt
        return real(step, *a, **kw)

    monkeypatch.setattr(build, "run_step", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        build.build(_opts(env, force=True), PINS, echo=lambda s: None)
    st = stamp.read_stamp()
    assert st is not None and (st["result"], st["error"]) == ("failed", "interrupted")
    assert st["failed_step"].startswith("build and install")
    state = json.loads((paths.vllm_src_dir() / patching.STATE_FILE).read_text())
    assert state["status"] == "applied", "the tree is never left half-patched"
    monkeypatch.setattr(build, "run_step", real)
    out: list[str] = []
    res = build.build(_opts(env), PINS, echo=out.append)
    assert not res.noop and any("did not finish" in line for line in out)
    st = stamp.read_stamp()
    assert st is not None and st["result"] == "ok"
