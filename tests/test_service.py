"""service.*: units for every profile pass `systemd-analyze verify`, their ExecStart runs exactly
what `serve --dry-run` shows, secrets stay in a 0600 environment file, foreign files are never
touched, the two-Spark ordering, status/doctor, uninstall, and the unit's own command line
started under $NOTIFY_SOCKET against the stand-in (READY=1 only once healthy and warmed up)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.notify_listener import Message, NotifyListener, notify_env
from tests.serve_fixtures import REPO, complete_model, fake_bin, usable_stamp
from tests.test_notify import health_and_requests
from tests.test_serve import free_port
from turbo import doctor, service
from turbo.errors import TurboError, UsageError
from turbo.profiles import load_book

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not installed (Debian/Ubuntu package `systemd`)")

# The options each profile needs on the command line (the worker profiles need the head).
PROFILE_OPTS = {
    "vanilla": [],
    "cpu": [],
    "mtp": [],
    "tp2-head": [],
    "tp2-worker": ["--head", "10.10.0.1"],
    "tp2-serve": [],
    "tp2-mp-head": ["--head", "10.10.0.1"],
    "tp2-mp-worker": ["--head", "10.10.0.1"],
}
SECRET = "sk-" + "s3cr3tvalue" * 3


def test_every_profile_is_covered() -> None:
    assert set(PROFILE_OPTS) == set(load_book().names())


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The install shell: the test's environment with `vllm`, `nvidia-smi` and `ray` on PATH
    (`ray` only has to exist: the tp2-head/worker units name it in ExecStop)."""
    bin_dir = fake_bin(tmp_path / "bin")
    ray = bin_dir / "ray"
    ray.write_text("#!/bin/sh\nexit 0\n")
    ray.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=env,
                          text=True, capture_output=True, timeout=120)


def units_dir() -> Path:
    return Path(os.environ["TURBO_SYSTEMD_DIR"])


def env_dir() -> Path:
    return Path(os.environ["TURBO_SERVICE_ENV_DIR"])


def no_systemctl(args: list[str]) -> tuple[int, str]:
    return 127, "systemctl not found"


def install(env: dict[str, str], profile: str, scope: str = service.USER, **kw: object) -> str:
    opts = service.ServeOptions(**kw)  # type: ignore[arg-type]
    lines: list[str] = []
    service.install(service.InstallRequest(profile, scope, serve=opts), dry_run=False,
                    environ=env, systemctl=no_systemctl, out=lines.append)
    return (units_dir() / service.unit_name(profile)).read_text()


def head_of(profile: str) -> dict[str, str]:
    opts = PROFILE_OPTS[profile]
    return {"head": opts[1]} if opts else {}


# ------------------------------------------------------------------------------ verify
@needs_analyze
@pytest.mark.parametrize("scope", [service.USER, service.SYSTEM])
def test_every_unit_passes_systemd_analyze_verify(env: dict[str, str], tmp_path: Path,
                                                  scope: str) -> None:
    for profile in PROFILE_OPTS:  # tp2-head comes before tp2-serve, which requires it
        install(env, profile, scope, **head_of(profile))
    units = sorted(units_dir().glob("*.service"))
    assert [u.name for u in units] == sorted(service.unit_name(p) for p in PROFILE_OPTS)
    # In a container without a running systemd: no man pages, no generators, and the user
    # manager needs a runtime directory of its own.
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700)
    argv = [str(SYSTEMD_ANALYZE), *(["--user"] if scope == service.USER else []), "verify",
            "--man=no", "--generators=no", *map(str, units)]
    r = subprocess.run(argv, env={**env, "XDG_RUNTIME_DIR": str(runtime)}, text=True,
                       capture_output=True, timeout=120)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    assert r.stdout.strip() == ""


