"""The model manifest as plain data: what was fetched, from which commit, with which hashes.

Reading, writing and checking it against a model directory is ``turbo.manifest``; these types
stand below it so that fetch-model's plain data can name them without reaching for the files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MANIFEST_NAME = "turbo-manifest.json"
INDEX_NAME = "model.safetensors.index.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    sha256: str
    # Git's blob id: the only hash the hub publishes for small (non-LFS) files.
    git_oid: str = ""


@dataclass(frozen=True)
class Manifest:
    repo: str
    revision: str
    files: tuple[ManifestFile, ...]
    fetched_at: str
    requested_revision: str = ""
    endpoint: str = ""
    schema: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def weights_bytes(self) -> int:
        """Bytes of weights (``*.safetensors``): what serve's memory-fit estimate needs."""
        return sum(f.size for f in self.files if f.path.endswith(".safetensors"))

    def by_path(self) -> dict[str, ManifestFile]:
        return {f.path: f for f in self.files}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "repo": self.repo,
            "revision": self.revision,
            "requested_revision": self.requested_revision,
            "endpoint": self.endpoint,
            "fetched_at": self.fetched_at,
            "total_bytes": self.total_bytes,
            "weights_bytes": self.weights_bytes,
            "files": [asdict(f) for f in self.files],
            **({"extra": self.extra} if self.extra else {}),
        }
