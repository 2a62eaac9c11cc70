"""`invoke patches.matrix` against the real sdists of vLLM 0.16.0 and 0.17.0.

The sdists come from the package index once per machine (turbo.sdist's cache, sha256-checked).
The expectations are computed here independently of turbo: each sdist is unpacked whole with
tarfile, every patch of patches/series is tried with `git apply --check` and
`git apply --reverse --check` in that tree, and Applies-To is read from the patch text. The
matrix must agree with git on every cell, and the committed docs/patch-matrix.md must contain
exactly the rows a fresh run renders for these two releases.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from turbo import cuda_archs, patch_intent, patch_matrix, patch_matrix_render, patching, sdist

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ("0.16.0", "0.17.0")
pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("git") is None, reason="needs cmake and git"
)


@pytest.fixture(scope="module")
def archives() -> dict[str, Path]:
    """The two real sdists (downloaded once per machine, then verified from the cache)."""
    return {v: sdist.vllm_sdist(v) for v in VERSIONS}


@pytest.fixture(scope="module")
def unpacked(
    archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    out = {}
    for v, archive in archives.items():
        dest = tmp_path_factory.mktemp(f"full-{v}")
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
        out[v] = dest / f"vllm-{v}"
    return out


@pytest.fixture(scope="module")
def cli_json(archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The real command line, with the index unreachable: cached sdists need no network."""
    env = dict(os.environ)
    env["PIP_INDEX_URL"] = "http://127.0.0.1:9/simple/"  # nothing listens on the discard port
    env["TURBO_HOME"] = str(tmp_path_factory.mktemp("turbo-home"))
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "patches.matrix", "--versions", ",".join(VERSIONS),
         "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "all 2 sdist(s) cached and verified; no download" in proc.stderr
    data: dict = json.loads(proc.stdout)
    return data


def series_patches() -> list[Path]:
    lines = (ROOT / "patches" / "series").read_text().splitlines()
    names = [ln.split("#", 1)[0].strip() for ln in lines]
    return [ROOT / "patches" / n for n in names if n]


def git_check(tree: Path, patch: Path, *, reverse: bool = False) -> tuple[bool, str]:
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(tree.parent))
    argv = ["git", "apply", "--check", *(["-R"] if reverse else []), str(patch)]
    proc = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, check=False)
    return proc.returncode == 0, proc.stderr


def releases_named(patch: Path) -> list[str]:
    head = patch.read_text().split("\ndiff --git ", 1)[0]
    line = next(ln for ln in head.splitlines() if ln.startswith("Applies-To:"))
    return [w for w in line.split(":", 1)[1].split() if re.fullmatch(r"\d+(\.\d+)+", w)]


def test_states_agree_with_git_apply(cli_json: dict, unpacked: dict[str, Path]) -> None:
    rows = {r["version"]: r for r in cli_json["rows"]}
    assert sorted(rows) == sorted(VERSIONS)
    seen_states = set()
    for version, tree in unpacked.items():
        for patch in series_patches():
            cell = rows[version]["patches"][patch.name]
            fwd, err = git_check(tree, patch)
            rev, _ = git_check(tree, patch, reverse=True)
            assert cell["forward"] == fwd, (version, patch.name)
            assert cell["reverse"] == (rev and not fwd), (version, patch.name)
            named = releases_named(patch)
            key = tuple(int(x) for x in version.split("."))
            if not named or key < min(tuple(int(x) for x in n.split(".")) for n in named):
                want = "not-for-this-ref"
            elif fwd:
                want = "upstream" if cell["intent"] else "applies"
            elif rev or cell["intent"]:
                want = "upstream"
            else:
                want = "conflicts"
            assert cell["state"] == want, (version, patch.name, cell)
            seen_states.add(want)
            if not fwd:
                # git names the file and the line of the hunk; the matrix names the same hunk.
                m = re.search(r"patch failed: (.+):(\d+)", err)
                if m:
                    assert m.group(1) in cell["conflict"]
                    assert f"@@ -{m.group(2)}," in cell["conflict"], (cell["conflict"], err)
    # The two releases exercise every state but "upstream" (nothing is upstream yet in 0.17.0).
    assert seen_states >= {"applies", "conflicts", "not-for-this-ref"}
    # What the issue expects to see: 0.16.0 takes 0001-0003; 0.17.0 already has 0004's fix
    # (the reverse applies) and 0003 no longer applies.
    names = [p.name for p in series_patches()]
    assert [rows["0.16.0"]["patches"][n]["state"] for n in names[:3]] == ["applies"] * 3
    assert rows["0.17.0"]["patches"][names[3]]["reverse"] is True
    assert rows["0.17.0"]["patches"][names[2]]["state"] == "conflicts"


