"""Setting values are checked wherever they come from (--set, the seed's environment names,
PORT for the client tasks), and --set env.NAME reaches the server's environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_profiles import plan_of
from turbo import doctor, server_url
from turbo.errors import TurboError, UsageError
from turbo.pins import load_pins
from turbo.profiles import Overrides, env_port, resolve

PINS = load_pins()


@pytest.mark.parametrize(("item", "words"), [
    ("gpu-memory-utilization=lots", "not a share of memory"),
    ("gpu-memory-utilization=5", "out of range"),
    ("gpu-memory-utilization=-1", "out of range"),
    ("gpu-memory-utilization=0", "out of range"),
    ("max-model-len=abc", "not a whole number"),
    ("max-model-len=1.5", "not a whole number"),
    ("max-num-seqs=0", "out of range"),
    ("port=0", "out of range"),
    ("port=65536", "out of range"),
])
def test_set_value_of_the_wrong_type_or_range_is_one_line(item: str, words: str) -> None:
    with pytest.raises(UsageError) as exc:
        resolve("vanilla", PINS, Overrides(sets=(item,)), environ={})
    line = exc.value.line()
    key = item.split("=")[0]
    assert words in line and f"--set {key}" in line and "e.g." in line and "\n" not in line


def test_boolean_settings_take_true_or_false() -> None:
    with pytest.raises(UsageError, match="true or false"):
        resolve("mtp", PINS, Overrides(sets=("enable-prefix-caching=maybe",)), environ={})


def test_good_values_keep_their_types() -> None:
    prof = resolve("vanilla", PINS, Overrides(sets=(
        "gpu-memory-utilization=1", "max-model-len=4096", "served-model-name=007")), environ={})
    assert prof.args["gpu-memory-utilization"] == 1.0
    assert prof.args["max-model-len"] == 4096
    assert prof.args["served-model-name"] == "007"  # text stays text, not the number 7


def test_a_near_miss_set_key_names_the_nearest() -> None:
    with pytest.raises(UsageError, match="Did you mean gpu-memory-utilization"):
        resolve("vanilla", PINS, Overrides(sets=("gpu-memory-utilisation=0.7",)), environ={})


@pytest.mark.parametrize(("name", "value"), [
    ("GPU_MEMORY_UTILIZATION", "lots"), ("MAX_MODEL_LEN", "abc"), ("PORT", "abc"),
    ("MAX_NUM_SEQS", "-4")])
def test_seed_environment_names_are_checked_too(name: str, value: str) -> None:
    with pytest.raises(UsageError) as exc:
        resolve("vanilla", PINS, environ={name: value})
    assert f"{name} (environment)" in exc.value.line()


def test_env_set_reaches_the_server_and_wins(tmp_path: Path) -> None:
    """The help's own example: --set env.NCCL_DEBUG=WARN beats the tp2 profile's INFO."""
    plan = plan_of("tp2-serve", tmp_path, Overrides(sets=("env.NCCL_DEBUG=WARN",
                                                          "env.MY_VAR=1")))
    assert plan.env["NCCL_DEBUG"] == "WARN" and plan.env["MY_VAR"] == "1"


def test_env_set_empty_removes_the_profiles_variable(tmp_path: Path) -> None:
    plan = plan_of("vanilla", tmp_path, Overrides(sets=("env.PYTORCH_CUDA_ALLOC_CONF=",)), {})
    assert "PYTORCH_CUDA_ALLOC_CONF" not in plan.env


def test_exported_value_replaced_by_the_profile_says_so(tmp_path: Path) -> None:
    env = {"NCCL_DEBUG": "WARN", "HEAD_IP": "192.168.100.10",
           "VLLM_NCCL_SO_PATH": "/usr/lib/aarch64-linux-gnu/libnccl.so.2"}
    plan = plan_of("tp2-serve", tmp_path, None, env)
    assert plan.env["NCCL_DEBUG"] == "INFO"  # the profile is the same on every shell ...
    note = [n for n in plan.notes if n.startswith("NCCL_DEBUG")]
    assert note and "--set env.NCCL_DEBUG=WARN" in note[0]  # ... and says how to keep yours


def test_env_set_rejects_a_bad_name() -> None:
    with pytest.raises(UsageError, match="not an environment variable name"):
        resolve("vanilla", PINS, Overrides(sets=("env.1BAD=x",)), environ={})


def test_env_port_for_the_client_tasks() -> None:
    assert env_port({}, 8011) == 8011 and env_port({"PORT": "9000"}, 8011) == 9000
    with pytest.raises(UsageError, match="PORT"):
        env_port({"PORT": "abc"}, 8011)


def test_verify_with_bad_port_env_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "abc")
    with pytest.raises(UsageError, match="PORT"):
        server_url.client_endpoint("", None)


def test_doctor_with_bad_port_env_fails_its_row(monkeypatch: pytest.MonkeyPatch) -> None:
    host = doctor.Host(env={"PORT": "abc"})
    checks = {c.name: c for c in doctor.run_checks(PINS, host)}
    port = checks["serve port"]
    assert port.status == doctor.FAIL and "PORT" in port.detail


# --------------------------------------------------------------------------- stop, pid files
@pytest.mark.parametrize("content", [
    "{not json", '{"pid": "abc", "kind": "serve", "port": 8011}', "[1, 2]",
    '{"pid": 1, "kind": "serve", "port": 8011, "start_time": "1"}',
    '{"pid": true, "kind": "serve", "port": 8011}',
])
def test_stop_with_a_corrupt_pid_file_is_one_line(content: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_bad_input import run_inprocess
    from turbo import paths

    run = paths.run_dir()
    run.mkdir(parents=True)
    (run / "serve-8011.json").write_text(content)
    code, _, err = run_inprocess(["stop"], capsys)
    assert code == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "serve-8011.json" in lines[0] and "pgrep" in lines[0], err
    assert (run / "serve-8011.json").exists()  # not ours to judge: left for the user


def test_pid_one_is_never_signalled(monkeypatch: pytest.MonkeyPatch) -> None:
    """A crafted record naming pid 1 with its real start time must not reach killpg."""
    from turbo import paths, serve, serve_records

    start = serve_records.start_time(1)
    if start is None:
        pytest.skip("no /proc/1 here")
    run = paths.run_dir()
    run.mkdir(parents=True)
    (run / "serve-8011.json").write_text(json.dumps(
        {"pid": 1, "kind": "serve", "port": 8011, "start_time": start}))
    sent: list[int] = []
    monkeypatch.setattr(serve.os, "killpg", lambda pid, sig: sent.append(pid))
    with pytest.raises(TurboError):
        serve.stop()
    assert sent == []


# --------------------------------------------------------------------------- after --
def test_words_after_double_dash_reach_vllm_exactly() -> None:
    """invoke joins the words after -- with spaces; re-splitting that string broke a JSON
    value with spaces and dropped its quotes."""
    import subprocess
    import sys

    from tests.conftest import REPO

    spec = '{"method": "mtp", "num_speculative_tokens": 2}'
    proc = subprocess.run([sys.executable, "-m", "invoke", "serve", "--dry-run", "--json", "--",
                           "--speculative-config", spec, "--max-num-seqs", "'4"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    argv = json.loads(proc.stdout)["argv"]
    assert argv[-4:] == ["--speculative-config", spec, "--max-num-seqs", "'4"]


def test_remainder_that_cannot_be_split_is_one_line() -> None:
    from turbo.options import remainder_words

    assert remainder_words("--a 1", ["invoke", "serve", "--", "--a", "1"]) == ["--a", "1"]
    assert remainder_words('--b "x y"', ["pytest"]) == ["--b", "x y"]
    with pytest.raises(UsageError, match="after --"):
        remainder_words("--max-num-seqs '4", ["pytest"])


@pytest.mark.parametrize(("env", "words"), [
    ({"HEAD_IP": "garbage"}, "HEAD_IP (environment)"),
    ({"NODE_IP": "10.0.0.300"}, "NODE_IP (environment)"),
])
def test_node_addresses_from_the_environment_are_checked(env: dict[str, str],
                                                         words: str) -> None:
    with pytest.raises(UsageError, match="not an IP address") as exc:
        resolve("tp2-serve", PINS, environ=env)
    assert words in exc.value.line()


def test_set_head_is_checked() -> None:
    with pytest.raises(UsageError, match="not an IP address"):
        resolve("tp2-worker", PINS, Overrides(sets=("head=nohost",)), environ={})


def test_exported_gid_index_that_is_no_number_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="NCCL_IB_GID_INDEX='abc'"):
        plan_of("tp2-serve", tmp_path, None, {"NCCL_IB_GID_INDEX": "abc",
                                              "HEAD_IP": "192.168.100.10"})


def test_stop_dry_run_signals_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A live record (a sleeping process group leader stands in for a server)."""
    import subprocess
    import sys

    from turbo import paths, serve, serve_records

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             start_new_session=True)
    try:
        run = paths.run_dir()
        run.mkdir(parents=True)
        rec = run / "serve-8011.json"
        rec.write_text(json.dumps({"pid": child.pid, "kind": "serve", "port": 8011,
                                   "profile": "vanilla",
                                   "start_time": serve_records.start_time(child.pid)}))
        sent: list[int] = []
        monkeypatch.setattr(serve.os, "killpg", lambda pid, sig: sent.append(pid))
        lines: list[str] = []
        assert serve.stop(dry_run=True, out=lines.append) == 0
        assert sent == [] and rec.exists() and child.poll() is None
        assert lines == [f"would stop vanilla (port 8011): SIGTERM to process group "
                         f"{child.pid}, SIGKILL after 60 s"]
    finally:
        child.kill()  # os.kill: killpg is the patched one here
        child.wait()


@pytest.mark.parametrize(("env", "words"), [
    ({"HOST": "a b"}, "HOST (environment) 'a b': is not an address to bind. Pass e.g. "
                      "HOST=127.0.0.1."),
    ({"SERVED_MODEL_NAME": "my model"}, "not a model name without spaces"),
])
def test_text_settings_have_a_shape(env: dict[str, str], words: str) -> None:
    with pytest.raises(UsageError) as exc:
        resolve("vanilla", PINS, environ=env)
    assert words in exc.value.line()


def test_model_dir_that_is_a_file_is_named_by_doctor_and_dry_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from turbo import paths

    afile = tmp_path / "model"
    afile.write_text("not a directory")
    assert paths.unwritable_reason(afile) == f"{afile} is a file, not a directory"
    monkeypatch.setenv("MODEL", str(afile))
    rows = {c.name: c for c in doctor.run_checks(PINS, doctor.Host(env={}))}
    assert rows["model dir"].status == doctor.FAIL and "is a file" in rows["model dir"].detail
