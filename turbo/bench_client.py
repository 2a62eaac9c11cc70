"""bench's builtin tool: streaming requests against the OpenAI API, for where vLLM's own
benchmark is not installed (another machine, CI) or with ``--tool builtin``.

Tokens are counted from the usage the server reports with every chunk
(``stream_options.continuous_usage_stats``), never from chunks or text: MTP delivers several
tokens per chunk, and a byte-level tokenizer may send a token with no text. Prompts are built
to the exact token count through vLLM's ``/tokenize`` and sent as token ids.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from typing import Any

from turbo import endpoint
from turbo.bench_data import Cell, Sample, note_speculation
from turbo.errors import TurboError
from turbo.server_metrics import scrape, speculation

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
    before = scrape(ep)
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
    note_speculation(cell, speculation(before, scrape(ep)))
    cell.ttft_ms = statistics.median(s.ttft_s for s in cell.samples) * 1000
    cell.decode_tok_s = statistics.median(s.decode_tok_s for s in cell.samples)
    cell.aggregate_tok_s = statistics.median(aggregates)
    return cell