def test_torch_pins_and_arch_tables(cli_json: dict) -> None:
    rows = {r["version"]: r for r in cli_json["rows"]}
    assert rows["0.16.0"]["torch"] == {"requirements/build.txt": "==2.9.1",
                                       "requirements/cuda.txt": "==2.9.1"}  # fmt: skip
    assert rows["0.17.0"]["torch"]["requirements/cuda.txt"] == "==2.10.0"
    for v in VERSIONS:
        before, after = rows[v]["archs"], rows[v]["archs_patched"]
        assert before["CUDA_ARCHS"] == "12.0"
        assert before["MARLIN_ARCHS"] == before["MARLIN_MOE_ARCHS"] == "8.0+PTX"
        assert before["FP4_ARCHS"] == "12.0f"
        # With the series (0001 applies on both): native sm_120 Marlin, NVFP4 unchanged.
        assert after["MARLIN_ARCHS"] == after["MARLIN_MOE_ARCHS"] == "12.0"
        assert after["FP4_ARCHS"] == "12.0f" and after["CUDA_ARCHS"] == "12.0"


@pytest.mark.skipif(shutil.which("cpp") is None, reason="0003's intent check needs cpp")
def test_intent_checks_turn_true_when_the_series_is_applied(cli_json: dict) -> None:
    """Red then green on the same release: each intent check is False on pristine 0.16.0 and
    True once the patch is applied, so "upstream (own fix)" on later releases means the
    check saw the fix, not that it cannot see anything."""
    cells = {r["version"]: r["patches"] for r in cli_json["rows"]}["0.16.0"]
    for name in [p.name for p in series_patches()][:3]:
        assert cells[name]["intent"] is False, (name, cells[name]["intent_detail"])
        assert cells[name]["intent_after"] is True, name


def test_committed_doc_has_the_rows_of_a_fresh_run(cli_json: dict) -> None:
    doc = (ROOT / "docs" / "patch-matrix.md").read_text()
    matrix = patch_matrix.Matrix(
        cli_json["arch_list"], cli_json["cuda_version"], cli_json["series"],
        [patch_matrix.Row(**{**r, "patches": {n: patch_matrix.Cell(**c)
                                             for n, c in r["patches"].items()}})
         for r in cli_json["rows"]],
    )  # fmt: skip
    names = [s["name"] for s in matrix.series]
    for row in matrix.rows:
        assert patch_matrix_render.state_row(row, names) in doc.splitlines(), row.version
        assert patch_matrix_render.arch_row(row) in doc.splitlines(), row.version
    releases = re.findall(r"^\| (\d+\.\d+\.\d+) \| \d", doc, flags=re.MULTILINE)
    assert len(set(releases)) >= 10
    assert "3b30e6150777" in doc and "0.16.0rc2.dev236" in doc


def test_helpers_are_found_by_name_in_each_tree(unpacked: dict[str, Path], tmp_path: Path) -> None:
    """Releases rename their CMake helpers (0.28 turned clear_cuda_arches into
    clear_cuda_gencode_flags); the evaluator finds them in the tree's own utils.cmake. With a
    fixed list of names CUDA_ARCHS came out empty for 0.28 and later."""
    tree = Path(shutil.copytree(unpacked["0.16.0"] / "cmake", tmp_path / "t" / "cmake")).parent
    for rel in ("CMakeLists.txt", "cmake/utils.cmake"):
        text = (unpacked["0.16.0"] / rel).read_text()
        assert "clear_cuda_arches" in text
        (tree / rel).write_text(text.replace("clear_cuda_arches", "clear_cuda_gencode_flags"))
    rep = cuda_archs.resolve(tree, "12.1a")
    assert rep.cuda_archs == ("12.0",)
    assert "clear_cuda_gencode_flags" in cuda_archs.arch_helpers(tree / "cmake" / "utils.cmake")


