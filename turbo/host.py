"""The machine underneath every command: probes of the host, in one replaceable object.

:class:`Host` is how build, serve, doctor and the toolchain checks see the machine (CPU
architecture, tools on PATH, environment, memory, disk, ports, subprocess output). Tests hand in
a subclass with fixed answers, so the real machine is only touched here. It sits below every
command (doctor re-exports it for older importers) and imports nothing of ours but
:mod:`turbo.paths`.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from turbo import paths


@dataclass
class Host:
    """The machine as the product sees it. Each field is a probe; tests replace them."""

    machine: Callable[[], str] = platform.machine
    which: Callable[[str], str | None] = shutil.which
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    meminfo_path: Path = Path("/proc/meminfo")

    def run(self, argv: list[str], timeout: float = 20.0) -> tuple[int, str]:
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return 127, str(exc)
        return proc.returncode, (proc.stdout + proc.stderr).strip()

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
