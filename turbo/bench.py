"""`bench`: single-stream decode tok/s and time to first token over a grid of prompt and output
lengths, the median of several repeats, MTP draft acceptance from ``/metrics``, optional
concurrency levels; JSON + Markdown + PNG next to the seed's figures.

Two measuring tools:
- ``vllm``: vLLM's own ``vllm bench serve`` (random dataset, ``--ignore-eos``), the reference
  the community compares against; it ships with the build, tokenizes with the model's own
  tokenizer, so prompt lengths are exact. Its median TPOT gives decode tok/s.
- ``builtin``: streaming requests against the OpenAI API, timing the first and last token and
  taking the token count from the final usage chunk (``stream_options.include_usage``), which
  stays right when MTP delivers several tokens per chunk. Used where vLLM is not installed
  (another machine, CI) or with ``--tool builtin``.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from turbo import endpoint
from turbo.console import render_table
from turbo.errors import TurboError, UsageError
from turbo.verify import acceptance

Out = Callable[[str], None]
STAND_IN_WARNING = "STAND-IN SERVER (not vLLM): these numbers are not real performance"
_WORDS = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
)


@dataclass(frozen=True)
class Sample:
    prompt_tokens: int
    output_tokens: int
    ttft_s: float
    decode_tok_s: float
    e2e_s: float


@dataclass
class Cell:
    prompt_len: int
    output_len: int
    concurrency: int
    tool: str
    samples: list[Sample] = field(default_factory=list)
    ttft_ms: float = 0.0
    decode_tok_s: float = 0.0
    aggregate_tok_s: float = 0.0
    acceptance: float | None = None
    mean_accepted_len: float | None = None


@dataclass
class Report:
    endpoint: str
    served_name: str
    owned_by: str
    stand_in: bool
    tool: str
    tool_reason: str
    repeats: int
    seed: dict[str, float]
    cells: list[Cell]
    started: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prompt_text(n_words: int) -> str:
    """About ``n_words`` tokens; a unique first line defeats prefix caching between repeats."""
    words = [_WORDS[i % len(_WORDS)] for i in range(max(1, n_words - 8))]
    return f"Request {uuid.uuid4().hex[:12]}. Continue this list: " + " ".join(words)


def measure_one(
    ep: endpoint.Endpoint, served_name: str, prompt_len: int, output_len: int, timeout: float
) -> Sample:
    body = {
        "model": served_name,
        "prompt": prompt_text(prompt_len),
        "max_tokens": output_len,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = last = None
    usage: dict[str, Any] | None = None
    for t, event in endpoint.stream(ep, "/v1/completions", body, timeout=timeout):
        for choice in event.get("choices") or []:
            if choice.get("text"):
                first = first if first is not None else t
                last = t
        if event.get("usage"):
            usage = event["usage"]
    if first is None or last is None:
        raise TurboError("bench", "the stream carried no text", "Check the server log.")
    if usage is None:
        raise TurboError(
            "bench",
            "the stream had no usage chunk",
            "The server must honour stream_options.include_usage (vLLM does).",
        )
    n = int(usage.get("completion_tokens", 0))
    decode = (n - 1) / (last - first) if n > 1 and last > first else 0.0
    return Sample(
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        output_tokens=n,
        ttft_s=first - t0,
        decode_tok_s=decode,
        e2e_s=last - t0,
    )


def _scrape(ep: endpoint.Endpoint) -> dict[str, float]:
    try:
        r = endpoint.get(ep, "/metrics")
    except TurboError:
        return {}
    return endpoint.parse_metrics(r.text) if r.status_code == 200 else {}


def _spec(cell: Cell, before: dict[str, float], after: dict[str, float]) -> None:
    cell.acceptance = acceptance(after, before)
    drafts = after.get("vllm:spec_decode_num_drafts_total", 0) - before.get(
        "vllm:spec_decode_num_drafts_total", 0
    )
    accepted = after.get("vllm:spec_decode_num_accepted_tokens_total", 0) - before.get(
        "vllm:spec_decode_num_accepted_tokens_total", 0
    )
    cell.mean_accepted_len = 1 + accepted / drafts if drafts > 0 else None


def run_builtin_cell(
    ep: endpoint.Endpoint,
    served_name: str,
    prompt_len: int,
    output_len: int,
    concurrency: int,
    repeats: int,
    timeout: float,
) -> Cell:
    cell = Cell(prompt_len, output_len, concurrency, "builtin")
    before = _scrape(ep)
    aggregates: list[float] = []
    for _ in range(repeats):
        results: list[Sample | BaseException] = []
        lock = threading.Lock()

        def one(
            results: list[Sample | BaseException] = results, lock: threading.Lock = lock
        ) -> None:
            try:
                s: Sample | BaseException = measure_one(
                    ep, served_name, prompt_len, output_len, timeout
                )
            except BaseException as exc:  # handed to the main thread below
                s = exc
            with lock:
                results.append(s)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=one) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        for r in results:
            if isinstance(r, BaseException):
                raise r
        samples = [r for r in results if isinstance(r, Sample)]
        cell.samples += samples
        aggregates.append(sum(s.output_tokens for s in samples) / wall if wall > 0 else 0.0)
    _spec(cell, before, _scrape(ep))
    cell.ttft_ms = statistics.median(s.ttft_s for s in cell.samples) * 1000
    cell.decode_tok_s = statistics.median(s.decode_tok_s for s in cell.samples)
    cell.aggregate_tok_s = statistics.median(aggregates)
    return cell


# ------------------------------------------------------------------ vLLM's own benchmark
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
) -> Cell:
    cell = Cell(prompt_len, output_len, concurrency, "vllm bench serve")
    name = f"vllm-p{prompt_len}-o{output_len}-c{concurrency}.json"
    argv = vllm_bench_argv(
        ep, served_name, model, prompt_len, output_len, concurrency, repeats, work, name
    )
    before = _scrape(ep)
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    (work / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise TurboError(
            "vllm bench serve", f"exit {proc.returncode}", f"Read {work / (name + '.log')}."
        )
    parse_vllm_result(json.loads((work / name).read_text()), cell)
    _spec(cell, before, _scrape(ep))
    return cell


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


# ------------------------------------------------------------------ the whole run
def server_info(ep: endpoint.Endpoint, served_name: str) -> str:
    r = endpoint.get(ep, "/v1/models")
    if r.status_code != 200:
        raise TurboError(
            ep.url("/v1/models"), f"HTTP {r.status_code}", "Check the server (`invoke verify`)."
        )
    for m in r.json().get("data", []):
        if m.get("id") == served_name:
            return str(m.get("owned_by", "?"))
    raise UsageError(
        "bench",
        f"the server does not serve {served_name!r}",
        "Pass --served-name with one of the names /v1/models lists.",
    )


def run(
    ep: endpoint.Endpoint,
    served_name: str,
    *,
    model: str,
    prompt_lens: Sequence[int],
    output_lens: Sequence[int],
    concurrency: Sequence[int],
    repeats: int,
    tool: str,
    seed: Mapping[str, float],
    work: Path,
    timeout: float = 600.0,
    out: Out = print,
) -> Report:
    if (
        repeats < 1
        or not prompt_lens
        or not output_lens
        or not concurrency
        or min([*prompt_lens, *output_lens, *concurrency]) < 1
    ):
        raise UsageError(
            "bench grid",
            "lengths, concurrency and repeats must be >= 1",
            "For example --prompt-lens 128,2048 --output-lens 128 --repeats 3.",
        )
    if not endpoint.healthy(ep):
        raise TurboError(
            ep.url("/health"),
            "is not healthy",
            "Start the server (`invoke serve --detach`) and wait for it.",
        )
    owned_by = server_info(ep, served_name)
    chosen, reason = choose_tool(tool, model)
    report = Report(
        ep.base,
        served_name,
        owned_by,
        owned_by != "vllm",
        chosen,
        reason,
        repeats,
        dict(seed),
        [],
        time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    if report.stand_in:
        out(f"warning: {STAND_IN_WARNING} (owned_by={owned_by!r})")
    work.mkdir(parents=True, exist_ok=True)
    cells = [(p, o, c) for c in concurrency for p in prompt_lens for o in output_lens]
    for i, (p, o, c) in enumerate(cells, 1):
        out(f"[{i}/{len(cells)}] prompt {p}, output {o}, concurrency {c}, x{repeats} ({chosen})")
        if chosen == "vllm":
            cell = run_vllm_cell(ep, served_name, model, p, o, c, repeats, work, out)
        else:
            cell = run_builtin_cell(ep, served_name, p, o, c, repeats, timeout)
        acc = f", acceptance {cell.acceptance:.0%}" if cell.acceptance is not None else ""
        out(f"      TTFT {cell.ttft_ms:.0f} ms, decode {cell.decode_tok_s:.1f} tok/s{acc}")
        report.cells.append(cell)
    return report


def markdown(report: Report) -> str:
    lines = [f"# Benchmark: {report.served_name} at {report.endpoint}", ""]
    if report.stand_in:
        lines += [f"> **{STAND_IN_WARNING}** (owned_by `{report.owned_by}`).", ""]
    lines += [
        f"Tool: {report.tool} ({report.tool_reason}); median of {report.repeats} "
        f"repeats; {report.started}.",
        "",
        "| prompt | output | concurrency | TTFT ms | decode tok/s (per stream) | "
        "total tok/s | MTP acceptance | mean accepted length |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report.cells:
        acc = f"{c.acceptance:.0%}" if c.acceptance is not None else "-"
        mal = f"{c.mean_accepted_len:.2f}" if c.mean_accepted_len is not None else "-"
        lines.append(
            f"| {c.prompt_len} | {c.output_len} | {c.concurrency} | {c.ttft_ms:.0f} "
            f"| {c.decode_tok_s:.1f} | {c.aggregate_tok_s:.1f} | {acc} | {mal} |"
        )
    lines += [
        "",
        "Seed figures (one DGX Spark, single-stream decode):",
        "",
        "| configuration | tok/s |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v:g} |" for k, v in report.seed.items()]
    return "\n".join(lines) + "\n"


def chart(report: Report, path: Path) -> Path:
    """Decode tok/s per grid cell (single stream) against the seed's figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = [c for c in report.cells if c.concurrency == 1] or report.cells
    labels = [
        f"p{c.prompt_len}/o{c.output_len}" + (f"/c{c.concurrency}" if c.concurrency > 1 else "")
        for c in single
    ]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(single) + 3), 4.5))
    ax.bar(labels, [c.decode_tok_s for c in single], color="#4c72b0", label="measured")
    styles = ["--", "-.", ":"]
    for i, (name, value) in enumerate(report.seed.items()):
        ax.axhline(value, color="grey", linestyle=styles[i % 3], linewidth=1)
        ax.text(
            len(single) - 0.5,
            value,
            f" seed {name}: {value:g}",
            va="bottom",
            ha="right",
            fontsize=8,
        )
    ax.set_ylabel("decode tok/s (median, single stream)")
    ax.set_xlabel("prompt / output tokens")
    title = f"{report.served_name}: {report.tool}"
    if report.stand_in:
        title = f"{STAND_IN_WARNING}\n{title}"
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9, color="red" if report.stand_in else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(report: Report, out_dir: Path, with_chart: bool = True) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / "bench.json", "markdown": out_dir / "bench.md"}
    files["json"].write_text(json.dumps(report.to_dict(), indent=2))
    files["markdown"].write_text(markdown(report))
    if with_chart:
        files["chart"] = chart(report, out_dir / "bench.png")
    return files


