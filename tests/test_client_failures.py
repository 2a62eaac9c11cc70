"""verify and bench when the server is small, silent, refusing or not vLLM at all (issues 12,
13): every request fits the server's context, a stall ends in seconds with a stall's advice and
progress while waiting, a 4xx is the server's answer, a web page on the port is one line.
All against the stand-in speaking vLLM 0.16's protocol; the real-vLLM lane asserts the same."""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.openai_server import running
from turbo import bench, endpoint, server_metrics, server_url, verify
from turbo.errors import TurboError

SEED = {"NVFP4 Marlin": 42.0}


def ep_of(srv: object, key: str | None = None) -> endpoint.Endpoint:
    return endpoint.Endpoint(srv.base_url, key)  # type: ignore[attr-defined]


def go(srv: object, tmp_path: Path, **kw: object) -> bench.Report:
    args: dict[str, object] = {"model": str(tmp_path / "no-model"), "prompt_lens": [16],
                               "output_lens": [30], "concurrency": [1], "repeats": 1,
                               "tool": "builtin", "seed": SEED, "work": tmp_path / "raw",
                               "out": lambda _line: None}
    args.update(kw)
    return bench.run(ep_of(srv), "qwen3-next", **args)  # type: ignore[arg-type]


# ------------------------------------------------------------------ fit to max_model_len
def test_verify_fits_max_tokens_to_a_small_context() -> None:
    # 1024 default tokens + the question exceed 256: vLLM would answer 400.
    with running(max_model_len=256) as srv:
        steps = verify.run(ep_of(srv), "qwen3-next")
    by = {s.name: s for s in steps}
    assert by["chat"].status == "pass", by["chat"]
    assert "fitted to" in by["chat"].detail and "max_model_len 256" in by["models"].detail


def test_verify_says_when_the_context_has_no_room() -> None:
    with running(max_model_len=12) as srv:  # the question alone is 12+ tokens
        steps = verify.run(ep_of(srv), "qwen3-next")
    chat = next(s for s in steps if s.name == "chat")
    assert chat.status == "fail" and "no room" in chat.detail


def test_bench_skips_cells_that_do_not_fit(tmp_path: Path) -> None:
    lines: list[str] = []
    with running(max_model_len=200) as srv:
        rep = go(srv, tmp_path, prompt_lens=[16, 190], output_lens=[30], out=lines.append)
    assert [(c.prompt_len, c.output_len) for c in rep.cells] == [(16, 30)]
    assert rep.skipped == [{"prompt_len": 190, "output_len": 30, "concurrency": 1,
                            "why": "prompt 190 + output 30 tokens exceed the server's "
                                   "max_model_len 200"}]
    assert any(line.startswith("skip: prompt 190") for line in lines)
    assert "max_model_len 200" in bench.markdown(rep) and "190" in bench.render(rep)


def test_bench_refuses_a_grid_with_nothing_that_fits(tmp_path: Path) -> None:
    with running(max_model_len=20) as srv, pytest.raises(TurboError, match="no cell fits"):
        go(srv, tmp_path)


def test_bench_prompts_have_the_exact_token_count(tmp_path: Path) -> None:
    # Exact through /tokenize: a cell of prompt + output == max_model_len is sent and accepted.
    with running(max_model_len=46) as srv:
        rep = go(srv, tmp_path, prompt_lens=[16], output_lens=[30], repeats=2)
    assert [s.prompt_tokens for s in rep.cells[0].samples] == [16, 16]
    assert rep.prompt_sizing.startswith("exact")


# ------------------------------------------------------------------ tokens from usage
def test_decode_rate_counts_the_tokens_of_the_first_chunk() -> None:
    # With MTP the stand-in's first chunk carries 3 tokens (1 + 2 accepted drafts); the rest
    # (3 tokens) arrive over 3/50 s. Counting one token in the first chunk gave 5/0.06 s.
    with running(spec_tokens=2, tokens_per_s=50, ttft_s=0.0) as srv:
        sample = bench.measure_one(ep_of(srv), "qwen3-next", "a b c", 6, 30.0)
    assert sample.output_tokens == 6 and sample.first_chunk_tokens == 3
    # The rate is the tokens after the first chunk over the time after it: exactly 3 tokens,
    # whatever the machine's load does to the clock (counting one gives 5).
    decode_s = sample.e2e_s - sample.ttft_s
    assert decode_s > 0 and sample.decode_tok_s * decode_s == pytest.approx(3.0)


# ------------------------------------------------------------------ answers, stalls
def test_a_4xx_is_the_servers_answer(tmp_path: Path) -> None:
    with running(api_key="k") as srv, pytest.raises(TurboError) as exc:
        go(srv, tmp_path)
    line = exc.value.line()
    assert "HTTP 401" in line and "VLLM_API_KEY" in line
    assert "Is the server running" not in line


def test_a_refused_stream_quotes_the_server() -> None:
    with running() as srv, pytest.raises(endpoint.EndpointError) as exc:
        list(endpoint.stream(ep_of(srv), "/v1/completions",
                             {"model": "nope", "prompt": "x", "stream": True}))
    err = exc.value
    assert err.kind == endpoint.REFUSED and err.status == 404
    assert "The model `nope` does not exist" in err.why and "--served-name" in err.fix
    assert "Is the server running" not in err.line()


