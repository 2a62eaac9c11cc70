"""vLLM's release numbers: which versions are final releases, and in what order they came.

The sdist cache (turbo.sdist) and the patch matrix both read them; neither needs the other.
"""

from __future__ import annotations

import re

PROJECT = "vllm"  # the project's name on the package index and in its sdist file names

_RELEASE = re.compile(r"\d+(?:\.\d+)*")


def release_key(version: str) -> tuple[int, ...] | None:
    """Sort key of a final release (``0.16.0``); None for pre-, post- and dev releases."""
    return tuple(int(x) for x in version.split(".")) if _RELEASE.fullmatch(version) else None
