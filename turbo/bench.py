"""`bench`: single-stream decode tok/s and time to first token over a grid of prompt and output
lengths, the median of several repeats, MTP draft acceptance from ``/metrics``, optional
concurrency levels; JSON + Markdown + PNG next to the seed's figures.

Two measuring tools:
- ``vllm``: vLLM's own ``vllm bench serve`` (random dataset, ``--ignore-eos``), the reference
  the community compares against; it ships with the build, tokenizes with the model's own
  tokenizer, so prompt lengths are exact. Its median TPOT gives decode tok/s.
- ``builtin``: streaming requests against the OpenAI API. Tokens are counted from the usage
  the server reports with every chunk (``stream_options.continuous_usage_stats``), never from
  chunks or text: MTP delivers several tokens per chunk, and a byte-level tokenizer may send a
  token with no text. Prompts are built to the exact token count through vLLM's ``/tokenize``
  and sent as token ids. Used where vLLM is not installed (another machine, CI) or with
  ``--tool builtin``.

Every cell must fit the server's context (``max_model_len`` from ``/v1/models``): one that
cannot is skipped with a note, not sent. ``timeout`` bounds the server's silence; progress is
printed while a cell runs.
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
from urllib.parse import urlsplit

from turbo import endpoint, limit, roofline, server_url
from turbo.console import open_private, redact_argv, render_table
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
    # Tokens that arrived with the first one (the decode rate counts the rest); None when the
    # server sent no per-chunk usage and one token had to be assumed.
    first_chunk_tokens: int | None = None


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
    # Drafts per step (vLLM's draft tokens / drafts), for the MTP roofline.
    draft_len: float | None = None
    # The memory-bandwidth limit at this cell (turbo/limit.py): total tok/s over its streams.
    context: int = 0
    roofline_tok_s: float | None = None
    mtp_roofline_tok_s: float | None = None
    roofline_share: float | None = None


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
    max_model_len: int | None = None
    # Cells of the grid the server's context cannot hold: {prompt_len, output_len, concurrency,
    # why}; never sent.
    skipped: list[dict[str, Any]] = field(default_factory=list)
    # How the builtin tool's prompts were sized: "exact (/tokenize)" or an estimate.
    prompt_sizing: str = ""
    # The roofline's computation (turbo/roofline.py) at the first cell's context, or why not.
    roofline: dict[str, Any] | None = None
    roofline_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prompt_text(n_words: int) -> str:
    """About ``n_words`` tokens; a unique first line defeats prefix caching between repeats."""
    words = [_WORDS[i % len(_WORDS)] for i in range(max(1, n_words - 8))]
    return f"Request {uuid.uuid4().hex[:12]}. Continue this list: " + " ".join(words)


class Prompts:
    """Prompts of an exact token count: the text of :func:`prompt_text` tokenized by the
    server's own ``/tokenize`` and cut to length, sent as token ids (vLLM takes a list of ids
    as a completion prompt and adds nothing to it). A server without ``/tokenize`` gets the
    text, about one token per word."""

    def __init__(self, ep: endpoint.Endpoint, served_name: str) -> None:
        self.ep = ep
        self.served_name = served_name
        self.exact: bool | None = None

    def make(self, n_tokens: int) -> str | list[int]:
        if self.exact is False:
            return prompt_text(n_tokens)
        words = n_tokens
        for _ in range(6):
            ids = endpoint.tokenize(
                self.ep,
                {
                    "model": self.served_name,
                    "prompt": prompt_text(words),
                    "add_special_tokens": False,
                },
            )
            if ids is None:
                self.exact = False
                return prompt_text(n_tokens)
            self.exact = True
            if len(ids) >= n_tokens:
                return ids[:n_tokens]
            # Fewer tokens than words (a large vocabulary merges words): ask for more words.
            words = words * 2 + 16
        raise TurboError(
            "bench",
            f"could not build a {n_tokens}-token prompt through /tokenize",
            "The server's tokenizer returns too few tokens; use --tool vllm.",
        )

    def sizing(self) -> str:
        if self.exact is None:
            return ""
        if self.exact:
            return "exact: token ids cut to length through the server's /tokenize"
        return "estimated: the server has no /tokenize, about one token per word"


class Meter:
    """Tokens received so far across a cell's streams, for the progress line."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens = 0
        self.started = time.monotonic()

    def add(self, n: int) -> None:
        with self.lock:
            self.tokens += n

    def line(self) -> str:
        waited = time.monotonic() - self.started
        if self.tokens:
            return f"      ... {waited:.0f} s, {self.tokens} tokens received"
        return f"      ... {waited:.0f} s, waiting for the first token"


