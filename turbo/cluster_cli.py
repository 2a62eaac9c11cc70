"""The two-Spark commands: which RoCE port tp2 would use, and which transport NCCL chose.

``invoke cluster.detect`` and ``invoke cluster.link-check`` call these; the sysfs scan and the
NCCL log reading are plain functions in ``turbo.cluster``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from turbo import cluster, paths
from turbo.errors import UsageError
from turbo.outcome import Outcome, checked, done

# What each transport NCCL can pick means for a TP=2 server.
TRANSPORT_VERDICT = {
    "roce": "RDMA over RoCE",
    "ib": "RDMA (InfiniBand verbs)",
    "socket": "TCP sockets (slow: check NCCL_IB_HCA and the RoCE port)",
    "unknown": "not said (is NCCL_DEBUG=INFO set? did NCCL start?)",
}


def detect(sysfs: str, head: str | None) -> Outcome:
    """The RoCE netdev, both RDMA devices and the GID index found under ``sysfs``."""
    choice = cluster.detect(cluster.scan(Path(sysfs)), cluster.ipv4_of, head=head)
    lines = [
        f"RoCE netdev:  {choice.ifname} ({choice.node_ip})",
        f"RDMA devices: {','.join(choice.hca)}",
        f"GID index:    {choice.gid_index if choice.gid_index is not None else 'default'}",
    ]
    return done("\n".join(lines + [f"note: {n}" for n in choice.notes]), asdict(choice))


def link_check(log: str | None) -> Outcome:
    """NCCL's transport as its log (``log``, else the newest serve log) says; 1 unless RDMA."""
    path = Path(log) if log else cluster.latest_serve_log(paths.log_dir())
    if path is None:
        raise UsageError(
            "link-check",
            f"no serve log in {paths.log_dir()}",
            "Serve a tp2 profile first, or pass --log FILE.",
        )
    report = cluster.link_check(path)
    lines = [f"NCCL transport in {path}: {TRANSPORT_VERDICT[report.transport]}"]
    lines += [f"  {line}" for line in report.evidence[:6]]
    data = {"log": str(path), "transport": report.transport, "evidence": list(report.evidence)}
    return checked("\n".join(lines), data, failed=not report.ok)
