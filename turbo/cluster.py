"""Two Sparks: find the RoCE port from sysfs, build the NCCL/GLOO/TP environment and Ray argv,
and tell from NCCL's own log whether it talks over RoCE or fell back to sockets.

sysfs is read the way ``ibdev2netdev`` and ``show_gids`` read it, so no RDMA user-space tools
are needed. Each ConnectX-7 port on a Spark shows up as twin RDMA devices (one per PCIe domain,
``rocep1s0f1`` and ``roceP2p1s0f1``); NCCL should get both, and the socket interface is the
netdev of the twin that carries the IP address.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from turbo.errors import TurboError, UsageError

Ipv4Of = Callable[[str], ipaddress.IPv4Interface | None]
# A twin's name differs only by the PCIe domain marker ("P2" in roceP2p1s0f1, enP2p1s0f1np1).
_DOMAIN = re.compile(r"P\d+(?=p)")


@dataclass(frozen=True)
class RdmaDevice:
    name: str
    netdevs: tuple[str, ...]
    state: str
    link_layer: str
    roce_v2_gid: int | None

    @property
    def active_roce(self) -> bool:
        return self.state == "ACTIVE" and self.link_layer == "Ethernet"


@dataclass(frozen=True)
class RoceChoice:
    """What NCCL should use on this node."""

    ifname: str
    hca: tuple[str, ...]
    gid_index: int | None
    node_ip: str | None
    source: str
    notes: tuple[str, ...] = field(default_factory=tuple)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:  # sysfs answers EINVAL for unused GID slots
        return ""


def twin_key(name: str) -> str:
    return _DOMAIN.sub("", name)


def _roce_v2_gid(port: Path) -> int | None:
    """Lowest GID index typed RoCE v2 with an IPv4-mapped GID (what NCCL_IB_GID_INDEX wants)."""
    types = port / "gid_attrs" / "types"
    if not types.is_dir():
        return None
    found: list[tuple[bool, int]] = []
    for entry in types.iterdir():
        if not entry.name.isdigit() or _read(entry).lower() != "roce v2":
            continue
        idx = int(entry.name)
        if not _read(port / "gid_attrs" / "ndevs" / entry.name):
            continue
        gid = _read(port / "gids" / entry.name).lower()
        found.append((not gid.startswith("0000:0000:0000:0000:0000:ffff:"), idx))
    return min(found)[1] if found else None


def scan(sysfs: Path = Path("/sys")) -> list[RdmaDevice]:
    """Every RDMA device under ``<sysfs>/class/infiniband``, port 1, sorted by name."""
    root = sysfs / "class" / "infiniband"
    if not root.is_dir():
        return []
    out: list[RdmaDevice] = []
    for dev in sorted(root.iterdir(), key=lambda p: p.name):
        net = dev / "device" / "net"
        netdevs = tuple(sorted(p.name for p in net.iterdir())) if net.is_dir() else ()
        port = dev / "ports" / "1"
        state = _read(port / "state").partition(":")[2].strip() or _read(port / "state")
        out.append(
            RdmaDevice(
                name=dev.name,
                netdevs=netdevs,
                state=state,
                link_layer=_read(port / "link_layer"),
                roce_v2_gid=_roce_v2_gid(port),
            )
        )
    return out


def ipv4_of(ifname: str) -> ipaddress.IPv4Interface | None:
    """The IPv4 address and netmask of a netdev (Linux ioctls; sysfs does not hold addresses)."""
    import fcntl

    siocgifaddr, siocgifnetmask = 0x8915, 0x891B
    packed = struct.pack("256s", ifname.encode()[:15])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), siocgifaddr, packed)[20:24])
            mask = socket.inet_ntoa(fcntl.ioctl(s.fileno(), siocgifnetmask, packed)[20:24])
    except OSError:
        return None
    return ipaddress.IPv4Interface(f"{addr}/{mask}")


def _no_roce(why: str) -> TurboError:
    return TurboError(
        "RoCE detection",
        why,
        "Cable and bring up the ConnectX-7 port (an IP on its enp1s0f*np* netdev), "
        "or pass --ifname and --hca (or NCCL_SOCKET_IFNAME / NCCL_IB_HCA).",
    )


def detect(
    devices: Sequence[RdmaDevice],
    ipv4: Ipv4Of,
    *,
    head: str | None = None,
    ifname: str | None = None,
    hca: Sequence[str] = (),
    gid_index: int | None = None,
    node_ip: str | None = None,
) -> RoceChoice:
    """Choose the RoCE port: overrides first, else the active port whose netdev has an IP.

    With two usable ports, the one on the head address's subnet wins, else the first by name.
    """
    notes: list[str] = []
    groups: dict[str, list[RdmaDevice]] = {}
    for dev in devices:
        groups.setdefault(twin_key(dev.name), []).append(dev)

    if ifname and hca:
        chosen = [d for d in devices if d.name in hca]
        gid = (
            gid_index
            if gid_index is not None
            else next((d.roce_v2_gid for d in chosen if d.roce_v2_gid is not None), None)
        )
        ip = node_ip or _ip_text(ipv4(ifname))
        return RoceChoice(ifname, tuple(hca), gid, ip, "override", ())

    candidates: list[tuple[str, list[RdmaDevice], str, ipaddress.IPv4Interface]] = []
    for key, twins in sorted(groups.items()):
        if not any(d.active_roce for d in twins):
            continue
        for dev in twins:
            for nd in dev.netdevs:
                if ifname and nd != ifname:
                    continue
                iface = ipv4(nd)
                if iface is not None:
                    candidates.append((key, twins, nd, iface))
                    break
            else:
                continue
            break
    if not candidates:
        if not devices:
            raise _no_roce("no RDMA devices under /sys/class/infiniband")
        states = ", ".join(f"{d.name}={d.state or '?'}/{d.link_layer or '?'}" for d in devices)
        raise _no_roce(f"no active RoCE port with an IPv4 address ({states})")
    pick = candidates[0]
    if len(candidates) > 1:
        if head:
            addr = ipaddress.IPv4Address(head)
            on_net = [c for c in candidates if addr in c[3].network]
            if on_net:
                pick = on_net[0]
        others = ", ".join(c[2] for c in candidates if c is not pick)
        notes.append(f"also usable: {others}; chose {pick[2]} (override with --ifname)")
    _, twins, nd, iface = pick
    # The twin that owns the addressed netdev first: its GID table has the IPv4 RoCE v2 entry.
    ordered = sorted(twins, key=lambda d: (nd not in d.netdevs, d.name))
    names = tuple(hca) or tuple(d.name for d in ordered if d.active_roce)
    gid = (
        gid_index
        if gid_index is not None
        else next((d.roce_v2_gid for d in ordered if d.roce_v2_gid is not None), None)
    )
    if gid is None:
        notes.append("no RoCE v2 GID found; NCCL will pick its default GID index")
    return RoceChoice(
        ifname=nd,
        hca=names,
        gid_index=gid,
        node_ip=node_ip or str(iface.ip),
        source="sysfs",
        notes=tuple(notes),
    )


def _ip_text(iface: ipaddress.IPv4Interface | None) -> str | None:
    return str(iface.ip) if iface is not None else None


def find_system_nccl(
    candidates: Sequence[str],
    environ: Mapping[str, str],
    exists: Callable[[str], bool] = os.path.exists,
) -> str | None:
    """VLLM_NCCL_SO_PATH if the user set it, else the first system libnccl that exists."""
    given = environ.get("VLLM_NCCL_SO_PATH")
    if given:
        return given
    return next((c for c in candidates if exists(c)), None)


def cluster_env(
    choice: RoceChoice, *, nccl_so: str | None, nccl_debug: str, nccl_debug_subsys: str
) -> dict[str, str]:
    """The variables every process of a two-node run needs, exported before `ray start`
    because vLLM does not forward NCCL_* to Ray workers."""
    if not choice.node_ip:
        raise UsageError(
            "node address",
            f"{choice.ifname} has no IPv4 address",
            "Pass --node-ip (or NODE_IP) with this node's RoCE address.",
        )
    env = {
        "VLLM_HOST_IP": choice.node_ip,
        "NCCL_SOCKET_IFNAME": choice.ifname,
        "GLOO_SOCKET_IFNAME": choice.ifname,
        "TP_SOCKET_IFNAME": choice.ifname,
        "NCCL_IB_HCA": ",".join(choice.hca),
        "NCCL_IB_DISABLE": "0",
        "NCCL_DEBUG": nccl_debug,
        "NCCL_DEBUG_SUBSYS": nccl_debug_subsys,
    }
    if choice.gid_index is not None:
        env["NCCL_IB_GID_INDEX"] = str(choice.gid_index)
    if nccl_so:
        env["VLLM_NCCL_SO_PATH"] = nccl_so
    return env


BUILD_RESOURCE_PREFIX = "turbo_build_"


def build_resource(build_digest: str) -> str:
    """The Ray custom resource that carries a node's build identity.

    Every node advertises it when it joins (``ray start --resources``), so the head can compare
    builds over the channel the cluster already uses, before vLLM spreads work across nodes.
    """
    return f"{BUILD_RESOURCE_PREFIX}{build_digest[:16]}"


def ray_argv(
    kind: str, *, node_ip: str, ray_port: int, head: str | None, build_digest: str | None = None
) -> list[str]:
    tail = ["--disable-usage-stats"]
    if build_digest:
        tail += ["--resources", json.dumps({build_resource(build_digest): 1})]
    if kind == "ray-head":
        return [
            "ray",
            "start",
            "--head",
            "--node-ip-address",
            node_ip,
            "--port",
            str(ray_port),
            *tail,
        ]
    if not head:
        raise UsageError(
            "tp2-worker",
            "needs the head node's address",
            "Pass --head IP (or set HEAD_IP) with the head's RoCE address.",
        )
    return [
        "ray",
        "start",
        "--address",
        f"{head}:{ray_port}",
        "--node-ip-address",
        node_ip,
        *tail,
    ]


# Asks the running Ray cluster (from a child process: importing ray here is slow and optional)
# which nodes are alive and what resources each advertises.
RAY_NODES_PROBE = (
    "import json, ray; ray.init(address='auto', logging_level='ERROR'); "
    "print(json.dumps([{'ip': n.get('NodeManagerAddress', '?'), "
    "'resources': sorted(n.get('Resources', {}))} for n in ray.nodes() if n.get('Alive')]))"
)


@dataclass(frozen=True)
class RayNode:
    ip: str
    resources: tuple[str, ...]

    def build(self) -> str | None:
        for res in self.resources:
            if res.startswith(BUILD_RESOURCE_PREFIX):
                return res[len(BUILD_RESOURCE_PREFIX) :]
        return None


def parse_ray_nodes(text: str) -> list[RayNode]:
    """The probe's JSON (its last line: Ray may print banners before it)."""
    lines = [ln for ln in text.strip().splitlines() if ln.startswith("[")]
    if not lines:
        raise TurboError(
            "ray cluster",
            "no answer from the running cluster",
            "Start it first: `invoke serve --profile tp2-head`, then tp2-worker on the other node.",
        )
    data = json.loads(lines[-1])
    return [RayNode(str(n["ip"]), tuple(str(r) for r in n["resources"])) for n in data]


