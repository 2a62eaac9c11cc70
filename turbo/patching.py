"""The GB10 patch series: check, apply (all or nothing), revert (byte for byte).

Patches are numbered ``git format-patch`` files in ``patches/``, applied in the order of
``patches/series``. Each declares in its message which vLLM refs it is for
(``Applies-To: 0.16.0 3b30e6150777...``) and its upstream status (``Upstream-Status:``);
a patch for another ref is skipped with a line saying so.

How a tree is patched, and why:
- every selected patch is first applied, in order, with ``git apply`` to a scratch copy of
  just the files the series touches; one failure stops everything, names the patch, the file
  and the hunk, and the real tree has not been touched;
- only then are the pristine files copied into ``<tree>/.turbo-patches/pristine`` and the
  record ``<tree>/.turbo-patches.json`` written (status "applying"), and the patched files
  copied in; the record then says "applied". An interrupted apply leaves status "applying",
  which the next apply or revert repairs from the pristine copies;
- ``git apply`` never runs in the real tree, so a plain directory (an unpacked sdist) and a
  git checkout behave the same, and the checkout's index is left alone;
- revert copies the pristine files back (removing files the series created) and deletes the
  record, so the tree is byte for byte what it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from turbo import assets, contain, proc
from turbo.errors import TurboError
from turbo.jsonfile import write_json_atomic
from turbo.patch_format import FileDiff, Hunk, Patch, parse_patch, ref_matches

__all__ = [
    "STATE_DIR",
    "STATE_FILE",
    "FileDiff",
    "Hunk",
    "Patch",
    "PatchReport",
    "apply_series",
    "check_series",
    "load_series",
    "parse_patch",
    "ref_matches",
    "render_report",
    "revert_plan",
    "revert_series",
    "select",
    "series_digest",
    "series_dir",
]

STATE_FILE = ".turbo-patches.json"
STATE_DIR = ".turbo-patches"
SERIES_FILE = "series"
_FAILED_AT = re.compile(r"error: patch failed: (.+):(\d+)")
_PATH_ERROR = re.compile(
    r"error: (.+?): (No such file or directory|already exists in working "
    r"directory|does not exist in index|does not match index)"
)


@dataclass
class PatchReport:
    """What one check/apply/revert did (or, for a dry run, would do)."""

    src: str
    ref: str
    action: str
    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    already_applied: list[str] = field(default_factory=list)
    reverted: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def say(self, line: str) -> None:
        self.messages.append(line)


# --------------------------------------------------------------------------- reading the series
def series_dir() -> Path:
    """``patches/`` of the clone, or the copy an installed package carries (:mod:`turbo.assets`)."""
    return assets.require(assets.PATCHES)


def load_series(directory: Path | None = None) -> list[Patch]:
    d = directory or series_dir()
    series = d / SERIES_FILE
    if not series.is_file():
        raise TurboError(
            f"patch series {d}", f"{SERIES_FILE} is missing", "Restore patches/ from git."
        )
    out = []
    for raw in series.read_text(encoding="utf-8").splitlines():
        name = raw.split("#", 1)[0].strip()
        if not name:
            continue
        p = d / name
        if not p.is_file():
            raise TurboError(
                f"patch series {series}",
                f"it lists {name}, which does not exist",
                "Restore patches/ from git or fix the series file.",
            )
        out.append(parse_patch(p))
    return out


def series_digest(directory: Path | None = None) -> str:
    """sha256 over the series file and every listed patch, in order (names and bytes)."""
    d = directory or series_dir()
    h = hashlib.sha256()
    h.update((d / SERIES_FILE).read_bytes())
    for patch in load_series(d):
        h.update(b"\0" + patch.name.encode() + b"\0")
        h.update(patch.path.read_bytes())
    return h.hexdigest()


def select(series: list[Patch], ref: str, report: PatchReport) -> list[Patch]:
    chosen = []
    for patch in series:
        if any(ref_matches(r, ref) for r in patch.applies_to):
            chosen.append(patch)
        else:
            report.skipped.append(patch.name)
            report.say(f"skip {patch.name}: for {', '.join(patch.applies_to)}, not {ref}")
    return chosen


# --------------------------------------------------------------------------- helpers
def _sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _state_path(src: Path) -> Path:
    return src / STATE_FILE


def _read_state(src: Path) -> dict[str, Any] | None:
    """The record, checked before anything trusts it: its shape, and that every path it names
    (and the pristine copies behind them) lies inside the tree."""
    p = _state_path(src)
    if not p.exists():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TurboError(
            f"patch record {p}",
            f"cannot be read ({exc})",
            f"Restore the tree from a pristine copy and delete {p.name}.",
        ) from exc
    _check_state(src, p, data)
    result: dict[str, Any] = data
    return result


def _check_state(src: Path, record: Path, data: Any) -> None:
    fix = (
        f"The record was edited or crafted: restore the tree from the sdist or a clean "
        f"checkout and delete {record.name} (and {STATE_DIR}/)."
    )

    def malformed(why: str) -> TurboError:
        return TurboError(
            f"patch record {record}", f"is malformed: {why}; nothing was touched", fix
        )

    if not isinstance(data, dict):
        raise malformed("not a JSON object")
    for key in ("pristine", "patched"):
        table = data.get(key, {})
        if not isinstance(table, dict):
            raise malformed(f"'{key}' is not an object")
        for rel, digest in table.items():
            if digest is not None and not isinstance(digest, str):
                raise malformed(f"'{key}' gives {rel!r} a {type(digest).__name__}, not a hash")
            _in_tree(src, rel, record, fix)
    patches = data.get("patches", [])
    if not isinstance(patches, list) or not all(isinstance(n, str) for n in patches):
        raise malformed("'patches' is not a list of names")
    if (src / STATE_DIR).exists() or (src / STATE_DIR).is_symlink():
        pristine = _pristine_dir(src, record, fix)
        for rel in data.get("pristine", {}):
            contain.inside(pristine, rel, source=f"patch record {record}", fix=fix)


def _in_tree(src: Path, rel: object, record: Path, fix: str) -> Path:
    return contain.inside(src, rel, source=f"patch record {record}", fix=fix)


def _tree(root: Path, rel: str) -> Path:
    """A path already checked by :func:`_check_state`, resolved inside ``root``."""
    return contain.inside(root, rel, source="patch record", fix="Restore the tree.")


def _pristine_dir(src: Path, record: Path, fix: str) -> Path:
    """``<tree>/.turbo-patches/pristine``, refused when either folder is a symlink."""
    source = f"patch record {record}"
    state = contain.check_dir(src, STATE_DIR, source=source, fix=fix)
    return contain.check_dir(state, "pristine", source=source, fix=fix)


def _copy(src: Path, dst: Path) -> None:
    """Copy bytes and mode atomically (temp file beside ``dst``, then rename)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.turbo-tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _check_src(src: Path) -> None:
    if not src.is_dir():
        raise TurboError(
            f"vLLM tree {src}",
            "is not a directory",
            "Pass --src with an unpacked vLLM source tree.",
        )


