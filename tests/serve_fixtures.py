"""Builders shared by the serve, cluster, verify and bench tests: fake sysfs trees, a complete
tiny model directory, a usable build stamp and a fake `vllm` / `nvidia-smi` on PATH."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import sys
from pathlib import Path

from turbo import paths
from turbo.manifest import Manifest, ManifestFile, sha256_file, write_manifest

REPO = Path(__file__).resolve().parents[1]
STAND_IN = REPO / "tests" / "openai_server.py"
IPV4_MAPPED = "0000:0000:0000:0000:0000:ffff:{:04x}:{:04x}"


def rdma_device(sysfs: Path, name: str, netdev: str, *, state: str = "4: ACTIVE",
                link_layer: str = "Ethernet", ip: str | None = "192.168.100.10",
                gid_index: int = 3) -> None:
    """One RDMA device as the kernel shows it: netdev link, port state, GID table."""
    dev = sysfs / "class" / "infiniband" / name
    (dev / "device" / "net" / netdev).mkdir(parents=True)
    port = dev / "ports" / "1"
    (port / "gid_attrs" / "types").mkdir(parents=True)
    (port / "gid_attrs" / "ndevs").mkdir(parents=True)
    (port / "gids").mkdir(parents=True)
    (port / "state").write_text(state + "\n")
    (port / "link_layer").write_text(link_layer + "\n")
    # Slots 0/1: link-local RoCE v1/v2; gid_index: RoCE v2 on the IPv4 address; one unused slot.
    table = {0: ("IB/RoCE v1", "fe80:0000:0000:0000:0000:0000:0000:0001"),
             1: ("RoCE v2", "fe80:0000:0000:0000:0000:0000:0000:0001")}
    if ip:
        packed = int(ipaddress.IPv4Address(ip))
        table[gid_index - 1] = ("IB/RoCE v1", IPV4_MAPPED.format(packed >> 16, packed & 0xFFFF))
        table[gid_index] = ("RoCE v2", IPV4_MAPPED.format(packed >> 16, packed & 0xFFFF))
    for idx, (kind, gid) in table.items():
        (port / "gid_attrs" / "types" / str(idx)).write_text(kind + "\n")
        (port / "gid_attrs" / "ndevs" / str(idx)).write_text(netdev + "\n")
        (port / "gids" / str(idx)).write_text(gid + "\n")
    (port / "gids" / str(gid_index + 5)).write_text("0000:0000:0000:0000:0000:0000:0000:0000\n")


def fake_ipv4(table: dict[str, str]):  # type: ignore[no-untyped-def]
    def lookup(ifname: str) -> ipaddress.IPv4Interface | None:
        return ipaddress.IPv4Interface(table[ifname]) if ifname in table else None

    return lookup


def complete_model(model_dir: Path, shards: int = 2) -> Path:
    """A tiny model directory with index, config and a manifest that matches it."""
    model_dir.mkdir(parents=True, exist_ok=True)
    names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    for i, n in enumerate(names):
        (model_dir / n).write_bytes(bytes([i]) * (1000 + i))
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {f"w{i}": n for i, n in enumerate(names)}}))
    (model_dir / "config.json").write_text(json.dumps({"model_type": "qwen3_next"}))
    files = tuple(ManifestFile(p.name, p.stat().st_size, sha256_file(p))
                  for p in sorted(model_dir.iterdir()) if p.is_file())
    write_manifest(model_dir, Manifest(repo="nvidia/test", revision="0" * 40, files=files,
                                       fetched_at="2025-01-01T00:00:00Z"))
    return model_dir


def usable_stamp() -> Path:
    p = paths.stamp_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"result": "ok", "commit": "3b30e6150777", "arch_list": "12.1a",
                             "patch_digest": "x", "torch": "2.10.0", "cuda": "13.0",
                             "machine": "aarch64"}))
    return p


def fake_bin(bin_dir: Path) -> Path:
    """`vllm` runs the stand-in server with vLLM's argv; `nvidia-smi` reports a GB10."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    scripts = {
        "vllm": f'#!/bin/sh\nexec "{sys.executable}" "{STAND_IN}" "$@"\n',
        "nvidia-smi": "#!/bin/sh\necho 'NVIDIA GB10, 12.1, 580.95.05'\n",
    }
    for name, text in scripts.items():
        p = bin_dir / name
        p.write_text(text)
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def path_with(bin_dir: Path) -> str:
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
