"""`verify`: is the endpoint really serving the model? Health, the served name, one chat
completion with an answer that can be checked, and the metrics endpoint.

The chat is streamed: a long answer shows progress while it comes, and ``timeout`` bounds the
server's silence, not the answer's length, so a stalled engine fails in seconds with advice
for a stall, while a slow thinking model may take as long as it needs. Its ``max_tokens`` is
fitted to the server's context (``max_model_len`` from ``/v1/models``, the question counted
by vLLM's ``/tokenize``): a small test server is never asked for more than it holds."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from turbo import endpoint, server_url
from turbo.checks import FAIL as FAIL
from turbo.checks import PASS as PASS
from turbo.checks import WARN as WARN
from turbo.console import render_table
from turbo.errors import TurboError
from turbo.known_answer import EXPECTED, QUESTION
from turbo.outcome import Outcome, checked
from turbo.server_metrics import acceptance

SKIP = "skip"  # a step not tried because an earlier one failed
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
# Without /tokenize: a chat template adds a few dozen tokens around the question at most, and a
# byte-level tokenizer never makes more tokens than the text has bytes.
TEMPLATE_MARGIN = 64
Say = Callable[[str], None]


@dataclass(frozen=True)
class Step:
    name: str
    status: str
    detail: str
    seconds: float
    fix: str = ""


def _timed(name: str, fn: Any) -> Step:
    t0 = time.perf_counter()
    fix = ""
    try:
        status, detail = fn()
    except TurboError as err:
        status, detail, fix = FAIL, err.why, err.fix
    return Step(name, status, detail, time.perf_counter() - t0, fix)


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


def check_models(
    ep: endpoint.Endpoint, served_name: str, found: list[endpoint.Model] | None = None
) -> Step:
    """``found`` receives the served model's entry (its ``max_model_len`` sizes the chat)."""

    def go() -> tuple[str, str]:
        listed = endpoint.models(ep)
        ids = [m.id for m in listed]
        if served_name not in ids:
            raise TurboError(
                "models",
                f"{served_name!r} not among {ids}",
                "Pass --served-name with a name the server lists (or fix [serve].served_name).",
            )
        model = next(m for m in listed if m.id == served_name)
        if found is not None:
            found.append(model)
        ctx = f" (max_model_len {model.max_model_len})" if model.max_model_len else ""
        return PASS, f"serves {served_name}{ctx}"

    return _timed("models", go)


def fit_max_tokens(
    max_tokens: int, prompt_tokens: int, max_model_len: int | None
) -> tuple[int, str]:
    """The largest budget the server accepts: vLLM refuses prompt + max_tokens > max_model_len
    with a 400. Returns (budget, note); a budget below 1 means the question does not fit."""
    if max_model_len is None or prompt_tokens + max_tokens <= max_model_len:
        return max_tokens, ""
    budget = max_model_len - prompt_tokens
    return budget, f"max_tokens {max_tokens} fitted to {budget} by max_model_len {max_model_len}"


def _prompt_tokens(ep: endpoint.Endpoint, served_name: str, messages: list[Any]) -> int:
    ids = endpoint.tokenize(ep, {"model": served_name, "messages": messages})
    if ids is not None:
        return len(ids)
    return sum(len(str(m.get("content", "")).encode()) for m in messages) + TEMPLATE_MARGIN


