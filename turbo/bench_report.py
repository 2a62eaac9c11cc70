"""What a benchmark run leaves behind: bench.json, bench.md (the table, the notes, how the
roofline was computed, the seed's figures) and bench.png (decode tok/s per cell against the
seed's figures, each bar with its roofline), and the summary printed at the end."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from turbo.bench_data import STAND_IN_WARNING, Cell, Report
from turbo.console import render_table
from turbo.errors import TurboError
from turbo.traffic import gbs, size


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
        f"**{size(r['bytes_per_token'])} per token**; each cell uses its own context "
        "(prompt + half the output); several streams share one pass over the weights.",
        "",
        "| component | counted | per token |",
        "|---|---|---:|",
    ]
    lines += [
        f"| {c['component']} | {c['counted']} | {size(c['bytes_per_token'])} |"
        for c in r["components"]
    ]
    stated = f"{gbs(bw['spec_gbs'])} ({bw['gpu']})" if bw["spec_gbs"] else "unknown"
    measured = (
        f"{gbs(bw['measured_gbs'])} ({bw['measured_how']})"
        if bw["measured_gbs"]
        else f"none ({bw['measured_how']})"
    )
    lines += [
        "",
        f"Bandwidth: stated {stated}; measured {measured}; the roofline uses "
        f"{gbs(bw['used_gbs'])} ({bw['used']}).",
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
    measured = gbs(bw["measured_gbs"]) if bw["measured_gbs"] else "not measured"
    return (
        f"\nroofline: {size(r['bytes_per_token'])} per token at {r['context']} tokens "
        f"of context, at {gbs(bw['used_gbs'])} ({bw['used']}; measured {measured}); "
        "per cell at its own context (bench.md has the table)"
    )
