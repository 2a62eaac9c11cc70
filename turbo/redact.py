"""Secret redaction: what may never reach the screen, a log or a record, and how it is hidden.

Imports nothing of ours, so every layer (the process runner, logs, dry runs) can hide secrets
the same way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence

# Environment variables whose values are secrets wherever they appear.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY", "OPENAI_API_KEY")
_SECRET_KEY = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|APIKEY)", re.IGNORECASE)
_TOKEN_SHAPES = re.compile(r"\b(hf_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,})\b")
# Credentials inside a URL (HF_ENDPOINT=http://user:pass@mirror): the password goes; a userinfo
# without a password is usually a token itself (https://TOKEN@host), so all of it goes.
_URL_PASSWORD = re.compile(r"(?<=://)([^/\s:@]*):([^/\s@]+)@")
_URL_USERINFO = re.compile(r"(?<=://)([^/\s:@]+)@")
REDACTED = "***"
# Values known to be secret in this process (an --api-key given after --, a key moved into
# the environment): hidden wherever they appear, whatever their shape.
_KNOWN: set[str] = set()


def register_secrets(values: Iterable[str]) -> None:
    """Hide these values in everything redact() sees from now on (short ones excepted: a
    2-character "secret" would blank out ordinary words)."""
    _KNOWN.update(v for v in values if v and len(v) >= 4)


def known_secrets() -> list[str]:
    return sorted(_KNOWN)


def is_secret_key(name: str) -> bool:
    return bool(_SECRET_KEY.search(name))


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """Remove secret values (from the environment and by shape) from free text."""
    source = os.environ if env is None else env
    values = {source.get(key, "") for key in SECRET_ENV} | _KNOWN
    # Longest first: a secret that contains another is hidden whole.
    for value in sorted((v for v in values if v and len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    text = _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)
    text = _URL_USERINFO.sub(f"{REDACTED}@", text)
    return _TOKEN_SHAPES.sub(REDACTED, text)


def strip_url_credentials(url: str) -> str:
    """The URL without its userinfo, for records that outlive the run (a manifest)."""
    return re.sub(r"(?<=://)[^/\s@]*@", "", url)


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` with secret-looking variables masked, for --dry-run and logs."""
    return {k: (REDACTED if is_secret_key(k) and v else v) for k, v in env.items()}


def argv_secrets(argv: Sequence[str]) -> list[str]:
    """The secret values in an argv: every value of a secret-named flag (``--api-key K1 K2``,
    ``--hf-token=T``, ``--db-password P``) and every token-shaped word."""
    found: list[str] = []
    hiding = False
    for word in argv:
        flag, eq, value = word.partition("=")
        if word.startswith("-"):
            hiding = False
            if flag.startswith("--") and is_secret_key(flag.replace("-", "_")):
                if eq:
                    found.append(value)
                else:
                    hiding = True  # every value up to the next flag (vLLM's nargs="+")
                continue
        if hiding:
            found.append(word)
        found += _TOKEN_SHAPES.findall(word)
    return [v for v in found if v]


def redact_argv(argv: Sequence[str]) -> list[str]:
    """Mask the values of flags such as ``--api-key`` and any token-shaped word."""
    out: list[str] = []
    hiding = False
    for word in argv:
        flag, eq, _ = word.partition("=")
        if word.startswith("-"):
            hiding = False
            if flag.startswith("--") and is_secret_key(flag.replace("-", "_")):
                if eq:
                    out.append(f"{flag}={REDACTED}")
                else:
                    out.append(word)
                    hiding = True
                continue
        out.append(REDACTED if hiding else redact(word))
    return out
