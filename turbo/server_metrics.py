"""What a vLLM server's ``/metrics`` says about speculative decoding, read over a span of work:
the acceptance rate, the mean accepted length (tokens per verify pass) and the drafts per step.
The counters are Prometheus totals, so a span is the difference of two scrapes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from turbo import endpoint
from turbo.errors import TurboError

DRAFTS = "vllm:spec_decode_num_drafts_total"
DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"
GENERATED = "vllm:generation_tokens_total"


def scrape(ep: endpoint.Endpoint) -> dict[str, float]:
    """The server's counters, or nothing when it has no readable ``/metrics``."""
    try:
        r = endpoint.get(ep, "/metrics")
    except TurboError:
        return {}
    return endpoint.parse_metrics(r.text) if r.status_code == 200 else {}


def _delta(after: Mapping[str, float], before: Mapping[str, float], name: str) -> float:
    return after.get(name, 0) - before.get(name, 0)


def acceptance(m: Mapping[str, float], before: Mapping[str, float] | None = None) -> float | None:
    """Accepted / proposed draft tokens (over the span since ``before`` when given)."""
    b = before or {}
    drafted = _delta(m, b, DRAFT_TOKENS)
    accepted = _delta(m, b, ACCEPTED)
    return accepted / drafted if drafted > 0 else None


@dataclass(frozen=True)
class Speculation:
    """Speculative decoding over one span; all None without drafts."""

    acceptance: float | None
    # 1 + accepted tokens per draft step: tokens one verify pass yields.
    mean_accepted_len: float | None
    # Draft tokens per draft step (the drafts the MTP roofline counts).
    draft_len: float | None


def speculation(before: Mapping[str, float], after: Mapping[str, float]) -> Speculation:
    drafts = _delta(after, before, DRAFTS)
    accepted = _delta(after, before, ACCEPTED)
    draft_tokens = _delta(after, before, DRAFT_TOKENS)
    return Speculation(
        acceptance=acceptance(after, before),
        mean_accepted_len=1 + accepted / drafts if drafts > 0 else None,
        draft_len=draft_tokens / drafts if drafts > 0 else None,
    )