def measure_one(
    ep: endpoint.Endpoint,
    served_name: str,
    prompt: str | list[int],
    output_len: int,
    timeout: float,
    meter: Meter | None = None,
) -> Sample:
    """One streamed completion. TTFT is the first chunk that carries a token; the decode rate
    is (tokens after the first chunk) / (last token's arrival - first's), tokens as the
    server's usage counts them."""
    body = {
        "model": served_name,
        "prompt": prompt,
        "max_tokens": output_len,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    t0 = time.perf_counter()
    first = last = first_text = last_text = None
    first_n: int | None = None
    seen = 0
    per_chunk = False
    usage: dict[str, Any] | None = None
    for t, event in endpoint.stream(ep, "/v1/completions", body, timeout=timeout):
        choices = event.get("choices") or []
        for choice in choices:
            if isinstance(choice, dict) and choice.get("text"):
                first_text = first_text if first_text is not None else t
                last_text = t
        u = event.get("usage")
        if isinstance(u, dict):
            usage = u
            per_chunk = per_chunk or bool(choices)
            n_now = int(u.get("completion_tokens") or 0)
            if n_now > seen:
                if first is None:
                    first, first_n = t, n_now
                last = t
                if meter is not None:
                    meter.add(n_now - seen)
                seen = n_now
    if usage is None:
        raise TurboError(
            "bench",
            "the stream had no usage chunk",
            "The server must honour stream_options.include_usage (vLLM does).",
        )
    n = int(usage.get("completion_tokens", 0))
    if not per_chunk:
        # Usage only at the end (no per-chunk usage): assume one token in the first chunk.
        first, last, first_n = first_text, last_text, None
    if first is None or last is None:
        raise TurboError("bench", "the stream carried no tokens", "Check the server log.")
    after_first = n - (first_n if first_n is not None else 1)
    decode = after_first / (last - first) if after_first > 0 and last > first else 0.0
    return Sample(
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        output_tokens=n,
        ttft_s=first - t0,
        decode_tok_s=decode,
        e2e_s=last - t0,
        first_chunk_tokens=first_n,
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
    draft_tokens = after.get("vllm:spec_decode_num_draft_tokens_total", 0) - before.get(
        "vllm:spec_decode_num_draft_tokens_total", 0
    )
    cell.draft_len = draft_tokens / drafts if drafts > 0 else None


def _limit(cell: Cell, lim: limit.Limit | None) -> None:
    """The cell's share of the roofline: per-stream decode for one stream, the total over
    streams for several; with MTP, against the roofline MTP raises."""
    cl = (
        limit.for_cell(
            lim,
            cell.prompt_len,
            cell.output_len,
            cell.concurrency,
            cell.mean_accepted_len,
            cell.draft_len,
        )
        if lim
        else None
    )
    if cl is None:
        return
    cell.context = cl.context
    cell.roofline_tok_s = cl.roofline_tok_s
    cell.mtp_roofline_tok_s = cl.mtp_roofline_tok_s
    measured = cell.decode_tok_s if cell.concurrency == 1 else cell.aggregate_tok_s
    cell.roofline_share = measured / cl.applicable if cl.applicable > 0 else None


def run_builtin_cell(
    ep: endpoint.Endpoint,
    served_name: str,
    prompt_len: int,
    output_len: int,
    concurrency: int,
    repeats: int,
    timeout: float,
    prompts: Prompts | None = None,
    meter: Meter | None = None,
) -> Cell:
    cell = Cell(prompt_len, output_len, concurrency, "builtin")
    prompts = prompts or Prompts(ep, served_name)
    before = _scrape(ep)
    aggregates: list[float] = []
    for _ in range(repeats):
        results: list[Sample | BaseException] = []
        lock = threading.Lock()
        # Built before the clock starts: tokenizing is not the server's decode time.
        texts = [prompts.make(prompt_len) for _ in range(concurrency)]

        def one(
            prompt: str | list[int],
            results: list[Sample | BaseException] = results,
            lock: threading.Lock = lock,
        ) -> None:
            try:
                s: Sample | BaseException = measure_one(
                    ep, served_name, prompt, output_len, timeout, meter
                )
            except BaseException as exc:  # handed to the main thread below
                s = exc
            with lock:
                results.append(s)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=one, args=(text,)) for text in texts]
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
    timeout: float = 120.0,
    every: float = 10.0,
) -> Cell:
    cell = Cell(prompt_len, output_len, concurrency, "vllm bench serve")
    name = f"vllm-p{prompt_len}-o{output_len}-c{concurrency}.json"
    argv = vllm_bench_argv(
        ep, served_name, model, prompt_len, output_len, concurrency, repeats, work, name
    )
    before = _scrape(ep)
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
    _spec(cell, before, _scrape(ep))
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
    gen = "vllm:generation_tokens_total"
    start = last_change = time.monotonic()
    last_count = before.get(gen)
    next_note = start + every
    with open_private(log, truncate=True) as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    return proc.wait(timeout=min(1.0, every))
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                count = _scrape(ep).get(gen) if last_count is not None else None
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
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


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
def server_info(ep: endpoint.Endpoint, served_name: str) -> endpoint.Model:
    listed = endpoint.models(ep)
    for m in listed:
        if m.id == served_name:
            return m
    raise UsageError(
        "bench",
        f"the server does not serve {served_name!r} (it lists {[m.id for m in listed]})",
        "Pass --served-name with one of the names /v1/models lists.",
    )


