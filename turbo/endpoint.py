"""The OpenAI-compatible HTTP side shared by serve (health, warm-up), verify and bench."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from urllib3.exceptions import ReadTimeoutError

from turbo.errors import TurboError

# A wildcard bind is reached through loopback from this machine.
_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# A server that does not accept a connection in this long is not there; reading is bounded
# separately, by each caller's own timeout.
CONNECT_S = 10.0


@dataclass(frozen=True)
class Endpoint:
    base: str
    api_key: str | None = None

    def url(self, path: str) -> str:
        return self.base.rstrip("/") + path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def endpoint_for(
    host: str, port: int, environ: Mapping[str, str] | None = None, api_key: str | None = None
) -> Endpoint:
    """The URL a client on this machine uses; the key is vLLM's own VLLM_API_KEY."""
    env = os.environ if environ is None else environ
    h = _WILDCARD.get(host, host)
    if ":" in h:
        h = f"[{h}]"
    return Endpoint(f"http://{h}:{port}", api_key or env.get("VLLM_API_KEY") or None)


def parse_base(url: str, environ: Mapping[str, str] | None = None) -> Endpoint:
    env = os.environ if environ is None else environ
    base = url.rstrip("/").removesuffix("/v1")
    return Endpoint(base, env.get("VLLM_API_KEY") or None)


# Kinds of failure a client meets; each carries its own advice.
NO_ANSWER, REFUSED, SERVER_ERROR, STALLED, DROPPED, NOT_OPENAI = (
    "no answer",
    "refused",
    "server error",
    "stalled",
    "dropped",
    "not openai",
)
_SERVER_LOG = "read the server's log (`invoke serve` prints its path; .turbo/logs)"


class EndpointError(TurboError):
    """A failed exchange with the server; ``kind`` says which failure, ``status`` the HTTP code."""

    def __init__(self, what: str, why: str, fix: str, *, kind: str, status: int = 0) -> None:
        super().__init__(what, why, fix)
        self.kind = kind
        self.status = status


def _fail(ep: Endpoint, path: str, why: str) -> EndpointError:
    return EndpointError(
        ep.url(path),
        why,
        "Is the server running (`invoke serve`)? See its log in .turbo/logs.",
        kind=NO_ANSWER,
    )


def _no_answer(
    ep: Endpoint, path: str, exc: requests.RequestException, read_s: float
) -> EndpointError:
    """Tell a refused connection from a silent server: their fixes differ."""
    if isinstance(exc, requests.ConnectTimeout):
        return EndpointError(
            ep.url(path),
            f"no connection within {CONNECT_S:.0f} s",
            "Check --url/--port and that no firewall drops the packets.",
            kind=NO_ANSWER,
        )
    if isinstance(exc, requests.ReadTimeout):
        return stalled(ep, path, read_s, "")
    return _fail(ep, path, f"no answer ({type(exc).__name__})")


def stalled(ep: Endpoint, path: str, silent_s: float, progress: str) -> EndpointError:
    return EndpointError(
        ep.url(path),
        f"the server accepted the request, then sent nothing for {silent_s:.0f} s{progress}",
        "A stuck engine never answers; a cold one spends ~25 s compiling its first request. "
        f"Raise --timeout if it is only slow, else {_SERVER_LOG}.",
        kind=STALLED,
    )


def server_message(r: requests.Response) -> str:
    """The reason in an error answer: vLLM's ``{"error": {"message": ...}}``, FastAPI's
    ``{"detail": ...}``, a bare ``{"message": ...}``, else the start of the body."""
    try:
        data = r.json()
    except ValueError:
        data = None
    msg: Any = None
    if isinstance(data, dict):
        err = data.get("error")
        msg = err.get("message") if isinstance(err, dict) else err
        msg = msg or data.get("message") or data.get("detail")
    text = str(msg) if msg else r.text
    # The line adds its own full stop after the reason.
    return " ".join(text.split())[:300].rstrip(". ")


