"""`doctor`: is this host ready to build and serve? One row per fact, each with what to do.

Every probe of the host goes through :class:`turbo.host.Host`, so tests can hand in a fake
machine and the real one is only touched there. Where serve's preflight asks the same question
(the vLLM build, the model, the GPU, the port) both rows come from one function
(turbo/build_verdict.py, turbo/serve_preflight.py, turbo/host.py); doctor is advice, so a build
or model not there yet is WARN here and FAIL before a launch. The check vocabulary and the host
probes are importable from here too (``doctor.Check``, ``doctor.Host`` ...).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from turbo import paths
from turbo.build_verdict import vllm_build_check
from turbo.checks import FAIL as FAIL
from turbo.checks import PASS as PASS
from turbo.checks import WARN as WARN
from turbo.checks import Check as Check
from turbo.checks import exit_code as exit_code
from turbo.errors import TurboError
from turbo.host import E2M1_PTX as E2M1_PTX
from turbo.host import Host as Host
from turbo.host import check_port as check_port
from turbo.host import check_ptxas_sm121a as check_ptxas_sm121a
from turbo.host import find_cuda_tool as find_cuda_tool
from turbo.host import nvidia_smi as nvidia_smi
from turbo.manifest import manifest_path
from turbo.outcome import Outcome, checked
from turbo.pins import Pins
from turbo.profiles import env_port
from turbo.serve_preflight import gpu_check, model_check, render_checks
from turbo.stamp import read_stamp


def check_cpu(host: Host) -> Check:
    arch = host.machine()
    if arch == "aarch64":
        return Check("cpu architecture", PASS, arch)
    return Check(
        "cpu architecture",
        WARN,
        f"{arch} (a DGX Spark is aarch64)",
        "Fine for tests and development; serving targets a DGX Spark.",
    )


def check_gpu(host: Host, smi: tuple[str, str, str] | None) -> Check:
    """GPU 0 and its compute capability: the verdict serve's preflight gives too."""
    return gpu_check(*smi[:2]) if smi else gpu_check(None)


def check_driver(smi: tuple[str, str, str] | None, pins: Pins) -> Check:
    if smi is None:
        return Check(
            "driver",
            FAIL,
            "no NVIDIA driver answered",
            f"Install NVIDIA driver {pins.toolchain.min_driver} or newer.",
        )
    ver = smi[2]
    try:
        major = int(ver.split(".")[0])
    except ValueError:
        return Check("driver", WARN, f"unreadable driver version {ver!r}", "")
    if major >= int(pins.toolchain.min_driver):
        return Check("driver", PASS, ver)
    return Check(
        "driver",
        FAIL,
        f"{ver} is older than {pins.toolchain.min_driver}",
        f"CUDA {pins.toolchain.cuda} needs driver {pins.toolchain.min_driver}+; update the DGX OS.",
    )


def check_cuda(host: Host, pins: Pins) -> list[Check]:
    nvcc = find_cuda_tool(host, "nvcc")
    if not nvcc:
        return [
            Check(
                "cuda toolkit",
                FAIL,
                "nvcc not found",
                "Run inside the pixi environment (`pixi shell`) or set CUDA_HOME.",
            )
        ]
    rc, out = host.run([nvcc, "--version"])
    release = ""
    marker = "release "
    if marker in out:
        release = out.split(marker, 1)[1].split(",")[0].strip()
    want = pins.toolchain.cuda
    rows: list[Check] = []
    if rc != 0 or not release:
        rows.append(
            Check(
                "cuda toolkit",
                FAIL,
                f"{nvcc} --version failed",
                "Reinstall the environment: `pixi install`.",
            )
        )
    elif release.split(".")[0] != want.split(".")[0]:
        rows.append(
            Check(
                "cuda toolkit",
                FAIL,
                f"nvcc {release} at {nvcc}, want {want}",
                "Use the pixi environment's CUDA (`pixi shell`).",
            )
        )
    else:
        rows.append(Check("cuda toolkit", PASS, f"nvcc {release} at {nvcc}"))
    rows.append(check_ptxas_sm121a(host))
    return rows


TORCH_PROBE = (
    "import torch; print(torch.__version__, torch.version.cuda, int(torch.cuda.is_available()))"
)


def check_torch(host: Host, pins: Pins) -> Check:
    """torch in a child process: importing it here would slow every doctor run by seconds."""
    rc, out = host.run([sys.executable, "-c", TORCH_PROBE], timeout=120)
    want = f"torch {pins.toolchain.torch} (CUDA {pins.toolchain.cuda})"
    if rc != 0:
        return Check(
            "torch",
            FAIL,
            "torch does not import in this Python",
            f"Run inside the pixi environment, which pins {want}.",
        )
    parts = out.split()[-3:]
    if len(parts) != 3:
        return Check("torch", WARN, f"unexpected answer {out!r}", "")
    version, cuda, usable = parts
    detail = f"torch {version}, CUDA {cuda}, GPU usable: {'yes' if usable == '1' else 'no'}"
    if not version.startswith(pins.toolchain.torch) or cuda != pins.toolchain.cuda:
        return Check(
            "torch",
            WARN,
            detail + f"; pinned {want}",
            "Use the pixi environment (`pixi run …`) so vLLM builds against the pin.",
        )
    if usable != "1":
        return Check("torch", WARN, detail, "Check the driver: torch cannot reach the GPU.")
    return Check("torch", PASS, detail)


