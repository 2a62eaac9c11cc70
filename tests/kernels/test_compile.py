"""nvcc 13.0 compile checks: the hardware E2M1 instruction appears exactly where the target has it
and the header asks for it; TURBO_E2M1_TARGET_HAS_CVT agrees with ptxas on every target."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from turbo import kernels

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA 13.0) not found")


@pytest.mark.parametrize(
    ("arch", "force", "expect_cvt"),
    [
        ("121", False, False),   # plain GB10 target: ptxas rejects the instruction
        ("121a", False, True),   # arch-specific GB10 target: hardware path
        ("121a", True, False),   # ... unless forced to software
        ("120f", False, True),   # family target (what vLLM's "12.0f" lists build)
        ("90", False, False),    # Hopper: software
        ("100a", False, True),
    ],
)
def test_instruction_appears_exactly_where_expected(tmp_path: Path, arch: str, force: bool,
                                                    expect_cvt: bool) -> None:
    res = kernels.compile_check(arch, force_software=force, workdir=tmp_path)
    assert res.ok, res.message
    assert res.ptx_has_cvt is expect_cvt
    if res.sass_has_cvt is not None:  # only when a cuobjdump is available
        assert res.sass_has_cvt is expect_cvt


RAW_CVT = """extern "C" __global__ void k(const float* x, unsigned short* y) {
  unsigned short r;
  asm volatile("{ .reg .b8 t; cvt.rn.satfinite.e2m1x2.f32 t, %1, %2; mov.b16 %0, {t, 0}; }"
               : "=h"(r) : "f"(x[0]), "f"(x[1]));
  y[0] = r;
}
"""
MACRO = """#include "e2m1.cuh"
#if defined(__CUDA_ARCH__) && TURBO_E2M1_TARGET_HAS_CVT
#error TURBO_HAS_CVT_1
#endif
"""
ARCHS = ["90", "90a", "100", "100a", "100f", "103a", "110f", "120", "120a", "120f", "121",
         "121a", "121f"]


@pytest.mark.parametrize("arch", ARCHS)
def test_macro_matches_ptxas(tmp_path: Path, arch: str) -> None:
    nvcc = kernels.nvcc()
    (tmp_path / "raw.cu").write_text(RAW_CVT)
    (tmp_path / "macro.cu").write_text(MACRO)
    gen = kernels.gencode(arch)
    ptxas = subprocess.run([nvcc, *gen, "-c", str(tmp_path / "raw.cu"), "-o",
                            str(tmp_path / "raw.o")], capture_output=True, text=True, check=False)
    macro = subprocess.run([nvcc, *gen, f"-I{kernels.KERNELS_DIR}", "-E",
                            str(tmp_path / "macro.cu"), "-o", str(tmp_path / "macro.ii")],
                           capture_output=True, text=True, check=False)
    accepted = ptxas.returncode == 0
    if not accepted:
        assert "not supported on .target" in ptxas.stderr, ptxas.stderr
    assert ("TURBO_HAS_CVT_1" in macro.stderr) is accepted


def test_header_compiles_as_plain_cpp(tmp_path: Path) -> None:
    """The header is usable by a C++ compiler with no CUDA at all (the host test build)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "t.cpp"
    src.write_text('#include "e2m1.cuh"\n'
                   "int main() { return turbo_e2m1x2(1.0f, 6.0f) == 0x27 ? 0 : 1; }\n")
    exe = tmp_path / "t"
    subprocess.run([cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{kernels.KERNELS_DIR}",
                    str(src), "-o", str(exe)], check=True)
    assert subprocess.run([str(exe)], check=False).returncode == 0


def test_gencode_rejects_garbage() -> None:
    from turbo.errors import UsageError

    with pytest.raises(UsageError):
        kernels.gencode("sm_121a")


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


def test_compile_check_command_table_json_and_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _cli(["kernels.compile-check", "--archs", "90,121a"], capsys)
    rows = out.splitlines()
    assert code == 0 and rows[0].split() == ["arch", "forced", "sw", "compiles", "cvt", "in",
                                             "PTX", "cvt", "in", "SASS"]
    assert rows[2].split()[:4] == ["90", "False", "True", "False"]
    assert rows[3].split()[:4] == ["121a", "False", "True", "True"]
    # a target this nvcc cannot build: the JSON still comes, and the exit code says it failed
    code, out, _ = _cli(["kernels.compile-check", "--archs", "121a,35", "--json"], capsys)
    data = json.loads(out)
    assert code == 1 and [(r["arch"], r["ok"]) for r in data] == [("121a", True), ("35", False)]
    assert "compute_35" in data[1]["message"]


def test_probe_dry_run_prints_the_build_and_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(["kernels.probe", "--arch", "121a", "--dry-run"], capsys)
    build, run = out.splitlines()
    assert code == 0 and build.startswith(f"build: {kernels.nvcc()} -O3 -std=c++17 ")
    assert "-gencode arch=compute_121a,code=sm_121a" in build
    assert f"{kernels.DEVICE_CHECK_SRC} -o <cache>/e2m1_device_check" in build
    assert build.endswith(f"(cached under {kernels.build_root()})")
    assert run == "run:   <cache>/e2m1_device_check"
