"""The patch engine and the series, against vLLM's real source (the pinned release sdist)."""

from __future__ import annotations

import filecmp
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from turbo import patch_refresh, patching
from turbo.errors import TurboError
from turbo.pins import load_pins

REPO = Path(__file__).resolve().parents[1]
SDIST_REF = load_pins().vllm.sdist_version
PINNED = load_pins().vllm.commit


def tree_digest(root: Path) -> dict[str, str]:
    """Every file's relative path -> sha256 (what `diff -r` compares, plus file presence)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_same_tree(a: Path, b: Path) -> None:
    cmp = filecmp.dircmp(a, b)
    # dircmp is shallow per level; walk it fully and compare contents, not stat data.
    assert tree_digest(a) == tree_digest(b)
    assert not cmp.left_only and not cmp.right_only


def test_series_is_well_formed() -> None:
    series = patching.load_series()
    names = [p.name for p in series]
    assert names == sorted(names), "series order must follow the numbering"
    assert len(names) >= 4
    for p in series:
        assert p.subject and p.applies_to and p.upstream_status, p.name
        text = p.path.read_text()
        assert "Why:" in text, f"{p.name} must say why it exists"
        assert text.startswith("From "), f"{p.name} is not git format-patch output"
    # None touches anything but vLLM's tree (no host toolkit paths).
    for p in series:
        for rel in p.touched():
            assert not rel.startswith("/") and ".." not in rel.split("/")


def test_series_digest_changes_with_any_patch_byte(tmp_path: Path) -> None:
    d = tmp_path / "patches"
    shutil.copytree(patching.series_dir(), d)
    before = patching.series_digest(d)
    assert before == patching.series_digest()
    victim = d / "0002-modelopt-unquantized-mtp-branch.patch"
    victim.write_text(victim.read_text().replace("Why:", "Why :", 1))
    assert patching.series_digest(d) != before


@pytest.mark.parametrize(
    ("declared", "ref", "ok"),
    [
        ("0.16.0", "0.16.0", True),
        ("0.16.0", "0.16.1", False),
        (PINNED, PINNED[:12], True),
        (PINNED[:7], PINNED, True),
        (PINNED, "3b30e61", True),
        (PINNED, "3b30e6", False),  # too short to be a commit
        (PINNED, "89a77b108", False),
    ],
)
def test_ref_matching(declared: str, ref: str, ok: bool) -> None:
    assert patching.ref_matches(declared, ref) is ok


def test_apply_is_idempotent_and_revert_is_byte_exact(
    vllm_sdist_tree: Path, vllm_sdist_pristine: Path
) -> None:
    first = patching.apply_series(vllm_sdist_tree, SDIST_REF)
    assert first.applied == [
        "0001-cmake-native-sm12x-marlin.patch",
        "0002-modelopt-unquantized-mtp-branch.patch",
        "0003-nvfp4-e2m1-turbo-header.patch",
    ]
    assert first.skipped == ["0004-qwen3-next-qkvz-prefix.patch"]
    assert any("skip 0004" in m and PINNED in m for m in first.messages)
    # Applied for real: the files differ from pristine in the intended way.
    cml = (vllm_sdist_tree / "CMakeLists.txt").read_text()
    assert 'cuda_archs_loose_intersection(MARLIN_MOE_ARCHS "8.0+PTX;12.0"' in cml
    header = vllm_sdist_tree / "csrc/quantization/fp4/turbo_e2m1.cuh"
    assert header.read_bytes() == (REPO / "kernels/e2m1.cuh").read_bytes()

    second = patching.apply_series(vllm_sdist_tree, SDIST_REF)
    assert second.applied == [] and second.already_applied == first.applied
    assert any("already applied" in m for m in second.messages)

    patched = tree_digest(vllm_sdist_tree)
    rev = patching.revert_series(vllm_sdist_tree)
    assert rev.reverted == first.applied
    assert_same_tree(vllm_sdist_tree, vllm_sdist_pristine)
    assert patched != tree_digest(vllm_sdist_tree)
    # Revert again: nothing recorded, nothing changes.
    assert "nothing to revert" in patching.revert_series(vllm_sdist_tree).messages[0]


def test_check_and_dry_run_change_nothing(vllm_sdist_tree: Path, vllm_sdist_pristine: Path) -> None:
    rep = patching.check_series(vllm_sdist_tree, SDIST_REF)
    assert len(rep.applied) == 3 and rep.dry_run
    patching.apply_series(vllm_sdist_tree, SDIST_REF, dry_run=True)
    assert_same_tree(vllm_sdist_tree, vllm_sdist_pristine)


def _broken_series(tmp_path: Path) -> Path:
    """A copy of the series whose second patch expects a line vLLM does not have."""
    d = tmp_path / "patches"
    shutil.copytree(patching.series_dir(), d)
    p = d / "0002-modelopt-unquantized-mtp-branch.patch"
    text = p.read_text()
    old = "         # First check exact matching with fused layer support\n"
    assert old in text
    p.write_text(text.replace(old, old.replace("exact", "EXACT")))
    return d


def test_broken_patch_names_patch_file_hunk_and_leaves_tree_unchanged(
    vllm_sdist_tree: Path, vllm_sdist_pristine: Path, tmp_path: Path
) -> None:
    d = _broken_series(tmp_path)
    with pytest.raises(TurboError) as err:
        patching.apply_series(vllm_sdist_tree, SDIST_REF, directory=d)
    line = err.value.line()
    assert "patch 0002-modelopt-unquantized-mtp-branch.patch" in line
    assert "file vllm/model_executor/layers/quantization/modelopt.py" in line
    assert "hunk #2 (@@ -148,6 +168,9 @@" in line
    assert "tree left unchanged" in line
    # Patch 0001 applied cleanly in the trial run, yet the real tree was never touched.
    assert_same_tree(vllm_sdist_tree, vllm_sdist_pristine)
    assert not (vllm_sdist_tree / patching.STATE_FILE).exists()


def test_broken_patch_in_a_git_checkout(tmp_path: Path, vllm_sdist_pristine: Path) -> None:
    """Same all-or-nothing behaviour in a git checkout; the index is untouched by apply."""
    repo = tmp_path / "vllm"
    for rel in ("CMakeLists.txt", "csrc/quantization/fp4/nvfp4_utils.cuh",
                "vllm/model_executor/layers/quantization/modelopt.py"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(vllm_sdist_pristine / rel, repo / rel)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for argv in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "base"]):
        subprocess.run(argv, cwd=repo, env=env, check=True)
    with pytest.raises(TurboError, match=r"hunk #2"):
        patching.apply_series(repo, SDIST_REF, directory=_broken_series(tmp_path))
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, env=env, check=True,
                            capture_output=True, text=True).stdout
    assert status == ""
    patching.apply_series(repo, SDIST_REF)
    patching.revert_series(repo)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, env=env, check=True,
                            capture_output=True, text=True).stdout
    assert status == ""


def test_interrupted_apply_is_repaired_by_revert(
    vllm_sdist_tree: Path, vllm_sdist_pristine: Path
) -> None:
    patching.apply_series(vllm_sdist_tree, SDIST_REF)
    state = vllm_sdist_tree / patching.STATE_FILE
    state.write_text(state.read_text().replace('"status": "applied"', '"status": "applying"'))
    with pytest.raises(TurboError, match="interrupted"):
        patching.apply_series(vllm_sdist_tree, SDIST_REF)
    patching.revert_series(vllm_sdist_tree)
    assert_same_tree(vllm_sdist_tree, vllm_sdist_pristine)


def test_edited_patched_file_blocks_revert_unless_forced(
    vllm_sdist_tree: Path, vllm_sdist_pristine: Path
) -> None:
    patching.apply_series(vllm_sdist_tree, SDIST_REF)
    cml = vllm_sdist_tree / "CMakeLists.txt"
    cml.write_text(cml.read_text() + "# local edit\n")
    with pytest.raises(TurboError, match="edited since"):
        patching.apply_series(vllm_sdist_tree, SDIST_REF)
    with pytest.raises(TurboError, match="pass --force"):
        patching.revert_series(vllm_sdist_tree)
    patching.revert_series(vllm_sdist_tree, force=True)
    assert_same_tree(vllm_sdist_tree, vllm_sdist_pristine)


def test_pinned_commit_selects_every_patch() -> None:
    report = patching.PatchReport(src="", ref=PINNED, action="check")
    chosen = patching.select(patching.load_series(), PINNED, report)
    assert [p.name[:4] for p in chosen] == ["0001", "0002", "0003", "0004"]
    assert report.skipped == []


def test_qwen3_next_patch_targets_create_qkvz_proj(vllm_sdist_pristine: Path,
                                                   tmp_path: Path) -> None:
    """0.16.0 has no create_qkvz_proj (so 0004 is for the pinned commit only), and 0004 turns
    a doubled prefix in a create_qkvz_proj of the shape we expect into the plain prefix.
    This cannot prove it applies to the pinned commit's real file (not fetchable here)."""
    q = (vllm_sdist_pristine / "vllm/model_executor/models/qwen3_next.py").read_text()
    assert "create_qkvz_proj" not in q
    assert 'prefix=f"{prefix}.in_proj_qkvz"' in q  # 0.16.0 builds it directly, once
    shape = tmp_path / "vllm/model_executor/models/qwen3_next.py"
    shape.parent.mkdir(parents=True)
    body = (
        "    def create_qkvz_proj(self, hidden_size, key_dim, value_dim, quant_config, prefix):\n"
        "        return MergedColumnParallelLinear(\n"
        "            input_size=hidden_size,\n"
        "            output_sizes=[sum((key_dim, key_dim, value_dim, value_dim))],\n"
        "            bias=False,\n"
        "            quant_config=quant_config,\n"
        '            prefix=f"{prefix}.in_proj_qkvz",\n'
        "        )\n\n"
    )
    shape.write_text(body)
    patch = patching.series_dir() / "0004-qwen3-next-qkvz-prefix.patch"
    subprocess.run(["git", "apply", str(patch)], cwd=tmp_path, check=True,
                   env={"GIT_CEILING_DIRECTORIES": str(tmp_path.parent), "PATH": "/usr/bin:/bin"})
    assert "            prefix=prefix,\n" in shape.read_text()
    assert "in_proj_qkvz" not in shape.read_text()


