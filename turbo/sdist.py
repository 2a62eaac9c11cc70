"""vLLM's real source, offline: the released sdist from the package index, verified and cached.

`pip download --no-binary :all: vllm==X` cannot be used: pip builds the metadata, and vLLM's build
pins a torch we do not have. So the file is fetched directly through the index's simple API in
its JSON form (PEP 691), which lists each file's URL and sha256. The index is pip's own default
(or ``PIP_INDEX_URL``) so no host name is written here. The file is cached under
``turbo.paths.cache_dir()/sdist`` and downloaded at most once per machine.

Any release can be fetched (the patch matrix reads every release since 0.16.0). Beside each
cached file lies ``<file>.sha256`` (``sha256sum`` format) holding the hash the index published
when it was downloaded, so a cached release is re-verified without the network; the pinned
release is checked against pins.toml as well.
"""

from __future__ import annotations

import hashlib
import os
import re
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
from turbo.manifest import sha256_file
from turbo.pins import load_pins
from turbo.releases import PROJECT as PROJECT
from turbo.releases import release_key as release_key

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
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
    return sha256_file(path)


def _pinned_sha(version: str) -> str | None:
    vllm = load_pins().vllm
    return vllm.sdist_sha256 if version == vllm.sdist_version else None


def _index_page(index: str | None) -> tuple[str, dict[str, Any]]:
    """The project's page on the index, in PEP 691 JSON form: (its URL, the parsed body)."""
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
    return page, data


def _entry_file(page: str, entry: dict[str, Any]) -> SdistFile:
    name = str(entry.get("filename"))
    sha = entry.get("hashes", {}).get("sha256")
    if not sha:
        raise TurboError(
            f"index entry for {name}",
            "it publishes no sha256",
            "Use an index that publishes hashes (PEP 691).",
        )
    return SdistFile(name, urljoin(page, entry["url"]), sha, int(entry.get("size", 0)))


def find_sdist(version: str, index: str | None = None) -> SdistFile:
    """Ask the index (JSON simple API) for ``vllm-<version>.tar.gz``: its URL and sha256."""
    page, data = _index_page(index)
    want = f"{PROJECT}-{version}.tar.gz"
    for entry in data.get("files", []):
        if entry.get("filename") == want:
            return _entry_file(page, entry)
    raise TurboError(
        f"vLLM sdist {want}",
        f"not listed on {page}",
        "Check the version (pins: vllm.sdist_version).",
    )


def list_releases(
    minimum: str | None = None, index: str | None = None
) -> list[tuple[str, SdistFile]]:
    """Every final release with an sdist on the index (not yanked), oldest first.

    One request to the index. ``minimum`` drops older releases.
    """
    page, data = _index_page(index)
    floor = release_key(minimum) if minimum else None
    out: list[tuple[tuple[int, ...], str, SdistFile]] = []
    prefix, suffix = f"{PROJECT}-", ".tar.gz"
    for entry in data.get("files", []):
        name = str(entry.get("filename", ""))
        if not (name.startswith(prefix) and name.endswith(suffix)) or entry.get("yanked"):
            continue
        version = name[len(prefix) : -len(suffix)]
        key = release_key(version)
        if key is None or (floor is not None and key < floor):
            continue
        out.append((key, version, _entry_file(page, entry)))
    return [(v, f) for _, v, f in sorted(out, key=lambda t: t[0])]


def cached_path(version: str) -> Path:
    return sdist_dir() / f"{PROJECT}-{version}.tar.gz"


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _recorded_sha(dest: Path) -> str | None:
    """The sha256 the index published for a cached file, from its sidecar (None if absent)."""
    side = _sidecar(dest)
    try:
        words = side.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    if len(words) == 2 and words[1] == dest.name and re.fullmatch(r"[0-9a-f]{64}", words[0]):
        return words[0]
    return None


def _record_sha(dest: Path, sha: str) -> None:
    side = _sidecar(dest)
    tmp = side.with_name(f".{side.name}.tmp")
    tmp.write_text(f"{sha}  {dest.name}\n", encoding="ascii")
    os.replace(tmp, side)


def cached_sdist(version: str) -> Path | None:
    """The cached file for ``version`` if its bytes match a known hash; no network.

    Known means pins.toml (the pinned release) or the sidecar written at download. A file
    that fails the check is reported as not cached (it is replaced on the next fetch).
    """
    dest = cached_path(version)
    if not dest.is_file():
        return None
    want = _pinned_sha(version) or _recorded_sha(dest)
    return dest if want is not None and _sha256(dest) == want else None


@dataclass(frozen=True)
class FetchPlan:
    """Which releases are cached and verified, and which must be downloaded (how many bytes)."""

    cached: dict[str, Path]
    missing: dict[str, SdistFile]

    @property
    def download_bytes(self) -> int:
        return sum(f.size for f in self.missing.values())

    def describe(self) -> str:
        if not self.missing:
            return f"all {len(self.cached)} sdist(s) cached and verified; no download"
        mib = self.download_bytes / (1 << 20)
        names = ", ".join(self.missing)
        return (
            f"{len(self.cached)} sdist(s) cached; will download {len(self.missing)} "
            f"({mib:.1f} MiB) into {sdist_dir()}: {names}"
        )


def plan_fetch(versions: list[str], listing: dict[str, SdistFile] | None = None) -> FetchPlan:
    """Split ``versions`` into cached (verified offline) and missing ones.

    The index is asked only when something is missing, and then once for all of them (unless
    ``listing`` from :func:`list_releases` is passed).
    """
    cached: dict[str, Path] = {}
    todo: list[str] = []
    for v in versions:
        hit = cached_sdist(v)
        if hit is not None:
            cached[v] = hit
        else:
            todo.append(v)
    missing: dict[str, SdistFile] = {}
    if todo:
        if listing is None:
            page, data = _index_page(None)
            listing = {}
            for entry in data.get("files", []):
                name = str(entry.get("filename", ""))
                if name.startswith(f"{PROJECT}-") and name.endswith(".tar.gz"):
                    listing[name[len(PROJECT) + 1 : -len(".tar.gz")]] = _entry_file(page, entry)
        for v in todo:
            if v not in listing:
                raise TurboError(
                    f"vLLM sdist {PROJECT}-{v}.tar.gz",
                    "not listed on the package index",
                    "Check the version (final releases only, e.g. 0.17.0).",
                )
            missing[v] = listing[v]
    return FetchPlan(cached, missing)


def fetch_planned(plan: FetchPlan, progress: Progress | None = None) -> dict[str, Path]:
    """Download what ``plan`` lists as missing (each checked against the index's sha256)."""
    out = dict(plan.cached)
    for version, src in plan.missing.items():
        pinned = _pinned_sha(version)
        if pinned is not None and src.sha256 != pinned:
            raise TurboError(
                f"vLLM sdist {src.filename}",
                f"the index publishes sha256 {src.sha256} but pins.toml records {pinned}",
                "Refusing a changed release file; investigate before updating vllm.sdist_sha256.",
            )
        dest = cached_path(version)
        _download(src, dest, progress)
        out[version] = dest
    return out


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
        _record_sha(dest, got)
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
    dest = cached_path(ver)
    src: SdistFile | None = None
    if dest.exists():
        have = _sha256(dest)
        want = pinned or _recorded_sha(dest)
        if want is None:  # cached before sidecars existed: ask the index once, then record
            src = find_sdist(ver)
            want = src.sha256
            if have == want:
                _record_sha(dest, have)
        if have == want:
            return dest
        dest.unlink()  # a corrupt or foreign file: fetch again rather than trust it
    src = src or find_sdist(ver)
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
