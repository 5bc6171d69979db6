"""The maintenance actor: retention and TimescaleDB compression, every ``interval_s``.

Retention is off unless ``[maintenance] trades_retention_days`` / ``candles_retention_days``
is set; compression runs when TimescaleDB is present under the Timescale License and
``compress_after_days`` is non-zero, and is otherwise skipped with one log line per start.
A failed round is logged, counted, and tried again at the next interval.

**One owner in a fleet.** Retention deletes for every symbol, so of several collectors on one
database only the holder of the ``maintenance`` lease runs rounds; it renews the lease each
round (for two intervals and a minute), so a dead owner is replaced within that time. The
others count the round as skipped, and a collector whose retention or compression settings
differ from the owner's logs one warning: the owner's settings are the ones applied.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
import trio

from histdata.actors.heartbeat import collector_ident
from histdata.config import MaintenanceConfig
from histdata.errors import DatabaseUnavailable
from histdata.storage import Storage
from histdata.storage.fleet import try_lease
from histdata.storage.retention import apply_retention, compress_old_chunks, compression_allowed
from histdata.supervisor import sleep_unless_stopping, statistics_changed

__all__ = ["MaintenanceActor", "MaintenanceStatistics"]

_log = structlog.get_logger("histdata.actors.maintenance", actor="maintenance")


@dataclass(frozen=True, slots=True)
class MaintenanceStatistics:
    """Counters of the maintenance actor."""

    rounds: int
    rows_deleted: int
    chunks_dropped: int
    chunks_compressed: int
    compression: str  # "on", "off" (not configured) or "unavailable" (licence/extension)
    failures: int
    last_round_at: float | None
    last_error: str | None
    skipped: int = 0  # rounds left to the fleet's maintenance owner
    owner: str | None = None  # who held the maintenance lease at the last round


class MaintenanceActor:
    """Runs retention and compression rounds (see module docs)."""

    def __init__(
        self,
        storage: Callable[[], Storage],
        config: MaintenanceConfig,
        *,
        holder: str | None = None,
    ) -> None:
        self._storage = storage
        self._config = config
        self._holder = holder or collector_ident()
        self._skipped = 0
        self._owner: str | None = None
        self._warned_settings = False
        self._rounds = 0
        self._deleted = 0
        self._dropped = 0
        self._compressed = 0
        self._compression = "off"
        self._failures = 0
        self._last_at: float | None = None
        self._last_error: str | None = None

    def _settings(self) -> dict[str, int]:
        config = self._config
        return {
            "trades_retention_days": config.trades_retention_days,
            "candles_retention_days": config.candles_retention_days,
            "compress_after_days": config.compress_after_days,
        }

    async def round(self) -> None:
        """One retention + compression round, if this collector owns maintenance.

        Raises:
            DatabaseUnavailable: the database could not be reached.
        """
        config = self._config
        settings = self._settings()
        lease = await try_lease(
            self._storage(),
            "maintenance",
            self._holder,
            ttl_s=2 * config.interval_s + 60,
            detail=settings,
        )
        self._owner = lease.holder or None
        if not lease.owned:
            self._skipped += 1
            if lease.detail and lease.detail != settings and not self._warned_settings:
                self._warned_settings = True
                _log.warning(
                    "maintenance settings differ from the owner's; the owner's apply",
                    owner=lease.holder,
                    owner_settings=lease.detail,
                    ours=settings,
                )
            return
        for result in await apply_retention(
            self._storage(),
            {
                "trades": config.trades_retention_days,
                "candles": config.candles_retention_days,
            },
        ):
            self._deleted += result.rows
            self._dropped += result.chunks
            _log.info(
                "retention applied",
                stream=result.stream,
                cutoff=result.cutoff.isoformat(),
                rows=result.rows,
                chunks=result.chunks,
            )
        if self._compression == "on":
            self._compressed += await compress_old_chunks(
                self._storage(), config.compress_after_days
            )
        self._rounds += 1
        statistics_changed.notify()
        self._last_at = time.time()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Decide on compression once, then run a round every ``interval_s`` until stopped."""
        if self._config.compress_after_days > 0:
            if await compression_allowed(self._storage()):
                self._compression = "on"
            else:
                self._compression = "unavailable"
                _log.info(
                    "compression skipped: needs TimescaleDB under the Timescale License",
                    timescale=self._storage().timescale,
                )
        task_status.started()
        while True:
            try:
                await self.round()
            except DatabaseUnavailable as exc:
                self._failures += 1
                self._last_error = str(exc)
                _log.warning("maintenance round failed; retrying later", error=str(exc))
            if await sleep_unless_stopping(self._config.interval_s):
                return

    def statistics(self) -> MaintenanceStatistics:
        """Current counters."""
        return MaintenanceStatistics(
            rounds=self._rounds,
            rows_deleted=self._deleted,
            chunks_dropped=self._dropped,
            chunks_compressed=self._compressed,
            compression=self._compression,
            failures=self._failures,
            last_round_at=self._last_at,
            last_error=self._last_error,
            skipped=self._skipped,
            owner=self._owner,
        )
