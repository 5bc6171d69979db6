"""The rollup actor: folds the dirty-range log into the 5m … 1w rollups, continuously.

Every ``interval_s`` it first derives our own 1-minute candle for each newly finished minute
of observed trades (:func:`histdata.storage.candles.derive_observed`: live candles are kept
from our trades beside Kraken's, and compared with them), then runs passes of
:func:`histdata.storage.rollups.rollup_pass` until the log is drained (a big import is
worked off in several transactions of bounded size), then sleeps. A database outage is
logged and retried at the next tick without a restart: the log is persistent, so nothing
is lost while the database is away. Reads never depend on this actor being current (see
:mod:`histdata.storage.reads`); it only keeps them fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
import trio

from histdata.errors import DatabaseUnavailable
from histdata.storage import Storage
from histdata.storage.candles import derive_observed
from histdata.storage.rollups import rollup_pass
from histdata.supervisor import sleep_unless_stopping
from histdata.timeutil import utc_now

__all__ = ["RollupActor", "RollupStatistics"]

_log = structlog.get_logger("histdata.actors.rollup", actor="rollup")


@dataclass(frozen=True, slots=True)
class RollupStatistics:
    """Counters of the rollup actor."""

    passes: int
    ranges_claimed: int
    rows_written: int
    candles_derived: int  # our own 1-minute candles written from observed trades
    candle_mismatches: int  # derived minutes found to disagree with Kraken's candle
    symbols_skipped: int  # per pass, symbols another collector was rolling up (summed)
    failures: int
    last_pass_at: float | None  # Unix time of the last completed pass
    last_pass_s: float | None  # duration of the last completed pass
    last_error: str | None


class RollupActor:
    """Runs rollup passes every ``interval_s`` seconds; counters survive restarts of ``run``."""

    def __init__(
        self, storage: Callable[[], Storage], *, interval_s: float = 2.0, batch: int = 10_000
    ) -> None:
        self._storage = storage
        self._interval_s = interval_s
        self._batch = batch
        self._passes = 0
        self._derived = 0
        self._mismatches = 0
        self._claimed = 0
        self._written = 0
        self._failures = 0
        self._skipped = 0
        self._last_at: float | None = None
        self._last_s: float | None = None
        self._last_error: str | None = None

    async def drain(self) -> None:
        """Derive the newly observed minutes, then run passes until the dirty-range log is
        empty (or another process holds it).

        Raises:
            DatabaseUnavailable: the database could not be reached.
        """
        derived = await derive_observed(self._storage(), now=utc_now())
        self._derived += derived.inserted + derived.updated
        self._mismatches += len(derived.mismatches)
        while True:
            began = time.perf_counter()
            result = await rollup_pass(self._storage(), limit=self._batch)
            self._skipped += result.skipped_symbols
            if not result.claimed and result.skipped_symbols:
                return  # the rest is another collector's to roll up
            self._passes += 1
            self._claimed += result.claimed
            self._written += result.rows_written
            self._last_at = time.time()
            self._last_s = time.perf_counter() - began
            if result.claimed < self._batch:
                return

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the log every ``interval_s`` until cancelled or asked to stop."""
        task_status.started()
        while True:
            try:
                await self.drain()
            except DatabaseUnavailable as exc:
                self._failures += 1
                self._last_error = str(exc)
                _log.warning("rollup pass failed; retrying at the next tick", error=str(exc))
            if await sleep_unless_stopping(self._interval_s):
                return

    def statistics(self) -> RollupStatistics:
        """Current counters."""
        return RollupStatistics(
            passes=self._passes,
            ranges_claimed=self._claimed,
            rows_written=self._written,
            candles_derived=self._derived,
            candle_mismatches=self._mismatches,
            symbols_skipped=self._skipped,
            failures=self._failures,
            last_pass_at=self._last_at,
            last_pass_s=self._last_s,
            last_error=self._last_error,
        )