def same_build_problems(nodes: list[RayNode], local_digest: str, want_nodes: int) -> list[str]:
    """Every reason the cluster's nodes cannot serve together; empty when all match."""
    mine = local_digest[:16]
    problems = []
    if len(nodes) < want_nodes:
        problems.append(
            f"{len(nodes)} of {want_nodes} nodes joined ({', '.join(n.ip for n in nodes)})"
        )
    for node in nodes:
        theirs = node.build()
        if theirs is None:
            problems.append(
                f"node {node.ip} joined without a build digest (not started by "
                "`invoke serve --profile tp2-head/tp2-worker`)"
            )
        elif theirs != mine:
            problems.append(f"node {node.ip} has build {theirs}, this node has {mine}")
    return problems


def query_ray_nodes(python: str, run: Callable[..., tuple[int, str]]) -> list[RayNode]:
    rc, out = run([python, "-c", RAY_NODES_PROBE], timeout=60)
    if rc != 0:
        raise TurboError(
            "ray cluster",
            f"cannot reach it ({out.strip().splitlines()[-1] if out.strip() else f'exit {rc}'})",
            "Start it first: `invoke serve --profile tp2-head`, then tp2-worker on the other node.",
        )
    return parse_ray_nodes(out)


# ------------------------------------------------------------------------------ link check
@dataclass(frozen=True)
class LinkReport:
    transport: str  # "roce", "ib", "socket" or "unknown"
    evidence: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.transport in ("roce", "ib")


