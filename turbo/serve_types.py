"""What serve's pieces hand each other: the launch plan, the network overrides, the supervision
settings. Plain data only: serve_plan makes a Plan, serve_preflight judges it, serve_process runs
it, and the serve command composes the three.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Out = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """One launch, exactly: the argv and environment vLLM (or Ray) gets, and where it listens."""

    profile: str
    kind: str
    description: str
    argv: list[str]
    env: dict[str, str]
    host: str
    port: int
    served_name: str
    model: str
    api: bool
    roce: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def uses_ray(self) -> bool:
        """A serving plan whose workers run on Ray (the TP=2 profile over two nodes)."""
        argv = self.argv
        return (
            any(
                w == "--distributed-executor-backend" and i + 1 < len(argv) and argv[i + 1] == "ray"
                for i, w in enumerate(argv)
            )
            or "--distributed-executor-backend=ray" in argv
        )


@dataclass(frozen=True)
class NetOptions:
    """RoCE overrides; NCCL_SOCKET_IFNAME / NCCL_IB_HCA / NCCL_IB_GID_INDEX set in the
    environment count as overrides too."""

    ifname: str | None = None
    hca: tuple[str, ...] = ()
    gid_index: int | None = None


# No overrides: the link, devices and GID are all detected.
DETECT_NET = NetOptions()


@dataclass(frozen=True)
class Supervision:
    """How a launch is watched: the /health wait, the warm-up request, the stop grace."""

    health_timeout: float
    health_interval: float
    warmup: bool
    warmup_timeout: float
    stop_timeout: float


# The detached server's redacting tee (turbo/logtee.py) reads the secrets to mask from this
# variable (a JSON list): its environment, which only its owner can read, not its argv.
REDACT_ENV = "TURBO_REDACT"
