"""bench's ``vllm`` tool: vLLM's own ``vllm bench serve`` (random dataset, ``--ignore-eos``),
the reference the community compares against. It ships with the build and tokenizes with the
model's own tokenizer, so prompt lengths are exact; its median TPOT gives decode tok/s. It runs
as a subprocess while the server's own token counter is watched for progress and stalls.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from turbo import endpoint, proc
from turbo.bench_data import Cell, Out, note_speculation
from turbo.console import open_private
from turbo.errors import TurboError, UsageError
from turbo.server_metrics import GENERATED, scrape, speculation


def vllm_bench_argv(
    ep: endpoint.Endpoint,
    served_name: str,
    model: str,
    prompt_len: int,
    output_len: int,
    concurrency: int,
    repeats: int,
    result_dir: Path,
    result_file: str,
) -> list[str]:
    return [
        "vllm",
        "bench",
        "serve",
        "--backend",
        "openai",
        "--base-url",
        ep.base,
        "--endpoint",
        "/v1/completions",
        "--model",
        model,
        "--served-model-name",
        served_name,
        "--tokenizer",
        model,
        "--dataset-name",
        "random",
        "--random-input-len",
        str(prompt_len),
        "--random-output-len",
        str(output_len),
        "--num-prompts",
        str(repeats * concurrency),
        "--max-concurrency",
        str(concurrency),
        "--ignore-eos",
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--save-result",
        "--result-dir",
        str(result_dir),
        "--result-filename",
        result_file,
        "--disable-tqdm",
    ]


def parse_vllm_result(data: Mapping[str, Any], cell: Cell) -> Cell:
    """Read ``vllm bench serve --save-result`` JSON: medians of TTFT and TPOT, throughput."""
    try:
        tpot = float(data["median_tpot_ms"])
        cell.ttft_ms = float(data["median_ttft_ms"])
        cell.aggregate_tok_s = float(data["output_throughput"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TurboError(
            "vllm bench serve result",
            f"lacks {exc}",
            "Check the vLLM version; the tool's JSON changed.",
        ) from exc
    if int(data.get("completed", 0)) == 0:
        raise TurboError("vllm bench serve", "completed no request", "Check the server log.")
    cell.decode_tok_s = 1000.0 / tpot if tpot > 0 else 0.0
    return cell


def run_vllm_cell(
    ep: endpoint.Endpoint,
    served_name: str,
    model: str,
    prompt_len: int,
    output_len: int,
    concurrency: int,
    repeats: int,
    work: Path,
    out: Out,
    timeout: float = 120.0,
    every: float = 10.0,
) -> Cell:
    cell = Cell(prompt_len, output_len, concurrency, "vllm bench serve")
    name = f"vllm-p{prompt_len}-o{output_len}-c{concurrency}.json"
    argv = vllm_bench_argv(
        ep, served_name, model, prompt_len, output_len, concurrency, repeats, work, name
    )
    before = scrape(ep)
    log = work / f"{name}.log"
    rc = run_watched(argv, log, ep, before, timeout, every, out)
    if rc != 0:
        raise TurboError("vllm bench serve", f"exit {rc}", f"Read {log}.")
    try:
        result = json.loads((work / name).read_text())
    except (OSError, ValueError) as exc:
        raise TurboError(
            "vllm bench serve", f"wrote no readable result ({exc})", f"Read {log}."
        ) from exc
    parse_vllm_result(result, cell)
    note_speculation(cell, speculation(before, scrape(ep)))
    return cell


def run_watched(
    argv: Sequence[str],
    log: Path,
    ep: endpoint.Endpoint,
    before: Mapping[str, float],
    timeout: float,
    every: float,
    out: Out,
) -> int:
    """Run a benchmark subprocess into ``log`` while watching the server's own token counter
    (``vllm:generation_tokens_total``): a progress line every ``every`` s, and a stall
    (no new token for ``timeout`` s while the tool still waits) ends it with a stall's advice
    instead of a silent wait. Returns the exit code."""
    gen = GENERATED
    start = last_change = time.monotonic()
    last_count = before.get(gen)
    next_note = start + every
    with open_private(log, truncate=True) as sink:
        child = proc.start(argv, stdout=sink, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    return child.wait(timeout=min(1.0, every))
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                count = scrape(ep).get(gen) if last_count is not None else None
                if count is not None and count != last_count:
                    last_count, last_change = count, now
                elif count is not None and now - last_change > timeout:
                    raise endpoint.stalled(
                        ep, "/v1/completions", now - last_change, f" (log: {log})"
                    )
                if now >= next_note:
                    made = f", {count - before.get(gen, 0):.0f} tokens generated" if count else ""
                    out(f"      ... {now - start:.0f} s{made}")
                    next_note = now + every
        finally:
            proc.stop(child, grace=10)


def choose_tool(tool: str, model: str) -> tuple[str, str]:
    if tool == "builtin":
        return "builtin", "asked for (--tool builtin)"
    has_vllm = shutil.which("vllm") is not None
    has_tok = (Path(model) / "tokenizer.json").is_file()
    if tool == "vllm":
        if not has_vllm:
            raise UsageError(
                "--tool vllm",
                "vllm is not on PATH",
                "Run inside the pixi environment, or use --tool builtin.",
            )
        return "vllm", "asked for (--tool vllm)"
    if tool != "auto":
        raise UsageError(f"--tool {tool}", "is not a tool", "Choose auto, vllm or builtin.")
    if has_vllm and has_tok:
        return "vllm", "vLLM's own benchmark, with the model's tokenizer"
    why = "vllm not on PATH" if not has_vllm else f"no tokenizer.json in {model}"
    return "builtin", f"{why}: streaming OpenAI client"
