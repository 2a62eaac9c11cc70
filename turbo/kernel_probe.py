"""The DGX Spark probe: the exhaustive E2M1 device check run on this machine's GPU.

The check (kernels/e2m1_device_check.cu) converts all 2^32 fp32 bit patterns with the hardware
instruction (where the target has it) and the software path, compares them with each other and
with CUDA's own conversion, and prints one JSON line. This module plans it for the GPU that is
here, runs a built binary, and renders its report; building it is :mod:`turbo.kernel_build`'s.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from turbo import proc
from turbo.errors import TurboError
from turbo.host import Host, nvidia_smi
from turbo.kernel_sources import ProbePlan, arch_for, device_check_argv, require_sources


def gpu_compute_capability() -> str | None:
    """``"12.1"`` for GPU 0 (via nvidia-smi), or None when there is no usable GPU."""
    smi = nvidia_smi(Host())
    return smi[1] if smi else None


def gpu_arch() -> str:
    """The build target for GPU 0 (:func:`arch_for` its compute capability)."""
    cc = gpu_compute_capability()
    if cc is None:
        raise TurboError(
            "kernels.probe",
            "no NVIDIA GPU is visible (nvidia-smi found none)",
            "Run it on the DGX Spark, or pass --arch to see the plan.",
        )
    return arch_for(cc)


def plan(arch: str, nvcc: str) -> ProbePlan:
    """What ``kernels.probe`` runs: build the device check for ``arch``, run it."""
    require_sources()
    out = Path("<cache>")
    return ProbePlan(arch, device_check_argv(nvcc, arch, out), [str(out / "e2m1_device_check")])


def run_device_check(binary: Path, arch: str) -> dict[str, Any]:
    """Run a built device check; return its JSON report with the target, exit code and time."""
    t0 = time.monotonic()
    res = proc.capture([str(binary)], timeout=None)  # all 2^32 inputs: seconds to minutes
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        detail = res.why() if res.fault else res.stderr.strip()[-200:]
        raise TurboError(
            "kernels.probe",
            f"the device check printed no result (exit {res.rc}): {detail}",
            "Check the GPU with `invoke doctor`.",
        )
    report: dict[str, Any] = json.loads(lines[-1])
    if "error" in report:
        raise TurboError(
            "kernels.probe",
            f"CUDA error: {report['error']}",
            "Check the GPU and driver with `invoke doctor`.",
        )
    report["arch"] = arch
    report["exit_code"] = res.rc
    report["wall_seconds"] = round(time.monotonic() - t0, 2)
    return report


def render_probe(r: dict[str, Any]) -> str:
    lines = [
        f"GPU: {r['device']} (compute capability {r['cc']}), built for sm_{r['arch']}",
        f"inputs: {r['inputs']} fp32 bit patterns in {r['seconds']} s",
        f"software path on the GPU vs host build: {r['device_sw_vs_host_mismatches']} mismatches",
        f"CUDA __nv_cvt_float_to_fp4 vs software (non-NaN): {r['cuda_vs_sw_nonnan_mismatches']}"
        f" mismatches; on NaN it returns {r['cuda_nan_codes']}",
        f"public API packing checks: {r['api_mismatches']} failures",
    ]
    if r.get("hw_compiled"):
        lines += [
            f"hardware cvt.rn.satfinite.e2m1x2.f32 vs software (non-NaN): "
            f"{r['hw_vs_sw_nonnan_mismatches']} mismatches",
            f"hardware result for NaN inputs (code: count): {r['hw_nan_codes']}"
            + (
                "  = the documented policy (+6, 0x7)"
                if set(r["hw_nan_codes"]) == {"0x7"}
                else "  DIFFERS from the policy (0x7)"
            ),
        ]
    else:
        lines.append(
            f"hardware E2M1 path: absent (sm_{r['arch']} has no "
            "cvt.rn.satfinite.e2m1x2.f32); only the software path ran"
        )
    lines.append("result: " + ("all agree" if r["exit_code"] == 0 else "MISMATCHES (see above)"))
    return "\n".join(lines)