def fits(prompt_len: int, output_len: int, max_model_len: int | None) -> str:
    """Why a cell cannot be sent ('' when it fits): vLLM refuses a prompt plus max_tokens
    beyond max_model_len with a 400."""
    if max_model_len is None or prompt_len + output_len <= max_model_len:
        return ""
    return (
        f"prompt {prompt_len} + output {output_len} tokens exceed the server's "
        f"max_model_len {max_model_len}"
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
    timeout: float = 120.0,
    out: Out = print,
    every: float = 10.0,
    lim: limit.Limit | None = None,
    limit_note: str = "",
) -> Report:
    """``timeout``: the longest silence allowed from the server (a stall), not a cell's
    length; ``out`` gets progress every ``every`` s while a cell runs."""
    if (
        repeats < 1
        or not prompt_lens
        or not output_lens
        or not concurrency
        or min([*prompt_lens, *output_lens, *concurrency]) < 1
        or timeout <= 0
    ):
        raise UsageError(
            "bench grid",
            "lengths, concurrency and repeats must be >= 1, the timeout positive",
            "For example --prompt-lens 128,2048 --output-lens 128 --repeats 3.",
        )
    if not endpoint.healthy(ep):
        raise TurboError(
            ep.url("/health"),
            "is not healthy",
            "Start the server (`invoke serve --detach`) and wait for it.",
        )
    info = server_info(ep, served_name)
    chosen, reason = choose_tool(tool, model)
    report = Report(
        ep.base,
        served_name,
        info.owned_by,
        info.owned_by != "vllm",
        chosen,
        reason,
        repeats,
        dict(seed),
        [],
        time.strftime("%Y-%m-%dT%H:%M:%S"),
        max_model_len=info.max_model_len,
    )
    if report.stand_in:
        out(f"warning: {STAND_IN_WARNING} (owned_by={info.owned_by!r})")
    grid = [(p, o, c) for c in concurrency for p in prompt_lens for o in output_lens]
    cells = []
    for p, o, c in grid:
        why = fits(p, o, info.max_model_len)
        if why:
            out(f"skip: prompt {p}, output {o}, concurrency {c}: {why}")
            report.skipped.append({"prompt_len": p, "output_len": o, "concurrency": c, "why": why})
        else:
            cells.append((p, o, c))
    if not cells:
        raise UsageError(
            "bench grid",
            f"no cell fits the server's max_model_len {info.max_model_len}",
            "Choose --prompt-lens and --output-lens whose sums fit, or serve with a larger "
            "--max-model-len.",
        )
    work.mkdir(parents=True, exist_ok=True)
    prompts = Prompts(ep, served_name)
    for i, (p, o, c) in enumerate(cells, 1):
        out(f"[{i}/{len(cells)}] prompt {p}, output {o}, concurrency {c}, x{repeats} ({chosen})")
        if chosen == "vllm":
            cell = run_vllm_cell(
                ep, served_name, model, p, o, c, repeats, work, out, timeout, every
            )
        else:
            meter = Meter()
            with endpoint.heartbeat(out, every, meter.line):
                cell = run_builtin_cell(ep, served_name, p, o, c, repeats, timeout, prompts, meter)
        _limit(cell, lim)
        acc = f", acceptance {cell.acceptance:.0%}" if cell.acceptance is not None else ""
        share = (
            f", {cell.roofline_share:.0%} of the {_roof(cell):.0f} tok/s roofline"
            if cell.roofline_share is not None
            else ""
        )
        out(f"      TTFT {cell.ttft_ms:.0f} ms, decode {cell.decode_tok_s:.1f} tok/s{acc}{share}")
        report.cells.append(cell)
    report.prompt_sizing = prompts.sizing()
    if lim is not None:
        report.roofline = limit.describe(lim, limit.cell_context(*cells[0][:2]))
    report.roofline_note = limit_note
    return report


