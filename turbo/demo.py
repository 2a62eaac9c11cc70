"""`invoke demo`: the whole flow against the real vLLM on any x86_64 Linux without a GPU.

vLLM 0.16.0's CPU build in the cached environment (turbo/cpu_vllm.py), a tiny Qwen3-Next made
here (turbo/tiny_model.py), then the product's own commands, exactly as a user types them:
``adopt-vllm``, ``adopt-model``, ``serve --profile cpu --detach``, ``verify``, a short
``bench``, ``stop``. The e2e test session (tests/e2e) uses these same helpers.

State (stamp, logs, pid files) goes to a demo directory of its own (TURBO_HOME), so the demo
never replaces the stamp of a vLLM built on this machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from turbo import cpu_vllm, paths, proc
from turbo.errors import TurboError
from turbo.outcome import Outcome, done

Out = Callable[[str], None]

# The vLLM plugin that makes Qwen3-Next run on the CPU backend (PyTorch gated delta-net).
PLUGIN_DIR = paths.repo_root() / "tests" / "vllm_cpu_plugin"
# float32: greedy output then equals transformers' token for token (bfloat16 serves too).
SERVE_EXTRA = ("--dtype", "float32")
DONE = ".turbo-tiny-complete"


def plugin_dir() -> Path:
    if not (PLUGIN_DIR / "pyproject.toml").is_file():
        raise TurboError(
            "the vLLM CPU plugin",
            f"{PLUGIN_DIR} is missing (the demo runs from a checkout of vllm-turbo)",
            "Run it from a git clone of the project.",
        )
    return PLUGIN_DIR


def prepare_env(progress: Out = print) -> cpu_vllm.CpuEnv:
    """The cached vLLM CPU environment with the plugin installed (built once per machine)."""
    return cpu_vllm.ensure_env(plugins=[plugin_dir()], progress=progress)


def make_checkpoint(env: cpu_vllm.CpuEnv, dest: Path, kind: str = "qwen3-next") -> Path:
    """A tiny checkpoint at ``dest`` (made once; a half-made one is made again)."""
    if (dest / DONE).is_file():
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    res = proc.capture(
        [str(env.python), "-m", "turbo.tiny_model", "make", kind, str(tmp)],
        timeout=None,
        env={"PYTHONPATH": str(paths.repo_root())},
    )
    if not res.ok:
        lines = res.stderr.strip().splitlines() or [res.why() if res.fault else f"exit {res.rc}"]
        raise TurboError(f"making the tiny {kind} checkpoint", lines[-1], "See the message above.")
    (tmp / DONE).write_text("made by turbo.tiny_model\n")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Result:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float


def invoke(
    args: Sequence[str],
    environ: Mapping[str, str],
    timeout: float = 900,
    stream: Out | None = None,
) -> Result:
    """Run one product command (`invoke ARGS`) from the checkout, as a user would."""
    argv = [sys.executable, "-m", "invoke", *args]
    ran = proc.capture(argv, timeout=timeout, base_env=environ, cwd=paths.repo_root())
    stderr = ran.stderr if not ran.fault else (ran.stderr + "\n" + ran.why()).strip()
    res = Result(argv, ran.rc, ran.stdout, stderr, ran.seconds)
    if stream is not None:
        for line in (res.stdout + res.stderr).splitlines():
            stream(f"    {line}")
    return res


def _step(out: Out, what: str, res: Result) -> None:
    if res.rc != 0:
        raise TurboError(
            f"demo step `invoke {' '.join(res.argv[3:])}`",
            f"exit {res.rc}: {(res.stderr.strip() or res.stdout.strip())[-400:]}",
            "The lines above show what it printed.",
        )
    out(f"  {what}: ok ({res.seconds:.0f} s)")


def _steps(port: int, model: Path) -> list[str]:
    """The eight steps, as a person would type them."""
    return [
        f"vLLM {cpu_vllm.VLLM_VERSION} CPU build + plugin in "
        f"{cpu_vllm.env_root(cpu_vllm.EnvSpec())}",
        f"tiny Qwen3-Next checkpoint in {model}",
        "invoke adopt-vllm --vllm <env>/bin/vllm",
        f"invoke adopt-model {model}",
        f"invoke serve --profile cpu --detach --port {port} --model {model} -- "
        + " ".join(SERVE_EXTRA),
        f"invoke verify --port {port}",
        f"invoke bench --port {port} --prompt-lens 64 --output-lens 32 --repeats 1",
        f"invoke stop --port {port}",
    ]


def _bench_args(port: int, model: Path, state: Path) -> list[str]:
    return [
        "bench",
        "--port",
        str(port),
        "--prompt-lens",
        "64",
        "--output-lens",
        "32",
        "--repeats",
        "1",
        "--tool",
        "builtin",
        "--no-chart",
        "--model",
        str(model),
        "--out",
        str(state / "bench"),
    ]


def _demo_environ(state: Path) -> dict[str, str]:
    """This shell's environment with the demo's own state directory and none of the seed's
    MODEL/PORT/HOST/SERVED_MODEL_NAME (they would point serve elsewhere)."""
    environ = {**os.environ, "TURBO_HOME": str(state)}
    for key in ("MODEL", "PORT", "HOST", "SERVED_MODEL_NAME"):
        environ.pop(key, None)
    return environ


def _product_steps(
    env: cpu_vllm.CpuEnv,
    model: Path,
    state: Path,
    port: int,
    keep: bool,
    steps: list[str],
    say: Out,
) -> None:
    """Steps 3-8: the product's own commands against the CPU build; stop even when one fails."""
    environ = _demo_environ(state)
    say(f"3/8 {steps[2]}")
    adopt = ["adopt-vllm", "--vllm", str(env.vllm), "--force"]
    _step(say, "adopt-vllm", invoke(adopt, environ, stream=say))
    say(f"4/8 {steps[3]}")
    _step(say, "adopt-model", invoke(["adopt-model", str(model)], environ, stream=say))
    say(f"5/8 {steps[4]} (first start compiles: 1-3 min on 2 cores)")
    serve_args = ["serve", "--profile", "cpu", "--detach", "--port", str(port)]
    serve_args += ["--model", str(model), "--", *SERVE_EXTRA]
    _step(say, "serve", invoke(serve_args, environ, stream=say))
    try:
        say(f"6/8 {steps[5]}")
        _step(say, "verify", invoke(["verify", "--port", str(port)], environ, stream=say))
        say(f"7/8 {steps[6]}")
        _step(say, "bench", invoke(_bench_args(port, model, state), environ, stream=say))
    finally:
        if not keep:
            say(f"8/8 {steps[7]}")
            _step(say, "stop", invoke(["stop", "--port", str(port)], environ, stream=say))


