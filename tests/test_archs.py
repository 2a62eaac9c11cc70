"""Per-family CUDA archs for TORCH_CUDA_ARCH_LIST=12.1a, from vLLM's own CMake code (cmake -P),
before and after the series. Run with -s to see the tables."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from turbo import cuda_archs, patching
from turbo.console import render_table
from turbo.pins import load_pins

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
ARCH = load_pins().toolchain.arch_list  # 12.1a
MARLIN = ("MARLIN_ARCHS", "MARLIN_BF16_ARCHS", "MARLIN_OTHER_ARCHS", "MARLIN_MOE_ARCHS",
          "MARLIN_MOE_OTHER_ARCHS")


def by_list(report: cuda_archs.ArchReport) -> dict[tuple[str, str], tuple[str, ...]]:
    return {(f.var, f.requested): f.archs for f in report.families}


def show(title: str, report: cuda_archs.ArchReport) -> None:
    print(f"\n{title}: TORCH_CUDA_ARCH_LIST={report.arch_list}, CUDA {report.cuda_version}")
    print(render_table(["family", "list", "archs", "gencode"], cuda_archs.table_rows(report)))


def test_torch_gencode_flags() -> None:
    assert cuda_archs.torch_gencode_flags("12.1a") == "-gencode arch=compute_121a,code=sm_121a"
    assert cuda_archs.torch_gencode_flags("9.0;8.0+PTX") == (
        "-gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80 "
        "-gencode arch=compute_80,code=compute_80"
    )


def test_unpatched_tree_matches_the_known_facts(vllm_sdist_pristine: Path) -> None:
    rep = cuda_archs.resolve(vllm_sdist_pristine, ARCH)
    show("unpatched vLLM 0.16.0", rep)
    assert rep.cuda_archs == ("12.0",)
    fams = by_list(rep)
    assert fams[("FP4_ARCHS", "12.0f")] == ("12.0f",)
    assert fams[("MARLIN_ARCHS", "8.0+PTX")] == ("8.0+PTX",)  # GB10 JIT-compiles compute_80
    assert fams[("MARLIN_MOE_ARCHS", "8.0+PTX")] == ("8.0+PTX",)
    # Every intersection in a CUDA >= 13 branch was evaluated (the cut-out lost none).
    assert len(rep.families) >= 25


def test_patched_tree_gives_marlin_native_sm12x(vllm_sdist_tree: Path) -> None:
    before = cuda_archs.resolve(vllm_sdist_tree, ARCH)
    patching.apply_series(vllm_sdist_tree, load_pins().vllm.sdist_version)
    after = cuda_archs.resolve(vllm_sdist_tree, ARCH)
    show("patched vLLM 0.16.0", after)
    assert after.cuda_archs == ("12.0",)  # nothing builds for 12.1 (enable_sm120_only trap)
    for fam in after.families:
        if fam.var in MARLIN:
            assert fam.archs == ("12.0",), fam
            assert "sm_120" in fam.gencode()
        assert not any(a.startswith("12.1") for a in fam.archs), fam
    # Every "12.0f" list still resolves to 12.0f (NVFP4, SM120 GEMM, MLA, MoE data).
    twelve_f = [f for f in after.families if "12.0f" in f.requested]
    assert len(twelve_f) >= 4
    assert all("12.0f" in f.archs for f in twelve_f)
    # Families the series does not touch resolve exactly as before.
    untouched = {(f.var, f.requested): f.archs for f in before.families if f.var not in MARLIN}
    assert {(f.var, f.requested): f.archs for f in after.families if f.var not in MARLIN} == (
        untouched
    )


def test_adding_12_1_to_supported_archs_empties_the_12_0f_lists(vllm_sdist_tree: Path) -> None:
    """The trap the series avoids, shown with the same evaluator (so the checks above would
    catch a patch that took that route)."""
    cml = vllm_sdist_tree / "CMakeLists.txt"
    text = cml.read_text()
    old = 'set(CUDA_SUPPORTED_ARCHS "7.5;8.0;8.6;8.7;8.9;9.0;10.0;11.0;12.0")'
    assert old in text
    cml.write_text(text.replace(old, old.replace('12.0"', '12.0;12.1"')))
    rep = cuda_archs.resolve(vllm_sdist_tree, ARCH)
    show("trap: 12.1 in CUDA_SUPPORTED_ARCHS", rep)
    assert rep.cuda_archs == ("12.1",)
    assert by_list(rep)[("FP4_ARCHS", "12.0f")] == ()
