"""The patch series across vLLM releases: what each release still needs, and what it builds.

For every release (its sdist, cached and sha256-checked by ``turbo.sdist``; the command hands
the archives in) and every patch of the series this module answers with one state
(``turbo.patch_matrix_data``):

- ``applies``: ``git apply --check`` passes and the patch's intent check (turbo.patch_intent)
  does not already hold: the release needs the patch and takes it as is;
- ``upstream``: the release already does what the patch is for: ``git apply --reverse
  --check`` passes (our exact lines are there) or the intent check holds (upstream fixed it its
  own way; the detail says whether the patch would still apply);
- ``conflicts``: neither; the detail names the file and hunk that fail;
- ``not-for-this-ref``: outside the patch's ``Applies-To:``. A patch that names a release is
  evaluated on that release and every later one (finding where it stops being needed is the
  point); a patch naming only commits (0004, written for the pinned main-branch commit) is
  for no release. Its mechanical result is still shown in the detail.

Beside the states: the torch each release pins (requirements/build.txt and cuda.txt) and the
GB10 arch table (``TORCH_CUDA_ARCH_LIST=12.1a``, CUDA 13.0) from the release's own CMake
functions (turbo.cuda_archs), before and, where patches apply, after the series.

Only the files these questions need are extracted from each sdist, into a temporary directory
that is removed afterwards; nothing in the cache or the repository is changed.
"""

from __future__ import annotations

import re
import tarfile
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from turbo import cuda_archs, patch_intent, patching, proc
from turbo.errors import TurboError
from turbo.manifest import sha256_file
from turbo.patch_matrix_data import (
    APPLIES,
    CONFLICTS,
    MARLIN_FAMILIES,
    NOT_FOR_REF,
    STATES,
    TORCH_FILES,
    UPSTREAM,
    Cell,
    Matrix,
    Row,
    Say,
)
from turbo.releases import PROJECT, release_key

__all__ = [
    "APPLIES",
    "CONFLICTS",
    "NOT_FOR_REF",
    "STATES",
    "UPSTREAM",
    "Cell",
    "Matrix",
    "Row",
    "arch_summary",
    "build_matrix",
    "evaluate_release",
    "extract",
    "git_apply_check",
    "in_scope",
    "series_info",
    "torch_pins",
]

_TORCH_PIN = re.compile(r"^torch\s*((?:==|>=|<=|~=|!=|<|>)\s*[^\s;#,]+(?:\s*,\s*[^\s;#]+)*)")

GIT_TIMEOUT_S = 120.0  # one git apply on a source tree takes well under a second


# --------------------------------------------------------------------------- scope
def in_scope(patch: patching.Patch, version: str) -> bool:
    """Applies-To read for releases: from the oldest release it names onwards; a patch that
    names only commits is for no release."""
    key = release_key(version)
    named = [k for r in patch.applies_to if (k := release_key(r)) is not None]
    return key is not None and bool(named) and key >= min(named)


# --------------------------------------------------------------------------- extraction
def _wanted(rel: str, touched: set[str]) -> bool:
    return (
        rel == "CMakeLists.txt"
        or rel.startswith(("cmake/", "requirements/"))
        or rel in touched
        or (rel.startswith("csrc/") and rel.endswith((".cuh", ".h", ".hpp")))
        or (rel.startswith("vllm/model_executor/") and rel.endswith(".py"))
    )


def extract(archive: Path, version: str, dest: Path, touched: set[str]) -> Path:
    """Extract what the matrix reads from ``archive`` into ``dest``; return the tree root."""
    top = f"{PROJECT}-{version}/"
    try:
        with tarfile.open(archive) as tar:
            members = [
                m
                for m in tar.getmembers()
                if m.isfile() and m.name.startswith(top) and _wanted(m.name[len(top) :], touched)
            ]
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise TurboError(
            f"reading {archive.name}",
            str(exc),
            f"Delete {archive} and run again to fetch it anew.",
        ) from exc
    root = dest / top.rstrip("/")
    if not (root / "CMakeLists.txt").is_file():
        raise TurboError(
            f"reading {archive.name}", "it has no CMakeLists.txt", "Is this a vLLM sdist?"
        )
    return root


# --------------------------------------------------------------------------- probes
def git_apply_check(root: Path, patch: Path, *, reverse: bool = False) -> tuple[bool, str]:
    """``git apply --check`` (``--reverse``) in ``root``; (passed, git's output)."""
    argv = ["git", "apply", "--check", "--verbose", "--whitespace=nowarn"]
    argv += ["--reverse"] if reverse else []
    res = _git(root, [*argv, str(patch)])
    return res.rc == 0, res.stdout + res.stderr


def _git(root: Path, argv: list[str]) -> proc.Result:
    """git in a plain tree (never an outer repository); one clear line when git cannot run."""
    res = proc.capture(
        argv, timeout=GIT_TIMEOUT_S, env={"GIT_CEILING_DIRECTORIES": str(root.parent)}, cwd=root
    )
    if res.fault == proc.MISSING:
        raise TurboError("checking patches", "git is not installed", "Install git.")
    if res.fault:
        raise TurboError("checking patches", res.why(), "Check that git runs here.")
    return res


def torch_pins(root: Path) -> dict[str, str]:
    """The torch requirement each requirements file states (``requirements/cuda.txt: ==2.9.1``)."""
    out: dict[str, str] = {}
    for rel in TORCH_FILES:
        path = root / rel
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            m = _TORCH_PIN.match(line.strip())
            if m:
                out[rel] = m.group(1).replace(" ", "")
                break
    return out


