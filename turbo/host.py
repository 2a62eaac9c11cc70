"""The machine underneath every command: probes of the host, in one replaceable object.

:class:`Host` is how build, serve, doctor and the toolchain checks see the machine (CPU
architecture, tools on PATH, environment, memory, disk, ports, subprocess output). Tests hand in
a subclass with fixed answers, so the real machine is only touched here. The one probe that
several stages gate on, whether ptxas can assemble GB10's E2M1 conversion, lives here too.
Programs run through :mod:`turbo.proc`; it stands below every stage and command.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from turbo import paths, proc
from turbo.checks import FAIL, PASS, WARN, Check

# A one-instruction kernel: ptxas accepts it only for targets with the E2M1 conversion.
E2M1_PTX = """.version 9.0
.target {target}
.address_size 64
.visible .entry probe(.param .u64 out) {{
  .reg .b8 %c; .reg .f32 %a, %b; .reg .u64 %p; .reg .b16 %h;
  mov.f32 %a, 0f3F800000; mov.f32 %b, 0f40000000;
  cvt.rn.satfinite.e2m1x2.f32 %c, %a, %b;
  ld.param.u64 %p, [out]; cvt.u16.u8 %h, %c; st.global.u16 [%p], %h;
  ret;
}}
"""


@dataclass
class Host:
    """The machine as the product sees it. Each field is a probe; tests replace them."""

    machine: Callable[[], str] = platform.machine
    which: Callable[[str], str | None] = shutil.which
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    meminfo_path: Path = Path("/proc/meminfo")

    def run(self, argv: list[str], timeout: float = 20.0) -> tuple[int, str]:
        """(exit code, stdout and stderr); 127 and the OS's words when the program is missing,
        cannot start or runs past ``timeout``."""
        res = proc.capture(argv, timeout=timeout)
        return (127, res.error) if res.fault else (res.rc, res.output)

    def disk_free_gb(self, path: Path) -> float:
        return shutil.disk_usage(paths.nearest_existing(path)).free / 1e9

    def port_free(self, host: str, port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
        return True

    def meminfo_gb(self) -> dict[str, float]:
        out: dict[str, float] = {}
        try:
            for line in self.meminfo_path.read_text().splitlines():
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0]) * 1024 / 1e9
        except OSError:
            pass
        return out


def nvidia_smi(host: Host) -> tuple[str, str, str] | None:
    """(name, compute capability, driver version) of GPU 0, or None when there is no usable GPU."""
    if not host.which("nvidia-smi"):
        return None
    rc, out = host.run(
        ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"]
    )
    if rc != 0 or not out:
        return None
    fields = [f.strip() for f in out.splitlines()[0].split(",")]
    if len(fields) < 3:
        return None
    return fields[0], fields[1], fields[2]


def find_cuda_tool(host: Host, tool: str) -> str | None:
    """A CUDA tool from CUDA_HOME (the pixi env sets it) first, then PATH."""
    home = host.env.get("CUDA_HOME") or host.env.get("CUDA_PATH")
    if home:
        cand = Path(home) / "bin" / tool
        if cand.exists():
            return str(cand)
    return host.which(tool)


def check_ptxas_sm121a(host: Host) -> Check:
    ptxas = find_cuda_tool(host, "ptxas")
    name = "ptxas sm_121a (E2M1)"
    if not ptxas:
        return Check(name, FAIL, "ptxas not found", "Run inside the pixi environment.")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.ptx"
        src.write_text(E2M1_PTX.format(target="sm_121a"))
        rc, out = host.run([ptxas, "-arch=sm_121a", str(src), "-o", str(Path(tmp) / "p.cubin")])
    if rc == 0:
        return Check(name, PASS, f"{ptxas} assembles cvt.rn.satfinite.e2m1x2 for sm_121a")
    first = out.splitlines()[0] if out else f"exit {rc}"
    return Check(
        name,
        FAIL,
        f"{ptxas} rejects sm_121a: {first}",
        "Use CUDA 13.0's ptxas (the pixi environment) and point TRITON_PTXAS_PATH at it.",
    )


def check_port(
    host: Host, bind: str, port: int, *, name: str = "serve port", blocking: bool = False
) -> Check:
    """Is ``bind:port`` free for the server? doctor asks it as advice (in use: WARN), serve's
    preflight as a launch's gate (in use: FAIL); the detail and the fix are one."""
    if host.port_free(bind, port):
        return Check(name, PASS, f"{bind}:{port} is free")
    return Check(
        name,
        FAIL if blocking else WARN,
        f"{bind}:{port} is in use",
        "Stop the other server (`invoke stop`) or serve with --port.",
    )
