"""systemd notifications (sd_notify) without extra packages.

systemd passes ``NOTIFY_SOCKET`` (a unix datagram socket: a path, or ``@name`` in the abstract
namespace) to a ``Type=notify`` service, and ``WATCHDOG_USEC`` (with ``WATCHDOG_PID``) when
``WatchdogSec=`` is set. The worker sends ``READY=1`` once it serves, ``STATUS=...`` lines with
its counters, ``WATCHDOG=1`` at half the watchdog interval, and ``STOPPING=1`` when it drains.
Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing. Sends never block (a full
socket queue drops the message), and a failed send is logged once and never stops the worker:
notifications are a courtesy to the service manager, not its state.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("archiver.notify")


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET`` (if set)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        self._warned = False
        self.watchdog_interval: float | None = None
        """Seconds between two WATCHDOG=1 pings (half of WatchdogSec), or None."""
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> None:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one message."""
        if self._address is None:
            return
        message = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # a full socket queue must never stall the event loop
                sock.sendto(message, self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd through NOTIFY_SOCKET: %s", exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")
