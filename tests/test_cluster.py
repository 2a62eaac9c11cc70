"""RoCE detection on fake sysfs trees, the cluster environment, Ray argv, NCCL link check."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serve_fixtures import fake_ipv4, rdma_device
from turbo import cluster, cluster_cli
from turbo.errors import TurboError, UsageError


def test_one_port(tmp_path: Path) -> None:
    rdma_device(tmp_path, "rocep1s0f1", "enp1s0f1np1")
    c = cluster.detect(cluster.scan(tmp_path), fake_ipv4({"enp1s0f1np1": "192.168.100.11/24"}))
    assert (c.ifname, c.hca, c.gid_index, c.node_ip) == (
        "enp1s0f1np1", ("rocep1s0f1",), 3, "192.168.100.11")
    assert c.source == "sysfs" and not c.notes


def test_twin_devices_both_go_to_nccl(tmp_path: Path) -> None:
    rdma_device(tmp_path, "roceP2p1s0f1", "enP2p1s0f1np1", ip=None)
    rdma_device(tmp_path, "rocep1s0f1", "enp1s0f1np1")
    c = cluster.detect(cluster.scan(tmp_path), fake_ipv4({"enp1s0f1np1": "192.168.100.11/24"}))
    assert c.ifname == "enp1s0f1np1"
    assert c.hca == ("rocep1s0f1", "roceP2p1s0f1")
    assert c.gid_index == 3


def test_two_ports_prefer_the_head_subnet(tmp_path: Path) -> None:
    rdma_device(tmp_path, "rocep1s0f0", "enp1s0f0np0", ip="10.0.0.1")
    rdma_device(tmp_path, "rocep1s0f1", "enp1s0f1np1")
    ips = fake_ipv4({"enp1s0f0np0": "10.0.0.1/24", "enp1s0f1np1": "192.168.100.11/24"})
    devices = cluster.scan(tmp_path)
    c = cluster.detect(devices, ips, head="192.168.100.10")
    assert (c.ifname, c.hca) == ("enp1s0f1np1", ("rocep1s0f1",))
    assert "enp1s0f0np0" in c.notes[0]
    first = cluster.detect(devices, ips)
    assert first.ifname == "enp1s0f0np0" and "--ifname" in first.notes[0]


def test_none(tmp_path: Path) -> None:
    with pytest.raises(TurboError, match="no RDMA devices") as exc:
        cluster.detect(cluster.scan(tmp_path), fake_ipv4({}))
    assert "--ifname" in exc.value.line()


def test_port_down_or_infiniband_is_not_used(tmp_path: Path) -> None:
    rdma_device(tmp_path, "rocep1s0f1", "enp1s0f1np1", state="1: DOWN")
    rdma_device(tmp_path, "mlx5_0", "ib0", link_layer="InfiniBand")
    ips = fake_ipv4({"enp1s0f1np1": "192.168.100.11/24", "ib0": "10.1.0.1/16"})
    with pytest.raises(TurboError, match="rocep1s0f1=DOWN/Ethernet"):
        cluster.detect(cluster.scan(tmp_path), ips)


def test_no_address_on_the_port(tmp_path: Path) -> None:
    rdma_device(tmp_path, "rocep1s0f1", "enp1s0f1np1")
    with pytest.raises(TurboError, match="no active RoCE port with an IPv4"):
        cluster.detect(cluster.scan(tmp_path), fake_ipv4({}))


def test_overrides_skip_detection(tmp_path: Path) -> None:
    c = cluster.detect([], fake_ipv4({}), ifname="eth9", hca=("mlx5_3",), gid_index=0,
                       node_ip="10.9.9.9")
    assert (c.ifname, c.hca, c.gid_index, c.node_ip, c.source) == (
        "eth9", ("mlx5_3",), 0, "10.9.9.9", "override")


def test_ifname_override_picks_its_port(tmp_path: Path) -> None:
    rdma_device(tmp_path, "rocep1s0f0", "enp1s0f0np0", ip="10.0.0.1")
    rdma_device(tmp_path, "rocep1s0f1", "enp1s0f1np1")
    ips = fake_ipv4({"enp1s0f0np0": "10.0.0.1/24", "enp1s0f1np1": "192.168.100.11/24"})
    c = cluster.detect(cluster.scan(tmp_path), ips, ifname="enp1s0f1np1")
    assert c.hca == ("rocep1s0f1",) and c.node_ip == "192.168.100.11"


def test_cluster_env_and_system_nccl() -> None:
    choice = cluster.RoceChoice("enp1s0f1np1", ("rocep1s0f1", "roceP2p1s0f1"), 3,
                                "192.168.100.11", "sysfs")
    so = cluster.find_system_nccl(["/nope/libnccl.so.2", "/lib/libnccl.so.2"], {},
                                  exists=lambda p: p == "/lib/libnccl.so.2")
    env = cluster.cluster_env(choice, nccl_so=so, nccl_debug="INFO", nccl_debug_subsys="NET")
    assert env["VLLM_HOST_IP"] == "192.168.100.11"
    assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == env["TP_SOCKET_IFNAME"]
    assert env["NCCL_IB_HCA"] == "rocep1s0f1,roceP2p1s0f1"
    assert env["NCCL_IB_GID_INDEX"] == "3" and env["VLLM_NCCL_SO_PATH"] == "/lib/libnccl.so.2"
    assert cluster.find_system_nccl(["/lib/x"], {"VLLM_NCCL_SO_PATH": "/mine.so"}) == "/mine.so"


def test_ray_argv() -> None:
    head = cluster.ray_argv("ray-head", node_ip="10.0.0.1", ray_port=6379, head=None)
    assert head[:3] == ["ray", "start", "--head"] and "10.0.0.1" in head
    worker = cluster.ray_argv("ray-worker", node_ip="10.0.0.2", ray_port=6379, head="10.0.0.1")
    assert worker[worker.index("--address") + 1] == "10.0.0.1:6379"
    with pytest.raises(UsageError, match="--head"):
        cluster.ray_argv("ray-worker", node_ip="10.0.0.2", ray_port=6379, head=None)


ROCE_LOG = """\
spark1:1234:1234 [0] NCCL INFO Bootstrap : Using enp1s0f1np1:192.168.100.10<0>
spark1:1234:1300 [0] NCCL INFO NET/IB : Using [0]rocep1s0f1:1/RoCE [1]roceP2p1s0f1:1/RoCE \
[RO]; OOB enp1s0f1np1:192.168.100.10<0>
spark1:1234:1300 [0] NCCL INFO Channel 00/0 : 1[0] -> 0[0] [receive] via NET/IB/0
"""
SOCKET_LOG = """\
spark1:1234:1300 [0] NCCL INFO NET/IB : No device found.
spark1:1234:1300 [0] NCCL INFO NET/Socket : Using [0]enp1s0f1np1:192.168.100.10<0>
spark1:1234:1300 [0] NCCL INFO Channel 00/0 : 1[0] -> 0[0] [receive] via NET/Socket/0
"""


def test_link_check_reads_the_transport(tmp_path: Path) -> None:
    roce = cluster.parse_nccl_log(ROCE_LOG)
    assert roce.transport == "roce" and roce.ok and "RoCE" in roce.evidence[0]
    sock = cluster.parse_nccl_log(SOCKET_LOG)
    assert sock.transport == "socket" and not sock.ok
    assert cluster.parse_nccl_log("vLLM started\n").transport == "unknown"
    # Channel lines win over what NCCL merely found.
    mixed = ROCE_LOG.replace("via NET/IB/0", "via NET/Socket/0")
    assert cluster.parse_nccl_log(mixed).transport == "socket"
    log = tmp_path / "serve-tp2-serve-1.log"
    log.write_text(SOCKET_LOG)
    assert cluster_cli.link_check(str(log)).code == 1
    log.write_text(ROCE_LOG)
    assert cluster_cli.link_check(str(log)).code == 0


def test_real_ipv4_lookup_of_loopback() -> None:
    iface = cluster.ipv4_of("lo")
    assert iface is not None and str(iface.ip) == "127.0.0.1"
    assert cluster.ipv4_of("no-such-if0") is None
