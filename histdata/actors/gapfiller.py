"""The gap filler actor: repairs holes at start, after every WebSocket reconnect, and on a timer.

Each configured symbol has its own worker, so repairs of several symbols run in parallel;
their REST requests all wait on the one shared rate limiter inside :class:`KrakenRest`, which
keeps the process within Kraken's allowance however many run. A symbol asked for while its
repair is running is repaired once more afterwards (requests coalesce, never queue up).

A repair that fails (Kraken down, database down) is logged and counted; the symbol is tried
again at the next request or timer tick. Repairs are idempotent and commit page by page, so a
cancelled or failed repair loses nothing already fetched.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

import structlog
import trio

from histdata.actors.heartbeat import collector_ident
from histdata.kraken.rest import KrakenRest
from histdata.repair import RepairResult, catch_up
from histdata.storage import Storage
from histdata.storage.fleet import hold_lease
from histdata.supervisor import cancel_when, current_child_stopping
from histdata.supervisor.changes import statistics_changed

__all__ = ["CatchUpRequests", "GapFiller", "GapFillerStatistics"]

_log = structlog.get_logger("histdata.actors.gapfiller", actor="gapfiller")


class CatchUpRequests(Protocol):
    """Where catch-up requests come from: a ``trio.MemoryReceiveChannel[str]`` or the feed's
    ``CatchUpQueue``."""

    async def receive(self) -> str:
        """The next symbol needing repair now."""
        ...


@dataclass(frozen=True, slots=True)
class GapFillerStatistics:
    """Counters of the gap filler."""

    repairs: int
    failures: int
    requests: int
    running: tuple[str, ...]
    trades_inserted: int
    candles_written: int
    mismatches: int
    unrecoverable: int
    id_holes_refetched: int
    id_holes_unfillable: int
    failures_by_symbol: dict[str, int]
    skipped: int = 0  # passes left to another collector that held the symbol's repair lease


class GapFiller:
    """Repairs the last ``lookback`` of each symbol on request and every ``interval_s``."""

    def __init__(
        self,
        storage: Callable[[], Storage],
        rest: KrakenRest,
        symbols: Sequence[str],
        *,
        interval_s: float,
        lookback: timedelta = timedelta(days=1),
        holder: str | None = None,
        lease_s: float = 60.0,
    ) -> None:
        self._storage = storage
        # Repairs of a symbol are leased (``repair:SYMBOL``) so that of several collectors
        # recording it only one works a range; the others skip the pass and count it.
        self.holder = holder or collector_ident()
        self.lease_s = lease_s
        self._skipped = 0
        self.rest = rest
        # The service's registry, kept: a catch-up request names a symbol while the database
        # may be away, and resolving it must not depend on storage being open.
        self._registry = storage().registry
        self.symbols = [self._registry.canonical(s) for s in symbols]
        self.interval_s = interval_s
        self.lookback = lookback
        self._wanted = {symbol: trio.Event() for symbol in self.symbols}
        self._running: set[str] = set()
        self._repairs = self._failures = self._requests = 0
        self._trades = self._candles = self._mismatches = self._unrecoverable = 0
        self._id_holes = self._id_unfillable = 0
        self._failed: Counter[str] = Counter()
        self.last_results: dict[str, RepairResult] = {}

    def statistics(self) -> GapFillerStatistics:
        """The current counters."""
        return GapFillerStatistics(
            self._repairs,
            self._failures,
            self._requests,
            tuple(sorted(self._running)),
            self._trades,
            self._candles,
            self._mismatches,
            self._unrecoverable,
            self._id_holes,
            self._id_unfillable,
            dict(self._failed),
            self._skipped,
        )

    def request(self, symbol: str) -> None:
        """Ask for a repair of ``symbol`` (any spelling) as soon as its worker is free.

        Unknown symbols (not configured here) are logged and ignored.
        """
        self._requests += 1
        try:
            canonical = self._registry.canonical(symbol)
            self._wanted[canonical].set()
        except LookupError:
            _log.warning("catch_up_for_unconfigured_symbol", symbol=symbol)

    async def run(
        self,
        requests: CatchUpRequests | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Repair every symbol now, then on each request and every ``interval_s``; never returns.

        Under a supervisor, it stops when asked (repairs are idempotent: cancelling one
        mid-way loses nothing committed).
        """
        try:
            stopping: trio.Event | None = current_child_stopping()
        except RuntimeError:
            stopping = None
        async with trio.open_nursery() as nursery:
            if stopping is not None:
                nursery.start_soon(cancel_when, stopping, nursery.cancel_scope)
            for symbol in self.symbols:
                self._wanted[symbol].set()
                nursery.start_soon(self._worker, symbol)
            if requests is not None:
                nursery.start_soon(self._listen, requests)
            nursery.start_soon(self._tick)
            task_status.started()

    async def _listen(self, requests: CatchUpRequests) -> None:
        while True:
            self.request(await requests.receive())

    async def _tick(self) -> None:
        while True:
            await trio.sleep(self.interval_s)
            for event in self._wanted.values():
                event.set()

    async def _worker(self, symbol: str) -> None:
        while True:
            await self._wanted[symbol].wait()
            self._wanted[symbol] = trio.Event()  # requests from now on mean "once more"
            self._running.add(symbol)
            try:
                async with hold_lease(
                    self._storage(), f"repair:{symbol}", self.holder, ttl_s=self.lease_s
                ) as lease:
                    if not lease.owned:
                        self._skipped += 1
                        _log.debug("repair_skipped", symbol=symbol, holder=lease.holder)
                        continue
                    result = await catch_up(
                        self._storage(), self.rest, symbol, lookback=self.lookback
                    )
            except Exception as exc:  # logged, counted, retried at the next request or tick
                self._failures += 1
                self._failed[symbol] += 1
                statistics_changed.notify()
                _log.warning("repair_failed", symbol=symbol, error=f"{type(exc).__name__}: {exc}")
                continue
            finally:
                self._running.discard(symbol)
            self._repairs += 1
            self._trades += result.trades_inserted
            self._candles += result.rest_candles + result.derived_candles
            self._mismatches += len(result.mismatches)
            self._unrecoverable += len(result.unrecoverable)
            statistics_changed.notify()
            self._id_holes += result.id_holes
            self._id_unfillable += result.id_holes_left
            self.last_results[symbol] = result