def _describe_failure(patch: Patch, output: str) -> str:
    """Turn git apply's output into 'patch P, file F, hunk #N (@@ ... @@)'."""
    m = _FAILED_AT.search(output)
    if m:
        file, line = m.group(1), int(m.group(2))
        for fd in patch.files:
            if file in (fd.old, fd.new):
                for i, h in enumerate(fd.hunks, 1):
                    if h.old_start == line:
                        where = f"hunk #{i} ({h.header})"
                        return f"patch {patch.name}, file {file}, {where} does not apply"
        return f"patch {patch.name}, file {file}, hunk at line {line} does not apply"
    m2 = _PATH_ERROR.search(output)
    if m2:
        return f"patch {patch.name}, file {m2.group(1)}: {m2.group(2)}"
    last = output.strip().splitlines()[-1] if output.strip() else "git apply failed"
    return f"patch {patch.name}: {last}"


def _git_apply(scratch: Path, patch: Patch) -> None:
    argv = ["git", "apply", "--verbose", "--whitespace=nowarn", str(patch.path)]
    # Stop git from finding an enclosing repository: paths stay relative to the scratch dir.
    env = {"GIT_CEILING_DIRECTORIES": str(scratch.parent)}
    res = proc.capture(argv, timeout=600, cwd=scratch, env=env)
    if res.fault == proc.MISSING:
        raise TurboError(
            "applying patches",
            "git is not installed",
            "Install git (it is in the pixi environment).",
        )
    if res.fault:
        raise TurboError(
            f"applying {patch.name}",
            f"{res.why()} (tree left unchanged)",
            "Check that git runs (`git --version`), then apply again.",
        )
    if not res.ok:
        raise TurboError(
            _describe_failure(patch, res.stdout + res.stderr),
            "the tree does not match what the patch expects (tree left unchanged)",
            "Check --src/--ref, or refresh the patch for this vLLM version.",
        )


