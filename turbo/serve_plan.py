"""A resolved profile becomes a launch plan: vLLM's (or Ray's) argv and its environment.

The plan is plain data (turbo/serve_types.py), so ``--dry-run`` shows exactly what runs, golden
tests pin it, and the service unit is composed from the same resolution serve launches.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from turbo import cluster, serve_secrets, stamp
from turbo.errors import TurboError, UsageError
from turbo.host import Host, find_cuda_tool
from turbo.pins import Pins
from turbo.profiles import ArgValue, Overrides, Profile, ProfileBook, resolve
from turbo.redact import is_secret_key
from turbo.serve_types import DETECT_NET, NetOptions, Plan

_MISSING_FIX = {
    "head": "Pass --head IP (or set HEAD_IP) with the head node's RoCE address.",
    "node_ip": "Pass --node-ip (or set NODE_IP) with this node's RoCE address.",
    "ptxas": "Run inside the pixi environment (CUDA 13.0) or set CUDA_HOME.",
}


@dataclass(frozen=True)
class Planned:
    """A plan with what it was made from: the resolved profile, why the cluster network was
    not detected (None when it was, or for a profile that is not a cluster one), and this
    node's build identity (None when nothing usable is built)."""

    plan: Plan
    profile: Profile
    roce_error: str | None = None
    build_digest: str | None = None


@dataclass(frozen=True)
class Network:
    """The cluster network a profile runs over: the RoCE choice and the environment it sets."""

    roce: cluster.RoceChoice | None = None
    env: dict[str, str] | None = None
    error: str | None = None


def _flag_words(key: str, value: ArgValue) -> list[str]:
    if value is True:
        return [f"--{key}"]
    if value is False:
        return [f"--no-{key}"]
    return [f"--{key}", str(value)]


def _fill(text: str, values: Mapping[str, str | None], what: str) -> str:
    for name, value in values.items():
        token = "{" + name + "}"
        if token in text:
            if value is None:
                raise UsageError(
                    what,
                    f"needs {name.replace('_', ' ')}",
                    _MISSING_FIX.get(name, "Pass it on the command line."),
                )
            text = text.replace(token, value)
    return text


def _replaced_exports(env: Mapping[str, str], exported: Mapping[str, str]) -> list[str]:
    out = []
    for key, value in env.items():
        old = exported.get(key)
        if old is None or old == value:
            continue
        if is_secret_key(key):
            out.append(f"{key}: the profile's value replaces your exported one")
        else:
            out.append(
                f"{key}: the profile's {value!r} replaces your exported {old!r}; keep yours "
                f"with --set env.{key}={shlex.quote(old)}"
            )
    return out


def _plan_env(
    prof: Profile,
    values: Mapping[str, str | None],
    cluster_env: Mapping[str, str],
    environ: Mapping[str, str],
) -> tuple[dict[str, str], list[str]]:
    """The launch environment and the notes about it (a variable left out, an export
    replaced). Lowest first: the profile's data < the cluster network < ``--set env.NAME``."""
    notes: list[str] = []
    env: dict[str, str] = {}
    for key, val in prof.env.items():
        if "{ptxas}" in val and values.get("ptxas") is None:
            notes.append(f"{key} not set: no CUDA 13 ptxas found (run inside pixi)")
            continue
        env[key] = _fill(val, values, f"profile {prof.name} env {key}")
    env.update(cluster_env)
    for key, set_value in prof.env_set.items():
        if set_value is None:
            env.pop(key, None)
        else:
            env[key] = set_value
    return env, notes + _replaced_exports(env, environ)


def _vllm_argv(prof: Profile, values: Mapping[str, str | None]) -> list[str]:
    argv = ["vllm", "serve", prof.model]
    for key, value in prof.args.items():
        if isinstance(value, str):
            value = _fill(value, values, f"profile {prof.name} --{key}")
        argv += _flag_words(key, value)
    return argv + list(prof.extra)


