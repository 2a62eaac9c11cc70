"""Serve profiles: every profile's argv and env against golden files, overrides, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.serve_fixtures import fake_ipv4, rdma_device
from turbo import serve
from turbo.doctor import Host
from turbo.errors import UsageError
from turbo.pins import load_pins
from turbo.profiles import Overrides, load_book, parse_value, resolve

GOLDEN = Path(__file__).parent / "golden"
PROFILES = ["vanilla", "mtp", "tp2-head", "tp2-worker", "tp2-serve", "tp2-mp-head",
            "tp2-mp-worker"]
# What the golden files were made with: a Spark-like node with twin RDMA devices.
GOLDEN_ENV = {"VLLM_NCCL_SO_PATH": "/usr/lib/aarch64-linux-gnu/libnccl.so.2",
              "HEAD_IP": "192.168.100.10"}


def spark_probe(tmp_path: Path) -> serve.Probe:
    sysfs = tmp_path / "sys"
    if not sysfs.exists():
        rdma_device(sysfs, "rocep1s0f1", "enp1s0f1np1")
        rdma_device(sysfs, "roceP2p1s0f1", "enP2p1s0f1np1", ip=None)
    host = Host(which=lambda n: f"/opt/cuda-13.0/bin/{n}", env={})
    return serve.Probe(host=host, sysfs=sysfs,
                       ipv4=fake_ipv4({"enp1s0f1np1": "192.168.100.11/24"}),
                       gpu=lambda: "NVIDIA GB10")


def plan_of(name: str, tmp_path: Path, overrides: Overrides | None = None,
            environ: dict[str, str] | None = None) -> serve.Plan:
    env = GOLDEN_ENV if environ is None else environ
    return serve.prepare(name, load_pins(), overrides, probe=spark_probe(tmp_path),
                         environ=env).plan


@pytest.mark.parametrize("name", PROFILES)
def test_profile_matches_golden(name: str, tmp_path: Path) -> None:
    plan = plan_of(name, tmp_path)
    got = {"argv": plan.argv, "env": plan.env}
    golden = GOLDEN / f"{name}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(json.dumps(got, indent=2) + "\n")
    assert got == json.loads(golden.read_text()), f"re-review {golden} if this change is meant"


def test_every_profile_of_the_issue_exists() -> None:
    book = load_book()
    assert set(PROFILES) <= set(book.names())
    assert book.defaults_env["VLLM_USE_FLASHINFER_MOE_FP4"] == "0"
    assert book.defaults_env["VLLM_TEST_FORCE_FP8_MARLIN"] == "1"
    assert book.defaults_env["VLLM_NVFP4_GEMM_BACKEND"] == "marlin"
    assert book.defaults_env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert 0.75 <= float(book.defaults_args["gpu-memory-utilization"]) <= 0.85


def test_mtp_speculates_two_tokens_without_prefix_caching(tmp_path: Path) -> None:
    argv = plan_of("mtp", tmp_path).argv
    spec = json.loads(argv[argv.index("--speculative-config") + 1])
    assert spec == {"method": "mtp", "num_speculative_tokens": 2}
    assert "--no-enable-prefix-caching" in argv


def test_serve_args_come_from_pins(tmp_path: Path) -> None:
    pins = load_pins()
    plan = plan_of("vanilla", tmp_path)
    assert plan.argv[:3] == ["vllm", "serve", pins.model.path]
    assert plan.argv[plan.argv.index("--port") + 1] == str(pins.serve.port)
    assert plan.argv[plan.argv.index("--host") + 1] == pins.serve.host == "127.0.0.1"
    assert plan.argv[plan.argv.index("--served-model-name") + 1] == pins.serve.served_name


def test_tp2_exports_the_roce_environment(tmp_path: Path) -> None:
    plan = plan_of("tp2-serve", tmp_path)
    assert plan.env["NCCL_IB_HCA"] == "rocep1s0f1,roceP2p1s0f1"
    assert plan.env["NCCL_IB_GID_INDEX"] == "3"
    for key in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME"):
        assert plan.env[key] == "enp1s0f1np1"
    assert plan.env["VLLM_HOST_IP"] == "192.168.100.11"
    assert plan.env["VLLM_NCCL_SO_PATH"] == GOLDEN_ENV["VLLM_NCCL_SO_PATH"]
    assert plan.argv[-2:] == ["--distributed-executor-backend", "ray"]


def test_overrides_from_the_command_line(tmp_path: Path) -> None:
    ov = Overrides(port=9000, model="/m", host="0.0.0.0",
                   sets=("gpu-memory-utilization=0.75", "enable-prefix-caching=true",
                         "attention-backend=", "env.VLLM_NVFP4_GEMM_BACKEND=cutlass"),
                   extra=("--max-num-batched-tokens", "4096"))
    plan = plan_of("mtp", tmp_path, ov, {})
    a = plan.argv
    assert a[2] == "/m" and a[a.index("--port") + 1] == "9000"
    assert a[a.index("--host") + 1] == "0.0.0.0"
    assert a[a.index("--gpu-memory-utilization") + 1] == "0.75"
    assert "--enable-prefix-caching" in a and "--no-enable-prefix-caching" not in a
    assert "--attention-backend" not in a
    assert a[-2:] == ["--max-num-batched-tokens", "4096"]
    assert plan.env["VLLM_NVFP4_GEMM_BACKEND"] == "cutlass"


def test_seed_environment_names_sit_between_profile_and_flags(tmp_path: Path) -> None:
    env = {"MODEL": "/seed/model", "PORT": "8123", "GPU_MEMORY_UTILIZATION": "0.78"}
    a = plan_of("vanilla", tmp_path, None, env).argv
    assert a[2] == "/seed/model"
    assert a[a.index("--port") + 1] == "8123"
    assert a[a.index("--gpu-memory-utilization") + 1] == "0.78"
    a = plan_of("vanilla", tmp_path, Overrides(port=8200, sets=("model=/flag",)), env).argv
    assert a[a.index("--port") + 1] == "8200" and a[2] == "/flag"


def test_unknown_profile_lists_the_valid_ones() -> None:
    with pytest.raises(UsageError) as exc:
        resolve("turbo-max", load_pins(), environ={})
    line = exc.value.line()
    assert "turbo-max" in line and all(p in line for p in PROFILES)
    assert "\n" not in line


@pytest.mark.parametrize("item", ["gpu-memory-util=0.8", "nonsense=1", "envNCCL_DEBUG=1"])
def test_unknown_set_key_lists_the_valid_ones(item: str) -> None:
    with pytest.raises(UsageError) as exc:
        resolve("vanilla", load_pins(), Overrides(sets=(item,)), environ={})
    assert "gpu-memory-utilization" in exc.value.line() and "Valid keys" in exc.value.line()


@pytest.mark.parametrize("item", ["no-equals", "=1"])
def test_malformed_set_is_one_line(item: str) -> None:
    with pytest.raises(UsageError, match="key=value"):
        resolve("vanilla", load_pins(), Overrides(sets=(item,)), environ={})


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_bad_port_is_refused(port: str) -> None:
    with pytest.raises(UsageError, match="TCP port"):
        resolve("vanilla", load_pins(), environ={"PORT": port})


def test_worker_without_head_says_how(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--head"):
        plan_of("tp2-worker", tmp_path, None, {})


def test_parse_value_types() -> None:
    assert parse_value("true") is True and parse_value("False") is False
    assert parse_value("2") == 2 and parse_value("0.8") == 0.8
    assert parse_value('{"a":1}') == '{"a":1}'


@pytest.mark.parametrize("name", ["vanilla", "mtp", "tp2-head", "tp2-worker", "tp2-serve"])
def test_seed_named_wrappers_call_the_cli(name: str) -> None:
    stem = name.replace("-", ".")
    script = Path(__file__).parents[1] / "scripts" / f"start.turbo.qwen3next.{stem}"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert f"invoke serve --profile {name} \"$@\"" in text
    assert name in load_book().names()
