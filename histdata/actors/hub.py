"""The live hub: fans trades and candle updates out to ``/v1/stream`` clients.

The live path calls :meth:`LiveHub.publish_trades` / :meth:`LiveHub.publish_candles`; both
are synchronous and never wait. Each event is encoded to its NDJSON line once and offered to
every subscriber interested in its symbol through that subscriber's bounded queue. A
subscriber whose queue is full is *dropped* on the spot — its queue is closed, the reason is
counted — so a slow paper-trader can cost ingestion nothing but one failed ``send_nowait``.
The dropped client receives what was queued, then a final error line, then end of stream.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio

from histdata.formats import candle_event, trade_event
from histdata.model import Candle, LiveTrade, Trade
from histdata.supervisor.changes import statistics_changed

__all__ = ["DROP_SLOW", "HubStatistics", "LiveHub", "Subscription"]

DROP_SLOW = "slow_consumer"


@dataclass(frozen=True, slots=True)
class HubStatistics:
    """Counters of the hub; ``dropped`` maps a reason to the clients dropped for it."""

    subscribers: int
    subscribed_total: int
    trades_published: int
    candles_published: int
    events_delivered: int
    dropped: dict[str, int] = field(default_factory=dict)


class Subscription:
    """One client's view of the hub: iterate :attr:`events` for encoded NDJSON lines.

    ``symbols`` is the set of canonical names it wants (None: all). After the iteration ends,
    :attr:`dropped_reason` says why it was cut off (None when the hub closed normally).
    """

    def __init__(self, ident: int, symbols: frozenset[str] | None, queue: int) -> None:
        self.ident = ident
        self.symbols = symbols
        self.dropped_reason: str | None = None
        self._send, self._receive = trio.open_memory_channel[bytes](queue)

    @property
    def events(self) -> trio.MemoryReceiveChannel[bytes]:
        """The receive side of this client's queue."""
        return self._receive

    def _offer(self, line: bytes) -> bool:
        try:
            self._send.send_nowait(line)
        except trio.WouldBlock:
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return True  # already going away; nothing to count
        return True

    def _close(self, reason: str | None) -> None:
        if self.dropped_reason is None:
            self.dropped_reason = reason
        self._send.close()


class LiveHub:
    """Publish/subscribe of live events with a bounded queue per subscriber (see module docs)."""

    def __init__(self, *, queue: int = 10_000) -> None:
        if queue < 1:
            raise ValueError("queue must hold at least one event")
        self._queue = queue
        self._subscribers: dict[int, Subscription] = {}
        self._ids = itertools.count(1)
        self._subscribed_total = 0
        self._trades = 0
        self._candles = 0
        self._delivered = 0
        self._dropped: Counter[str] = Counter()

    @contextmanager
    def subscribe(
        self, symbols: Iterable[str] | None = None, *, queue: int | None = None
    ) -> Iterator[Subscription]:
        """Register a subscriber for ``symbols`` (canonical names; None: every symbol).

        ``queue`` overrides the hub's per-client queue size. Leaving the block unsubscribes.
        """
        sub = Subscription(
            next(self._ids),
            None if symbols is None else frozenset(symbols),
            self._queue if queue is None else queue,
        )
        self._subscribers[sub.ident] = sub
        self._subscribed_total += 1
        statistics_changed.notify()
        try:
            yield sub
        finally:
            self._subscribers.pop(sub.ident, None)
            sub._close(None)
            statistics_changed.notify()

    def _fan_out(self, symbol: str, line: bytes) -> None:
        for sub in list(self._subscribers.values()):
            if sub.symbols is not None and symbol not in sub.symbols:
                continue
            if sub._offer(line):
                self._delivered += 1
            else:
                self._drop(sub, DROP_SLOW)

    def _drop(self, sub: Subscription, reason: str) -> None:
        self._subscribers.pop(sub.ident, None)
        sub._close(reason)
        self._dropped[reason] += 1
        statistics_changed.notify()

    def publish_trades(self, trades: Iterable[Trade | LiveTrade]) -> None:
        """Offer each trade to its symbol's subscribers; never blocks."""
        for trade in trades:
            self._trades += 1
            if self._subscribers:
                self._fan_out(trade.symbol, trade_event(trade))

    def publish_candles(self, candles: Iterable[Candle]) -> None:
        """Offer each candle update to its symbol's subscribers; never blocks."""
        for candle in candles:
            self._candles += 1
            if self._subscribers:
                self._fan_out(candle.symbol, candle_event(candle))

    def close(self) -> None:
        """End every subscription (their iterations finish after the queued events)."""
        for sub in list(self._subscribers.values()):
            self._subscribers.pop(sub.ident, None)
            sub._close(None)

    def statistics(self) -> HubStatistics:
        """Current counters."""
        return HubStatistics(
            subscribers=len(self._subscribers),
            subscribed_total=self._subscribed_total,
            trades_published=self._trades,
            candles_published=self._candles,
            events_delivered=self._delivered,
            dropped=dict(self._dropped),
        )
