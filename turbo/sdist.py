"""vLLM's real source, offline: the released sdist from the package index, verified and cached.

`pip download --no-binary :all: vllm==X` cannot be used: pip builds the metadata, and vLLM's build
pins a torch we do not have. So the file is fetched directly through the index's simple API in
its JSON form (PEP 691), which lists each file's URL and sha256. The index is pip's own default
(or ``PIP_INDEX_URL``) so no host name is written here. The file is cached under
``turbo.paths.cache_dir()/sdist`` and downloaded at most once per machine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from turbo import paths
from turbo.errors import TurboError
from turbo.pins import load_pins

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
PROJECT = "vllm"
CHUNK = 1 << 20

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SdistFile:
    filename: str
    url: str
    sha256: str
    size: int


def index_url() -> str:
    """The simple index pip would use: ``PIP_INDEX_URL`` if set, else pip's built-in default."""
    env = os.environ.get("PIP_INDEX_URL")
    if env:
        return env
    try:
        from pip._internal.models.index import PyPI
    except ImportError as exc:
        raise TurboError(
            "finding the package index",
            "pip is not importable and PIP_INDEX_URL is unset",
            "Install pip in this environment or set PIP_INDEX_URL.",
        ) from exc
    return str(PyPI.simple_url)


def sdist_dir() -> Path:
    return paths.cache_dir() / "sdist"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _pinned_sha(version: str) -> str | None:
    vllm = load_pins().vllm
    return vllm.sdist_sha256 if version == vllm.sdist_version else None


def find_sdist(version: str, index: str | None = None) -> SdistFile:
    """Ask the index (JSON simple API) for ``vllm-<version>.tar.gz``: its URL and sha256."""
    import requests

    base = (index or index_url()).rstrip("/") + "/"
    page = urljoin(base, f"{PROJECT}/")
    try:
        resp = requests.get(page, headers={"Accept": SIMPLE_JSON}, timeout=60)
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
    except (requests.RequestException, ValueError) as exc:
        raise TurboError(
            f"listing {page}",
            f"the index did not answer with JSON ({exc})",
            "Check network access to the package index or set PIP_INDEX_URL.",
        ) from exc
    want = f"{PROJECT}-{version}.tar.gz"
    for entry in data.get("files", []):
        if entry.get("filename") == want:
            sha = entry.get("hashes", {}).get("sha256")
            if not sha:
                raise TurboError(
                    f"index entry for {want}",
                    "it publishes no sha256",
                    "Use an index that publishes hashes (PEP 691).",
                )
            return SdistFile(want, urljoin(page, entry["url"]), sha, int(entry.get("size", 0)))
    raise TurboError(
        f"vLLM sdist {want}",
        f"not listed on {page}",
        "Check the version (pins: vllm.sdist_version).",
    )


def _download(src: SdistFile, dest: Path, progress: Progress | None) -> None:
    """Stream to a temporary file beside ``dest``, check the hash, then rename into place."""
    import requests

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    done = 0
    try:
        with os.fdopen(fd, "wb") as out, requests.get(src.url, stream=True, timeout=120) as resp:
            resp.raise_for_status()
            for block in resp.iter_content(CHUNK):
                out.write(block)
                h.update(block)
                done += len(block)
                if progress:
                    progress(done, src.size)
        got = h.hexdigest()
        if got != src.sha256:
            raise TurboError(
                f"download of {src.filename}",
                f"sha256 {got} does not match the index's {src.sha256}",
                "Retry; if it persists the index or a proxy is serving a different file.",
            )
        os.replace(tmp, dest)
    except requests.RequestException as exc:
        raise TurboError(
            f"download of {src.url}",
            str(exc),
            "Retry when the index is reachable; nothing was written to the cache.",
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def vllm_sdist(version: str | None = None, *, progress: Progress | None = None) -> Path:
    """The cached ``vllm-<version>.tar.gz`` (default: the pinned sdist version), verified.

    For the pinned version the sha256 recorded in pins.toml must equal the index's; a cached file
    is re-hashed on every call (under a second) so a corrupted cache is never used.
    """
    ver = version or load_pins().vllm.sdist_version
    pinned = _pinned_sha(ver)
    dest = sdist_dir() / f"{PROJECT}-{ver}.tar.gz"
    if dest.exists():
        have = _sha256(dest)
        if pinned is None or have == pinned:
            return dest
        dest.unlink()  # a corrupt or foreign file: fetch again rather than trust it
    src = find_sdist(ver)
    if pinned is not None and src.sha256 != pinned:
        raise TurboError(
            f"vLLM sdist {src.filename}",
            f"the index publishes sha256 {src.sha256} but pins.toml records {pinned}",
            "Refusing a changed release file; investigate before updating vllm.sdist_sha256.",
        )
    _download(src, dest, progress)
    return dest


def unpack_vllm_sdist(dest: Path, version: str | None = None) -> Path:
    """Unpack the sdist under ``dest`` and return the tree root (``dest/vllm-<version>``).

    Extraction goes to a temporary directory first and is renamed into place, so an existing root
    is always complete and is returned as is.
    """
    ver = version or load_pins().vllm.sdist_version
    root = dest / f"{PROJECT}-{ver}"
    if root.is_dir():
        return root
    archive = vllm_sdist(ver)
    dest.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")
        inner = scratch / root.name
        if not inner.is_dir():
            raise TurboError(
                f"unpacking {archive.name}",
                f"it has no top directory {root.name}",
                "Delete the cached file and retry.",
            )
        os.replace(inner, root)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return root
