"""Arguments after ``--`` that name a flag serve manages itself.

serve decides the port, host, model and served name: it health-checks that port, records it
in the pid file for ``stop``, and prints that endpoint. If the same flag also came after
``--``, vLLM (last flag wins) would listen somewhere serve does not look. So such a flag
becomes serve's own value (exactly as if given as ``--port`` etc.), and a conflicting double
(``--port 8011 -- --port 9000``) is refused.
"""

from __future__ import annotations

from dataclasses import replace

from turbo.errors import UsageError
from turbo.profiles import Overrides

# vLLM flag -> the Overrides field (or --set key) that serve uses for it.
MANAGED = {
    "--port": "port",
    "--host": "host",
    "--model": "model",
    "--served-model-name": "served-model-name",
}


def _value(extra: list[str], i: int, flag: str) -> tuple[str, int]:
    word = extra[i]
    if "=" in word:
        return word.split("=", 1)[1], i + 1
    if i + 1 >= len(extra) or extra[i + 1].startswith("--"):
        raise UsageError(
            f"-- {flag}", "has no value", f"Write `-- {flag} VALUE` or serve's own option."
        )
    return extra[i + 1], i + 2


def absorb(ov: Overrides) -> Overrides:
    """``ov`` with managed flags moved out of ``extra`` into serve's own settings."""
    extra = list(ov.extra)
    kept: list[str] = []
    found: dict[str, str] = {}
    i = 0
    while i < len(extra):
        flag = extra[i].split("=", 1)[0]
        if flag not in MANAGED:
            kept.append(extra[i])
            i += 1
            continue
        value, i = _value(extra, i, flag)
        if flag == "--served-model-name" and i < len(extra) and not extra[i].startswith("-"):
            raise UsageError(
                "-- --served-model-name",
                "gives several names; serve asks the server for one",
                "Pass one name (`--set served-model-name=NAME`).",
            )
        key = MANAGED[flag]
        if key in found and found[key] != value:
            raise UsageError(
                f"-- {flag}", f"is given twice ({found[key]} and {value})", "Give it once."
            )
        found[key] = value
    if not found:
        return ov
    port = ov.port
    if "port" in found:
        if not found["port"].isdigit():
            raise UsageError(
                f"-- --port {found['port']}", "is not a port number", "Pass a number 1-65535."
            )
        new = int(found["port"])
        if port is not None and port != new:
            raise UsageError("--port", f"is {port} but -- --port says {new}", "Give the port once.")
        port = new
    for key, current in (("host", ov.host), ("model", ov.model)):
        if key in found and current and current != found[key]:
            raise UsageError(
                f"--{key}", f"is {current} but -- --{key} says {found[key]}", f"Give --{key} once."
            )
    sets = list(ov.sets)
    if "served-model-name" in found:
        sets.append(f"served-model-name={found['served-model-name']}")
    return replace(
        ov,
        port=port,
        host=found.get("host", ov.host),
        model=found.get("model", ov.model),
        sets=tuple(sets),
        extra=tuple(kept),
    )
