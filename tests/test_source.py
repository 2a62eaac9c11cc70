"""vLLM source at one commit: the real git fetch / verify path against a local upstream made from
vLLM's real 0.16.0 sdist, and --src trees."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.build_helpers import git, make_upstream
from turbo import patching, source
from turbo.errors import TurboError


@pytest.fixture(scope="module")
def upstream(vllm_sdist_pristine: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[str, list[str]]:
    return make_upstream(vllm_sdist_pristine, tmp_path_factory.mktemp("up"))


@pytest.fixture(scope="module")
def clone(upstream: tuple[str, list[str]], tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[source.SourceTree, Path]:
    """One real fetch for the module; tests that only need a checkout copy it."""
    url, (_, wanted) = upstream
    dest = tmp_path_factory.mktemp("clone") / "vllm"
    return source.fetch_commit(url, wanted, dest), dest


def _copy(clone: tuple[source.SourceTree, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(clone[1], tmp_path / "vllm", symlinks=True))


def test_fetches_only_the_commit_and_verifies_head(upstream: tuple[str, list[str]],
                                                  clone: tuple[source.SourceTree, Path]) -> None:
    _, (older, wanted) = upstream
    tree, dest = clone
    assert (tree.kind, tree.commit, tree.ref) == ("git", wanted, wanted)
    assert git(dest, "rev-parse", "HEAD") == wanted
    # Only that commit: a shallow clone whose history holds one commit, not its parent.
    assert (dest / ".git" / "shallow").read_text().split() == [wanted]
    assert git(dest, "rev-list", "--count", "HEAD") == "1"
    assert (dest / "CMakeLists.txt").is_file() and (dest / "csrc").is_dir()
    assert not dest.with_name("vllm.partial").exists()
    # The older commit was never fetched.
    assert older not in git(dest, "rev-list", "--all")


def test_wrong_commit_is_refused_and_leaves_nothing(upstream: tuple[str, list[str]],
                                                    tmp_path: Path) -> None:
    url, _ = upstream
    dest = tmp_path / "vllm"
    with pytest.raises(TurboError) as err:
        source.fetch_commit(url, "0123456789abcdef0123456789abcdef01234567", dest)
    assert "fetching vLLM 0123456789ab" in err.value.what
    assert "not our ref" in err.value.why and "--ref" in err.value.fix
    assert not dest.exists() and not dest.with_name("vllm.partial").exists()


def test_branch_names_and_short_hashes_are_refused(upstream: tuple[str, list[str]],
                                                   tmp_path: Path) -> None:
    url, (_, wanted) = upstream
    for ref in ("main", wanted[:12]):
        with pytest.raises(TurboError, match="full 40-hex commit hash"):
            source.fetch_commit(url, ref, tmp_path / "vllm")


def test_head_mismatch_after_fetch_is_refused(upstream: tuple[str, list[str]],
                                              tmp_path: Path) -> None:
    """A checkout whose HEAD is not the asked commit is never accepted (the verify step)."""
    url, (_, wanted) = upstream
    lied = "f" * 40

    def runner(argv: list[str], cwd: Path) -> str:
        if argv[-2:] == ["origin", lied]:  # fetch the real commit instead of the asked one
            argv = [*argv[:-1], wanted]
        return source.run_git(argv, cwd)

    with pytest.raises(TurboError, match=f"HEAD is {wanted}, expected {lied}"):
        source.fetch_commit(url, lied, tmp_path / "vllm", runner=runner)
    assert not (tmp_path / "vllm").exists()


def test_existing_checkout_is_reused_without_network(upstream: tuple[str, list[str]],
                                                     clone: tuple[source.SourceTree, Path],
                                                     tmp_path: Path) -> None:
    _, (_, wanted) = upstream
    dest = _copy(clone, tmp_path)
    # An unreachable repository proves nothing is fetched the second time.
    tree = source.fetch_commit("file:///nonexistent/repo", wanted, dest)
    assert tree.commit == wanted


def test_moving_a_patched_checkout_to_another_commit_reverts_first(
        upstream: tuple[str, list[str]], clone: tuple[source.SourceTree, Path],
        tmp_path: Path) -> None:
    url, (older, _) = upstream
    dest = _copy(clone, tmp_path)
    report = patching.apply_series(dest, "0.16.0")
    assert report.applied
    reverted: list[Path] = []

    def revert(tree: Path) -> None:
        reverted.append(tree)
        patching.revert_series(tree, force=True)

    tree = source.fetch_commit(url, older, dest, on_tree_change=revert)
    assert reverted == [dest] and tree.commit == older
    assert git(dest, "status", "--porcelain") == ""
    assert not (dest / patching.STATE_FILE).exists()


def test_src_sdist_tree_uses_its_version(vllm_sdist_tree: Path) -> None:
    tree = source.use_tree(vllm_sdist_tree)
    assert (tree.kind, tree.ref, tree.commit) == ("sdist", "0.16.0", None)
    with pytest.raises(TurboError, match=r"is the vLLM 0\.16\.0 sdist, --ref asks for 0\.17\.0"):
        source.use_tree(vllm_sdist_tree, "0.17.0")


def test_src_git_checkout_must_be_at_ref(upstream: tuple[str, list[str]],
                                         clone: tuple[source.SourceTree, Path],
                                         tmp_path: Path) -> None:
    _, (older, wanted) = upstream
    dest = _copy(clone, tmp_path)
    assert source.use_tree(dest, wanted).commit == wanted
    with pytest.raises(TurboError, match=f"HEAD is {wanted}, --ref asks for {older}"):
        source.use_tree(dest, older)


def test_src_that_is_not_vllm_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TurboError, match="is not a vLLM source tree"):
        source.use_tree(tmp_path)
    (tmp_path / "setup.py").write_text("")
    (tmp_path / "CMakeLists.txt").write_text("")
    with pytest.raises(TurboError, match="neither git metadata nor PKG-INFO"):
        source.use_tree(tmp_path)


def test_existing_non_git_directory_is_not_overwritten(upstream: tuple[str, list[str]],
                                                       tmp_path: Path) -> None:
    url, (_, wanted) = upstream
    dest = tmp_path / "vllm"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep")
    with pytest.raises(TurboError, match="not a git checkout"):
        source.fetch_commit(url, wanted, dest)
    assert (dest / "mine.txt").read_text() == "keep"
    shutil.rmtree(dest)


def test_moving_a_checkout_never_discards_someone_elses_edits(
        upstream: tuple[str, list[str]], clone: tuple[source.SourceTree, Path],
        tmp_path: Path) -> None:
    """VLLM_SRC may be a developer's own checkout: edits build-vllm did not make stop the move
    in one line; the build's own (use_existing_torch.py's requirements/ edits) do not."""
    url, (older, _) = upstream
    dest = _copy(clone, tmp_path)
    setup = dest / "setup.py"
    mine = setup.read_text() + "# my local experiment\n"
    setup.write_text(mine)
    with pytest.raises(TurboError, match=r"setup\.py.*stash"):
        source.fetch_commit(url, older, dest)
    assert setup.read_text() == mine
    git(dest, "checkout", "--", "setup.py")
    req = sorted((dest / "requirements").glob("*.txt"))[0]
    req.write_text(req.read_text() + "# stripped by use_existing_torch.py\n")
    tree = source.fetch_commit(url, older, dest)
    assert tree.commit == older


def test_moving_a_checkout_never_deletes_files_it_did_not_write(
        upstream: tuple[str, list[str]], clone: tuple[source.SourceTree, Path],
        tmp_path: Path) -> None:
    """Untracked files someone put in VLLM_SRC stop the move in one line naming them, and stay;
    git-ignored build output does not stop it and is kept (the next build is incremental)."""
    url, (older, wanted) = upstream
    dest = _copy(clone, tmp_path)
    notes = dest / "my-notes.txt"
    notes.write_text("keep me")
    (dest / "vllm" / "experiments").mkdir()
    mine = dest / "vllm" / "experiments" / "try.py"
    mine.write_text("print('mine')\n")
    with pytest.raises(TurboError) as err:
        source.fetch_commit(url, older, dest)
    line = err.value.line()
    assert "my-notes.txt" in line and "vllm/experiments/try.py" in line and "\n" not in line
    assert "--src" in err.value.fix
    assert notes.read_text() == "keep me" and mine.read_text() == "print('mine')\n"
    assert git(dest, "rev-parse", "HEAD") == wanted
    notes.unlink()
    shutil.rmtree(mine.parent)
    built = dest / "build" / "temp.o"  # vLLM's .gitignore covers build/
    built.parent.mkdir()
    built.write_text("object")
    assert source.fetch_commit(url, older, dest).commit == older
    assert built.read_text() == "object"