def http_error(ep: Endpoint, path: str, r: requests.Response) -> EndpointError:
    """A non-200 answer is the server's answer: say what it said and what fits that answer."""
    code = r.status_code
    why = f"the server answered HTTP {code}: {server_message(r) or r.reason}"
    if code in (401, 403):
        fix = "The server wants an API key: export VLLM_API_KEY with the key it was started with."
    elif code == 404 and "model" in why.lower():
        fix = "Pass --served-name with a name that /v1/models lists."
    elif code == 404:
        fix = "This path is not served there: is --url a vLLM server (without a path past /v1)?"
    elif 400 <= code < 500:
        fix = (
            "The server is up and refused this request as sent; its message says why "
            "(a context-length refusal: lower --max-tokens or the grid's lengths)."
        )
    else:
        fix = f"The server is up but failed while answering: {_SERVER_LOG}."
    return EndpointError(
        ep.url(path), why, fix, kind=REFUSED if code < 500 else SERVER_ERROR, status=code
    )


def not_openai(ep: Endpoint, path: str, r: requests.Response, what: str) -> EndpointError:
    ctype = r.headers.get("Content-Type", "no content type").split(";")[0]
    return EndpointError(
        ep.url(path),
        f"answered HTTP {r.status_code} with {what} ({ctype}), not the OpenAI API's JSON",
        "Is --url/--port the vLLM server itself? Another program or a web page answers there.",
        kind=NOT_OPENAI,
        status=r.status_code,
    )


def json_object(ep: Endpoint, path: str, r: requests.Response) -> dict[str, Any]:
    """The body of a 200 answer as a JSON object, or one line saying what came instead."""
    try:
        data = r.json()
    except ValueError:
        raise not_openai(ep, path, r, "something that is not JSON") from None
    if not isinstance(data, dict):
        raise not_openai(ep, path, r, f"a JSON {type(data).__name__}")
    return data


def get(ep: Endpoint, path: str, timeout: float = 10.0) -> requests.Response:
    try:
        return requests.get(ep.url(path), headers=ep.headers(), timeout=(CONNECT_S, timeout))
    except requests.RequestException as exc:
        raise _no_answer(ep, path, exc, timeout) from exc


def get_json(ep: Endpoint, path: str, timeout: float = 10.0) -> dict[str, Any]:
    r = get(ep, path, timeout)
    if r.status_code != 200:
        raise http_error(ep, path, r)
    return json_object(ep, path, r)


@dataclass(frozen=True)
class Model:
    """One entry of ``/v1/models``; vLLM adds ``max_model_len`` to OpenAI's fields."""

    id: str
    owned_by: str
    max_model_len: int | None


def models(ep: Endpoint, timeout: float = 10.0) -> list[Model]:
    path = "/v1/models"
    data = get_json(ep, path, timeout)
    entries = data.get("data")
    if not isinstance(entries, list):
        raise EndpointError(
            ep.url(path),
            "the answer has no list of models ('data')",
            "Is --url/--port the vLLM server itself?",
            kind=NOT_OPENAI,
            status=200,
        )
    out: list[Model] = []
    for m in entries:
        if not isinstance(m, dict):
            continue
        mml = m.get("max_model_len")
        out.append(
            Model(
                str(m.get("id")),
                str(m.get("owned_by", "?")),
                mml if isinstance(mml, int) and not isinstance(mml, bool) and mml > 0 else None,
            )
        )
    return out


def post_json(
    ep: Endpoint, path: str, body: Mapping[str, Any], timeout: float = 120.0
) -> dict[str, Any]:
    try:
        r = requests.post(
            ep.url(path), json=dict(body), headers=ep.headers(), timeout=(CONNECT_S, timeout)
        )
    except requests.RequestException as exc:
        raise _no_answer(ep, path, exc, timeout) from exc
    if r.status_code != 200:
        raise http_error(ep, path, r)
    return json_object(ep, path, r)