def _trial_run(src: Path, chosen: list[Patch], work: Path) -> Path:
    """Apply ``chosen`` in order to a scratch copy of the files they touch; return it."""
    scratch = work / "tree"
    scratch.mkdir()
    for rel in sorted({r for p in chosen for r in p.touched()}):
        f = src / rel
        if f.is_file():
            _copy(f, scratch / rel)
    for patch in chosen:
        _git_apply(scratch, patch)
    return scratch


# --------------------------------------------------------------------------- public API
def check_series(src: Path, ref: str, *, directory: Path | None = None) -> PatchReport:
    """Would the series apply to ``src`` (at ``ref``)? Changes nothing."""
    report = apply_series(src, ref, dry_run=True, directory=directory)
    report.action = "check"
    return report


def apply_series(
    src: Path, ref: str, *, dry_run: bool = False, directory: Path | None = None
) -> PatchReport:
    """Apply every patch meant for ``ref``, or none; a second run is a no-op that says so."""
    src = src.resolve()
    _check_src(src)
    d = directory or series_dir()
    report = PatchReport(src=str(src), ref=ref, action="apply", dry_run=dry_run)
    chosen = select(load_series(d), ref, report)
    digest = series_digest(d)
    state = _read_state(src)
    if state is not None:
        return _already(src, state, chosen, digest, report)
    if not chosen:
        report.say(f"no patch in the series is for {ref}; nothing to do")
        return report
    for patch in chosen:
        for rel in sorted(patch.touched()):
            contain.inside(
                src,
                rel,
                source=f"patch {patch.name}",
                fix="Fix the patch: every path it changes must lie inside the vLLM tree.",
            )
    with tempfile.TemporaryDirectory(prefix="turbo-patch-") as tmp:
        scratch = _trial_run(src, chosen, Path(tmp))
        for patch in chosen:
            report.say(f"{'would apply' if dry_run else 'apply'} {patch.name}: {patch.subject}")
        if dry_run:
            report.applied = [p.name for p in chosen]
            return report
        _commit(src, scratch, chosen, ref, digest)
    report.applied = [p.name for p in chosen]
    report.say(f"applied {len(chosen)} patch(es); record in {STATE_FILE}")
    return report


def _already(
    src: Path, state: dict[str, Any], chosen: list[Patch], digest: str, report: PatchReport
) -> PatchReport:
    if state.get("status") != "applied":
        raise TurboError(
            f"vLLM tree {src}",
            "a previous apply was interrupted",
            "Run `invoke patches.revert --src DIR` (it restores the pristine files), "
            "then apply again.",
        )
    names = [p.name for p in chosen]
    if state.get("series_digest") != digest or state.get("patches") != names:
        raise TurboError(
            f"vLLM tree {src}",
            f"it carries a different patch set ({', '.join(state.get('patches', []))})",
            "Run `invoke patches.revert --src DIR`, then apply the current series.",
        )
    changed = [rel for rel, sha in state.get("patched", {}).items() if _sha(_tree(src, rel)) != sha]
    if changed:
        raise TurboError(
            f"vLLM tree {src}",
            f"patched files were edited since: {', '.join(changed)}",
            "Restore them, or revert (losing those edits) and apply again.",
        )
    report.already_applied = names
    report.say(f"already applied: {', '.join(names)} (nothing to do)")
    return report


