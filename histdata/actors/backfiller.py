"""The backfiller actor: long trade-history backfills for the configured symbols, in parallel.

Each symbol runs :func:`~histdata.fetch.backfill_trades` from ``since`` to the present under
its persisted cursor, so a restart (of the actor or the process) resumes where the last
committed page ended. Symbols run concurrently; every REST request waits on the one shared
rate limiter. A transient failure (Kraken or the database) is retried after a jittered
backoff; a symbol Kraken refuses is logged and given up. When every symbol is done the actor
returns (a ``transient`` child: a normal exit is not restarted).

A symbol's backfill is leased (``backfill:SYMBOL``, renewed while it runs): a symbol another
collector is backfilling is left to it (``delegated``), so no range is fetched twice; if that
collector dies, its cursor stays and the next start resumes from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
import trio

from histdata.actors.heartbeat import collector_ident
from histdata.errors import TransientError
from histdata.fetch import FetchProgress, FetchResult, backfill_trades
from histdata.kraken.rest import KrakenRest
from histdata.storage import Storage
from histdata.storage.fleet import hold_lease
from histdata.supervisor import Backoff

__all__ = ["Backfiller", "BackfillerStatistics"]

_log = structlog.get_logger("histdata.actors.backfiller", actor="backfiller")


@dataclass(frozen=True, slots=True)
class BackfillerStatistics:
    """Progress of every symbol's backfill; ``eta_s`` per symbol when known."""

    done: tuple[str, ...]
    failed: tuple[str, ...]
    retries: int
    fraction: dict[str, float]
    eta_s: dict[str, float | None]
    inserted: dict[str, int]
    delegated: tuple[str, ...] = ()  # left to the collector that held their lease


class Backfiller:
    """Backfills trades of ``symbols`` from ``since_ns`` to now, resumably and in parallel."""

    def __init__(
        self,
        storage: Callable[[], Storage],
        rest: KrakenRest,
        symbols: Sequence[str],
        *,
        since_ns: int,
        backoff: Backoff | None = None,
        holder: str | None = None,
    ) -> None:
        self._storage = storage
        self.holder = holder or collector_ident()
        self._delegated: list[str] = []
        self.rest = rest
        self.symbols = [storage().registry.canonical(s) for s in symbols]
        self.since_ns = since_ns
        self.backoff = backoff if backoff is not None else Backoff(1.0, 300.0)
        self._progress: dict[str, FetchProgress] = {}
        self._done: list[str] = []
        self._failed: list[str] = []
        self._retries = 0
        self.results: dict[str, FetchResult] = {}

    def statistics(self) -> BackfillerStatistics:
        """The current progress."""
        return BackfillerStatistics(
            tuple(self._done),
            tuple(self._failed),
            self._retries,
            {s: p.fraction for s, p in self._progress.items()},
            {s: p.eta_s for s, p in self._progress.items()},
            {s: p.inserted for s, p in self._progress.items()},
            tuple(self._delegated),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Backfill every symbol concurrently; returns when all are done or given up."""
        async with trio.open_nursery() as nursery:
            for symbol in self.symbols:
                nursery.start_soon(self._one, symbol)
            task_status.started()

    async def _one(self, symbol: str) -> None:
        while True:
            try:
                async with hold_lease(self._storage(), f"backfill:{symbol}", self.holder) as lease:
                    if lease.owned:
                        await self._backfill(symbol)
                        return
            except TransientError as exc:  # the lease itself: the database is away
                self._retries += 1
                _log.warning("backfill_retry", symbol=symbol, error=str(exc))
                await trio.sleep(self.backoff.clone().next_delay())
                continue
            self._delegated.append(symbol)
            _log.info("backfill_left_to_another_collector", symbol=symbol, holder=lease.holder)
            return

    async def _backfill(self, symbol: str) -> None:
        backoff = self.backoff.clone()
        while True:
            try:
                self.results[symbol] = await backfill_trades(
                    self._storage(),
                    self.rest,
                    symbol,
                    since_ns=self.since_ns,
                    on_page=lambda p: self._progress.__setitem__(p.symbol, p),
                )
            except TransientError as exc:
                self._retries += 1
                delay = backoff.next_delay()
                _log.warning("backfill_retry", symbol=symbol, error=str(exc), delay_s=delay)
                await trio.sleep(delay)
                continue
            except Exception as exc:  # one refused pair must not stop the others
                self._failed.append(symbol)
                _log.error("backfill_failed", symbol=symbol, error=f"{type(exc).__name__}: {exc}")
                return
            self._done.append(symbol)
            _log.info("backfill_done", symbol=symbol, inserted=self.results[symbol].inserted)
            return