def render(report: Report) -> str:
    rows = [
        (
            c.prompt_len,
            c.output_len,
            c.concurrency,
            f"{c.ttft_ms:.0f}",
            f"{c.decode_tok_s:.1f}",
            f"{c.aggregate_tok_s:.1f}",
            f"{c.acceptance:.0%}" if c.acceptance is not None else "-",
        )
        for c in report.cells
    ]
    head = f"{STAND_IN_WARNING}\n" if report.stand_in else ""
    seed = ", ".join(f"{k} {v:g}" for k, v in report.seed.items())
    return (
        head
        + render_table(
            ["prompt", "output", "conc", "TTFT ms", "decode tok/s", "total tok/s", "MTP accept"],
            rows,
        )
        + f"\n\nseed (tok/s, single stream): {seed}"
    )


def _ints(text: str, default: Sequence[int], what: str) -> list[int]:
    if not text:
        return list(default)
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise UsageError(
            f"--{what} {text!r}",
            "is not a comma-separated list of integers",
            f"For example --{what} 128,2048.",
        ) from exc


def command(
    *,
    url: str,
    port: int | None,
    served_name: str,
    prompt_lens: str,
    output_lens: str,
    concurrency: str,
    repeats: int | None,
    tool: str,
    model: str,
    out: str,
    chart: bool,
    as_json: bool,
    printer: Out = print,
) -> str:
    """What `invoke bench` does after parsing: run the grid, write the files, summarise."""
    from turbo import paths
    from turbo.pins import load_pins
    from turbo.profiles import load_book

    pins = load_pins()
    sec = load_book().section("bench")
    ep = endpoint.client_endpoint(url, port)
    out_dir = Path(out) if out else paths.state_dir() / "bench" / time.strftime("%Y%m%d-%H%M%S")
    report = run(
        ep,
        served_name or pins.serve.served_name,
        model=model or str(paths.model_dir(pins)),
        prompt_lens=_ints(prompt_lens, sec.get("prompt_lens", [128]), "prompt-lens"),
        output_lens=_ints(output_lens, sec.get("output_lens", [128]), "output-lens"),
        concurrency=_ints(concurrency, [1], "concurrency"),
        repeats=repeats or int(sec.get("repeats", 3)),
        tool=tool,
        seed={str(k): float(v) for k, v in sec.get("seed", {}).items()},
        work=out_dir / "raw",
        out=printer,
    )
    files = write(report, out_dir, with_chart=chart)
    if as_json:
        return json.dumps(
            {**report.to_dict(), "files": {k: str(v) for k, v in files.items()}}, indent=2
        )
    listing = "\n".join(f"  {k}: {v}" for k, v in files.items())
    return f"{render(report)}\n\nwritten:\n{listing}"
