"""The feed actor: Kraken WebSocket v2 sessions, one after another, for as long as it runs.

Each session (:func:`~histdata.kraken.ws.open_kraken_ws`) subscribes ``trade`` and ``ohlc``
(interval 1) for the configured symbols; trades go to the ``live.trades`` channel and candle
updates to ``live.candles`` (see :mod:`histdata.actors.buffer`). What the feed adds to a
session, and why:

- **Reconnects.** Any :class:`~histdata.errors.TransientError` of a session (a close with its
  code, a stale connection, a failed connect) ends the session, is counted by kind, and a new
  one starts. Kraken's guidance is to reconnect at once after a random drop but to wait
  longer when it keeps failing, and Cloudflare bans an IP that makes more than about 150
  connection attempts in 10 minutes: the first retry after a session that delivered data is
  immediate, further ones back off (jittered, exponential), and a sliding window
  (:class:`ConnectBudget`, shared by every feed of the service, since the limit is per IP)
  never lets more than ``max_connects`` attempts start within ``connect_window_s``.
- **Subscriptions.** Kraken does not restore subscriptions, so every session subscribes
  afresh. Failed per-symbol acks are kept in ``failed_subscriptions`` (shown by
  ``histdata status``): heartbeats keep flowing for a failed symbol, so this is the only place
  it shows. If nothing at all could be subscribed the feed backs off to the maximum delay.
- **Validation.** Rejected frames and rows are counted per reason and logged (the first few
  of each reason, then every hundredth); good rows in the same frame are kept.
- **Catch-up.** After every reconnect each subscribed symbol is handed to ``catch_up`` so the
  trades missed while disconnected are fetched from REST (the gap filler does the work).
- **Fan-out.** Trades (not the replayed snapshot) and candle updates are offered to
  ``publish`` (the live hub) as they arrive; the hub never blocks, so stream clients cannot
  slow ingestion.
- **Coverage.** About once a second the feed sends a :class:`~histdata.actors.buffer.CoverageMark`
  behind the trades it has queued, with what :class:`~histdata.actors.claims.Claims` allows:
  per symbol and stream, up to the exchange time of the newest item received, and quiet time
  only while the session is provably current. Never the receive clock: trades still in flight
  when a session ends must never lie inside a claim. The hole between two sessions is never
  covered, so ``gaps`` shows it until it is repaired.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

import structlog
import trio

from histdata.actors.buffer import CoverageMark, LiveItem
from histdata.actors.claims import ClaimRule, Claims
from histdata.errors import KrakenError, RejectedInput, TransientError
from histdata.kraken.parse import KrakenRequestError
from histdata.kraken.ws import (
    CandlesEvent,
    ConnectionClosed,
    KrakenWs,
    RejectedFrame,
    StaleConnection,
    StatusEvent,
    TradesEvent,
    open_kraken_ws,
)
from histdata.model import Candle, LiveTrade, Stream, Trade
from histdata.supervisor import Backoff, Channel, cancel_when, current_child_stopping
from histdata.supervisor.changes import statistics_changed
from histdata.symbols import SymbolRegistry

__all__ = [
    "CatchUpQueue",
    "CatchUpSink",
    "ConnectBudget",
    "Feed",
    "FeedStatistics",
    "LivePublisher",
]

_log = structlog.get_logger("histdata.actors.feed", actor="feed")
_LOG_FIRST_REJECTIONS = 5
_LOG_EVERY_REJECTION = 100


class CatchUpSink(Protocol):
    """Where the feed asks for a REST catch-up of one symbol (must not block)."""

    def request(self, symbol: str) -> None:
        """Ask for trades of ``symbol`` missed since the last stored one to be fetched."""


class LivePublisher(Protocol):
    """Where live data is fanned out to stream clients (the hub); must never block."""

    def publish_trades(self, trades: Iterable[Trade | LiveTrade]) -> None:
        """Offer trades to subscribers."""

    def publish_candles(self, candles: Iterable[Candle]) -> None:
        """Offer candle updates to subscribers."""


class CatchUpQueue:
    """A de-duplicating queue of symbols needing a REST catch-up after a reconnect.

    Bounded by the number of distinct symbols: asking twice before the consumer gets to it
    is one request. The consumer (the gap filler) awaits :meth:`receive`.
    """

    def __init__(self) -> None:
        self._pending: dict[str, None] = {}
        self._lot = trio.lowlevel.ParkingLot()
        self.requested = 0

    def request(self, symbol: str) -> None:
        """Queue ``symbol`` (a no-op if it is already queued)."""
        self.requested += 1
        self._pending[symbol] = None
        self._lot.unpark_all()

    def pending(self) -> list[str]:
        """Symbols waiting, oldest request first."""
        return list(self._pending)

    async def receive(self) -> str:
        """The oldest queued symbol, waiting for one."""
        while not self._pending:
            await self._lot.park()
        symbol = next(iter(self._pending))
        del self._pending[symbol]
        await trio.lowlevel.checkpoint()
        return symbol


class ConnectBudget:
    """A sliding window of WebSocket connection attempts: at most ``max_connects`` start
    within any ``window_s`` seconds; :meth:`acquire` waits for room.

    Cloudflare bans an IP that makes more than about 150 attempts in 10 minutes, so every
    connection of one service draws on one budget.
    """

    def __init__(self, max_connects: int = 140, window_s: float = 600.0) -> None:
        self.max_connects = max_connects
        self.window_s = window_s
        self._times: deque[float] = deque()

    async def acquire(self) -> None:
        """Wait until an attempt may start, and count it."""
        while True:
            now = trio.current_time()
            while self._times and self._times[0] <= now - self.window_s:
                self._times.popleft()
            if len(self._times) < self.max_connects:
                self._times.append(now)
                await trio.lowlevel.checkpoint()
                return
            wait = self._times[0] + self.window_s - now
            _log.warning("connection budget used up; waiting", wait_s=round(wait, 1))
            await trio.sleep(wait)


@dataclass(frozen=True, slots=True)
class FeedStatistics:
    """Counters and state of the feed actor.

    ``closes`` counts ended sessions by kind (``close_1006``, ``stale``, ``connect_failed``…);
    ``rejections`` counts rejected frames and rows by reason. Times are Unix seconds.
    """

    connected: bool
    sessions: int
    connect_attempts: int
    closes: dict[str, int]
    trades: int
    candle_updates: int
    snapshot_trades: int
    rejections: dict[str, int]
    catch_ups_requested: int
    failed_subscriptions: dict[str, str]
    subscribed_since: float | None
    last_message_at: float | None
    lag_s: float | None  # how far the newest trade frame lagged Kraken's time (None: offline)
    down_since: float | None  # when the feed last lost (or never had) its connection
    last_trade_at: dict[str, float]
    trades_by_symbol: dict[str, int]  # trades received per symbol, snapshots included
    system_status: str | None
    connections: int = 1  # WebSocket connections the symbols are spread over


class Feed:
    """The live WebSocket feed; ``run`` is the supervised child (see the module docs).

    Counters live on the object and survive restarts of ``run``.
    """

    def __init__(
        self,
        url: str,
        symbols: Sequence[str],
        registry: SymbolRegistry,
        trades: Channel[LiveItem],
        candles: Channel[Candle],
        *,
        catch_up: CatchUpSink,
        loss: Callable[[], int],
        publish: LivePublisher | None = None,
        stale_after_s: float = 10.0,
        ping_interval_s: float = 15.0,
        mark_interval_s: float = 1.0,
        claim_rule: ClaimRule | None = None,
        backoff: Backoff | None = None,
        max_connects: int = 140,
        connect_window_s: float = 600.0,
        connect_budget: ConnectBudget | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.symbols = tuple(registry.canonical(s) for s in symbols)
        self.registry = registry
        self._trades = trades
        self._candles = candles
        self._catch_up = catch_up
        self._loss = loss
        self._publish = publish
        self.stale_after_s = stale_after_s
        self.ping_interval_s = ping_interval_s
        self.mark_interval_s = mark_interval_s
        self.claim_rule = claim_rule if claim_rule is not None else ClaimRule()
        # Kraken: reconnect at once after a random drop, but wait at least 5 s when it keeps
        # failing (maintenance, long outage); the delays reach 5 s on the fourth attempt.
        self._backoff = backoff if backoff is not None else Backoff(0.5, 60.0)
        # 150 attempts per 10 minutes per IP is Cloudflare's ban threshold; stay below it.
        self._budget = connect_budget or ConnectBudget(max_connects, connect_window_s)
        self._clock = clock
        self._connected = False
        self._down_since: float | None = clock()  # it starts without a connection
        self._sessions = 0
        self._attempts = 0
        self._closes: Counter[str] = Counter()
        self._trade_count = 0
        self._candle_count = 0
        self._snapshot_trades = 0
        self._rejections: Counter[str] = Counter()
        self._catch_ups = 0
        self._failed: dict[str, str] = {}
        self._subscribed_since: float | None = None
        self._last_message_at: float | None = None
        self._last_trade_at: dict[str, float] = {}
        self._trades_by_symbol: Counter[str] = Counter()
        self._system: str | None = None
        self._immediate_retry = False
        self._claims: Claims | None = None

    def _set_connected(self, connected: bool) -> None:
        if connected:
            self._down_since = None
        elif self._down_since is None:
            self._down_since = self._clock()
        self._connected = connected
        statistics_changed.notify()

    def statistics(self) -> FeedStatistics:
        """A snapshot of the feed's counters and connection state."""
        return FeedStatistics(
            connected=self._connected,
            sessions=self._sessions,
            connect_attempts=self._attempts,
            closes=dict(self._closes),
            trades=self._trade_count,
            candle_updates=self._candle_count,
            snapshot_trades=self._snapshot_trades,
            rejections=dict(self._rejections),
            catch_ups_requested=self._catch_ups,
            failed_subscriptions=dict(self._failed),
            subscribed_since=self._subscribed_since,
            last_message_at=self._last_message_at,
            lag_s=self._claims.lag_s if self._claims is not None and self._connected else None,
            down_since=self._down_since,
            last_trade_at=dict(self._last_trade_at),
            trades_by_symbol=dict(self._trades_by_symbol),
            system_status=self._system,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run sessions until asked to stop; reports started at once (connecting is retried)."""
        stopping = current_child_stopping()
        task_status.started()
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_when, stopping, scope)
                await self._sessions_forever()
        self._set_connected(False)
        _log.info("feed stopped", sessions=self._sessions)

    async def _sessions_forever(self) -> None:
        while True:
            await self._wait_for_connect_budget()
            delivered = False
            try:
                delivered = await self._session()
            except TransientError as exc:
                kind = _close_kind(exc)
                self._closes[kind] += 1
                self._set_connected(False)
                _log.warning("feed session ended", kind=kind, error=str(exc))
                delivered = self._immediate_retry
            except KrakenRequestError as exc:
                # Nothing could be subscribed: the same request will fail again until the
                # configuration or Kraken changes; keep trying, slowly.
                self._closes["subscription_failed"] += 1
                self._set_connected(False)
                _log.error("feed could not subscribe anything", error=str(exc))
                await trio.sleep(self._backoff.max_s)
                continue
            if delivered:
                self._backoff.reset()
                delay = 0.0
            else:
                delay = self._backoff.next_delay()
            self._immediate_retry = False
            if delay:
                await trio.sleep(delay)

    async def _wait_for_connect_budget(self) -> None:
        await self._budget.acquire()
        self._attempts += 1

    async def _session(self) -> bool:
        """One connection; returns/raises when it ends. True if it delivered data."""
        async with open_kraken_ws(
            self.url,
            self.symbols,
            self.registry,
            stale_after_s=self.stale_after_s,
            ping_interval_s=self.ping_interval_s,
        ) as conn:
            self._sessions += 1
            self._set_connected(True)  # notifies
            self._failed = dict(conn.failed_subscriptions)
            started = self._clock()
            self._subscribed_since = started
            self._last_message_at = started
            if self._sessions > 1:
                for symbol in sorted({symbol for channel, symbol in conn.subscribed}):
                    self._catch_ups += 1
                    self._catch_up.request(symbol)
                _log.info("feed reconnected; REST catch-up requested", session=self._sessions)
            else:
                _log.info("feed subscribed", symbols=self.symbols, failed=self._failed)
            try:
                await self._pump(conn, started)
            finally:
                self._set_connected(False)
        return True

    async def _pump(self, conn: KrakenWs, started: float) -> None:
        streams: list[tuple[str, Stream]] = [
            (symbol, "trades" if channel == "trade" else "candles")
            for channel, symbol in sorted(conn.subscribed)
        ]
        claims = self._claims = Claims(streams, int(started * 1e9), self.claim_rule)
        loss_before = self._loss()
        next_mark = trio.current_time() + self.mark_interval_s
        try:
            async with aclosing(conn.events()) as events:
                async for event in events:
                    now = self._clock()
                    self._last_message_at = now
                    received_ns = int(now * 1e9)
                    if isinstance(event, TradesEvent | CandlesEvent) and now - started >= 1.0:
                        # It has delivered for a while: a drop now is "random", retry at once.
                        self._immediate_retry = True
                    # Claimed only once queued: a stop that cancels a send half-way must not
                    # leave the final mark claiming what never reached the channel.
                    if isinstance(event, TradesEvent):
                        await self._on_trades(event, now)
                        claims.on_trades(event.trades, received_ns, snapshot=event.snapshot)
                    elif isinstance(event, CandlesEvent):
                        self._count_rejections(event.rejections)
                        self._candle_count += len(event.candles)
                        if self._publish is not None:
                            self._publish.publish_candles(event.candles)
                        await self._candles.send_many(event.candles)
                        claims.on_candles(event.candles, received_ns)
                    else:
                        claims.on_message(received_ns)
                        if isinstance(event, RejectedFrame):
                            self._count_rejections((event.rejection,))
                        elif isinstance(event, StatusEvent):
                            self._system = event.system
                            if event.system != "online":
                                _log.warning("Kraken engine status", system=event.system)
                    if trio.current_time() >= next_mark:
                        next_mark = trio.current_time() + self.mark_interval_s
                        loss_before = await self._mark(claims, received_ns, loss_before)
        finally:
            # Whatever ends the session (a close, staleness, a stop), claim what arrived, as of
            # the last message: nothing after it was received.
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                last_ns = int((self._last_message_at or started) * 1e9)
                await self._mark(claims, last_ns, loss_before)

    async def _on_trades(self, event: TradesEvent, now: float) -> None:
        self._count_rejections(event.rejections)
        if event.snapshot:
            self._snapshot_trades += len(event.trades)
        self._trade_count += len(event.trades)
        if self._publish is not None and not event.snapshot:
            self._publish.publish_trades(event.trades)
        # Counted per symbol, not per trade (Counter counts in C): this runs per frame.
        for symbol, count in Counter([trade.symbol for trade in event.trades]).items():
            self._last_trade_at[symbol] = now
            self._trades_by_symbol[symbol] += count
        await self._trades.send_many(event.trades)  # notifies

    async def _mark(self, claims: Claims, now_ns: int, loss_before: int) -> int:
        """Send the claims grown since the last mark; returns the loss count for the next.

        The count moves on only with a mark that was sent: a loss after the previous mark
        must void the next one that is sent, however many empty ticks lie between.
        """
        loss_now = self._loss()
        queue = self._trades.statistics()
        spans = claims.advance(now_ns, backlog=queue.depth > queue.capacity // 2)
        if not spans:
            return loss_before
        await self._trades.send(CoverageMark(spans, loss_before))
        return loss_now

    def _count_rejections(self, rejections: Sequence[RejectedInput]) -> None:
        if rejections:
            statistics_changed.notify()
        for rejection in rejections:
            self._rejections[rejection.reason] += 1
            count = self._rejections[rejection.reason]
            if count <= _LOG_FIRST_REJECTIONS or count % _LOG_EVERY_REJECTION == 0:
                _log.warning(
                    "rejected live input",
                    reason=rejection.reason,
                    detail=rejection.detail,
                    where=rejection.where,
                    count=count,
                )


def _close_kind(exc: Exception) -> str:
    """The ``closes`` key of a session that ended with ``exc``."""
    if isinstance(exc, ConnectionClosed):
        return f"close_{exc.code}" if exc.code is not None else "close_unknown"
    if isinstance(exc, StaleConnection):
        return "stale"
    # A plain KrakenError is a failed connect; its other subclasses, and any other transient
    # error, are counted under their own class name.
    if type(exc) is KrakenError:
        return "connect_failed"
    return type(exc).__name__