def _roof(c: Cell) -> float:
    return c.mtp_roofline_tok_s or c.roofline_tok_s or 0.0


def markdown(report: Report) -> str:
    lines = [f"# Benchmark: {report.served_name} at {report.endpoint}", ""]
    if report.stand_in:
        lines += [f"> **{STAND_IN_WARNING}** (owned_by `{report.owned_by}`).", ""]
    lines += [
        f"Tool: {report.tool} ({report.tool_reason}); median of {report.repeats} "
        f"repeats; {report.started}.",
        "",
        "| prompt | output | concurrency | TTFT ms | decode tok/s (per stream) | "
        "total tok/s | MTP acceptance | tokens per pass (mean accepted length) | roofline tok/s | "
        "MTP roofline tok/s | share of roofline |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report.cells:
        acc = f"{c.acceptance:.0%}" if c.acceptance is not None else "-"
        mal = f"{c.mean_accepted_len:.2f}" if c.mean_accepted_len is not None else "-"
        lines.append(
            f"| {c.prompt_len} | {c.output_len} | {c.concurrency} | {c.ttft_ms:.0f} "
            f"| {c.decode_tok_s:.1f} | {c.aggregate_tok_s:.1f} | {acc} | {mal} "
            f"| {_opt(c.roofline_tok_s)} | {_opt(c.mtp_roofline_tok_s)} "
            f"| {_pct(c.roofline_share)} |"
        )
    lines += _notes(report)
    lines += _roofline_md(report)
    lines += [
        "",
        "Seed figures (one DGX Spark, single-stream decode):",
        "",
        "| configuration | tok/s |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v:g} |" for k, v in report.seed.items()]
    return "\n".join(lines) + "\n"


def _opt(x: float | None) -> str:
    return f"{x:.1f}" if x is not None else "-"


def _pct(x: float | None) -> str:
    return f"{x:.0%}" if x is not None else "-"


def _roofline_md(report: Report) -> list[str]:
    """How the roofline was computed: bytes per token by component, both bandwidths."""
    r = report.roofline
    if r is None:
        note = report.roofline_note or "not computed"
        return ["", f"Roofline: {note}."]
    bw = r["bandwidth"]
    lines = [
        "",
        "## Roofline",
        "",
        f"Single-stream decode reads every weight a token touches once per token: the roofline "
        f"is bandwidth / bytes per token. {r['model']} ({r['quantisation']}, KV cache "
        f"{r['kv_dtype']}), at {r['context']} tokens of context: "
        f"**{roofline.size(r['bytes_per_token'])} per token**; each cell uses its own context "
        "(prompt + half the output); several streams share one pass over the weights.",
        "",
        "| component | counted | per token |",
        "|---|---|---:|",
    ]
    lines += [
        f"| {c['component']} | {c['counted']} | {roofline.size(c['bytes_per_token'])} |"
        for c in r["components"]
    ]
    stated = f"{roofline.gbs(bw['spec_gbs'])} ({bw['gpu']})" if bw["spec_gbs"] else "unknown"
    measured = (
        f"{roofline.gbs(bw['measured_gbs'])} ({bw['measured_how']})"
        if bw["measured_gbs"]
        else f"none ({bw['measured_how']})"
    )
    lines += [
        "",
        f"Bandwidth: stated {stated}; measured {measured}; the roofline uses "
        f"{roofline.gbs(bw['used_gbs'])} ({bw['used']}).",
    ]
    lines += [f"- {n}" for n in r["notes"]]
    return lines


def _notes(report: Report) -> list[str]:
    """Skipped cells and how prompts were sized, under the table that they qualify."""
    lines: list[str] = []
    if report.prompt_sizing:
        lines += ["", f"Prompt lengths: {report.prompt_sizing}."]
    if report.skipped:
        lines += ["", f"Skipped (the server's max_model_len is {report.max_model_len}):"]
        lines += [
            f"- prompt {s['prompt_len']}, output {s['output_len']}, "
            f"concurrency {s['concurrency']}: {s['why']}"
            for s in report.skipped
        ]
    return lines


def _pyplot() -> Any:
    """matplotlib is a declared dependency of the chart; a trimmed environment may lack it."""
    try:
        import matplotlib
    except ImportError as exc:
        raise TurboError(
            "bench chart",
            f"matplotlib is not importable ({exc})",
            "Install it (`pip install matplotlib`, or `pixi install` for the project's "
            "environment) or pass --no-chart; bench.json and bench.md are written either way.",
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def chart(report: Report, path: Path) -> Path:
    """Decode tok/s per grid cell (single stream) against the seed's figures."""
    plt = _pyplot()

    single = [c for c in report.cells if c.concurrency == 1] or report.cells
    labels = [
        f"p{c.prompt_len}/o{c.output_len}" + (f"/c{c.concurrency}" if c.concurrency > 1 else "")
        for c in single
    ]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(single) + 3), 4.5))
    xs = list(range(len(single)))
    ax.bar(xs, [c.decode_tok_s for c in single], color="#4c72b0", label="measured")
    ax.set_xticks(xs, labels)
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
    _draw_roofline(ax, single)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _draw_roofline(ax: Any, cells: Sequence[Cell]) -> None:
    """Each bar's roofline as a bar-wide line (cells differ in context), labelled with the
    measured share of it; MTP's raised roofline dashed."""
    labelled: set[str] = set()

    def once(label: str) -> str | None:
        fresh = label not in labelled
        labelled.add(label)
        return label if fresh else None

    for x, c in enumerate(cells):
        if c.roofline_tok_s is None:
            continue
        ax.hlines(
            c.roofline_tok_s,
            x - 0.45,
            x + 0.45,
            colors="#c44e52",
            linewidth=2,
            label=once("memory-bandwidth roofline"),
        )
        if c.mtp_roofline_tok_s:
            ax.hlines(
                c.mtp_roofline_tok_s,
                x - 0.45,
                x + 0.45,
                colors="#c44e52",
                linestyles="--",
                linewidth=1.5,
                label=once("roofline with MTP (measured acceptance)"),
            )
        if c.roofline_share is not None:
            ax.text(x, c.decode_tok_s, f"{c.roofline_share:.0%}", ha="center", va="bottom")
    if labelled:
        # Headroom above the highest line so the legend covers none of them.
        top = max(
            v
            for c in cells
            for v in (c.decode_tok_s, c.roofline_tok_s or 0.0, c.mtp_roofline_tok_s or 0.0)
        )
        if ax.get_yscale() == "linear":
            ax.set_ylim(0, max(ax.get_ylim()[1], top * 1.3))
        ax.legend(fontsize=7, loc="upper left", framealpha=0.8)


