"""`bench`: single-stream decode tok/s and time to first token over a grid of prompt and output
lengths, the median of several repeats, MTP draft acceptance from ``/metrics``, optional
concurrency levels; JSON + Markdown + PNG next to the seed's figures.

Two measuring tools: ``vllm``, vLLM's own ``vllm bench serve`` (turbo/bench_vllm.py), and
``builtin``, a streaming OpenAI client (turbo/bench_client.py). Every cell must fit the server's
context (``max_model_len`` from ``/v1/models``): one that cannot is skipped with a note, not
sent. ``timeout`` bounds the server's silence; progress is printed while a cell runs. Each
cell's figure comes with its share of the memory-bandwidth roofline (turbo/limit.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from turbo import endpoint, limit, proc, server_url
from turbo.bench_client import Meter as Meter
from turbo.bench_client import Prompts as Prompts
from turbo.bench_client import measure_one as measure_one
from turbo.bench_client import prompt_text as prompt_text
from turbo.bench_client import run_builtin_cell as run_builtin_cell
from turbo.bench_data import STAND_IN_WARNING as STAND_IN_WARNING
from turbo.bench_data import Cell as Cell
from turbo.bench_data import Out as Out
from turbo.bench_data import Report as Report
from turbo.bench_data import Sample as Sample
from turbo.bench_data import roof
from turbo.bench_report import chart as chart
from turbo.bench_report import markdown as markdown
from turbo.bench_report import render as render
from turbo.bench_report import write as write
from turbo.bench_vllm import choose_tool as choose_tool
from turbo.bench_vllm import parse_vllm_result as parse_vllm_result
from turbo.bench_vllm import run_vllm_cell as run_vllm_cell
from turbo.bench_vllm import run_watched as run_watched
from turbo.bench_vllm import vllm_bench_argv as vllm_bench_argv
from turbo.ceiling import Limit, cell_context, describe, for_cell
from turbo.errors import TurboError, UsageError
from turbo.outcome import Outcome, done

Grid = Sequence[tuple[int, int, int]]


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


def _limit(cell: Cell, lim: Limit | None) -> None:
    """The cell's share of the roofline: per-stream decode for one stream, the total over
    streams for several; with MTP, against the roofline MTP raises."""
    cl = (
        for_cell(
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


def _check_grid(
    prompt_lens: Sequence[int],
    output_lens: Sequence[int],
    concurrency: Sequence[int],
    repeats: int,
    timeout: float,
) -> None:
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


def _fitting(grid: Grid, report: Report, out: Out) -> list[tuple[int, int, int]]:
    """The cells the server's context holds; the others are noted in the report, not sent."""
    cells = []
    for p, o, c in grid:
        why = fits(p, o, report.max_model_len)
        if why:
            out(f"skip: prompt {p}, output {o}, concurrency {c}: {why}")
            report.skipped.append({"prompt_len": p, "output_len": o, "concurrency": c, "why": why})
        else:
            cells.append((p, o, c))
    if not cells:
        raise UsageError(
            "bench grid",
            f"no cell fits the server's max_model_len {report.max_model_len}",
            "Choose --prompt-lens and --output-lens whose sums fit, or serve with a larger "
            "--max-model-len.",
        )
    return cells


def _cell_line(cell: Cell) -> str:
    acc = f", acceptance {cell.acceptance:.0%}" if cell.acceptance is not None else ""
    share = (
        f", {cell.roofline_share:.0%} of the {roof(cell):.0f} tok/s roofline"
        if cell.roofline_share is not None
        else ""
    )
    return f"      TTFT {cell.ttft_ms:.0f} ms, decode {cell.decode_tok_s:.1f} tok/s{acc}{share}"


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
    lim: Limit | None = None,
    limit_note: str = "",
) -> Report:
    """``timeout``: the longest silence allowed from the server (a stall), not a cell's
    length; ``out`` gets progress every ``every`` s while a cell runs."""
    _check_grid(prompt_lens, output_lens, concurrency, repeats, timeout)
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
    cells = _fitting(grid, report, out)
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
        out(_cell_line(cell))
        report.cells.append(cell)
    report.prompt_sizing = prompts.sizing()
    if lim is not None:
        report.roofline = describe(lim, cell_context(*cells[0][:2]))
    report.roofline_note = limit_note
    return report


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
            lines.append("      " + proc.describe(argv))
        else:
            lines.append(f"      builtin streaming client: {repeats * c} chat request(s)")
    lines.append(f"  roofline: {limit_note or 'from ' + model}")
    lines.append(f"  would write: {out_dir}/bench.json, bench.md, bench.png, raw/")
    return "\n".join(lines)


def _dry_run(
    ep: endpoint.Endpoint,
    served_name: str,
    model: str,
    grid: Grid,
    repeats: int,
    tool: str,
    out_dir: Path,
) -> str:
    if not (Path(model) / "config.json").is_file():
        note = f"no checkpoint at {model} (pass --model DIR for the roofline)"
    else:
        note = ""
    return dry_run_plan(
        ep,
        served_name,
        model=model,
        grid=grid,
        repeats=repeats,
        tool=tool,
        out_dir=out_dir,
        limit_note=note,
    )


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
    say: Out = print,
    timeout: float = 120.0,
    bandwidth_gbs: float = 0.0,
    kv_dtype: str = "",
    dry_run: bool = False,
) -> Outcome:
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
        grid = [(p, o, c) for c in streams for p in p_lens for o in o_lens]
        return done(
            _dry_run(
                ep, served_name or pins.serve.served_name, model, grid, n_repeats, tool, out_dir
            )
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
        out=say,
        lim=lim,
        limit_note=limit_note,
    )
    files = write(report, out_dir, with_chart=chart)
    listing = "\n".join(f"  {k}: {v}" for k, v in files.items())
    return done(
        f"{render(report)}\n\nwritten:\n{listing}",
        {**report.to_dict(), "files": {k: str(v) for k, v in files.items()}},
    )