def check_memory(host: Host) -> Check:
    info = host.meminfo_gb()
    total, avail = info.get("MemTotal"), info.get("MemAvailable")
    if total is None or avail is None:
        return Check("memory", WARN, "cannot read /proc/meminfo", "")
    detail = f"{total:.0f} GB total, {avail:.0f} GB available"
    if total < 100:
        return Check(
            "memory",
            WARN,
            detail + " (a DGX Spark has ~128 GB unified)",
            "The 80B NVFP4 model needs ~45 GB of weights plus KV cache.",
        )
    if avail < 70:
        return Check(
            "memory",
            WARN,
            detail,
            "Stop other GPU/CPU memory users before serving (weights + KV need ~70 GB).",
        )
    return Check("memory", PASS, detail)


def check_disk(host: Host, label: str, path: Path, need_gb: float, done: bool) -> Check:
    free = host.disk_free_gb(path)
    detail = f"{free:.0f} GB free at {paths.nearest_existing(path)}"
    if done:
        return Check(label, PASS, detail + " (already in place)")
    if free < need_gb:
        return Check(
            label,
            FAIL,
            detail + f", need ~{need_gb:.0f} GB",
            "Free space there or move it (TURBO_HOME for builds, MODEL/--dest for the model).",
        )
    return Check(label, PASS, detail + f", need ~{need_gb:.0f} GB")


def check_pixi(host: Host) -> Check:
    name = host.env.get("PIXI_ENVIRONMENT_NAME")
    if name:
        return Check("pixi environment", PASS, f"active ({name})")
    return Check(
        "pixi environment",
        WARN,
        "not active",
        "Run tasks through `pixi run …` or inside `pixi shell`.",
    )


def check_vllm_built(stamp: dict[str, object] | None) -> Check:
    """serve's "vllm build" verdict for the Spark's GPU, weighed as advice (WARN, not FAIL)."""
    return vllm_build_check(stamp, "cuda", blocking=False)


def check_model(model_dir: Path) -> Check:
    """Manifest present and every file at its recorded size: serve's verdict, weighed as
    advice (a model not fetched yet is WARN here, FAIL before a launch)."""
    return model_check(model_dir, blocking=False)


def check_writable(name: str, path: Path, fix: str) -> Check:
    """A location the product writes: TURBO_HOME, its logs, the model directory."""
    why = paths.unwritable_reason(path)
    if why is None:
        return Check(name, PASS, f"{path} is writable")
    return Check(name, FAIL, why, fix)


def check_locations(pins: Pins, model_complete: bool) -> list[Check]:
    checks = [
        check_writable("state dir", paths.state_dir(), paths.HOME_FIX),
        check_writable("log dir", paths.log_dir(), paths.HOME_FIX),
    ]
    model = paths.model_dir(pins)
    if model_complete:
        checks.append(Check("model dir", PASS, f"{model} is complete (read access suffices)"))
    else:
        checks.append(
            check_writable(
                "model dir",
                model,
                "Set MODEL (or pass fetch-model --dest) to a directory you can write, e.g. "
                "~/models/qwen3-next; or create it as root and chown it to yourself.",
            )
        )
    return checks


def run_checks(pins: Pins, host: Host | None = None) -> list[Check]:
    """All checks, in the order a DGX Spark owner would fix them."""
    h = host or Host()
    smi = nvidia_smi(h)
    stamp = read_stamp()
    model = paths.model_dir(pins)
    model_ok = manifest_path(model).exists()
    try:
        port_check = check_port(h, pins.serve.host, env_port(h.env, pins.serve.port))
    except TurboError as err:
        port_check = Check("serve port", FAIL, f"{err.what} {err.why}", err.fix)
    checks = [check_cpu(h), check_gpu(h, smi), check_driver(smi, pins)]
    checks += check_cuda(h, pins)
    checks += [
        check_torch(h, pins),
        check_memory(h),
        check_disk(
            h,
            "disk (build)",
            paths.state_dir(),
            pins.build.disk_gb,
            stamp is not None and stamp.get("result") == "ok",
        ),
        check_disk(h, "disk (model)", model, pins.model.size_gb, model_ok),
        *check_locations(pins, model_ok),
        check_pixi(h),
        check_vllm_built(stamp),
        check_model(model),
        port_check,
    ]
    checks += check_service()
    checks += check_environment(h, stamp)
    return checks


def check_environment(h: Host, stamp: dict[str, object] | None) -> list[Check]:
    """pixi version, CUDA headers where the build looks, declared vs installed versions,
    vLLM in this pixi environment (turbo/env_checks.py)."""
    from turbo import env_checks

    return env_checks.rows(h, stamp)


def check_service() -> list[Check]:
    """A row only when a vllm-turbo unit is installed: its systemd state (turbo/service.py)."""
    from turbo import service_state

    row = service_state.doctor_row()
    return [Check(*row)] if row else []


def render(checks: list[Check]) -> str:
    table = render_checks(checks)
    counts = {s: sum(c.status == s for c in checks) for s in (PASS, WARN, FAIL)}
    return table + f"\n\n{counts[PASS]} pass, {counts[WARN]} warn, {counts[FAIL]} fail"


def _data(checks: list[Check]) -> dict[str, Any]:
    return {"ok": exit_code(checks) == 0, "checks": [asdict(c) for c in checks]}


def to_json(checks: list[Check]) -> str:
    return json.dumps(_data(checks), indent=2)


def command(pins: Pins, host: Host | None = None) -> Outcome:
    """What `invoke doctor` does: every row, as a table or as JSON; exit 1 when one fails."""
    checks = run_checks(pins, host)
    return checked(render(checks), _data(checks), exit_code(checks) != 0)