def write(report: Report, out_dir: Path, with_chart: bool = True) -> dict[str, Path]:
    """The JSON and Markdown first: a chart that cannot be drawn never costs the numbers."""
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
            _opt(c.mtp_roofline_tok_s or c.roofline_tok_s),
            _pct(c.roofline_share),
        )
        for c in report.cells
    ]
    head = f"{STAND_IN_WARNING}\n" if report.stand_in else ""
    seed = ", ".join(f"{k} {v:g}" for k, v in report.seed.items())
    notes = "\n".join(_notes(report))
    return (
        head
        + render_table(
            [
                "prompt",
                "output",
                "conc",
                "TTFT ms",
                "decode tok/s",
                "total tok/s",
                "MTP accept",
                "roofline",
                "share",
            ],
            rows,
        )
        + (f"\n{notes}" if notes else "")
        + _roofline_line(report)
        + f"\n\nseed (tok/s, single stream): {seed}"
    )


def _roofline_line(report: Report) -> str:
    r = report.roofline
    if r is None:
        return f"\nroofline: {report.roofline_note}" if report.roofline_note else ""
    bw = r["bandwidth"]
    measured = roofline.gbs(bw["measured_gbs"]) if bw["measured_gbs"] else "not measured"
    return (
        f"\nroofline: {roofline.size(r['bytes_per_token'])} per token at {r['context']} tokens "
        f"of context, at {roofline.gbs(bw['used_gbs'])} ({bw['used']}; measured {measured}); "
        "per cell at its own context (bench.md has the table)"
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


def dry_run_plan(
    ep: endpoint.Endpoint,
    served_name: str,
    *,
    model: str,
    grid: Sequence[tuple[int, int, int]],
    repeats: int,
    tool: str,
    out_dir: Path,
    limit_note: str,
) -> str:
    """What a run would send and write, without asking the server anything: the cells, the
    tool and its argv per cell, the files. Whether a cell fits the server's context is only
    known from /v1/models, so that check is named, not made."""
    chosen, reason = choose_tool(tool, model)
    lines = [
        f"dry run: nothing sent to {ep.base}, nothing written",
        f"  served model: {served_name}; tool: {chosen} ({reason}); {repeats} request(s) per "
        "stream and cell",
        "  at run time: /health must answer; cells whose prompt + output exceed the server's "
        "max_model_len (from /v1/models) are skipped with a note",
    ]
    for i, (p, o, c) in enumerate(grid, 1):
        lines.append(f"  [{i}/{len(grid)}] prompt {p}, output {o}, concurrency {c}")
        if chosen == "vllm":
            name = f"vllm-p{p}-o{o}-c{c}.json"
            argv = vllm_bench_argv(ep, served_name, model, p, o, c, repeats, out_dir / "raw", name)
            lines.append("      " + " ".join(redact_argv(argv)))
        else:
            lines.append(f"      builtin streaming client: {repeats * c} chat request(s)")
    lines.append(f"  roofline: {limit_note or 'from ' + model}")
    lines.append(f"  would write: {out_dir}/bench.json, bench.md, bench.png, raw/")
    return "\n".join(lines)


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
    timeout: float = 120.0,
    bandwidth_gbs: float = 0.0,
    kv_dtype: str = "",
    dry_run: bool = False,
) -> str:
    """What `invoke bench` does after parsing: run the grid, write the files, summarise."""
    from turbo import paths
    from turbo.pins import load_pins
    from turbo.profiles import load_book

    pins = load_pins()
    sec = load_book().section("bench")
    ep = server_url.client_endpoint(url, port)
    out_dir = Path(out) if out else paths.state_dir() / "bench" / time.strftime("%Y%m%d-%H%M%S")
    model = model or str(paths.model_dir(pins))
    # The copy is measured only on the serving machine: a remote server's GPU is not this one.
    local = urlsplit(ep.base).hostname in endpoint.LOOPBACK
    p_lens = _ints(prompt_lens, sec.get("prompt_lens", [128]), "prompt-lens")
    o_lens = _ints(output_lens, sec.get("output_lens", [128]), "output-lens")
    streams = _ints(concurrency, [1], "concurrency")
    n_repeats = repeats or int(sec.get("repeats", 3))
    if dry_run:
        if not (Path(model) / "config.json").is_file():
            note = f"no checkpoint at {model} (pass --model DIR for the roofline)"
        else:
            note = ""
        grid = [(p, o, c) for c in streams for p in p_lens for o in o_lens]
        return dry_run_plan(
            ep,
            served_name or pins.serve.served_name,
            model=model,
            grid=grid,
            repeats=n_repeats,
            tool=tool,
            out_dir=out_dir,
            limit_note=note,
        )
    lim, limit_note = limit.load(model, bandwidth_gbs or None, kv_dtype, measure=local)
    report = run(
        ep,
        served_name or pins.serve.served_name,
        model=model,
        prompt_lens=p_lens,
        output_lens=o_lens,
        concurrency=streams,
        repeats=n_repeats,
        tool=tool,
        seed={str(k): float(v) for k, v in sec.get("seed", {}).items()},
        work=out_dir / "raw",
        timeout=timeout,
        out=printer,
        lim=lim,
        limit_note=limit_note,
    )
    files = write(report, out_dir, with_chart=chart)
    if as_json:
        return json.dumps(
            {**report.to_dict(), "files": {k: str(v) for k, v in files.items()}}, indent=2
        )
    listing = "\n".join(f"  {k}: {v}" for k, v in files.items())
    return f"{render(report)}\n\nwritten:\n{listing}"
