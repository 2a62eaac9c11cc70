"""Regenerate the patches whose content comes from this repository (``invoke patches.refresh``).

The E2M1 patch adds ``kernels/e2m1.cuh`` to vLLM byte for byte. Rather than editing a diff by
hand when the header changes, the patch is rebuilt: a scratch git repository holds vLLM's
pristine files, the patch (message and its other hunks) is applied with ``git am``, the added
file is overwritten with the current header, and ``git format-patch`` writes the patch again.
Identity, dates and git configuration are fixed, so the output depends only on the inputs and
a second refresh is a no-op. This module is the command: ``run`` picks the pristine tree.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from turbo import paths, proc, sdist
from turbo.errors import TurboError
from turbo.outcome import Outcome, checked, done
from turbo.patching import load_series, ref_matches, series_dir
from turbo.pins import load_pins

# patch file -> (path inside the vLLM tree, source file in this repository)
GENERATED: dict[str, tuple[str, str]] = {
    "0003-nvfp4-e2m1-turbo-header.patch": (
        "csrc/quantization/fp4/turbo_e2m1.cuh",
        "kernels/e2m1.cuh",
    ),
}

_IDENTITY = "vllm-turbo"
_EMAIL = "vllm-turbo@users.noreply.github.com"
_DATE = "2026-01-01T00:00:00Z"
GIT_TIMEOUT_S = 120.0  # each git step works on a handful of files


def _git_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_AUTHOR_NAME=_IDENTITY,
        GIT_AUTHOR_EMAIL=_EMAIL,
        GIT_COMMITTER_NAME=_IDENTITY,
        GIT_COMMITTER_EMAIL=_EMAIL,
        GIT_AUTHOR_DATE=_DATE,
        GIT_COMMITTER_DATE=_DATE,
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        HOME=str(home),
    )
    return env


def _git(repo: Path, env: dict[str, str], *args: str) -> str:
    res = proc.capture(["git", *args], timeout=GIT_TIMEOUT_S, base_env=env, cwd=repo)
    if not res.ok:
        out = (res.stderr or res.stdout).strip()
        raise TurboError(
            f"git {' '.join(args[:2])} in the refresh scratch repository",
            res.why() if res.fault else (out.splitlines()[-1] if out else "failed"),
            "Check that --src is the pristine vLLM tree the series is for.",
        )
    return res.stdout


def render(name: str, pristine: Path, ref: str, directory: Path | None = None) -> bytes:
    """The bytes patch ``name`` should have, built from ``pristine`` and the repo's source file."""
    d = directory or series_dir()
    series = load_series(d)
    names = [p.name for p in series]
    if name not in GENERATED or name not in names:
        raise TurboError(
            f"refresh of {name}",
            "it is not a generated patch in the series",
            f"Generated patches: {', '.join(GENERATED)}.",
        )
    index = names.index(name)
    target, source = GENERATED[name]
    before = [p for p in series[:index] if any(ref_matches(r, ref) for r in p.applies_to)]
    this = series[index]
    with tempfile.TemporaryDirectory(prefix="turbo-refresh-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        env = _git_env(Path(tmp))
        for rel in sorted(set().union(*(p.touched() for p in [*before, this]))):
            if (pristine / rel).is_file():
                (repo / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(pristine / rel, repo / rel)
        _git(repo, env, "init", "-q")
        _git(repo, env, "add", "-A")
        _git(repo, env, "commit", "-q", "-m", "pristine")
        for p in before:
            _git(repo, env, "apply", str(p.path))
        _git(repo, env, "add", "-A")
        _git(repo, env, "commit", "-q", "--allow-empty", "-m", "earlier patches")
        _git(repo, env, "am", "-q", "--keep-cr", str(this.path))
        shutil.copyfile(paths.repo_root() / source, repo / target)
        _git(repo, env, "add", "-A")
        _git(repo, env, "commit", "-q", "--amend", "--no-edit", "--allow-empty")
        out = _git(
            repo,
            env,
            "format-patch",
            "-N",
            "--zero-commit",
            "--no-signature",
            f"--start-number={index + 1}",
            "-1",
            "--stdout",
        )
    return out.encode("utf-8")


def refresh(
    pristine: Path, ref: str, *, check: bool = False, directory: Path | None = None
) -> list[str]:
    """Rewrite every generated patch that is out of date; return their names.

    With ``check`` nothing is written (the caller fails when the list is not empty).
    """
    d = directory or series_dir()
    stale = []
    for name in GENERATED:
        want = render(name, pristine, ref, d)
        path = d / name
        if not path.is_file() or path.read_bytes() != want:
            stale.append(name)
            if not check:
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_bytes(want)
                os.replace(tmp, path)
    return stale


def run(*, src: str = "", check: bool = False, dry_run: bool = False) -> Outcome:
    """``invoke patches.refresh``: the generated patches against a pristine tree (``src``, or
    the pinned sdist unpacked under the state dir). With ``check`` or ``dry_run`` nothing is
    written and an out-of-date patch fails the outcome."""
    ver = load_pins().vllm.sdist_version
    tree = Path(src) if src else sdist.unpack_vllm_sdist(paths.state_dir() / "sdist", ver)
    if check or dry_run:
        stale = refresh(tree, ver, check=True)
        text = "out of date: " + ", ".join(stale) if stale else "all generated patches are current"
        return checked(text, None, bool(stale))
    stale = refresh(tree, ver)
    return done("rewrote: " + ", ".join(stale) if stale else "all generated patches are current")