_USING = re.compile(r"NET/(IB|Socket)\s*:\s*Using\s+(.*)")
_VIA = re.compile(r"via NET/(IB|Socket)/\d+")


def parse_nccl_log(text: str) -> LinkReport:
    """Which network NCCL chose, from its INFO lines (NCCL_DEBUG=INFO, NCCL_DEBUG_SUBSYS=NET).

    "NET/IB : Using [0]dev:1/RoCE" means RDMA over the RoCE port; "NET/Socket : Using" or
    channels "via NET/Socket" mean plain TCP, which is many times slower.
    """
    evidence: list[str] = []
    using: set[str] = set()
    via: set[str] = set()
    for line in text.splitlines():
        m = _USING.search(line)
        v = _VIA.search(line)
        if m:
            evidence.append(line.strip())
            if m.group(1) == "Socket":
                using.add("socket")
            else:
                using.add("roce" if "/RoCE" in m.group(2) else "ib")
        elif v:
            via.add(v.group(1))
            if len(evidence) < 8:
                evidence.append(line.strip())
    rdma = "roce" if "roce" in using else "ib"
    # Channel lines say what each connection really uses; "Using" lines only what was found.
    if "Socket" in via:
        transport = "socket"
    elif "IB" in via or using & {"roce", "ib"}:
        transport = rdma
    elif "socket" in using:
        transport = "socket"
    else:
        transport = "unknown"
    return LinkReport(transport, tuple(evidence))


def latest_serve_log(log_dir: Path) -> Path | None:
    logs = sorted(log_dir.glob("serve-*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1] if logs else None


def link_check(log: Path) -> LinkReport:
    try:
        text = log.read_text(errors="replace")
    except OSError as exc:
        raise UsageError(
            f"log {log}",
            f"cannot be read ({exc.strerror})",
            "Pass --log with a serve log of a tp2 profile.",
        ) from exc
    return parse_nccl_log(text)