@pytest.mark.parametrize(("mode", "kind", "advice"), [
    ("errors", "server error", "log"),
    ("drop", "dropped", "closed the connection"),
])
def test_failures_carry_their_own_advice(mode: str, kind: str, advice: str) -> None:
    with running(mode=mode) as srv, pytest.raises(endpoint.EndpointError) as exc:
        list(endpoint.stream(ep_of(srv), "/v1/completions",
                             {"model": "qwen3-next", "prompt": "x", "max_tokens": 8,
                              "stream": True}))
    assert exc.value.kind == kind and advice in exc.value.fix


def test_verify_stall_fails_fast_with_progress() -> None:
    said: list[str] = []
    with running(mode="stall", stall_s=20) as srv:
        t0 = time.monotonic()
        steps = verify.run(ep_of(srv), "qwen3-next", timeout=1.5, say=said.append, every=0.3)
        took = time.monotonic() - t0
    chat = next(s for s in steps if s.name == "chat")
    assert chat.status == "fail" and "sent nothing for 2 s" in chat.detail
    assert "--timeout" in chat.fix and took < 10
    assert any("waiting for the first token" in line for line in said)
    assert "chat: " in verify.render(steps, ep_of(srv))


def test_bench_stall_fails_fast_with_progress(tmp_path: Path) -> None:
    said: list[str] = []
    with running(mode="stall", stall_s=20) as srv, pytest.raises(TurboError) as exc:
        t0 = time.monotonic()
        go(srv, tmp_path, timeout=1.5, every=0.3, out=said.append)
    assert time.monotonic() - t0 < 10
    assert "sent nothing for 2 s" in exc.value.why and "--timeout" in exc.value.fix
    assert any("waiting for the first token" in line for line in said)


def test_nothing_listening_asks_whether_the_server_runs() -> None:
    steps = verify.run(endpoint.Endpoint("http://127.0.0.1:9"), "qwen3-next")
    assert steps[0].status == "fail" and "invoke serve" in steps[0].fix
    with pytest.raises(endpoint.EndpointError) as exc:
        endpoint.get(endpoint.Endpoint("http://127.0.0.1:9"), "/v1/models")
    assert exc.value.kind == endpoint.NO_ANSWER and "invoke serve" in exc.value.fix


# ------------------------------------------------------------------ not vLLM on the port
@pytest.mark.parametrize("mode", ["html", "json-list"])
def test_not_vllm_is_one_line(mode: str, tmp_path: Path) -> None:
    with running(mode=mode) as srv:
        steps = verify.run(ep_of(srv), "qwen3-next")
        with pytest.raises(TurboError) as exc:
            go(srv, tmp_path)
    models = next(s for s in steps if s.name == "models")
    assert models.status == "fail" and "not the OpenAI API's JSON" in models.detail
    assert "not the OpenAI API's JSON" in exc.value.line() and "\n" not in exc.value.line()


@pytest.mark.parametrize("task", ["verify", "bench"])
def test_cli_against_a_web_page_prints_no_traceback(task: str, tmp_path: Path) -> None:
    with running(mode="html") as srv:
        proc = subprocess.run(
            [sys.executable, "-m", "invoke", task, "--url", srv.base_url,
             *(["--out", str(tmp_path / "b"), "--tool", "builtin"] if task == "bench" else [])],
            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "not the OpenAI API's JSON" in proc.stderr + proc.stdout


def test_port_that_is_not_a_number_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "abc")
    with pytest.raises(TurboError, match="PORT='abc'"):
        server_url.client_endpoint("", None)


# ------------------------------------------------------------------ the chart's dependency
def test_matplotlib_is_a_declared_runtime_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("matplotlib") for d in project["dependencies"])
    pixi = tomllib.loads((REPO / "pixi.toml").read_text())
    assert "matplotlib" in pixi["pypi-dependencies"]


def test_chart_without_matplotlib_is_one_line(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    rep = bench.Report("http://x", "m", "vllm", False, "builtin", "", 1, {}, [], "now")
    with pytest.raises(TurboError, match="--no-chart") as exc:
        bench.write(rep, tmp_path)
    assert "\n" not in exc.value.line()
    assert (tmp_path / "bench.json").is_file()  # the numbers are written before the chart


def test_vllm_tool_stall_is_caught_from_the_servers_counter(tmp_path: Path) -> None:
    # `vllm bench serve` stands for a tool waiting on a server that generates nothing: the
    # server's vllm:generation_tokens_total does not move, so bench stops it with a stall.
    said: list[str] = []
    with running() as srv:
        ep = ep_of(srv)
        before = server_metrics.scrape(ep)
        t0 = time.monotonic()
        with pytest.raises(endpoint.EndpointError) as exc:
            bench.run_watched([sys.executable, "-c", "import time; time.sleep(60)"],
                              tmp_path / "tool.log", ep, before, 1.5, 0.3, said.append)
    assert time.monotonic() - t0 < 15
    assert exc.value.kind == endpoint.STALLED and "tool.log" in exc.value.why
    assert any("s" in line and "..." in line for line in said)


def test_vllm_tool_exit_code_comes_back(tmp_path: Path) -> None:
    with running() as srv:
        rc = bench.run_watched([sys.executable, "-c", "print('done'); raise SystemExit(3)"],
                               tmp_path / "tool.log", ep_of(srv), {}, 5.0, 1.0, print)
    assert rc == 3 and "done" in (tmp_path / "tool.log").read_text()
