"""vLLM's source at exactly one commit: fetched with git (that commit only, no history) or taken
from an existing tree (``--src``: a checkout or an unpacked sdist).

The checkout is made in a sibling ``.partial`` directory and renamed into place only once HEAD is
verified, so the managed directory is either absent or a verified tree.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from turbo import proc
from turbo.errors import TurboError

GIT_TIMEOUT_S = 1800.0
_HEX40 = re.compile(r"^[0-9a-f]{40}$")

Runner = Callable[[list[str], Path], str]


@dataclass(frozen=True)
class SourceTree:
    path: Path
    kind: str  # "git" (HEAD verified) or "sdist" (an unpacked release, no git metadata)
    ref: str  # the commit hash (git) or the release version (sdist): what patches are chosen by
    commit: str | None  # HEAD for git trees


# Never prompt for credentials or open an editor: a build runs unattended.
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_EDITOR": "true", "LC_ALL": "C"}


def run_git(argv: list[str], cwd: Path) -> str:
    """Run one git command (argv list); a failure becomes a TurboError naming the command."""
    res = proc.capture(argv, cwd=cwd, env=_GIT_ENV, timeout=GIT_TIMEOUT_S)
    if res.fault == proc.MISSING:
        raise TurboError(
            "git", "git is not installed", "Install git (the pixi environment has it)."
        )
    if res.fault == proc.TIMEOUT:
        raise TurboError(
            " ".join(argv[:3]),
            f"no answer in {GIT_TIMEOUT_S:.0f} s",
            "Check the network or use --src with a local checkout.",
        )
    if not res.ok:
        raise TurboError(" ".join(argv[:4]), res.why(), "See the message; re-run after fixing it.")
    return res.stdout


def require_commit_hash(ref: str) -> str:
    """Only a full hash names one tree for sure: a branch or tag can move under us."""
    r = ref.strip().lower()
    if not _HEX40.match(r):
        raise TurboError(
            "vLLM ref",
            f"{ref!r} is not a full 40-hex commit hash",
            "Pass --ref with a full commit hash (branches and tags move).",
        )
    return r


def fetch_argv(repo: str, commit: str) -> list[list[str]]:
    """The git commands that fetch ``commit`` alone (depth 1) into an empty directory."""
    return [
        ["git", "init", "--quiet"],
        ["git", "remote", "add", "origin", repo],
        ["git", "fetch", "--quiet", "--depth", "1", "--no-tags", "origin", commit],
        ["git", "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", "FETCH_HEAD"],
        ["git", "rev-parse", "HEAD"],
    ]


def head_commit(path: Path, runner: Runner = run_git) -> str | None:
    if not (path / ".git").exists():
        return None
    try:
        return runner(["git", "rev-parse", "HEAD"], path).strip()
    except TurboError:
        return None


def _verify_head(path: Path, commit: str, runner: Runner) -> None:
    head = runner(["git", "rev-parse", "HEAD"], path).strip()
    if head != commit:
        raise TurboError(
            f"vLLM checkout {path}",
            f"HEAD is {head}, expected {commit}",
            "Delete the directory and re-run, or pass the right --ref.",
        )


def _fetch_step(runner: Runner, argv: list[str], cwd: Path, repo: str, commit: str) -> None:
    try:
        runner(argv, cwd)
    except TurboError as err:
        if argv[1] != "fetch":
            raise
        raise TurboError(
            f"fetching vLLM {commit[:12]} from {repo}",
            err.why,
            "Check that the commit exists there (--ref) and the network or mirror "
            "(--repo) is reachable; or build a local tree with --src.",
        ) from err


def fetch_commit(
    repo: str,
    commit: str,
    dest: Path,
    *,
    runner: Runner = run_git,
    on_tree_change: Callable[[Path], None] | None = None,
) -> SourceTree:
    """``dest`` holding ``commit`` and nothing else of the history.

    An existing checkout at another commit gets the new commit fetched into it (its build
    directory and ccache survive); ``on_tree_change`` is called first so the caller can revert
    patches before git touches the files.
    """
    commit = require_commit_hash(commit)
    if dest.exists() and not (dest / ".git").exists():
        raise TurboError(
            f"vLLM source {dest}",
            "exists but is not a git checkout",
            "Move it away, or build it as it is with --src.",
        )
    if (dest / ".git").exists():
        if head_commit(dest, runner) == commit:
            return SourceTree(dest, "git", commit, commit)
        if on_tree_change is not None:
            on_tree_change(dest)
        _refuse_foreign_edits(dest, commit, runner)
        _refuse_untracked(dest, commit, runner)
        runner(["git", "remote", "set-url", "origin", repo], dest)
        _fetch_step(runner, fetch_argv(repo, commit)[2], dest, repo, commit)
        # --force: files touched by use_existing_torch.py are ours to discard. Untracked
        # files were refused above and git-ignored build output is kept, so the next build is
        # incremental and nothing else is removed.
        runner(
            [
                "git",
                "-c",
                "advice.detachedHead=false",
                "checkout",
                "--quiet",
                "--force",
                "--detach",
                "FETCH_HEAD",
            ],
            dest,
        )
        _verify_head(dest, commit, runner)
        return SourceTree(dest, "git", commit, commit)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for argv in fetch_argv(repo, commit)[:-1]:
            _fetch_step(runner, argv, partial, repo, commit)
        _verify_head(partial, commit, runner)
        os.replace(partial, dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return SourceTree(dest, "git", commit, commit)


def _ours_to_discard(rel: str) -> bool:
    """Tracked files the build itself edits: use_existing_torch.py strips the torch pins from
    requirements/*.txt|*.in and pyproject.toml (the patch series was reverted just before)."""
    return rel == "pyproject.toml" or (
        rel.startswith("requirements/") and rel.endswith((".txt", ".in"))
    )


def _refuse_foreign_edits(dest: Path, commit: str, runner: Runner) -> None:
    """``checkout --force`` would discard edits to tracked files: refuse unless the build
    made them (someone's work in a VLLM_SRC checkout is not ours to throw away)."""
    status = runner(["git", "status", "--porcelain", "--untracked-files=no"], dest)
    edited = [line[3:] for line in status.splitlines() if len(line) > 3]
    foreign = [rel for rel in edited if not _ours_to_discard(rel)]
    if foreign:
        raise TurboError(
            f"vLLM source {dest}",
            f"has edits build-vllm did not make ({_shown(foreign)}); moving it to "
            f"{commit[:12]} would discard them",
            f"Commit or stash them (git -C {dest} stash), or build this tree as it is "
            f"with --src {dest}.",
        )


def _shown(names: list[str]) -> str:
    more = f" and {len(names) - 6} more" if len(names) > 6 else ""
    return ", ".join(names[:6]) + more


def _refuse_untracked(dest: Path, commit: str, runner: Runner) -> None:
    """Untracked files that git does not ignore were put there by someone, not by the build
    (its output is git-ignored, its patches are reverted just before): moving the tree to
    another commit leaves them mixed into that commit's tree, and removing them would lose
    someone's work. Refuse, naming them."""
    listed = runner(["git", "ls-files", "--others", "--exclude-standard", "-z"], dest)
    untracked = sorted(name for name in listed.split("\0") if name)
    if untracked:
        raise TurboError(
            f"vLLM source {dest}",
            f"holds files git does not track and build-vllm did not write ({_shown(untracked)}); "
            f"they would be mixed into the tree at {commit[:12]}",
            f"Move them out of {dest} (or add them to .git/info/exclude), or build this tree "
            f"as it is with --src {dest}.",
        )


def sdist_version(path: Path) -> str | None:
    """The version an unpacked sdist declares in PKG-INFO (None if it is not an sdist)."""
    info = path / "PKG-INFO"
    if not info.is_file():
        return None
    version = HeaderParser().parsestr(info.read_text(encoding="utf-8", errors="replace"))
    return version.get("Version")


def use_tree(path: Path, ref: str | None = None, *, runner: Runner = run_git) -> SourceTree:
    """An existing tree given with ``--src``: a git checkout (HEAD must equal ``ref`` when one
    is given) or an unpacked sdist (its PKG-INFO version is the ref)."""
    path = path.absolute()
    if not (path / "setup.py").is_file() or not (path / "CMakeLists.txt").is_file():
        raise TurboError(
            f"--src {path}",
            "is not a vLLM source tree (no setup.py and CMakeLists.txt)",
            "Point --src at a vLLM checkout or unpacked sdist.",
        )
    head = head_commit(path, runner)
    if head is not None:
        if ref is not None and ref != head:
            want = require_commit_hash(ref)
            if want != head:
                raise TurboError(
                    f"--src {path}",
                    f"HEAD is {head}, --ref asks for {want}",
                    f"Check out {want[:12]} there, or drop --ref to build HEAD.",
                )
        return SourceTree(path, "git", head, head)
    version = sdist_version(path)
    if version is None:
        raise TurboError(
            f"--src {path}",
            "has neither git metadata nor PKG-INFO, so what it holds cannot be named",
            "Use a git checkout or an unpacked sdist.",
        )
    if ref is not None and ref != version:
        raise TurboError(
            f"--src {path}",
            f"is the vLLM {version} sdist, --ref asks for {ref}",
            f"Drop --ref or pass --ref {version}.",
        )
    return SourceTree(path, "sdist", version, None)
