"""The systemd notification protocol (``sd_notify``) without libsystemd.

With ``Type=notify`` in the unit, systemd waits for ``READY=1`` before it considers the
service started, shows ``STATUS=`` in ``systemctl status``, and with ``WatchdogSec=`` kills
and restarts the service when ``WATCHDOG=1`` stops arriving. Every function is a no-op
returning False when ``$NOTIFY_SOCKET`` is unset (started by hand or in tests), so callers
never need to check.
"""

from __future__ import annotations

import os
import socket

import structlog

__all__ = [
    "notify",
    "ready",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval_s",
]

log = structlog.get_logger(__name__)


def notify(state: str) -> bool:
    """Send ``state`` (newline-separated ``KEY=value`` lines) to ``$NOTIFY_SOCKET``.

    The address is a filesystem path, or an abstract socket when it starts with ``@``.
    Returns True if the datagram was sent; False when the variable is unset or names an
    address family we do not speak, and when sending fails (logged: a vanished notify socket
    must not take the service down). Never blocks.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("unsupported NOTIFY_SOCKET address", address=address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Non-blocking: sd_notify runs on the trio thread; a full receive queue on
            # systemd's side is a failed notification, not a stalled event loop.
            sock.setblocking(False)
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify failed", state=state, error=str(exc))
        return False
    return True


def ready() -> bool:
    """Tell systemd start-up is complete (``READY=1``)."""
    return notify("READY=1")


def stopping() -> bool:
    """Tell systemd a graceful shutdown has begun (``STOPPING=1``)."""
    return notify("STOPPING=1")


def watchdog() -> bool:
    """Keep the systemd watchdog from firing (``WATCHDOG=1``)."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """Set the one-line status shown by ``systemctl status`` (``STATUS=text``).

    Newlines are replaced by spaces: each line of a notification is a separate assignment.
    """
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog_interval_s() -> float | None:
    """The watchdog timeout from ``$WATCHDOG_USEC`` in seconds, or None if it is not enabled
    for this process (unset, invalid, zero, or ``$WATCHDOG_PID`` naming another process)."""
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None
