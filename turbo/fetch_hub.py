"""fetch-model's questions to the hub: which commit, which files, their sizes and hashes.

huggingface_hub answers them through its public API; this module turns its answers into plain
data (``RemoteFile``) and its failures into one actionable line (``hub_error``). It also reads
what the environment says about the hub (endpoint, token, offline mode) and turns CLI options
plus pins into a ``Request``. Nothing here writes to the model directory.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from turbo import paths
from turbo.errors import TurboError, UsageError
from turbo.fetch_data import GB, TOKEN_FIX, Hub, RemoteFile, Request, truthy, wanted
from turbo.pins import Pins
from turbo.redact import redact

LOCK_FILE = "model-lock.json"


class HubUnreachable(TurboError):
    """The hub could not be reached at all (DNS, connection, timeout): --dry-run can still
    show the pinned plan."""


def offline_from_env() -> bool:
    """HF_HUB_OFFLINE, read now: the hub client reads it once at import, too early for us."""
    return truthy(os.environ.get("HF_HUB_OFFLINE")) or truthy(
        os.environ.get("TRANSFORMERS_OFFLINE")
    )


def hub_from_env() -> Hub:
    """Endpoint and token, read at call time.

    huggingface_hub freezes ``HF_ENDPOINT`` into ``constants.ENDPOINT`` when it is first
    imported; reading the variable here and passing ``endpoint=`` explicitly makes a later
    change (a test server, a mirror) take effect.
    """
    from huggingface_hub import constants

    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = os.environ.get(var, "").strip()
        if value:
            return Hub(endpoint, value, var)
    from huggingface_hub import get_token

    token = get_token()
    return Hub(endpoint, token, "hf auth login") if token else Hub(endpoint)


def lock_path() -> Path:
    return paths.state_dir() / LOCK_FILE


def read_lock() -> dict[str, Any]:
    try:
        data = json.loads(lock_path().read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def build_request(
    pins: Pins,
    *,
    dest: str | None = None,
    variant: str | None = None,
    revision: str | None = None,
    verify: bool = False,
    offline: bool = False,
    dry_run: bool = False,
    transport: str = "http",
    progress: bool = True,
    adopt_existing: bool = False,
) -> Request:
    """Turn CLI options plus pins into a request; every default comes from the pins file."""
    m = pins.model
    if variant:
        if variant not in m.variants:
            raise UsageError(
                "--variant",
                f"unknown variant {variant!r}",
                f"Choose one of: {', '.join(sorted(m.variants))}.",
            )
        repo = m.variants[variant]
    else:
        repo = m.repo
    if transport not in ("http", "xet"):
        raise UsageError("--transport", f"unknown transport {transport!r}", "Use http or xet.")
    if dest:
        target = Path(dest).expanduser()
    elif os.environ.get("MODEL"):
        target = paths.model_dir(pins)
    elif repo == m.repo:
        target = Path(m.path)
    else:
        # Other variants sit beside the pinned one, named as on the hub.
        target = Path(m.path).parent / repo.split("/")[-1]
    lock = read_lock().get(repo)
    if revision:
        rev, source = revision, "--revision"
    elif isinstance(lock, dict) and lock.get("revision"):
        rev, source = str(lock["revision"]), "lock"
    elif repo == m.repo:
        rev, source = m.revision, "pins"
    else:
        rev, source = "main", "default"
    return Request(
        repo=repo,
        dest=target.absolute(),
        revision=rev,
        revision_source=source,
        include=tuple(m.include),
        margin_bytes=int(m.disk_margin_gb * GB),
        verify=verify,
        offline=offline or offline_from_env(),
        dry_run=dry_run,
        transport=transport,
        progress=progress,
        adopt_existing=adopt_existing,
    )


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _is_network_error(exc: BaseException) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(
        names
        & {
            "ConnectError",
            "ConnectionError",
            "NetworkError",
            "TimeoutException",
            "Timeout",
            "TransportError",
            "ProtocolError",
        }
    )


def hub_error(exc: BaseException, req: Request, hub: Hub, revision: str) -> TurboError:
    """One actionable line for a failure of the hub client (the token never appears)."""
    from huggingface_hub import errors as hf

    what = f"fetch-model {req.repo}"
    status = _status(exc)
    if isinstance(exc, hf.GatedRepoError):
        if hub.token is None:
            err = TurboError(
                what,
                f"the repo is gated and no Hugging Face token was found (HTTP {status or 401})",
                f"Accept the model's terms on its hub page, then {TOKEN_FIX}.",
            )
        else:
            err = TurboError(
                what,
                f"the repo is gated and the token from {hub.token_source} "
                f"has no access (HTTP {status or 403})",
                "Accept the terms with the account that owns the token, or use "
                f"another token: {TOKEN_FIX}.",
            )
    elif isinstance(exc, hf.RevisionNotFoundError):
        err = TurboError(
            what,
            f"revision {revision!r} does not exist (HTTP {status or 404})",
            "Pass an existing branch, tag or commit with --revision, or fix "
            "[model].revision in turbo/data/pins.toml.",
        )
    elif isinstance(exc, hf.RepositoryNotFoundError):
        who = "no token was sent" if hub.token is None else f"token from {hub.token_source}"
        err = TurboError(
            what,
            f"repository not found, or private ({who}; HTTP {status})",
            f"Check the repo name (--variant, pins [model]); if it is private, {TOKEN_FIX}.",
        )
    elif isinstance(exc, hf.OfflineModeIsEnabled):
        err = TurboError(
            what,
            "the hub client is in offline mode (HF_HUB_OFFLINE was set when it was imported)",
            "Unset HF_HUB_OFFLINE, or pass --offline to check the local copy only.",
        )
    elif isinstance(exc, hf.HfHubHTTPError):
        err = TurboError(
            what,
            f"the hub at {hub.endpoint} answered HTTP {status}",
            "Retry later; re-running resumes where it stopped.",
        )
    elif _is_network_error(exc):
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        return HubUnreachable(
            what,
            redact(f"cannot reach {hub.endpoint} ({reason})"),
            "Check the network or proxy (HF_ENDPOINT, HTTPS_PROXY) and re-run: it resumes. "
            "A complete copy needs no network; this one is not complete yet.",
        )
    else:
        return TurboError(
            what,
            redact(f"unexpected hub client error {exc!r}"),
            "Re-run; if it repeats, report it with the log file.",
        )
    return TurboError(redact(err.what), redact(err.why), err.fix)


_HEX = {"git_oid": re.compile(r"[0-9a-f]{40}"), "sha256": re.compile(r"[0-9a-f]{64}")}


def _checked(f: RemoteFile, req: Request) -> RemoteFile:
    """A listing is data from the network: its hashes name part files on disk
    (``.turbo-fetch/<hash>.part``), so anything but plain hex is refused."""
    for name, pattern in _HEX.items():
        value = getattr(f, name)
        if value is not None and not pattern.fullmatch(value):
            raise TurboError(
                f"fetch-model {req.repo}",
                f"the hub listed {f.path} with a malformed {name} {value[:80]!r}; nothing "
                "was written",
                "Check HF_ENDPOINT: a mirror or proxy is answering with something that is "
                "not the Hugging Face API.",
            )
    if f.size < 0:
        raise TurboError(
            f"fetch-model {req.repo}",
            f"the hub listed {f.path} with size {f.size}",
            "Check HF_ENDPOINT.",
        )
    return f


def _fetch_order(f: RemoteFile) -> tuple[bool, str]:
    # Small files first: the index and configs are checked before gigabytes move.
    return (f.path.endswith(".safetensors"), f.path)


def list_remote(req: Request, hub: Hub) -> tuple[str, list[RemoteFile]]:
    """Resolve the revision to a commit and list the files to fetch, with sizes and hashes."""
    from huggingface_hub.hf_api import HfApi, RepoFile

    api = HfApi(endpoint=hub.endpoint, token=hub.token or False)
    revision = req.revision
    try:
        info = api.model_info(req.repo, revision=revision, token=hub.token or False)
        commit = str(info.sha or "")
        if not commit:
            raise TurboError(
                f"fetch-model {req.repo}",
                f"the hub gave no commit for {revision!r}",
                "Pass a commit hash with --revision.",
            )
        files: list[RemoteFile] = []
        for item in api.list_repo_tree(
            req.repo, revision=commit, recursive=True, token=hub.token or False
        ):
            if not isinstance(item, RepoFile) or not wanted(item.path, req.include):
                continue
            lfs = item.lfs
            remote = RemoteFile(
                path=item.path,
                size=int(lfs.size if lfs is not None else item.size),
                git_oid=str(item.blob_id),
                sha256=str(lfs.sha256) if lfs is not None else None,
                xet_hash=getattr(item, "xet_hash", None),
            )
            files.append(_checked(remote, req))
    except TurboError:
        raise
    except Exception as exc:
        raise hub_error(exc, req, hub, revision) from exc
    if not any(f.path.endswith(".safetensors") for f in files):
        raise TurboError(
            f"fetch-model {req.repo}@{commit[:12]}",
            "the repo has no *.safetensors weights at its top level",
            "Check the repo and revision in pins.",
        )
    return commit, sorted(files, key=_fetch_order)


def probe_access(req: Request, hub: Hub, commit: str, f: RemoteFile) -> None:
    """HEAD one file the way the hub client does: surfaces gating (401/403) before any write."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(req.repo, f.path, revision=commit, endpoint=hub.endpoint)
    try:
        meta = get_hf_file_metadata(url, token=hub.token or False, endpoint=hub.endpoint)
    except Exception as exc:
        raise hub_error(exc, req, hub, commit) from exc
    if meta.commit_hash and meta.commit_hash != commit:
        raise TurboError(
            f"fetch-model {req.repo}",
            f"the hub served {f.path} from commit {meta.commit_hash[:12]}, not {commit[:12]}",
            "Re-run.",
        )
