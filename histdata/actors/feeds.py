"""The feed group: the live symbols spread over as many WebSocket connections as they need.

Kraken's v2 ``subscribe`` takes a list of symbols, so each connection subscribes its whole
slice with one request per channel. Kraken documents no limit on symbols per public
connection (docs/kraken-limits.md); ``per_connection`` (``[kraken] symbols_per_connection``)
caps a slice. Each slice is one :class:`~histdata.actors.feed.Feed`, run as its own child
``feed-N`` of a nested ``feeds`` supervisor (one-for-one: one connection's trouble restarts
only it). All feeds share the live channels, the catch-up queue, the hub and one
:class:`~histdata.actors.feed.ConnectBudget` (Cloudflare's attempt limit is per IP), and
each claims coverage only for the streams its own connection subscribed.

:meth:`FeedGroup.set_symbols` (after an AssetPairs refresh) re-slices; when the set changed,
the nested supervisor is stopped and started again over the new slices, so every
connection reconnects (and asks a REST catch-up for what it subscribed). Feed objects are
reused slot by slot and retired ones kept, so the counters in :meth:`FeedGroup.statistics`
only grow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import structlog
import trio

from histdata.actors.feed import Feed, FeedStatistics
from histdata.supervisor import ChildSpec, Strategy, Supervisor, current_child_stopping
from histdata.symbols import SymbolRegistry

__all__ = ["FeedGroup", "slice_symbols"]

_log = structlog.get_logger("histdata.actors.feeds", actor="feeds")


def slice_symbols(symbols: Sequence[str], per_connection: int) -> list[tuple[str, ...]]:
    """``symbols`` in order, cut into slices of at most ``per_connection`` (none if empty).

    Raises:
        ValueError: ``per_connection`` is below 1.
    """
    if per_connection < 1:
        raise ValueError("per_connection must be >= 1")
    return [tuple(symbols[i : i + per_connection]) for i in range(0, len(symbols), per_connection)]


class FeedGroup:
    """Several :class:`Feed` connections as one feed (see the module docs).

    ``make_feed()`` builds one idle feed (no symbols) with the shared channels and options;
    ``run`` is the supervised child. ``symbols`` are all subscribed v2 names, in order.
    """

    def __init__(
        self,
        make_feed: Callable[[], Feed],
        registry: SymbolRegistry,
        symbols: Sequence[str] = (),
        *,
        per_connection: int = 200,
        shutdown_timeout_s: float = 1.5,
    ) -> None:
        self._make_feed = make_feed
        self.registry = registry
        self.per_connection = per_connection
        self.shutdown_timeout_s = shutdown_timeout_s
        self.symbols: tuple[str, ...] = ()
        self.feeds: list[Feed] = []
        self._retired: list[Feed] = []
        self._changed = trio.Event()
        self._lot = trio.lowlevel.ParkingLot()  # wait_changed callers
        self.resubscriptions = 0
        self.supervisor: Supervisor | None = None
        self.set_symbols(symbols)

    def set_symbols(self, symbols: Sequence[str]) -> bool:
        """Subscribe ``symbols`` (v2 names) from now on; True when that changed anything.

        The running connections are restarted over the new slices.
        """
        wanted = tuple(dict.fromkeys(symbols))
        if wanted == self.symbols:
            return False
        slices = slice_symbols(wanted, self.per_connection)
        while len(self.feeds) < len(slices):
            self.feeds.append(self._make_feed())
        while len(self.feeds) > len(slices):
            self._retired.append(self.feeds.pop())
        for feed, chunk in zip(self.feeds, slices, strict=True):
            feed.symbols = chunk
            feed.registry = self.registry
        if self.symbols:
            self.resubscriptions += 1
            _log.info(
                "subscriptions changed; reconnecting",
                added=len(set(wanted) - set(self.symbols)),
                dropped=len(set(self.symbols) - set(wanted)),
                connections=len(slices),
            )
        self.symbols = wanted
        self._changed.set()
        self._lot.unpark_all()
        return True

    async def wait_changed(self, since: Sequence[str]) -> None:
        """Return once the subscribed symbols are no longer ``since`` (a checkpoint)."""
        while self.symbols == tuple(since):
            await self._lot.park()
        await trio.lowlevel.checkpoint()

    def statistics(self) -> FeedStatistics:
        """The connections' statistics combined.

        ``connected`` only while every connection is; ``down_since`` is the earliest of
        those that are down; ``lag_s`` the worst; counters are sums over every connection
        this group ever ran, so they never go back.
        """
        current = [feed.statistics() for feed in self.feeds]
        every = current + [feed.statistics() for feed in self._retired]
        closes: Counter[str] = Counter()
        rejections: Counter[str] = Counter()
        by_symbol: Counter[str] = Counter()
        last_trade_at: dict[str, float] = {}
        for stats in every:
            closes.update(stats.closes)
            rejections.update(stats.rejections)
            by_symbol.update(stats.trades_by_symbol)
            for symbol, at in stats.last_trade_at.items():
                last_trade_at[symbol] = max(at, last_trade_at.get(symbol, at))
        failed: dict[str, str] = {}
        for stats in current:
            failed.update(stats.failed_subscriptions)
        lags = [s.lag_s for s in current if s.lag_s is not None]
        downs = [s.down_since for s in current if s.down_since is not None]
        subscribed = [s.subscribed_since for s in current if s.subscribed_since is not None]
        messages = [s.last_message_at for s in current if s.last_message_at is not None]
        systems = [s.system_status for s in current if s.system_status is not None]
        return FeedStatistics(
            connected=bool(current) and all(s.connected for s in current),
            sessions=sum(s.sessions for s in every),
            connect_attempts=sum(s.connect_attempts for s in every),
            closes=dict(closes),
            trades=sum(s.trades for s in every),
            candle_updates=sum(s.candle_updates for s in every),
            snapshot_trades=sum(s.snapshot_trades for s in every),
            rejections=dict(rejections),
            catch_ups_requested=sum(s.catch_ups_requested for s in every),
            failed_subscriptions=failed,
            subscribed_since=min(subscribed) if subscribed else None,
            last_message_at=max(messages) if messages else None,
            lag_s=max(lags) if lags else None,
            down_since=min(downs) if downs else None,
            last_trade_at=last_trade_at,
            trades_by_symbol=dict(by_symbol),
            system_status=systems[0] if systems else None,
            connections=len(current),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run one ``feed-N`` child per slice until asked to stop; reports started at once.

        Raises :class:`~histdata.supervisor.SupervisorEscalation` when one connection
        keeps crashing (the live supervisor then restarts the group).
        """
        stopping = current_child_stopping()
        task_status.started()
        while not stopping.is_set():
            changed = self._changed = trio.Event()
            if not self.feeds:
                _log.warning("no symbols to record; the feed waits for a refresh")
                await _first(changed.wait, stopping.wait)
                continue
            supervisor = self.supervisor = Supervisor(
                "feeds",
                [
                    ChildSpec(f"feed-{i}", feed.run, shutdown_timeout_s=self.shutdown_timeout_s)
                    for i, feed in enumerate(self.feeds)
                ],
                strategy=Strategy.ONE_FOR_ONE,
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_shutdown_when, changed, supervisor)
                await supervisor.run()
                nursery.cancel_scope.cancel()


async def _shutdown_when(event: trio.Event, supervisor: Supervisor) -> None:
    await event.wait()
    supervisor.shutdown()


async def _first(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as the first of ``waits`` (async callables) returns."""
    async with trio.open_nursery() as nursery:

        async def one(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(one, wait)
