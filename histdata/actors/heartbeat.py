"""The heartbeat actor: this collector's row in ``collectors``, every ``interval_s``.

The row carries host, pid, version, the symbols this collector records and the time of its
last write to the database, so ``histdata status --fleet`` can list every collector and the
symbols nobody records. A clean stop deletes the row; a killed collector's row goes stale and
is shown as such. A beat that fails (the database away) is counted and tried again at the
next interval; the collector goes on recording to its journal meanwhile.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
import trio

from histdata import __version__
from histdata.errors import DatabaseUnavailable
from histdata.storage import Storage
from histdata.storage.fleet import beat, forget_collector
from histdata.supervisor import sleep_unless_stopping

__all__ = ["Heartbeat", "HeartbeatStatistics", "collector_ident"]

_log = structlog.get_logger("histdata.actors.heartbeat", actor="heartbeat")
_STARTED = datetime.now(UTC)


_SERVICES = itertools.count(1)


def collector_ident() -> str:
    """A new name in the fleet: ``host:pid:start#n``; the service gives one to all its actors
    (leases are held by it), and two services in one process (tests) get two."""
    return f"{socket.gethostname()}:{os.getpid()}:{int(_STARTED.timestamp())}#{next(_SERVICES)}"


@dataclass(frozen=True, slots=True)
class HeartbeatStatistics:
    """Counters of the heartbeat actor."""

    ident: str
    beats: int
    failures: int
    last_beat_at: float | None


class Heartbeat:
    """Writes this collector's heartbeat row (see module docs).

    ``last_write`` returns the Unix time of the collector's last write, or None: the
    flusher's last progress, which during a database outage is its last journal append.
    """

    def __init__(
        self,
        storage: Callable[[], Storage],
        symbols: Sequence[str],
        last_write: Callable[[], float | None],
        *,
        ident: str | None = None,
        interval_s: float = 5.0,
    ) -> None:
        self.ident = ident or collector_ident()
        self._storage = storage
        self._symbols = tuple(symbols)
        self._last_write = last_write
        self._interval_s = interval_s
        self._beats = 0
        self._failures = 0
        self._last_at: float | None = None

    async def beat(self) -> None:
        """Write the row once.

        Raises:
            DatabaseUnavailable: the database could not be reached.
        """
        written = self._last_write()
        await beat(
            self._storage(),
            self.ident,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            symbols=self._symbols,
            started_at=_STARTED,
            last_write=datetime.fromtimestamp(written, UTC) if written is not None else None,
        )
        self._beats += 1
        self._last_at = time.time()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Beat every ``interval_s`` until stopped; then delete the row."""
        task_status.started()
        try:
            while True:
                try:
                    await self.beat()
                except DatabaseUnavailable as exc:
                    self._failures += 1
                    _log.debug("heartbeat failed; retrying", error=str(exc))
                if await sleep_unless_stopping(self._interval_s):
                    return
        finally:
            # Unreachable: the row goes stale, and status --fleet shows it so.
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(2),
                contextlib.suppress(DatabaseUnavailable),
            ):
                await forget_collector(self._storage(), self.ident)

    def statistics(self) -> HeartbeatStatistics:
        """Current counters."""
        return HeartbeatStatistics(self.ident, self._beats, self._failures, self._last_at)