def command(
    port: int | None = None, keep: bool = False, dry_run: bool = False, say: Out = print
) -> Outcome:
    """The demo: its steps under ``dry_run``; otherwise progress to ``say`` and a last line."""
    root = paths.cache_dir() / "demo"
    model = root / "tiny-qwen3-next"
    state = root / "state"
    p = port or free_port()
    steps = _steps(p, model)
    if dry_run:
        listing = [f"demo (state in {state}):", *(f"  {i}. {s}" for i, s in enumerate(steps, 1))]
        return done("\n".join(listing))
    if sys.platform != "linux":
        raise TurboError("demo", "needs Linux (vLLM's CPU build)", "Run it on a Linux machine.")
    t0 = time.monotonic()
    say(f"1/8 {steps[0]} (first time: ~5 min, ~8.5 GB)")
    env = prepare_env(progress=lambda line: say(f"  {line}"))
    say(f"2/8 {steps[1]}")
    make_checkpoint(env, model)
    _product_steps(env, model, state, p, keep, steps, say)
    return done(
        f"demo done in {time.monotonic() - t0:.0f} s: the real vLLM {env.vllm_version} served "
        f"a tiny Qwen3-Next through vllm-turbo's own commands"
        + (f"; still running at http://127.0.0.1:{p}/v1" if keep else "")
    )


def run(
    port: int | None = None, keep: bool = False, dry_run: bool = False, out: Out = print
) -> int:
    """:func:`command` for in-process callers: progress and the result text both to ``out``."""
    outcome = command(port, keep, dry_run, say=out)
    if outcome.text:
        out(outcome.text)
    return outcome.code
