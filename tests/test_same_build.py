"""Two TP=2 nodes must run the same build: each advertises its build digest to Ray when it
joins, and tp2-serve refuses to start when any joined node differs (issue #8, item 3)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from tests.serve_fixtures import rdma_device, usable_stamp
from turbo import cluster, serve, stamp
from turbo.doctor import Host
from turbo.pins import load_pins
from turbo.profiles import Overrides

PINS = load_pins()


def nodes_json(*builds: str | None) -> str:
    nodes = []
    for i, b in enumerate(builds):
        res = ["CPU", "GPU", "memory"] + ([cluster.build_resource(b)] if b else [])
        nodes.append({"ip": f"192.168.100.{10 + i}", "resources": res})
    return "2026-11-26 ray banner\n" + json.dumps(nodes)


class RayHost(Host):
    """A host with `ray` on PATH and a GB10 (the Ray profiles' own checks)."""

    def __init__(self, answer: tuple[int, str]) -> None:
        super().__init__(which=lambda n: f"/opt/bin/{n}", env={})

    def run(self, argv: list[str], timeout: float = 20.0) -> tuple[int, str]:
        if argv[0].endswith("nvidia-smi"):
            return 0, "NVIDIA GB10"
        return 127, ""


def test_ray_start_advertises_the_build() -> None:
    digest = "ab" * 32
    for kind, head in [("ray-head", None), ("ray-worker", "10.0.0.1")]:
        argv = cluster.ray_argv(kind, node_ip="10.0.0.2", ray_port=6379, head=head,
                                build_digest=digest)
        res = json.loads(argv[argv.index("--resources") + 1])
        assert res == {f"turbo_build_{digest[:16]}": 1}


def test_same_build_problems_name_each_difference() -> None:
    mine = "a" * 64
    same = cluster.parse_ray_nodes(nodes_json(mine, mine))
    assert cluster.same_build_problems(same, mine, 2) == []
    other = cluster.parse_ray_nodes(nodes_json(mine, "b" * 64))
    [problem] = cluster.same_build_problems(other, mine, 2)
    assert "b" * 16 in problem and "a" * 16 in problem and "192.168.100.11" in problem
    untagged = cluster.parse_ray_nodes(nodes_json(mine, None))
    assert "without a build digest" in cluster.same_build_problems(untagged, mine, 2)[0]
    alone = cluster.parse_ray_nodes(nodes_json(mine))
    assert "1 of 2 nodes joined" in cluster.same_build_problems(alone, mine, 2)[0]


def by_name(prep: serve.Prepared) -> dict[str, serve.Check]:
    return {c.name: c for c in prep.checks}


# tp2-serve asking a running cluster (matching worker accepted, another build refused, no
# cluster explained) is tested against a real two-node Ray cluster: tests/e2e/test_two_nodes.py.


@pytest.mark.parametrize("name", ["tp2-head", "tp2-worker"])
def test_ray_profiles_need_a_build_and_carry_its_digest(tmp_path: Path, name: str) -> None:
    sysfs = tmp_path / "sys"
    rdma_device(sysfs, "rocep1s0f1", "enp1s0f1np1")
    probe = serve.Probe(host=RayHost((1, "")), sysfs=sysfs,
                        ipv4=lambda n: ipaddress.IPv4Interface(
                            "192.168.100.11/24"))
    over = Overrides(head="192.168.100.10") if name == "tp2-worker" else Overrides()
    unbuilt = serve.prepare(name, PINS, over, probe=probe, environ={})
    assert by_name(unbuilt)["vllm build"].status == "fail"
    assert "--resources" not in unbuilt.plan.argv
    digest = stamp.identity_digest(json.loads(usable_stamp().read_text()))
    built = serve.prepare(name, PINS, over, probe=probe, environ={})
    assert by_name(built)["vllm build"].status == "pass"
    assert cluster.build_resource(digest) in built.plan.argv[-1]
