"""bench against the local vLLM stand-in: the grid, medians, MTP acceptance from /metrics,
concurrency, failures (never healthy, 500s, dropped stream), outputs, vLLM's own tool."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.openai_server import running
from turbo import bench, endpoint
from turbo.errors import TurboError

SEED = {"AWQ INT4": 36.0, "NVFP4 Marlin": 42.0, "NVFP4 + MTP": 67.0}


def go(srv: object, tmp_path: Path, **kw: object) -> bench.Report:
    args: dict[str, object] = {"model": str(tmp_path / "no-model"), "prompt_lens": [16],
                               "output_lens": [30], "concurrency": [1], "repeats": 2,
                               "tool": "auto", "seed": SEED, "work": tmp_path / "raw",
                               "out": lambda _line: None}
    args.update(kw)
    ep = endpoint.Endpoint(srv.base_url)  # type: ignore[attr-defined]
    return bench.run(ep, "qwen3-next", **args)  # type: ignore[arg-type]


def test_grid_medians_and_mtp_acceptance(tmp_path: Path) -> None:
    with running(spec_tokens=2, tokens_per_s=3000) as srv:
        rep = go(srv, tmp_path, prompt_lens=[16, 64], output_lens=[30])
    assert rep.stand_in and rep.tool == "builtin" and "vllm not on PATH" in rep.tool_reason
    assert [(c.prompt_len, c.output_len) for c in rep.cells] == [(16, 30), (64, 30)]
    for cell in rep.cells:
        assert len(cell.samples) == 2
        # MTP delivers 2-3 tokens per chunk: the count must come from the usage chunk.
        assert all(s.output_tokens == 30 for s in cell.samples)
        # The stand-in accepts 2,1,2,1 of 2 drafts: 75 %, mean accepted length 2.5.
        assert cell.acceptance == pytest.approx(0.75)
        assert cell.mean_accepted_len == pytest.approx(2.5)
        assert cell.decode_tok_s > 0 and cell.ttft_ms > 0
    assert rep.cells[1].samples[0].prompt_tokens > rep.cells[0].samples[0].prompt_tokens


def test_no_speculation_reports_no_acceptance(tmp_path: Path) -> None:
    with running() as srv:
        rep = go(srv, tmp_path, repeats=1)
    assert rep.cells[0].acceptance is None and rep.cells[0].mean_accepted_len is None


def test_concurrency_runs_streams_together(tmp_path: Path) -> None:
    # Slow enough (150 ms a stream) that thread start-up on a loaded machine does not decide.
    with running(tokens_per_s=200) as srv:
        rep = go(srv, tmp_path, concurrency=[1, 3], repeats=1)
    single, triple = rep.cells
    assert (single.concurrency, len(single.samples)) == (1, 1)
    assert (triple.concurrency, len(triple.samples)) == (3, 3)
    assert triple.aggregate_tok_s > single.aggregate_tok_s


@pytest.mark.parametrize(("mode", "message"), [
    ("never-healthy", "is not healthy"),
    ("errors", "HTTP 500"),
    ("drop", "without \\[DONE\\]|broke off"),
])
def test_failures_are_one_line_errors(mode: str, message: str, tmp_path: Path) -> None:
    with running(mode=mode) as srv, pytest.raises(TurboError, match=message) as exc:
        go(srv, tmp_path)
    assert "\n" not in exc.value.line()


def test_bad_grid_is_refused(tmp_path: Path) -> None:
    with running() as srv, pytest.raises(TurboError, match=">= 1"):
        go(srv, tmp_path, repeats=0)


def test_outputs_json_markdown_chart(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with running(spec_tokens=2) as srv:
        rep = go(srv, tmp_path, repeats=1)
    files = bench.write(rep, tmp_path / "out")
    data = json.loads(files["json"].read_text())
    assert data["cells"][0]["output_len"] == 30 and data["stand_in"] is True
    md = files["markdown"].read_text()
    assert bench.STAND_IN_WARNING in md and "| NVFP4 + MTP | 67 |" in md
    assert "| 16 | 30 | 1 |" in md and "75%" in md
    assert files["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_vllm_bench_serve_argv_and_result() -> None:
    ep = endpoint.Endpoint("http://127.0.0.1:8011")
    argv = bench.vllm_bench_argv(ep, "qwen3-next", "/models/q", 2048, 128, 1, 3, Path("/r"),
                                 "x.json")
    assert argv[:3] == ["vllm", "bench", "serve"]
    pairs = {argv[i]: argv[i + 1] for i in range(3, len(argv) - 1) if argv[i].startswith("--")}
    assert pairs["--random-input-len"] == "2048" and pairs["--random-output-len"] == "128"
    assert pairs["--num-prompts"] == "3" and pairs["--max-concurrency"] == "1"
    assert pairs["--served-model-name"] == "qwen3-next" and "--ignore-eos" in argv
    # Keys as vllm/benchmarks/serve.py (0.16) writes them with --save-result.
    result = {"completed": 3, "median_ttft_ms": 180.0, "median_tpot_ms": 20.0,
              "output_throughput": 48.5}
    cell = bench.parse_vllm_result(result, bench.Cell(2048, 128, 1, "vllm bench serve"))
    assert cell.decode_tok_s == pytest.approx(50.0) and cell.ttft_ms == 180.0
    with pytest.raises(TurboError, match="lacks"):
        bench.parse_vllm_result({"completed": 3}, bench.Cell(1, 1, 1, "vllm"))


def test_tool_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert bench.choose_tool("auto", str(tmp_path))[0] == "builtin"
    with pytest.raises(TurboError, match="not on PATH"):
        bench.choose_tool("vllm", str(tmp_path))
    with pytest.raises(TurboError, match="not a tool"):
        bench.choose_tool("llama", str(tmp_path))


def test_benchmark_tool_log_is_private_and_restarted(tmp_path: Path) -> None:
    # The tool's log may quote the server's key: created 0600 whatever the umask, and a re-run
    # starts it afresh instead of appending to an old run.
    log = tmp_path / "tool.log"
    log.write_text("an old run\n")
    log.chmod(0o644)
    old = os.umask(0o022)
    try:
        argv = [sys.executable, "-c", "print('tool output')"]
        rc = bench.run_watched(argv, log, endpoint.Endpoint("http://127.0.0.1:9"), {}, 60.0, 10.0,
                               lambda _line: None)
    finally:
        os.umask(old)
    assert rc == 0
    assert log.read_text() == "tool output\n"
    assert log.stat().st_mode & 0o777 == 0o600


def test_dry_run_sends_nothing_and_writes_nothing(tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "bench", "--dry-run", "--url", "http://127.0.0.1:9",
         "--prompt-lens", "128,2048", "--output-lens", "64", "--concurrency", "1,2",
         "--out", str(out)],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=60,
        env={**os.environ, "TURBO_HOME": str(tmp_path / "home")}, check=False)
    # Port 9 has no server: a real run fails at /health; the plan needs none.
    assert proc.returncode == 0, proc.stderr
    assert "nothing sent to http://127.0.0.1:9" in proc.stdout
    for cell in ("prompt 128, output 64, concurrency 1", "prompt 2048, output 64, concurrency 2"):
        assert cell in proc.stdout
    assert "[4/4]" in proc.stdout and "builtin streaming client: 6 chat request(s)" in proc.stdout
    assert not out.exists() and not (tmp_path / "home").exists()