def build_plan(
    prof: Profile,
    *,
    ptxas: str | None,
    roce: cluster.RoceChoice | None,
    cluster_env: Mapping[str, str],
    ray_port: int,
    build_digest: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Plan:
    """argv and env for one resolved profile. ``roce``/``cluster_env`` only for cluster ones.

    Environment, lowest first: what the user exported < the profile's data (and the detected
    cluster network) < ``--set env.NAME=value``. A profile means the same on every shell; a
    note says when it replaces an exported value, and how to keep that value."""
    node_ip = prof.settings.get("node-ip") or (roce.node_ip if roce else None)
    head = prof.settings.get("head")
    if prof.kind == "ray-head" or (head is None and prof.args.get("node-rank") == 0):
        head = head or node_ip
    values = {"head": head, "node_ip": node_ip, "ptxas": ptxas}
    env, notes = _plan_env(prof, values, cluster_env, environ or {})
    if prof.kind in ("ray-head", "ray-worker"):
        if not node_ip:
            raise UsageError(
                f"profile {prof.name}", "needs this node's RoCE address", _MISSING_FIX["node_ip"]
            )
        argv = cluster.ray_argv(
            prof.kind, node_ip=node_ip, ray_port=ray_port, head=head, build_digest=build_digest
        )
        api = False
    else:
        # A key after -- goes to vLLM's environment, out of `ps` and vLLM's argument log.
        argv, moved = serve_secrets.move_to_env(_vllm_argv(prof, values))
        env.update(moved)
        # A headless node (the Ray-free worker) serves no HTTP API.
        api = prof.args.get("headless") is not True
    return Plan(
        prof.name,
        prof.kind,
        prof.description,
        argv,
        env,
        prof.host,
        prof.port,
        prof.served_name,
        prof.model,
        api=api,
        roce=asdict(roce) if roce else None,
        notes=notes,
    )


def local_build_digest(built: Mapping[str, Any] | None) -> str | None:
    """This node's build identity (what two TP=2 nodes must share); None when not built."""
    if built is None or built.get("result") != stamp.OK:
        return None
    return stamp.identity_digest(built)


def stamped_exe(plan: Plan, built: Mapping[str, Any] | None) -> Plan:
    """An adopted vLLM (and the Ray installed beside it) runs from where `adopt-vllm` found it,
    whatever PATH says now."""
    exe = (built or {}).get("vllm_exe")
    if not isinstance(exe, str) or plan.argv[:1] not in (["vllm"], ["ray"]):
        return plan
    tool = Path(exe).parent / plan.argv[0]
    if tool.is_file():
        return replace(plan, argv=[str(tool), *plan.argv[1:]])
    return plan


def net_from_env(net: NetOptions, environ: Mapping[str, str]) -> NetOptions:
    """The overrides given as options, else as exported NCCL variables."""
    ifname = net.ifname or environ.get("NCCL_SOCKET_IFNAME") or None
    hca = net.hca or tuple(h for h in environ.get("NCCL_IB_HCA", "").split(",") if h)
    gid = net.gid_index
    exported = environ.get("NCCL_IB_GID_INDEX", "").strip()
    if gid is None and exported:
        if not exported.isdigit() or int(exported) > 255:
            raise UsageError(
                f"NCCL_IB_GID_INDEX={exported!r} (environment)",
                "is not a GID index (0-255)",
                "Unset it to use the RoCE v2 GID found in sysfs, or pass --gid-index N.",
            )
        gid = int(exported)
    return NetOptions(ifname, hca, gid)


def detect_network(
    prof: Profile,
    net: NetOptions,
    environ: Mapping[str, str],
    section: Mapping[str, Any],
    *,
    sysfs: Path,
    ipv4: cluster.Ipv4Of,
) -> Network:
    """The RoCE link and NCCL environment of a cluster profile. A detection that fails still
    yields a plan (with placeholders) so --dry-run shows it; ``error`` says why."""
    n = net_from_env(net, environ)
    error: str | None = None
    try:
        roce = cluster.detect(
            cluster.scan(sysfs),
            ipv4,
            head=prof.settings.get("head"),
            ifname=n.ifname,
            hca=n.hca,
            gid_index=n.gid_index,
            node_ip=prof.settings.get("node-ip"),
        )
    except TurboError as err:
        error = err.why
        roce = cluster.RoceChoice(
            n.ifname or "<RoCE netdev>",
            n.hca or ("<RDMA devices>",),
            n.gid_index,
            prof.settings.get("node-ip") or "<node IP>",
            "not detected",
        )
    nccl = cluster.find_system_nccl([str(c) for c in section.get("system_nccl", [])], environ)
    env = cluster.cluster_env(
        roce,
        nccl_so=nccl,
        nccl_debug=str(section.get("nccl_debug", "INFO")),
        nccl_debug_subsys=str(section.get("nccl_debug_subsys", "")),
    )
    return Network(roce, env, error)


def plan_profile(
    name: str,
    pins: Pins,
    overrides: Overrides,
    *,
    book: ProfileBook,
    environ: Mapping[str, str],
    built: Mapping[str, Any] | None,
    net: NetOptions = DETECT_NET,
    host: Host | None = None,
    sysfs: Path = Path("/sys"),
    ipv4: cluster.Ipv4Of = cluster.ipv4_of,
) -> Planned:
    """Resolve the profile (settings, ``--set``, environment), detect the cluster network for
    a cluster profile, and plan the launch; ``built`` is this node's build stamp."""
    prof = resolve(name, pins, overrides, environ, book)
    ptxas = find_cuda_tool(host or Host(), "ptxas")
    section = book.section("cluster")
    network = (
        detect_network(prof, net, environ, section, sysfs=sysfs, ipv4=ipv4)
        if prof.cluster
        else Network()
    )
    digest = local_build_digest(built)
    plan = build_plan(
        prof,
        ptxas=ptxas,
        roce=network.roce,
        cluster_env=network.env or {},
        ray_port=int(section.get("ray_port", 6379)),
        build_digest=digest,
        environ=environ,
    )
    return Planned(stamped_exe(plan, built), prof, network.error, digest)
