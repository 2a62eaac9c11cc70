"""The patch commands: ``patches.check``, ``patches.apply``, ``patches.revert`` and
``patches.archs``.

Each takes the command line's words (an empty ``src`` is the checkout's vLLM tree, an empty
``ref`` the pinned commit), calls :mod:`turbo.patching` or :mod:`turbo.cuda_archs`, and hands
back an :class:`~turbo.outcome.Outcome`: the report as text, and as data for ``--json``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from turbo import cuda_archs, patching, paths
from turbo.console import render_table
from turbo.outcome import Outcome, done
from turbo.pins import load_pins


def _tree(src: str) -> Path:
    return Path(src) if src else paths.vllm_src_dir()


def _ref(ref: str) -> str:
    return ref or load_pins().vllm.commit


def _report(report: patching.PatchReport) -> Outcome:
    return done(patching.render_report(report), report.to_dict())


def check(src: str, ref: str) -> Outcome:
    """Would the series apply to the tree? Changes nothing."""
    tree, r = _tree(src), _ref(ref)
    return _report(patching.check_series(tree, r))


def apply(src: str, ref: str, *, dry_run: bool) -> Outcome:
    """Apply the series to the tree, all or nothing (dry: say what would be applied)."""
    tree, r = _tree(src), _ref(ref)
    return _report(patching.apply_series(tree, r, dry_run=dry_run))


def revert(src: str, *, force: bool, dry_run: bool) -> Outcome:
    """Put the tree back byte for byte (dry: say which files would be restored or removed)."""
    tree = _tree(src)
    if dry_run:
        return _report(patching.revert_plan(tree))
    return _report(patching.revert_series(tree, force=force))


def archs(src: str, arch_list: str) -> Outcome:
    """Which CUDA archs each vLLM kernel family gets for ``arch_list`` (default: pinned)."""
    tree = _tree(src)
    wanted = arch_list or load_pins().toolchain.arch_list
    report = cuda_archs.resolve(tree, wanted)
    table = render_table(["family", "list", "archs", "gencode"], cuda_archs.table_rows(report))
    text = f"TORCH_CUDA_ARCH_LIST={wanted}, CUDA {report.cuda_version}, tree {tree}\n{table}"
    return done(text, dataclasses.asdict(report))
