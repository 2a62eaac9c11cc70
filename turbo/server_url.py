"""Which server a client task (verify, bench) talks to when no ``--url`` is given.

The HTTP client (:mod:`turbo.endpoint`) takes a URL; choosing the default one needs the pins
(host, port) and the seed's ``PORT`` name, so that choice lives here, above both.
"""

from __future__ import annotations

import os

from turbo.endpoint import Endpoint, endpoint_for, parse_base
from turbo.pins import load_pins
from turbo.setting_values import env_port


def client_endpoint(url: str, port: int | None) -> Endpoint:
    """--url if given, else this machine's server on --port / PORT / the pinned port."""
    if url:
        return parse_base(url)
    pins = load_pins()
    if port:
        return endpoint_for(pins.serve.host, port)
    return endpoint_for(pins.serve.host, env_port(os.environ, pins.serve.port))