def check_chat(
    ep: endpoint.Endpoint,
    served_name: str,
    max_tokens: int,
    timeout: float,
    max_model_len: int | None = None,
    say: Say | None = None,
    every: float = 10.0,
) -> Step:
    def go() -> tuple[str, str]:
        messages = [{"role": "user", "content": QUESTION}]
        asked = _prompt_tokens(ep, served_name, messages) if max_model_len else 0
        budget, fitted = fit_max_tokens(max_tokens, asked, max_model_len)
        if budget < 1:
            return FAIL, (
                f"the server's context (max_model_len {max_model_len}) has no room for an "
                f"answer after the question's {asked} tokens"
            )
        body = {
            "model": served_name,
            "temperature": 0,
            "max_tokens": budget,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
        content: list[str] = []
        reasoning: list[str] = []
        finish: str | None = None
        tokens = 0
        t0 = time.monotonic()

        def progress() -> str:
            waited = time.monotonic() - t0
            if tokens:
                return f"  chat: {tokens} tokens in {waited:.0f} s ..."
            return f"  chat: waiting for the first token, {waited:.0f} s ..."

        with endpoint.heartbeat(say, every, progress):
            for _t, event in endpoint.stream(ep, "/v1/chat/completions", body, timeout=timeout):
                usage = event.get("usage")
                if isinstance(usage, dict):
                    tokens = int(usage.get("completion_tokens") or tokens)
                for choice in event.get("choices") or []:
                    if not isinstance(choice, dict):
                        continue
                    delta = choice.get("delta") or {}
                    content.append(str(delta.get("content") or ""))
                    reasoning.append(
                        str(delta.get("reasoning_content") or delta.get("reasoning") or "")
                    )
                    finish = choice.get("finish_reason") or finish
        answer = _THINK.sub("", "".join(content)).strip()
        note = f"; {fitted}" if fitted else ""
        if EXPECTED in re.findall(r"\d+", answer):
            return PASS, f"{QUESTION!r} -> {answer[:40]!r} ({tokens} tokens{note})"
        if finish == "length" and (EXPECTED in "".join(reasoning) or not answer):
            room = (
                f"the server's context (max_model_len {max_model_len}) allows no more"
                if fitted
                else "raise --max-tokens"
            )
            return WARN, f"answer cut off after {tokens} tokens (still thinking); {room}"
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


def run(
    ep: endpoint.Endpoint,
    served_name: str,
    *,
    wait_s: float = 0.0,
    max_tokens: int = 1024,
    timeout: float = 120.0,
    say: Say | None = None,
    every: float = 10.0,
) -> list[Step]:
    """``timeout``: the longest silence allowed from the server; ``say`` gets a progress line
    every ``every`` s while the chat runs."""
    steps = [check_health(ep, wait_s)]
    if steps[0].status == FAIL:
        return steps + [
            Step(n, SKIP, "server not healthy", 0.0) for n in ("models", "chat", "metrics")
        ]
    found: list[endpoint.Model] = []
    steps.append(check_models(ep, served_name, found))
    mml = found[0].max_model_len if found else None
    steps += [
        check_chat(ep, served_name, max_tokens, timeout, mml, say, every),
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
    advice = "".join(f"\n{s.name}: {s.fix}" for s in steps if s.status == FAIL and s.fix)
    return f"verify {ep.base}\n{table}\n{advice}\n{verdict}"


def to_data(steps: list[Step], ep: endpoint.Endpoint) -> dict[str, Any]:
    return {"endpoint": ep.base, "ok": exit_code(steps) == 0, "checks": [asdict(s) for s in steps]}


def to_json(steps: list[Step], ep: endpoint.Endpoint) -> str:
    return json.dumps(to_data(steps, ep), indent=2)


def command(
    *,
    url: str,
    port: int | None,
    served_name: str,
    wait_s: float,
    max_tokens: int,
    timeout: float = 120.0,
    say: Say | None = None,
) -> Outcome:
    """What `invoke verify` does: the checks in order; exit 1 when one fails."""
    from turbo.errors import UsageError
    from turbo.pins import load_pins

    if max_tokens < 1 or timeout <= 0 or wait_s < 0:
        raise UsageError(
            "verify",
            "--max-tokens and --timeout must be positive, --wait not negative",
            "For example --max-tokens 1024 --timeout 120.",
        )
    ep = server_url.client_endpoint(url, port)
    steps = run(
        ep,
        served_name or load_pins().serve.served_name,
        wait_s=wait_s,
        max_tokens=max_tokens,
        timeout=timeout,
        say=say,
    )
    return checked(render(steps, ep), to_data(steps, ep), exit_code(steps) != 0)
