"""The OpenAI-compatible HTTP side shared by serve (health, warm-up), verify and bench."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from turbo.errors import TurboError

# A wildcard bind is reached through loopback from this machine.
_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


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


class EndpointError(TurboError):
    pass


def _fail(ep: Endpoint, path: str, why: str) -> EndpointError:
    return EndpointError(
        f"{ep.url(path)}",
        why,
        "Is the server running (`invoke serve`)? See its log in .turbo/logs.",
    )


def get(ep: Endpoint, path: str, timeout: float = 10.0) -> requests.Response:
    try:
        return requests.get(ep.url(path), headers=ep.headers(), timeout=timeout)
    except requests.RequestException as exc:
        raise _fail(ep, path, f"no answer ({type(exc).__name__})") from exc


def post_json(
    ep: Endpoint, path: str, body: Mapping[str, Any], timeout: float = 120.0
) -> dict[str, Any]:
    try:
        r = requests.post(ep.url(path), json=dict(body), headers=ep.headers(), timeout=timeout)
    except requests.RequestException as exc:
        raise _fail(ep, path, f"no answer ({type(exc).__name__})") from exc
    if r.status_code != 200:
        raise _fail(ep, path, f"HTTP {r.status_code}: {r.text[:200].strip()}")
    try:
        data = r.json()
    except ValueError as exc:
        raise _fail(ep, path, "answer is not JSON") from exc
    if not isinstance(data, dict):
        raise _fail(ep, path, "answer is not a JSON object")
    return data


def healthy(ep: Endpoint, timeout: float = 5.0) -> bool:
    try:
        return requests.get(ep.url("/health"), timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def stream(
    ep: Endpoint, path: str, body: Mapping[str, Any], timeout: float = 600.0
) -> Iterator[tuple[float, dict[str, Any]]]:
    """Server-sent events of a streaming completion as (arrival time, event); raises when the
    stream ends without vLLM's closing ``data: [DONE]`` (a dropped connection)."""
    try:
        r = requests.post(
            ep.url(path), json=dict(body), headers=ep.headers(), timeout=timeout, stream=True
        )
    except requests.RequestException as exc:
        raise _fail(ep, path, f"no answer ({type(exc).__name__})") from exc
    with r:
        if r.status_code != 200:
            raise _fail(ep, path, f"HTTP {r.status_code}: {r.text[:200].strip()}")
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
                    yield time.perf_counter(), event
        except requests.RequestException as exc:
            raise _fail(ep, path, f"stream broke off ({type(exc).__name__})") from exc
    raise _fail(ep, path, "stream ended without [DONE] (connection dropped)")


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


def client_endpoint(url: str, port: int | None) -> Endpoint:
    """--url if given, else this machine's server on --port / PORT / the pinned port."""
    from turbo.pins import load_pins

    if url:
        return parse_base(url)
    pins = load_pins()
    from turbo.profiles import env_port

    return endpoint_for(pins.serve.host, port or env_port(os.environ, pins.serve.port))