def test_e2m1_patch_carries_kernels_header_byte_for_byte() -> None:
    """The file 0003 adds is exactly kernels/e2m1.cuh (parsed from the patch itself)."""
    text = (patching.series_dir() / "0003-nvfp4-e2m1-turbo-header.patch").read_text()
    section = text.split("diff --git a/csrc/quantization/fp4/turbo_e2m1.cuh", 1)[1]
    lines = section.split("\n@@ ", 1)[1].split("\n", 1)[1].split("\n")
    added = []
    for line in lines:
        if line.startswith("+"):
            added.append(line[1:])
        elif line.startswith("\\"):
            continue
        else:
            break
    assert "\n".join(added) + "\n" == (REPO / "kernels/e2m1.cuh").read_text()


def test_generated_patch_is_current(vllm_sdist_pristine: Path) -> None:
    """`invoke patches.refresh` would change nothing (run it after editing kernels/e2m1.cuh)."""
    assert patch_refresh.refresh(vllm_sdist_pristine, SDIST_REF, check=True) == []


def test_refresh_rewrites_a_stale_patch(vllm_sdist_pristine: Path, tmp_path: Path) -> None:
    d = tmp_path / "patches"
    shutil.copytree(patching.series_dir(), d)
    name = "0003-nvfp4-e2m1-turbo-header.patch"
    good = patch_refresh.render(name, vllm_sdist_pristine, SDIST_REF, d)
    (d / name).write_bytes(good.replace(b"+// turbo_e2m1", b"+// TURBO_E2M1", 1))
    assert patch_refresh.refresh(vllm_sdist_pristine, SDIST_REF, check=True, directory=d) == [name]
    assert patch_refresh.refresh(vllm_sdist_pristine, SDIST_REF, directory=d) == [name]
    assert (d / name).read_bytes() == good
    assert patch_refresh.refresh(vllm_sdist_pristine, SDIST_REF, directory=d) == []


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """One `invoke` command line, in process: its exit code, stdout and stderr."""
    from invoke import Program

    import tasks

    try:
        Program(namespace=tasks.ns, binary="invoke").run(["invoke", *argv], exit=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def test_patch_commands_print_the_report_as_text_or_json(
    vllm_sdist_tree: Path, vllm_sdist_pristine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands' result on the command line: one report, text or (--json) its data."""
    tree = str(vllm_sdist_tree)
    code, out, _ = _cli(["patches.check", "--src", tree, "--ref", SDIST_REF], capsys)
    head = f"check (dry run): {vllm_sdist_tree.resolve()} @ {SDIST_REF}"
    assert code == 0 and out.splitlines()[0] == head
    assert "  would apply 0001-cmake-native-sm12x-marlin.patch: " in out
    code, out, _ = _cli(["patches.apply", "--src", tree, "--ref", SDIST_REF, "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and (data["action"], data["dry_run"]) == ("apply", False)
    assert len(data["applied"]) == 3 and data["skipped"] == ["0004-qwen3-next-qkvz-prefix.patch"]
    code, out, _ = _cli(["patches.revert", "--src", tree, "--dry-run"], capsys)
    assert code == 0 and "  would restore CMakeLists.txt" in out.splitlines()
    assert (vllm_sdist_tree / patching.STATE_FILE).is_file()  # a dry run changed nothing
    code, out, _ = _cli(["patches.revert", "--src", tree, "--json"], capsys)
    assert code == 0 and json.loads(out)["reverted"] == data["applied"]
    assert_same_tree(vllm_sdist_tree, vllm_sdist_pristine)
    # a patch that does not apply: one line on stderr, exit 1, nothing on stdout
    code, out, err = _cli(["patches.check", "--src", tree, "--ref", PINNED], capsys)
    assert (code, out) == (1, "") and err.startswith("error: patch 0004-qwen3-next-qkvz")