def _commit(src: Path, scratch: Path, chosen: list[Patch], ref: str, digest: str) -> None:
    touched = sorted({r for p in chosen for r in p.touched()})
    pristine_dir = src / STATE_DIR / "pristine"
    record: dict[str, Any] = {
        "status": "applying",
        "ref": ref,
        "series_digest": digest,
        "patches": [p.name for p in chosen],
        "pristine": {},
        "patched": {},
    }
    for rel in touched:
        f = src / rel
        record["pristine"][rel] = _sha(f)
        if f.is_file():
            _copy(f, pristine_dir / rel)
    write_json_atomic(_state_path(src), record, sort_keys=True)
    for rel in touched:
        new, dst = scratch / rel, src / rel
        if new.is_file():
            _copy(new, dst)
        elif dst.exists():
            dst.unlink()
        record["patched"][rel] = _sha(dst)
    record["status"] = "applied"
    write_json_atomic(_state_path(src), record, sort_keys=True)


def revert_series(src: Path, *, force: bool = False) -> PatchReport:
    """Put back the pristine files recorded by apply; remove the record. No record: no-op."""
    src = src.resolve()
    _check_src(src)
    state = _read_state(src)
    report = PatchReport(src=str(src), ref=str((state or {}).get("ref", "")), action="revert")
    if state is None:
        report.say("no patches recorded in this tree; nothing to revert")
        return report
    if state.get("status") == "applied" and not force:
        changed = [r for r, sha in state.get("patched", {}).items() if _sha(_tree(src, r)) != sha]
        if changed:
            raise TurboError(
                f"revert in {src}",
                f"files were edited after apply: {', '.join(changed)}",
                "Reverting would discard those edits; pass --force to do it anyway.",
            )
    pristine_dir = src / STATE_DIR / "pristine"
    for rel, sha in state.get("pristine", {}).items():
        # Checked by _read_state; resolved again here so what is touched is what was checked.
        dst = _tree(src, rel)
        if sha is None:
            if dst.exists():
                dst.unlink()
            _prune_empty(dst.parent, src)
            continue
        saved = _tree(pristine_dir, rel)
        if _sha(saved) != sha:
            raise TurboError(
                f"pristine copy of {rel}",
                "is missing or damaged",
                "Re-create the tree from the sdist or a clean checkout.",
            )
        _copy(saved, dst)
    report.reverted = list(state.get("patches", []))
    _state_path(src).unlink()
    shutil.rmtree(src / STATE_DIR, ignore_errors=True)
    report.say(f"reverted: {', '.join(report.reverted)}")
    return report


def _prune_empty(d: Path, root: Path) -> None:
    """Remove directories the series created and that are now empty (up to the tree root)."""
    while d != root and d.is_dir() and not any(d.iterdir()):
        d.rmdir()
        d = d.parent


def revert_plan(src: Path) -> PatchReport:
    """What revert would do (for --dry-run): the files it would restore or remove."""
    src = src.resolve()
    _check_src(src)
    state = _read_state(src)
    report = PatchReport(
        src=str(src), ref=str((state or {}).get("ref", "")), action="revert", dry_run=True
    )
    if state is None:
        report.say("no patches recorded in this tree; nothing to revert")
        return report
    for rel, sha in sorted(state.get("pristine", {}).items()):
        report.say(f"would {'remove' if sha is None else 'restore'} {rel}")
    report.reverted = list(state.get("patches", []))
    return report


def render_report(report: PatchReport, *, as_json: bool = False) -> str:
    """The report as text lines (one per event) or as JSON."""
    if as_json:
        return json.dumps(report.to_dict(), indent=2)
    head = f"{report.action}{' (dry run)' if report.dry_run else ''}: {report.src}"
    if report.ref:
        head += f" @ {report.ref}"
    return "\n".join([head, *(f"  {m}" for m in report.messages)])
