"""`verify`: is the endpoint really serving the model? Health, the served name, one chat
completion with an answer that can be checked, and the metrics endpoint."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from turbo import endpoint
from turbo.console import render_table
from turbo.errors import TurboError

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
QUESTION = "What is 17 + 25? Reply with the number only."
EXPECTED = "42"
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)


@dataclass(frozen=True)
class Step:
    name: str
    status: str
    detail: str
    seconds: float


def _timed(name: str, fn: Any) -> Step:
    t0 = time.perf_counter()
    try:
        status, detail = fn()
    except TurboError as err:
        status, detail = FAIL, err.why
    return Step(name, status, detail, time.perf_counter() - t0)


def check_health(ep: endpoint.Endpoint, wait_s: float) -> Step:
    def go() -> tuple[str, str]:
        deadline = time.monotonic() + wait_s
        while True:
            r = None
            try:
                r = endpoint.get(ep, "/health", timeout=5)
            except TurboError:
                if time.monotonic() >= deadline:
                    raise
            if r is not None and r.status_code == 200:
                return PASS, f"{ep.url('/health')} 200"
            if time.monotonic() >= deadline:
                code = r.status_code if r is not None else "no answer"
                return FAIL, f"{ep.url('/health')} answered {code}"
            time.sleep(1)

    return _timed("health", go)


def check_models(ep: endpoint.Endpoint, served_name: str) -> Step:
    def go() -> tuple[str, str]:
        r = endpoint.get(ep, "/v1/models")
        if r.status_code != 200:
            return FAIL, f"HTTP {r.status_code}"
        ids = [str(m.get("id")) for m in r.json().get("data", [])]
        if served_name not in ids:
            return FAIL, f"{served_name!r} not among {ids}"
        return PASS, f"serves {served_name}"

    return _timed("models", go)


def check_chat(ep: endpoint.Endpoint, served_name: str, max_tokens: int, timeout: float) -> Step:
    def go() -> tuple[str, str]:
        data = endpoint.post_json(
            ep,
            "/v1/chat/completions",
            {
                "model": served_name,
                "temperature": 0,
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": QUESTION}],
            },
            timeout=timeout,
        )
        choices = data.get("choices") or [{}]
        msg = choices[0].get("message") or {}
        content = str(msg.get("content") or "")
        reasoning = str(msg.get("reasoning_content") or msg.get("reasoning") or "")
        answer = _THINK.sub("", content).strip()
        tokens = (data.get("usage") or {}).get("completion_tokens", "?")
        if EXPECTED in re.findall(r"\d+", answer):
            return PASS, f"{QUESTION!r} -> {answer[:40]!r} ({tokens} tokens)"
        if choices[0].get("finish_reason") == "length" and (EXPECTED in reasoning or not answer):
            return WARN, (
                f"answer cut off after {tokens} tokens (still thinking); raise --max-tokens"
            )
        return FAIL, f"{QUESTION!r} -> {answer[:60]!r}, expected {EXPECTED}"

    return _timed("chat", go)


def check_metrics(ep: endpoint.Endpoint) -> Step:
    def go() -> tuple[str, str]:
        r = endpoint.get(ep, "/metrics")
        if r.status_code != 200:
            return FAIL, f"HTTP {r.status_code}"
        m = endpoint.parse_metrics(r.text)
        gen = m.get("vllm:generation_tokens_total")
        if gen is None:
            return FAIL, "no vllm:generation_tokens_total (not a vLLM server?)"
        detail = f"{int(gen)} tokens generated so far"
        rate = acceptance(m)
        if rate is not None:
            detail += f"; speculative acceptance {rate:.0%} so far"
        return PASS, detail

    return _timed("metrics", go)


def acceptance(m: dict[str, float], before: dict[str, float] | None = None) -> float | None:
    """Accepted / proposed draft tokens (over the span since ``before`` when given)."""
    b = before or {}
    drafted = m.get("vllm:spec_decode_num_draft_tokens_total", 0) - b.get(
        "vllm:spec_decode_num_draft_tokens_total", 0
    )
    accepted = m.get("vllm:spec_decode_num_accepted_tokens_total", 0) - b.get(
        "vllm:spec_decode_num_accepted_tokens_total", 0
    )
    return accepted / drafted if drafted > 0 else None


def run(
    ep: endpoint.Endpoint,
    served_name: str,
    *,
    wait_s: float = 0.0,
    max_tokens: int = 1024,
    timeout: float = 300.0,
) -> list[Step]:
    steps = [check_health(ep, wait_s)]
    if steps[0].status == FAIL:
        return steps + [
            Step(n, SKIP, "server not healthy", 0.0) for n in ("models", "chat", "metrics")
        ]
    steps += [
        check_models(ep, served_name),
        check_chat(ep, served_name, max_tokens, timeout),
        check_metrics(ep),
    ]
    return steps


def exit_code(steps: list[Step]) -> int:
    return 1 if any(s.status == FAIL for s in steps) else 0


def render(steps: list[Step], ep: endpoint.Endpoint) -> str:
    table = render_table(
        ["check", "status", "seconds", "detail"],
        [(s.name, s.status.upper(), f"{s.seconds:.2f}", s.detail) for s in steps],
    )
    verdict = "OK" if exit_code(steps) == 0 else "FAILED"
    return f"verify {ep.base}\n{table}\n\n{verdict}"


def to_json(steps: list[Step], ep: endpoint.Endpoint) -> str:
    return json.dumps(
        {"endpoint": ep.base, "ok": exit_code(steps) == 0, "checks": [asdict(s) for s in steps]},
        indent=2,
    )


def command(
    *, url: str, port: int | None, served_name: str, wait_s: float, max_tokens: int, as_json: bool
) -> tuple[str, int]:
    from turbo.pins import load_pins

    ep = endpoint.client_endpoint(url, port)
    steps = run(
        ep, served_name or load_pins().serve.served_name, wait_s=wait_s, max_tokens=max_tokens
    )
    return (to_json(steps, ep) if as_json else render(steps, ep)), exit_code(steps)
