"""systemd's readiness protocol (sd_notify) without libsystemd: one datagram per message.

Under a ``Type=notify`` unit, systemd puts the path of a unix datagram socket in
``$NOTIFY_SOCKET``; the service writes newline-separated ``KEY=value`` assignments to it:
``STATUS=...`` (free text shown by ``systemctl status``), ``READY=1`` (start-up finished: units
ordered after this one may start now), ``STOPPING=1`` (shutdown began). A leading ``@`` in the
address means Linux's abstract socket namespace (a NUL byte in ``sockaddr_un``).

Without ``$NOTIFY_SOCKET`` every call is a no-op, so code can notify unconditionally. A
notification that cannot be delivered never stops the server: it is reported once on stderr.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Mapping

ENV = "NOTIFY_SOCKET"


def socket_address(value: str) -> str | bytes | None:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value; None when it is not usable.

    Only filesystem paths and abstract names are unix sockets; systemd also allows
    ``vsock:`` addresses (for VMs), which a serve process on a Spark never gets.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


def _one_line(text: str) -> str:
    # A newline would start a new assignment: STATUS text must stay on one line.
    return " ".join(text.split())


class Notifier:
    """Sends sd_notify messages to one socket (or nowhere, when ``address`` is None)."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self._complained = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        value = env.get(ENV, "")
        address = socket_address(value) if value else None
        if value and address is None:
            print(f"notify: ignoring {ENV}={value!r} (not a unix socket address)", file=sys.stderr)
        return cls(address)

    @property
    def active(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; True when it was delivered."""
        if self.address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(payload, self.address)
        except OSError as exc:
            if not self._complained:
                self._complained = True
                print(f"notify: cannot reach {ENV} ({exc}); serving anyway", file=sys.stderr)
            return False
        return True

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def ready(self, text: str) -> bool:
        return self.send("READY=1", f"STATUS={_one_line(text)}")

    def stopping(self, text: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={_one_line(text)}")


class Progress:
    """vLLM's own output as STATUS= while it loads, at most one line per ``interval`` seconds
    (it prints hundreds), so `systemctl status` shows what a 10-15 minute start is doing."""

    def __init__(self, notifier: Notifier, interval: float = 2.0) -> None:
        self.notifier = notifier
        self.interval = interval
        self.done = False
        self._last = -interval
        # Reentrant: the signal handler (main thread) may end progress while main holds it.
        self._lock = threading.RLock()

    def offer(self, line: str) -> None:
        text = line.strip()
        if not text or not self.notifier.active:
            return
        with self._lock:
            now = time.monotonic()
            if self.done or now - self._last < self.interval:
                return
            self._last = now
            self.notifier.status("vllm: " + text[-200:])

    def ready(self, text: str) -> None:
        """READY=1, after which vLLM's lines no longer overwrite the status."""
        with self._lock:
            self.done = True
            self.notifier.ready(text)


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without ``$NOTIFY_SOCKET``: only serve decides when the model is ready, never a
    child (vLLM, Ray) that might speak the protocol on its own."""
    return {k: v for k, v in env.items() if k != ENV}
