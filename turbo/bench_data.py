"""What a benchmark run produces, as plain data: each request's sample, each grid cell's
medians and its share of the roofline, the whole report as bench.json writes it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

Out = Callable[[str], None]
STAND_IN_WARNING = "STAND-IN SERVER (not vLLM): these numbers are not real performance"


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
    # The memory-bandwidth limit at this cell (turbo/ceiling.py): total tok/s over its streams.
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
    # The roofline's computation (turbo/ceiling.py) at the first cell's context, or why not.
    roofline: dict[str, Any] | None = None
    roofline_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def roof(c: Cell) -> float:
    """The roofline a cell's figure is measured against: MTP's where it applies."""
    return c.mtp_roofline_tok_s or c.roofline_tok_s or 0.0


class Speculation(Protocol):
    """Speculative decoding over a cell (turbo/server_metrics.py reads it from /metrics)."""

    @property
    def acceptance(self) -> float | None: ...
    @property
    def mean_accepted_len(self) -> float | None: ...
    @property
    def draft_len(self) -> float | None: ...


def note_speculation(cell: Cell, spec: Speculation) -> None:
    """The cell's speculative decoding, from the server's counters over the cell."""
    cell.acceptance = spec.acceptance
    cell.mean_accepted_len = spec.mean_accepted_len
    cell.draft_len = spec.draft_len
