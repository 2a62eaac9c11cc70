"""A local stand-in for `vllm serve`: the same HTTP protocol, no model.

It answers what verify, bench and serve's supervision ask of vLLM: ``/health``, ``/v1/models``,
``/v1/chat/completions`` and ``/v1/completions`` (plain and streamed as server-sent events,
with the final usage chunk when ``stream_options.include_usage`` is set) and ``/metrics`` in
Prometheus text with vLLM 0.16's metric names, the speculative-decoding counters included
(``vllm:spec_decode_num_drafts`` etc., from ``vllm/v1/spec_decode/metrics.py``).

Its numbers are made up: ``owned_by`` is "turbo-stand-in" (vLLM says "vllm") so that bench can
label every figure measured against it as not real.

Run as a program it also accepts `vllm serve`'s command line (``serve MODEL --host H --port P
--served-model-name N ...``; other flags are ignored, ``--speculative-config`` turns on the
speculative counters), so tests can put it on PATH as ``vllm`` and drive `invoke serve`.
Failure modes: ``--mode never-healthy`` (``/health`` is 503 forever), ``errors`` (completions
answer 500), ``drop`` (streams break off mid-way without ``[DONE]``), ``stall`` (completions
accept the request, then go silent for ``stall_s``), ``html`` / ``json-list`` (every route
answers 200 with a web page / a JSON list: something other than vLLM on the port).

Like vLLM 0.16 it also serves ``/tokenize`` (one token per word here; a chat adds
``CHAT_TEMPLATE_TOKENS``), takes a prompt as a list of token ids, refuses with vLLM's 400 a
request whose prompt plus ``max_tokens`` exceeds ``max_model_len``, and sends usage in every
chunk when ``stream_options.continuous_usage_stats`` is set.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OWNED_BY = "turbo-stand-in"
# Accepted draft tokens per step, cycled: 2,1,2,1 of 2 drafts = 75 % acceptance.
ACCEPT_CYCLE = (2, 1, 2, 1)
# Tokens the chat template adds around the messages (vLLM counts them in the prompt).
CHAT_TEMPLATE_TOKENS = 9
HTML = b"<!doctype html><html><body><h1>Welcome to nginx!</h1></body></html>"


@dataclass
class Options:
    served_name: str = "qwen3-next"
    model: str = "/models/stand-in"
    mode: str = "normal"
    spec_tokens: int = 0
    tokens_per_s: float = 2000.0
    ttft_s: float = 0.005
    startup_s: float = 0.0
    api_key: str | None = None
    max_model_len: int = 65536
    stall_s: float = 30.0


@dataclass
class State:
    opts: Options
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    prompt_tokens: int = 0
    generation_tokens: int = 0
    requests: int = 0
    ttft_sum: float = 0.0
    drafts: int = 0
    draft_tokens: int = 0
    accepted: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)
    step: int = 0

    def steps(self, n_tokens: int) -> Iterator[int]:
        """Tokens emitted per decode step: 1 without speculation, 1 + accepted with it."""
        left = n_tokens
        while left > 0:
            if self.opts.spec_tokens:
                with self.lock:
                    k = min(ACCEPT_CYCLE[self.step % len(ACCEPT_CYCLE)], self.opts.spec_tokens)
                    self.step += 1
                    self.drafts += 1
                    self.draft_tokens += self.opts.spec_tokens
                    self.accepted += k
                    for pos in range(k):
                        self.accepted_per_pos[pos] += 1
                n = min(1 + k, left)
            else:
                n = 1
            left -= n
            yield n


def answer_for(text: str) -> str:
    m = re.search(r"(\d+)\s*\+\s*(\d+)", text)
    return str(int(m.group(1)) + int(m.group(2))) if m else "OK"


def count_tokens(text: str) -> int:
    return max(1, len(text.split()))


def token_ids(text: str) -> list[int]:
    """One id per word, stable per word (a stand-in tokenizer)."""
    return [sum(w.encode()) % 1000 for w in text.split()] or [0]


class Handler(BaseHTTPRequestHandler):
    server: StandInServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # ----------------------------------------------------------------- plumbing
    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, data: Any) -> None:
        self._send(code, json.dumps(data).encode())

    def _authorized(self) -> bool:
        key = self.server.state.opts.api_key
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self._json(401, {"error": "Unauthorized"})
            return False
        return True

    # ----------------------------------------------------------------- routes
    def _not_vllm(self) -> bool:
        mode = self.server.state.opts.mode
        if mode == "html":
            self._send(200, HTML, "text/html; charset=utf-8")
        elif mode == "json-list":
            self._json(200, [])
        return mode in ("html", "json-list")

    def do_GET(self) -> None:
        st = self.server.state
        if self._not_vllm():
            return
        if self.path == "/health":
            ready = time.monotonic() - st.started >= st.opts.startup_s
            ok = ready and st.opts.mode != "never-healthy"
            self._send(200 if ok else 503, b"")
        elif self.path == "/v1/models":
            if self._authorized():
                self._json(200, {"object": "list", "data": [{
                    "id": st.opts.served_name, "object": "model", "created": 0,
                    "owned_by": OWNED_BY, "root": st.opts.model,
                    "max_model_len": st.opts.max_model_len}]})
        elif self.path == "/metrics":
            self._send(200, metrics_text(st).encode(), "text/plain; version=0.0.4")
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        st = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._json(400, {"error": "bad JSON"})
            return
        if self._not_vllm():
            return
        if self.path == "/tokenize" and self._authorized():
            if "messages" in body:
                text = " ".join(str(m.get("content", "")) for m in body["messages"])
                ids = token_ids(text) + [1] * CHAT_TEMPLATE_TOKENS
            else:
                ids = token_ids(str(body.get("prompt", "")))
            self._json(200, {"count": len(ids), "max_model_len": st.opts.max_model_len,
                             "tokens": ids, "token_strs": None})
            return
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            self._json(404, {"error": "not found"})
            return
        if not self._authorized():
            return
        if st.opts.mode == "errors":
            self._json(500, {"object": "error", "message": "EngineCore encountered an issue",
                             "type": "InternalServerError", "code": 500})
            return
        if body.get("model") != st.opts.served_name:
            self._json(404, {"object": "error", "type": "NotFoundError", "code": 404,
                             "message": f"The model `{body.get('model')}` does not exist."})
            return
        chat = self.path == "/v1/chat/completions"
        raw_prompt = body.get("prompt", "")
        if chat:
            prompt = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
            n_prompt = count_tokens(prompt) + CHAT_TEMPLATE_TOKENS
        elif isinstance(raw_prompt, list):
            prompt, n_prompt = "", len(raw_prompt)
        else:
            prompt = str(raw_prompt)
            n_prompt = count_tokens(prompt)
        answer = answer_for(prompt)
        n_out = int(body.get("max_tokens") or 16)
        mml = st.opts.max_model_len
        if n_prompt >= mml or n_prompt + n_out > mml:
            # vLLM 0.16's wording (entrypoints/openai/engine/serving.py).
            self._json(400, {"error": {
                "message": f"'max_tokens' or 'max_completion_tokens' is too large: {n_out}. "
                           f"This model's maximum context length is {mml} tokens and your "
                           f"request has {n_prompt} input tokens ({n_out} > {mml} - "
                           f"{n_prompt}).",
                "type": "BadRequestError", "param": "max_tokens", "code": 400}})
            return
        if st.opts.mode == "stall" and not body.get("stream"):
            time.sleep(st.opts.stall_s)
        if not body.get("ignore_eos"):
            n_out = min(n_out, count_tokens(answer))
        if body.get("stream"):
            self._stream(body, chat, answer, n_prompt, n_out)
        else:
            self._complete(chat, answer, n_prompt, n_out)

    def _account(self, n_prompt: int, n_out: int, ttft: float) -> None:
        st = self.server.state
        with st.lock:
            st.prompt_tokens += n_prompt
            st.generation_tokens += n_out
            st.requests += 1
            st.ttft_sum += ttft

    def _complete(self, chat: bool, answer: str, n_prompt: int, n_out: int) -> None:
        st = self.server.state
        time.sleep(st.opts.ttft_s + n_out / st.opts.tokens_per_s)
        for _ in st.steps(n_out):  # counts drafts as a streamed request would
            pass
        text = answer if n_out <= count_tokens(answer) else answer + " x" * (n_out - 1)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out,
                 "total_tokens": n_prompt + n_out}
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        self._account(n_prompt, n_out, st.opts.ttft_s)
        self._json(200, {"id": "cmpl-stand-in", "object": "chat.completion" if chat
                         else "text_completion", "created": int(time.time()),
                         "model": st.opts.served_name, "choices": [choice], "usage": usage})

    def _event(self, data: Any) -> None:
        payload = data if isinstance(data, str) else json.dumps(data)
        chunk = f"data: {payload}\n\n".encode()
        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.flush()

    def _stream(self, body: dict[str, Any], chat: bool, answer: str, n_prompt: int,
                n_out: int) -> None:
        st = self.server.state
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None = None) -> dict[str, Any]:
            c: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if chat:
                c["delta"] = {"content": text} if text is not None else {}
            else:
                c["text"] = text or ""
            return {"id": "cmpl-stand-in", "object": obj, "created": int(time.time()),
                    "model": st.opts.served_name, "choices": [c]}

        if chat:
            self._event({**chunk(None), "choices": [{"index": 0, "finish_reason": None,
                                                      "delta": {"role": "assistant",
                                                                "content": ""}}]})
        if st.opts.mode == "stall":
            # The headers (and a chat's role chunk) went out; then nothing (a stuck engine).
            time.sleep(st.opts.stall_s)
            self.close_connection = True
            return
        time.sleep(st.opts.ttft_s)
        opts = body.get("stream_options") or {}
        continuous = bool(opts.get("include_usage") and opts.get("continuous_usage_stats"))
        sent = 0
        for i, n in enumerate(st.steps(n_out)):
            if i:
                time.sleep(n / st.opts.tokens_per_s)
            words = [answer] if sent == 0 else []
            words += ["x"] * (n - len(words))
            sent += n
            event = chunk((" " if sent > n else "") + " ".join(words))
            if continuous:
                event["usage"] = {"prompt_tokens": n_prompt, "completion_tokens": sent,
                                  "total_tokens": n_prompt + sent}
            self._event(event)
            if st.opts.mode == "drop" and sent >= max(1, n_out // 2):
                # Break the connection mid-stream: no final chunk, no [DONE].
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(2)
                return
        self._event(chunk(None if chat else "", "length" if n_out > 1 else "stop"))
        self._account(n_prompt, n_out, st.opts.ttft_s)
        if opts.get("include_usage"):
            self._event({"id": "cmpl-stand-in", "object": obj, "created": int(time.time()),
                         "model": st.opts.served_name, "choices": [],
                         "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out,
                                   "total_tokens": n_prompt + n_out}})
        self._event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def metrics_text(st: State) -> str:
    """Prometheus exposition as vLLM 0.16 writes it (counters carry the _total suffix)."""
    labels = f'engine="0",model_name="{st.opts.served_name}"'
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{labels}}} 0.0",
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{labels}}} {float(st.prompt_tokens)}",
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{labels}}} {float(st.generation_tokens)}",
        "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
        "# TYPE vllm:time_to_first_token_seconds histogram",
        f'vllm:time_to_first_token_seconds_bucket{{{labels},le="+Inf"}} {float(st.requests)}',
        f"vllm:time_to_first_token_seconds_count{{{labels}}} {float(st.requests)}",
        f"vllm:time_to_first_token_seconds_sum{{{labels}}} {st.ttft_sum}",
    ]
    if st.opts.spec_tokens:
        for name, value, doc in (
            ("vllm:spec_decode_num_drafts", st.drafts, "Number of spec decoding drafts."),
            ("vllm:spec_decode_num_draft_tokens", st.draft_tokens, "Number of draft tokens."),
            ("vllm:spec_decode_num_accepted_tokens", st.accepted,
             "Number of accepted tokens."),
        ):
            lines += [f"# HELP {name}_total {doc}", f"# TYPE {name}_total counter",
                      f"{name}_total{{{labels}}} {float(value)}"]
        name = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
        lines += [f"# HELP {name} Accepted tokens per draft position.",
                  f"# TYPE {name} counter"]
        lines += [f'{name}{{{labels},position="{pos}"}} {float(v)}'
                  for pos, v in enumerate(st.accepted_per_pos)]
    return "\n".join(lines) + "\n"


class StandInServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, opts: Options) -> None:
        super().__init__((host, port), Handler)
        self.state = State(opts, accepted_per_pos=[0] * opts.spec_tokens)

    @property
    def base_url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"


@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[StandInServer]:
    """A stand-in on a free loopback port, in a background thread, for one test."""
    srv = StandInServer("127.0.0.1", 0, Options(**kwargs))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("words", nargs="*", help="`serve MODEL`, as vLLM's command line has it")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--served-model-name", default="qwen3-next")
    ap.add_argument("--speculative-config", default=None)
    ap.add_argument("--api-key", default=None)
    # Tests that launch it as `vllm` set these through the environment.
    ap.add_argument("--mode", default=os.environ.get("STANDIN_MODE", "normal"),
                    choices=["normal", "never-healthy", "errors", "drop", "stall", "html",
                             "json-list"])
    ap.add_argument("--startup-s", type=float, default=float(os.environ.get("STANDIN_STARTUP_S",
                                                                          "0")))
    ap.add_argument("--tokens-per-s", type=float, default=2000.0)
    args, unknown = ap.parse_known_args(argv)
    # vLLM logs every non-default argument at startup (vllm/entrypoints/utils.py,
    # log_non_default_args), secrets included: so does the stand-in, so tests see what a
    # serve log would hold.
    given = {k: v for k, v in vars(args).items() if v != ap.get_default(k)}
    spec = json.loads(args.speculative_config) if args.speculative_config else {}
    words = [w for w in args.words if w != "serve"]
    # Like vLLM: --api-key wins over VLLM_API_KEY.
    api_key = args.api_key or os.environ.get("VLLM_API_KEY") or None
    opts = Options(served_name=args.served_model_name, model=words[0] if words else "stand-in",
                   mode=args.mode, spec_tokens=int(spec.get("num_speculative_tokens", 0)),
                   startup_s=args.startup_s, api_key=api_key,
                   tokens_per_s=args.tokens_per_s)
    srv = StandInServer(args.host, args.port, opts)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=srv.shutdown).start())
    print(f"stand-in serving {opts.served_name} at {srv.base_url}", flush=True)
    print(f"INFO non-default args: {given} {unknown}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        srv.serve_forever()
    srv.server_close()
    print("stand-in stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
