"""An installed package finds the patch series and the kernel sources without the clone.

The wheel is built from a copy of the project's files (pyproject.toml, README.md, turbo/,
patches/, kernels/) with the test environment's setuptools, installed with pip into a plain
folder, and imported by a Python that sees only that folder and the standard library (``-I
-S``: no site-packages, so no editable install of this clone can answer instead). A wheel of a
pure-Python project builds and installs in a few seconds, so nothing is cached.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from turbo import patching

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "turbo", "patches", "kernels")

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import turbo
from turbo import assets, patching
from turbo.errors import TurboError
try:
    series = patching.load_series()
    out = {"turbo": turbo.__file__, "patches": str(patching.series_dir()),
           "names": [p.name for p in series], "digest": patching.series_digest(),
           "kernels": str(assets.require("kernels"))}
except TurboError as err:
    out = {"error": err.line()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built and installed into a folder of its own: its site dir."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(src)],
        check=True,
    )
    (wheel,) = (root / "dist").glob("vllm_turbo-*.whl")
    site = root / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        check=True,
    )
    return site


def _probe(site: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PROBE, str(site)],
        capture_output=True,
        text=True,
        check=True,
        cwd=site.parent,
    )
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_installed_package_finds_the_series_and_the_kernels(installed: Path) -> None:
    got = _probe(installed)
    assert Path(str(got["turbo"])).is_relative_to(installed), got
    assert got["patches"] == str(installed / "turbo" / "_assets" / "patches")
    assert got["kernels"] == str(installed / "turbo" / "_assets" / "kernels")
    assert got["names"] == [p.name for p in patching.load_series()]
    # the same digest: a build stamp written by an installed package matches the clone's
    assert got["digest"] == patching.series_digest()
    # the repository's copies are the source of truth: shipped byte for byte, none left out
    assert _files(installed / "turbo/_assets/patches") == _files(REPO / "patches")
    assert _files(installed / "turbo/_assets/kernels") == _files(REPO / "kernels")


def test_every_package_under_turbo_is_in_the_wheel(installed: Path) -> None:
    """pyproject.toml lists the packages by hand (it maps patches/ and kernels/ into turbo/):
    a new subpackage missing from that list fails here, not on a user's machine."""
    ours = {p.parent.relative_to(REPO) for p in (REPO / "turbo").rglob("__init__.py")}
    assert ours, "no package found under turbo/"
    for package in ours:
        assert (installed / package / "__init__.py").is_file(), package
    modules = {p.name for p in (REPO / "turbo").glob("*.py")}
    assert modules == {p.name for p in (installed / "turbo").glob("*.py")}


def test_installed_package_without_the_series_refuses_in_one_line(
    installed: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    shutil.copytree(installed, site)
    shutil.rmtree(site / "turbo" / "_assets" / "patches")
    error = str(_probe(site)["error"])
    assert "\n" not in error
    assert error.startswith("patches/ (the GB10 patch series): series is neither in ")
    assert str(site / "turbo" / "_assets" / "patches") in error
    assert "pip install ." in error
