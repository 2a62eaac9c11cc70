"""What systemd does with ``$NOTIFY_SOCKET``, for tests: bind a unix datagram socket, record every
sd_notify message with the moment it arrived, and let a test act at that moment.

Reusable by any lane that starts a server under serve (the stand-in, a real vLLM on CPU)::

    with NotifyListener.at(tmp_path, on_message=check) as nl:
        proc = subprocess.Popen(argv, env={**env, "NOTIFY_SOCKET": nl.address})
        ready = nl.wait_for("READY", timeout=600)

``on_message`` runs in the listener's thread as each datagram arrives, before the next one is
read: the place to ask the server "are you really healthy?" when READY=1 comes in.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


@dataclass(frozen=True)
class Message:
    at: float  # time.monotonic() when it arrived
    fields: dict[str, str]
    raw: str
    seen: dict[str, object] = field(default_factory=dict)  # what on_message recorded


class NotifyListener:
    """A bound datagram socket at ``address`` ("/path" or "@abstract-name")."""

    def __init__(self, address: str,
                 on_message: Callable[[Message], dict[str, object] | None] | None = None) -> None:
        self.address = address
        self.on_message = on_message
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._closed = False

    @classmethod
    def at(cls, directory: Path, abstract: bool = False,
           on_message: Callable[[Message], dict[str, object] | None] | None = None
           ) -> NotifyListener:
        name = f"turbo-notify-{uuid.uuid4().hex[:12]}"
        return cls(f"@{name}" if abstract else str(directory / f"{name}.sock"), on_message)

    def __enter__(self) -> NotifyListener:
        bind_to = ("\0" + self.address[1:]) if self.address.startswith("@") else self.address
        self._sock.bind(bind_to)
        self._sock.settimeout(0.2)
        self._thread.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._closed = True
        self._thread.join(timeout=2)
        self._sock.close()
        if not self.address.startswith("@"):
            Path(self.address).unlink(missing_ok=True)

    def _loop(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            text = data.decode(errors="replace")
            fields = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)
            msg = Message(time.monotonic(), fields, text)
            if self.on_message is not None:
                msg.seen.update(self.on_message(msg) or {})
            with self._cond:
                self.messages.append(msg)
                self._cond.notify_all()

    def wait_for(self, key: str, value: str = "1", timeout: float = 60.0) -> Message | None:
        """The first message with ``key=value`` (waiting up to ``timeout``), else None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    if m.fields.get(key) == value:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def statuses(self) -> list[str]:
        with self._cond:
            return [m.fields["STATUS"] for m in self.messages if "STATUS" in m.fields]


def notify_env(env: dict[str, str], listener: NotifyListener) -> dict[str, str]:
    """``env`` with ``NOTIFY_SOCKET`` pointing at ``listener`` (as systemd sets it)."""
    return {**env, "NOTIFY_SOCKET": listener.address}


__all__ = ["Message", "NotifyListener", "notify_env"]