@needs_analyze
def test_verify_catches_a_broken_unit(env: dict[str, str]) -> None:
    """The verify test above can fail: a mistyped setting and a missing binary are reported."""
    text = install(env, "vanilla").replace("Type=notify", "Type=notfy")
    broken = units_dir() / "vllm-turbo-broken.service"
    broken.write_text(text.replace(sys.executable, "/nonexistent/python"))
    r = subprocess.run([str(SYSTEMD_ANALYZE), "verify", "--man=no", "--generators=no",
                        str(broken)], text=True, capture_output=True, timeout=60)
    assert "notfy" in r.stderr and "/nonexistent/python" in r.stderr


def test_restart_back_off_only_where_systemd_knows_it() -> None:
    spec = service.Spec("vllm-turbo-x.service", "vanilla", "serve", True, "user", "x",
                        ["/bin/true"], "/", {}, "/x.env", systemd_version=255)
    assert "RestartSteps=5\nRestartMaxDelaySec=10min" in service.render_unit(spec)
    old = service.Spec(**{**spec.__dict__, "systemd_version": 252})
    assert "RestartSteps" not in service.render_unit(old)


# ------------------------------------------------------------------------------ ExecStart
def serve_flags(profile: str) -> list[str]:
    flags = [*PROFILE_OPTS[profile], "--port", "8123"]
    if load_book().profiles[profile]["kind"] == "serve":
        # Words systemd would otherwise take apart: quotes, braces, spaces, $ and %.
        flags += ["--set", "env.PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True $HOME 50%"]
        if profile != "cpu":  # the cpu profile leaves vLLM's context length to the model
            flags += ["--set", "max-model-len=32768"]
    if profile == "mtp":
        flags += ["--set", 'speculative-config={"method": "mtp", "num_speculative_tokens": 3}']
    return flags


@pytest.mark.parametrize("profile", list(PROFILE_OPTS))
def test_exec_start_runs_what_serve_dry_run_shows(env: dict[str, str], tmp_path: Path,
                                                  profile: str) -> None:
    shell = {**env, "MAX_NUM_SEQS": "8"}  # one of the seed's names, set in the install shell
    if profile == "tp2-serve":
        install(env, "tp2-head")  # which it requires
    r = cli(shell, "service.install", "--profile", profile, *serve_flags(profile))
    assert r.returncode == 0, r.stderr
    text = (units_dir() / service.unit_name(profile)).read_text()
    keys = service.parse_unit(text)
    exec_start = service.split_exec(keys["ExecStart"][0])
    if "--set" in serve_flags(profile):
        # systemd expands $VAR and %x in ExecStart: literal ones must be doubled.
        assert "$$HOME 50%%" in keys["ExecStart"][0]
    assert exec_start[:3] == [sys.executable, "-m", "invoke"]
    # What systemd gives the process: the unit's Environment= and EnvironmentFile=, nothing
    # from this shell (HOME comes from the user manager).
    unit_env = {**service.unit_environment(text), "HOME": str(tmp_path),
                **service.read_env_file(Path(keys["EnvironmentFile"][0]))}
    assert "MAX_NUM_SEQS" in unit_env
    as_unit = subprocess.run([*exec_start, "--dry-run", "--json"], env=unit_env, text=True,
                             cwd=keys["WorkingDirectory"][0], capture_output=True, timeout=120)
    assert as_unit.returncode == 0, as_unit.stderr
    by_hand = cli(shell, "serve", "--profile", profile, *serve_flags(profile), "--dry-run",
                  "--json")
    assert by_hand.returncode == 0, by_hand.stderr
    unit_plan, hand_plan = json.loads(as_unit.stdout), json.loads(by_hand.stdout)
    assert unit_plan["argv"] == hand_plan["argv"]
    assert unit_plan["env"] == hand_plan["env"]
    if hand_plan["kind"] == "serve":
        words = hand_plan["argv"]
        assert words[words.index("--max-num-seqs") + 1] == "8"
        assert hand_plan["env"]["PYTORCH_CUDA_ALLOC_CONF"].endswith("$HOME 50%")