def test_newer_release_on_demand() -> None:
    """0.33.0 chooses Marlin lists by CUDA version and family suffix; evaluated, not matched.
    Runs where that sdist is cached (`invoke patches.matrix --all` caches it)."""
    path = sdist.cached_sdist("0.33.0")
    if path is None:
        pytest.skip("vllm-0.33.0 sdist not cached on this machine")
    row = patch_matrix.evaluate_release("0.33.0", path, patching.load_series())
    assert row.archs["CUDA_ARCHS"] == "12.0"
    assert row.archs["MARLIN_ARCHS"] == "12.0f"  # "8.0+PTX;12.0f" on CUDA >= 13
    assert row.archs["FP4_SM120_ARCHS"] == "12.0f"
    assert patch_intent.native_sm12x(("12.0f",))


def test_bad_versions_are_one_clear_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "patches.matrix", "--versions", "0.16.0,1.0rc1"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "1.0rc1 is not a final release number" in proc.stderr
    both = subprocess.run(
        [sys.executable, "-m", "invoke", "patches.matrix", "--versions", "0.16.0", "--all"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert both.returncode == 2 and "exclude each other" in both.stderr


def test_a_moved_file_is_named_in_the_conflict(unpacked: dict[str, Path], tmp_path: Path) -> None:
    """0.20.0 moved nvfp4_utils.cuh under csrc/libtorch_stable/; whoever refreshes 0003 is told
    where it went (same move done here on the real 0.16.0 file)."""
    src = unpacked["0.16.0"]
    tree = tmp_path / "vllm-0.16.0"
    old = "csrc/quantization/fp4/nvfp4_utils.cuh"
    new = tree / "csrc/libtorch_stable/quantization/fp4/nvfp4_utils.cuh"
    new.parent.mkdir(parents=True)
    shutil.copy(src / old, new)
    shutil.copy(src / "CMakeLists.txt", tree / "CMakeLists.txt")
    shutil.copytree(src / "cmake", tree / "cmake")
    patch = next(p for p in patching.load_series() if p.name.startswith("0003"))
    cell = patch_matrix._cell(patch, "0.16.0", tree, patch_intent.TreeFacts(tree))
    assert cell.state == "conflicts"
    assert cell.conflict is not None
    assert f"file {old}: No such file or directory" in cell.conflict
    assert "csrc/libtorch_stable/quantization/fp4/nvfp4_utils.cuh" in cell.conflict


def test_doc_is_written_only_where_allowed(archives: dict[str, Path], tmp_path: Path) -> None:
    """--doc writes a new file, may rewrite its own, and refuses (before any work) to replace
    a file it did not write."""
    env = dict(os.environ, PIP_INDEX_URL="http://127.0.0.1:9/simple/",
               TURBO_HOME=str(tmp_path / "home"))  # fmt: skip
    foreign = tmp_path / "notes.md"
    foreign.write_text("my notes\n")
    argv = [sys.executable, "-m", "invoke", "patches.matrix", "--versions", "0.16.0", "--doc"]
    refused = subprocess.run([*argv, str(foreign)], cwd=ROOT, env=env, capture_output=True,
                             text=True, check=False)  # fmt: skip
    assert refused.returncode == 1 and "was not written by patches.matrix" in refused.stderr
    assert "[1/1]" not in refused.stderr, "it must refuse before evaluating"
    assert foreign.read_text() == "my notes\n"
    fresh = tmp_path / "out" / "matrix.md"
    for _ in range(2):  # the second run rewrites its own file
        ok = subprocess.run([*argv, str(fresh)], cwd=ROOT, env=env, capture_output=True,
                            text=True, check=False)  # fmt: skip
        assert ok.returncode == 0, ok.stderr
    text = fresh.read_text()
    assert text.startswith(patch_matrix_render.DOC_HEAD)
    assert "| 0.16.0 | 2.9.1 / 2.9.1 | applies | applies | applies | n/a |" in text