def tokenize(ep: Endpoint, body: Mapping[str, Any], timeout: float = 30.0) -> list[int] | None:
    """Token ids from vLLM's ``/tokenize`` (a prompt or chat messages), or None when the
    server has no such route (another OpenAI server): callers then estimate."""
    path = "/tokenize"
    try:
        r = requests.post(
            ep.url(path), json=dict(body), headers=ep.headers(), timeout=(CONNECT_S, timeout)
        )
    except requests.RequestException as exc:
        raise _no_answer(ep, path, exc, timeout) from exc
    if r.status_code in (404, 405, 501):
        return None
    if r.status_code != 200:
        raise http_error(ep, path, r)
    tokens = json_object(ep, path, r).get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise not_openai(ep, path, r, "no token list")
    return tokens


def healthy(ep: Endpoint, timeout: float = 5.0) -> bool:
    try:
        return requests.get(ep.url("/health"), timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def stream(
    ep: Endpoint, path: str, body: Mapping[str, Any], timeout: float = 120.0
) -> Iterator[tuple[float, dict[str, Any]]]:
    """Server-sent events of a streaming completion as (arrival time, event).

    ``timeout`` bounds silence, not the whole answer: a stream that keeps sending may run as
    long as it needs; one that sends nothing for ``timeout`` s is a stall. Raises when the
    stream ends without vLLM's closing ``data: [DONE]`` (a dropped connection)."""
    try:
        r = requests.post(
            ep.url(path),
            json=dict(body),
            headers=ep.headers(),
            timeout=(CONNECT_S, timeout),
            stream=True,
        )
    except requests.RequestException as exc:
        raise _no_answer(ep, path, exc, timeout) from exc
    with r:
        if r.status_code != 200:
            raise http_error(ep, path, r)
        ctype = r.headers.get("Content-Type", "")
        if "event-stream" not in ctype:
            raise not_openai(ep, path, r, "no event stream")
        events = 0
        try:
            for raw in r.iter_lines():
                line = raw.decode("utf-8", errors="replace")
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError as exc:
                    raise _fail(ep, path, f"bad event in stream: {data[:80]}") from exc
                if isinstance(event, dict):
                    events += 1
                    yield time.perf_counter(), event
        except requests.RequestException as exc:
            if _is_read_timeout(exc):
                got = f"{events} chunk{'' if events == 1 else 's'}" if events else "no chunk"
                raise stalled(ep, path, timeout, f" ({got} before)") from exc
            raise dropped(ep, path, f"stream broke off ({type(exc).__name__})") from exc
    raise dropped(ep, path, "stream ended without [DONE] (connection dropped)")


def _is_read_timeout(exc: BaseException) -> bool:
    """requests wraps a read timeout inside a stream as ConnectionError(ReadTimeoutError)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, (requests.ReadTimeout, ReadTimeoutError, TimeoutError)):
            return True
        nxt = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = nxt or seen.__cause__ or seen.__context__
    return False


def dropped(ep: Endpoint, path: str, why: str) -> EndpointError:
    return EndpointError(
        ep.url(path),
        why,
        f"The server closed the connection mid-answer (it may have crashed): {_SERVER_LOG}.",
        kind=DROPPED,
    )


@contextlib.contextmanager
def heartbeat(
    say: Callable[[str], None] | None, every: float, describe: Callable[[], str]
) -> Iterator[None]:
    """Call ``say(describe())`` every ``every`` s while the body runs: a long wait shows that
    it is waiting, and on what."""
    if say is None or every <= 0:
        yield
        return
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(every):
            say(describe())

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text: metric name -> value summed over its label sets (counters, gauges)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, rest = line.rpartition(" ")
        if not name_labels:
            continue
        # A timestamp may follow the value.
        parts = line.split()
        name = name_labels.split("{", 1)[0].strip()
        value_text = rest
        if "}" in line:
            after = line.rsplit("}", 1)[1].split()
            value_text = after[0] if after else rest
        elif len(parts) >= 2:
            name, value_text = parts[0], parts[1]
        try:
            out[name] = out.get(name, 0.0) + float(value_text)
        except ValueError:
            continue
    return out