def arch_summary(report: cuda_archs.ArchReport) -> dict[str, str]:
    """CUDA_ARCHS, each Marlin list and each FP4 list as resolved ('-' when empty).

    A family decided more than once (vLLM reuses FP4_ARCHS for the SM100 block after the SM120
    one) shows every non-empty result.
    """
    got: dict[str, list[str]] = {}
    for fam in report.families:
        if fam.var in MARLIN_FAMILIES or "FP4" in fam.var:
            vals = got.setdefault(fam.var, [])
            value = ";".join(fam.archs)
            if value and value not in vals:
                vals.append(value)
    out = {"CUDA_ARCHS": ";".join(report.cuda_archs) or "-"}
    for var in sorted(got, key=lambda v: (v not in MARLIN_FAMILIES, v)):
        out[var] = " | ".join(got[var]) or "-"
    return out


def _conflict(patch: patching.Patch, output: str, root: Path) -> str:
    text = patching._describe_failure(patch, output)
    text = text.removeprefix(f"patch {patch.name}, ").removesuffix(" does not apply")
    m = re.match(r"file (.+): No such file or directory$", text)
    if m:  # a moved file is the usual reason; name where a file of that name lives now
        name = Path(m.group(1)).name
        moved = sorted(str(f.relative_to(root)) for f in root.rglob(name) if f.is_file())
        if moved:
            text += f" (a {name} is at {', '.join(moved)})"
    return text


def _cell(patch: patching.Patch, version: str, root: Path, facts: patch_intent.TreeFacts) -> Cell:
    forward, out = git_apply_check(root, patch.path)
    reverse = False if forward else git_apply_check(root, patch.path, reverse=True)[0]
    conflict = None if forward else _conflict(patch, out, root)
    intent = patch_intent.check_intent(patch.name, facts)
    held = intent.held if intent else None
    idetail = intent.detail if intent else "no intent check defined"
    scope = in_scope(patch, version)
    if forward:
        mech = "git apply --check passes"
    elif reverse:
        mech = "git apply --reverse --check passes"
    else:
        mech = f"does not apply: {conflict}"
    if not scope:
        state = NOT_FOR_REF
        detail = f"Applies-To: {' '.join(patch.applies_to)}; here {mech}; intent: {idetail}"
    elif forward and held:
        state, detail = UPSTREAM, f"intent holds ({idetail}); the patch would still apply"
    elif forward:
        state, detail = APPLIES, mech
    elif reverse:
        state, detail = UPSTREAM, "already there: " + mech
    elif held:
        state, detail = UPSTREAM, f"intent holds ({idetail}); the patch itself {mech}"
    else:
        state, detail = CONFLICTS, str(conflict)
    return Cell(state, detail, scope, forward, reverse, conflict, held, idetail)


def _apply(root: Path, patches: list[patching.Patch]) -> None:
    for p in patches:
        res = _git(root, ["git", "apply", "--whitespace=nowarn", str(p.path)])
        if res.rc != 0:
            raise TurboError(
                f"applying {p.name} after the others",
                res.output.splitlines()[-1] if res.output else "git apply failed",
                "The patches apply one by one but not together; refresh the series.",
            )


def evaluate_release(
    version: str,
    archive: Path,
    series: list[patching.Patch],
    *,
    arch_list: str = patch_intent.ARCH_LIST,
    cuda_version: str = patch_intent.CUDA_VERSION,
) -> Row:
    """Every question of the matrix for one release, from its sdist."""
    row = Row(version, sha256_file(archive))
    touched = {t for p in series for t in p.touched()}
    with tempfile.TemporaryDirectory(prefix=f"turbo-matrix-{version}-") as tmp:
        root = extract(archive, version, Path(tmp), touched)
        row.torch = torch_pins(root)
        facts = patch_intent.TreeFacts(root, arch_list, cuda_version)
        try:
            row.archs = arch_summary(facts.archs)
        except TurboError as err:
            row.error = f"arch table: {err.line()}"
        for patch in series:
            row.patches[patch.name] = _cell(patch, version, root, facts)
        todo = [p for p in series if row.patches[p.name].state == APPLIES]
        if todo:
            try:
                _apply(root, todo)
                after = patch_intent.TreeFacts(root, arch_list, cuda_version)
                row.archs_patched = arch_summary(after.archs)
                for p in todo:
                    res = patch_intent.check_intent(p.name, after)
                    cell = row.patches[p.name]
                    row.patches[p.name] = Cell(**{**asdict(cell), "intent_after": res and res.held})
            except TurboError as err:
                row.error = f"with the series: {err.line()}"
    return row


# --------------------------------------------------------------------------- the whole matrix
def series_info(series: list[patching.Patch]) -> list[dict[str, Any]]:
    out = []
    for p in series:
        check = patch_intent.INTENT.get(p.name)
        doc = (check.__doc__ or "").strip().splitlines()[0] if check else ""
        out.append(
            {
                "name": p.name,
                "subject": p.subject,
                "applies_to": list(p.applies_to),
                "upstream_status": p.upstream_status,
                "intent_check": doc,
            }
        )
    return out


def build_matrix(
    archives: dict[str, Path],
    *,
    say: Say | None = None,
    arch_list: str = patch_intent.ARCH_LIST,
    cuda_version: str = patch_intent.CUDA_VERSION,
) -> Matrix:
    """Evaluate every release in ``archives`` (version -> cached sdist), oldest first."""
    series = patching.load_series()
    order = sorted(archives, key=lambda v: release_key(v) or ())
    rows = []
    for i, version in enumerate(order, 1):
        if say:
            say(f"[{i}/{len(order)}] vLLM {version}")
        rows.append(
            evaluate_release(
                version, archives[version], series, arch_list=arch_list, cuda_version=cuda_version
            )
        )
    return Matrix(arch_list, cuda_version, series_info(series), rows)