# ------------------------------------------------------------------------------ secrets
def test_secrets_only_in_a_0600_environment_file(env: dict[str, str]) -> None:
    shell = {**env, "VLLM_API_KEY": SECRET}
    dry = cli(shell, "service.install", "--profile", "mtp", "--host", "0.0.0.0", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert SECRET not in dry.stdout + dry.stderr
    assert "VLLM_API_KEY=***" in dry.stdout and "HF_TOKEN (not set)" in dry.stdout
    assert "[Service]" in dry.stdout and "Type=notify" in dry.stdout
    assert not units_dir().exists() and not env_dir().exists()  # --dry-run wrote nothing

    r = cli(shell, "service.install", "--profile", "mtp", "--host", "0.0.0.0")
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout + r.stderr
    unit = units_dir() / "vllm-turbo-mtp.service"
    envf = env_dir() / "vllm-turbo-mtp.env"
    assert SECRET not in unit.read_text()
    assert stat.S_IMODE(envf.stat().st_mode) == 0o600
    assert service.read_env_file(envf) == {"VLLM_API_KEY": SECRET}
    assert f"EnvironmentFile={envf}" in unit.read_text()


def test_a_secret_in_set_is_refused(env: dict[str, str]) -> None:
    r = cli(env, "service.install", "--profile", "vanilla", "--set", f"env.HF_TOKEN={SECRET}")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "environment file" in r.stderr and SECRET not in r.stderr
    assert not units_dir().exists()


def test_reinstall_keeps_the_edited_environment_file(env: dict[str, str]) -> None:
    install(env, "vanilla")
    envf = env_dir() / "vllm-turbo-vanilla.env"
    envf.write_text(envf.read_text() + "HF_TOKEN=hf_edited_by_hand\n")
    envf.chmod(0o644)
    text = install(env, "vanilla", port=8124)
    assert "--port 8124" in text
    assert service.read_env_file(envf)["HF_TOKEN"] == "hf_edited_by_hand"
    assert stat.S_IMODE(envf.stat().st_mode) == 0o600


# ------------------------------------------------------------------------------ foreign files
def test_foreign_unit_is_never_overwritten(env: dict[str, str]) -> None:
    units_dir().mkdir(parents=True)
    foreign = units_dir() / "vllm-turbo-vanilla.service"
    foreign.write_text("[Service]\nExecStart=/usr/bin/mine\n")
    r = cli(env, "service.install", "--profile", "vanilla")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "not written by vllm-turbo" in r.stderr
    assert foreign.read_text() == "[Service]\nExecStart=/usr/bin/mine\n"
    r = cli(env, "service.uninstall", "--name", "vanilla")
    assert r.returncode == 1 and "not written by vllm-turbo" in r.stderr and foreign.exists()


def test_bad_names_and_scopes(env: dict[str, str]) -> None:
    with pytest.raises(UsageError, match="not a plain name"):
        service.unit_name("../../etc/passwd")
    r = cli(env, "service.install", "--user", "--system")
    assert r.returncode == 2 and "Pick one" in r.stderr
    r = cli(env, "service.install", "--profile", "vanilla", "--", "--api-key", SECRET)
    assert r.returncode == 2 and "--set" in r.stderr and SECRET not in r.stderr


def test_system_unit_needs_root(env: dict[str, str], tmp_path: Path) -> None:
    real = {k: v for k, v in env.items() if k not in ("TURBO_SYSTEMD_DIR",)}
    req = service.InstallRequest("vanilla", service.SYSTEM)
    with pytest.raises(TurboError, match="needs root"):
        service.install(req, dry_run=False, environ=real, euid=1000, systemctl=no_systemctl,
                        out=lambda _: None)
    # A dry run needs no root and shows what a system unit is.
    lines: list[str] = []
    service.install(req, dry_run=True, environ=real, euid=1000, systemctl=no_systemctl,
                    out=lines.append)
    text = "\n".join(lines)
    assert "/etc/systemd/system/vllm-turbo-vanilla.service (would write; needs root)" in text
    assert "User=" in text and "WantedBy=multi-user.target" in text


# ------------------------------------------------------------------------------ two Sparks
def test_two_spark_units_and_their_order(env: dict[str, str]) -> None:
    with pytest.raises(TurboError, match="Install it first"):
        install(env, "tp2-serve")
    head = install(env, "tp2-head", service.SYSTEM)
    assert "Type=oneshot" in head and "RemainAfterExit=yes" in head
    assert "ExecStop=" in head and head.split("ExecStop=")[1].split("\n")[0].endswith("ray stop")
    assert "LimitMEMLOCK=infinity" in head  # NCCL over RoCE registers memory
    serve_unit = install(env, "tp2-serve", service.SYSTEM)
    assert "Requires=vllm-turbo-tp2-head.service\nAfter=vllm-turbo-tp2-head.service" in serve_unit
    assert "Type=notify" in serve_unit and "NotifyAccess=main" in serve_unit
    worker = install(env, "tp2-worker", head="10.10.0.1")
    assert "Type=oneshot" in worker and "--head 10.10.0.1" in worker
    assert "Requires=" not in worker  # the head is on the other node: Restart= retries
    mp_head = install(env, "tp2-mp-head", head="10.10.0.1")
    assert "Type=notify" in mp_head and "Requires=" not in mp_head
    mp_worker = install(env, "tp2-mp-worker", head="10.10.0.1")
    assert "Type=exec" in mp_worker  # headless: no /health to wait for
    for text in (head, serve_unit, worker, mp_head, mp_worker):
        assert "After=network-online.target\nWants=network-online.target" in text
        assert "Restart=on-failure" in text and "RestartPreventExitStatus=2" in text


def test_start_timeout_outlasts_serves_own_wait(env: dict[str, str]) -> None:
    text = install(env, "mtp")
    timeout = int(service.parse_unit(text)["TimeoutStartSec"][0])
    sec = load_book().section("serve")
    # serve gives up first (with vLLM's log tail); systemd's limit is the backstop.
    assert timeout > sec["health_timeout_s"] + sec["warmup_timeout_s"] >= 15 * 60
    assert "KillMode=mixed" in text


# ------------------------------------------------------------------------------ status, doctor
def fake_systemctl(active: str) -> service.Systemctl:
    def run(args: list[str]) -> tuple[int, str]:
        if "is-active" in args:
            return (0 if active == "active" else 3), active
        if "is-enabled" in args:
            return 0, "enabled"
        return 0, ""
    return run


def test_status_and_doctor_row(env: dict[str, str]) -> None:
    assert service.doctor_row(env) is None  # nothing installed: no row
    assert doctor.check_service() == []
    install(env, "mtp")
    (units_dir() / "other.service").write_text("[Service]\nExecStart=/bin/true\n")
    found = service.states(env)
    assert [(s.unit, s.profile, s.active) for s in found] == [
        ("vllm-turbo-mtp.service", "mtp", "unknown (systemctl not available)")]
    assert service.doctor_row(env, fake_systemctl("active")) == (
        "service", "pass", "vllm-turbo-mtp.service (user): active, enabled", "")
    _, status, _, fix = service.doctor_row(env, fake_systemctl("failed")) or ("", "", "", "")
    assert status == "fail" and "journalctl --user -u vllm-turbo-mtp.service" in fix
    assert service.doctor_row(env, fake_systemctl("activating"))[1] == "warn"  # type: ignore[index]
    row = doctor.check_service()
    assert [(c.name, c.status) for c in row] == [("service", "pass")]
    assert row[0].detail == ("vllm-turbo-mtp.service (user): installed at "
                             f"{units_dir() / 'vllm-turbo-mtp.service'} (no systemctl to ask)")
    r = cli(env, "service.status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["profile"] == "mtp"


def test_uninstall(env: dict[str, str]) -> None:
    install(env, "vanilla")
    unit, envf = units_dir() / "vllm-turbo-vanilla.service", env_dir() / "vllm-turbo-vanilla.env"
    r = cli(env, "service.uninstall", "--name", "vanilla", "--dry-run")
    assert r.returncode == 0 and "would remove" in r.stdout and unit.exists()
    r = cli(env, "service.uninstall", "--profile", "vanilla")
    assert r.returncode == 0 and not unit.exists() and envf.exists()
    assert "--purge" in r.stdout
    install(env, "vanilla")
    r = cli(env, "service.uninstall", "--name", "vanilla", "--purge")
    assert r.returncode == 0 and not unit.exists() and not envf.exists()
    r = cli(env, "service.uninstall", "--name", "vanilla")
    assert r.returncode == 2 and "not installed" in r.stderr


# ------------------------------------------------------------------ under systemd's eyes
def test_the_units_command_notifies_ready_once_warmed_up(env: dict[str, str],
                                                         tmp_path: Path) -> None:
    """The unit's own ExecStart and environment, started as systemd would (NOTIFY_SOCKET on an
    abstract socket): STATUS while the stand-in loads, READY=1 once /health and the warm-up
    were answered, STOPPING=1 and a clean exit on SIGTERM (what `systemctl stop` sends)."""
    usable_stamp()
    port = free_port()
    model = complete_model(tmp_path / "m")
    text = install(env, "vanilla", port=port, model=str(model), health_timeout=60)
    keys = service.parse_unit(text)
    run_env = {**service.unit_environment(text), "HOME": str(tmp_path),
               "STANDIN_STARTUP_S": "1.5"}

    def at_arrival(_m: Message) -> dict[str, object]:
        return health_and_requests(port)

    with NotifyListener.at(tmp_path, abstract=True, on_message=at_arrival) as nl:
        proc = subprocess.Popen(service.split_exec(keys["ExecStart"][0]),
                                env=notify_env(run_env, nl), cwd=keys["WorkingDirectory"][0],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            ready = nl.wait_for("READY", timeout=90)
            assert ready is not None, "no READY=1"
            assert ready.seen == {"health": 200, "requests": 1.0}
            assert nl.messages[0].seen["health"] != 200
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert nl.wait_for("STOPPING", timeout=5) is not None
    assert proc.returncode == 0, out


def test_in_the_real_directory_systemctl_is_driven(env: dict[str, str], tmp_path: Path) -> None:
    """Where the unit directory is systemd's own (here under a temporary XDG_CONFIG_HOME):
    daemon-reload after writing, enable --now on request, disable --now before removing."""
    real = {k: v for k, v in env.items() if k != "TURBO_SYSTEMD_DIR"}
    real["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    calls: list[list[str]] = []

    def systemctl(args: list[str]) -> tuple[int, str]:
        calls.append(args)
        return (0, "systemd 252 (252.38)") if args == ["--version"] else (0, "")

    lines: list[str] = []
    req = service.InstallRequest("vanilla")
    service.install(req, dry_run=False, enable=True, environ=real, systemctl=systemctl,
                    out=lines.append)
    unit = tmp_path / "config" / "systemd" / "user" / "vllm-turbo-vanilla.service"
    assert unit.exists()
    assert calls[1:] == [["--user", "daemon-reload"],
                         ["--user", "enable", "--now", "vllm-turbo-vanilla.service"]]
    assert "loginctl enable-linger" in lines[-1]
    calls.clear()
    service.uninstall("vanilla", service.USER, purge=False, dry_run=False, environ=real,
                      systemctl=systemctl, out=lines.append)
    assert calls == [["--user", "disable", "--now", "vllm-turbo-vanilla.service"],
                     ["--user", "daemon-reload"]]
    assert not unit.exists()


def test_a_second_serving_unit_is_flagged(env: dict[str, str]) -> None:
    install(env, "tp2-head")
    lines: list[str] = []
    req = service.InstallRequest("mtp", serve=service.ServeOptions())
    service.install(req, dry_run=True, environ=env, systemctl=no_systemctl, out=lines.append)
    assert "one Spark holds one" not in "\n".join(lines)  # Ray's unit serves no model
    install(env, "vanilla")
    lines.clear()
    service.install(req, dry_run=True, environ=env, systemctl=no_systemctl, out=lines.append)
    assert "vllm-turbo-vanilla.service also serve(s) a model" in "\n".join(lines)
