"""The buffer actor: turns the feed's stream of trades and candle updates into write batches.

Between the feed and the flusher sit two :class:`~histdata.supervisor.Channel`\\s that the
service creates (they outlive restarts of either end):

- ``live.trades`` carries :class:`~histdata.model.LiveTrade`\\s (or
  :class:`~histdata.model.Trade`\\s) and :class:`CoverageMark`\\s. Its capacity and overflow
  policy come from ``[live] buffer_capacity`` and ``overflow``; under
  ``spill`` what does not fit goes to the disk journal (:mod:`histdata.actors.journal`).
- ``live.candles`` carries the live 1-minute candle updates (Kraken re-emits the whole
  cumulative candle on every trade).

The buffer cuts a :class:`Batch` when it holds ``batch_size`` trades or when its oldest item is
``batch_age_s`` old, and sends it to the flusher over a BLOCK channel: a slow database stalls
the buffer, the ``live.trades`` channel fills, and *its* overflow policy decides what happens.
Memory is bounded by the channel capacities plus one batch.

Candles: updates of the same minute coalesce (the last version wins). A candle becomes final
when a later ``interval_begin`` of its symbol arrives or when its end has passed by
``final_grace_s``; the final version is then written once more with ``final=True``.

Coverage: the feed sends a :class:`CoverageMark` about once a second with the spans it has
observed since the previous mark. A mark is recorded only when nothing on the live path was
lost between the previous mark's send and this mark's arrival (``loss()`` unchanged), so a
dropped trade always leaves its stretch uncovered and the gap filler will see the hole.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime

import structlog
import trio

from histdata.model import Candle, CoverageSpan, LiveTrade, Trade
from histdata.supervisor import Channel, current_child_stopping

__all__ = [
    "Batch",
    "Buffer",
    "BufferStatistics",
    "CoverageMark",
    "LiveItem",
    "live_weight",
    "merge_batches",
]

_log = structlog.get_logger("histdata.actors.buffer", actor="buffer")


@dataclass(frozen=True, slots=True)
class CoverageMark:
    """The feed observed ``spans`` (per symbol and stream) of one live session.

    ``loss_before`` is the live path's loss counter when the feed sent the previous mark of
    the session (or subscribed); the buffer records the spans only if the counter has not
    moved since.
    """

    spans: tuple[tuple[str, CoverageSpan], ...]
    loss_before: int


LiveItem = Trade | LiveTrade | CoverageMark


@dataclass(frozen=True, slots=True)
class Batch:
    """One write: trades, 1-minute candles (last version per minute) and coverage spans."""

    trades: tuple[Trade | LiveTrade, ...] = ()
    candles: tuple[Candle, ...] = ()
    coverage: tuple[tuple[str, CoverageSpan], ...] = ()

    def __len__(self) -> int:
        """The number of trades (the batch's weight on a channel)."""
        return len(self.trades)

    @property
    def empty(self) -> bool:
        """True when there is nothing to write."""
        return not (self.trades or self.candles or self.coverage)


def merge_batches(batches: Iterable[Batch]) -> Batch:
    """Consecutive batches as one write: trades in order, the latest version of each candle,
    and the coverage after all of them (coverage never moves ahead of trades it follows)."""
    trades: list[Trade | LiveTrade] = []
    candles: dict[tuple[str, datetime], Candle] = {}
    coverage: list[tuple[str, CoverageSpan]] = []
    for batch in batches:
        trades.extend(batch.trades)
        for candle in batch.candles:
            candles.pop((candle.symbol, candle.time), None)  # keep the latest, in order
            candles[(candle.symbol, candle.time)] = candle
        coverage.extend(batch.coverage)
    return Batch(tuple(trades), tuple(candles.values()), tuple(coverage))


def live_weight(item: LiveItem) -> int:
    """Channel weight of a ``live.trades`` item: a trade counts 1, a mark 0."""
    return 0 if isinstance(item, CoverageMark) else 1


@dataclass(frozen=True, slots=True)
class BufferStatistics:
    """Counters of the buffer actor."""

    batches: int
    trades: int
    candle_updates: int
    candles_finalized: int
    marks_recorded: int
    marks_discarded: int  # coverage withheld because something was lost on the live path
    pending_trades: int
    pending_candles: int
    open_candles: int


class Buffer:
    """Batches the live stream; ``run`` is a supervised child (restartable, state kept).

    Everything received but not yet handed to the flusher lives on this object, so a
    restarted incarnation carries on with it. ``fallback(batch)`` keeps what is left at a
    stop that the flusher could not take in time and returns whether it was kept.
    """

    def __init__(
        self,
        trades: Channel[LiveItem],
        candles: Channel[Candle],
        batches: Channel[Batch],
        *,
        batch_size: int,
        batch_age_s: float,
        loss: Callable[[], int],
        final_grace_s: float = 2.0,
        fallback: Callable[[Batch], bool] | None = None,
        stop_send_budget_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._trades_in = trades
        self._candles_in = candles
        self._batches = batches
        self.batch_size = batch_size
        self.batch_age_s = batch_age_s
        self.final_grace_s = final_grace_s
        self._loss = loss
        self._fallback = fallback
        self.stop_send_budget_s = stop_send_budget_s
        self._clock = clock
        self._trades: list[Trade | LiveTrade] = []
        self._candles: dict[tuple[str, datetime], Candle] = {}
        self._coverage: list[tuple[str, CoverageSpan]] = []
        self._open: dict[str, Candle] = {}  # the in-progress candle per symbol
        self._oldest_at: float | None = None  # trio time the oldest pending item arrived
        self._emit_lock = trio.Lock()
        self._batches_sent = 0
        self._trades_seen = 0
        self._candle_updates = 0
        self._finalized = 0
        self._marks_recorded = 0
        self._marks_discarded = 0

    def statistics(self) -> BufferStatistics:
        """A snapshot of the counters and of what is pending."""
        return BufferStatistics(
            batches=self._batches_sent,
            trades=self._trades_seen,
            candle_updates=self._candle_updates,
            candles_finalized=self._finalized,
            marks_recorded=self._marks_recorded,
            marks_discarded=self._marks_discarded,
            pending_trades=len(self._trades),
            pending_candles=len(self._candles),
            open_candles=len(self._open),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Batch until asked to stop; then drain both input channels and send the rest.

        The feed is stopped before the buffer, so draining what is queued at that point
        loses nothing. What the flusher does not take within ``stop_send_budget_s`` goes to
        ``fallback`` (the journal's ``append_nowait``), so a stop meets its deadline.
        """
        stopping = current_child_stopping()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump_trades)
            nursery.start_soon(self._pump_candles)
            nursery.start_soon(self._tick)
            task_status.started()
            await stopping.wait()
            nursery.cancel_scope.cancel()
        self._drain_nowait()
        self._finalize_due()
        with trio.move_on_after(self.stop_send_budget_s):
            while self._trades or self._candles or self._coverage:
                await self._emit()
        if self._trades or self._candles or self._coverage:
            self._leftovers_to_fallback()
        _log.info("buffer drained", batches=self._batches_sent)

    def _leftovers_to_fallback(self) -> None:
        """The flusher did not take everything in time: hand the rest to ``fallback``."""
        leftover = Batch(tuple(self._trades), tuple(self._candles.values()), tuple(self._coverage))
        kept = self._fallback(leftover) if self._fallback is not None else False
        _log.warning(
            "buffer stopped with data the flusher did not take",
            trades=len(leftover.trades),
            candles=len(leftover.candles),
            kept_in_journal=kept,
        )
        self._trades.clear()
        self._candles.clear()
        self._coverage.clear()
        self._oldest_at = None

    # -- input ----------------------------------------------------------------------------

    async def _pump_trades(self) -> None:
        while True:
            try:
                items = await self._trades_in.receive_batch(self.batch_size)
            except trio.EndOfChannel:
                return
            # Everything taken is held before any await: a stop during _emit loses nothing.
            for item in items:
                self._take(item)
            while len(self._trades) >= self.batch_size:
                await self._emit()

    async def _pump_candles(self) -> None:
        while True:
            try:
                candles = await self._candles_in.receive_batch(self.batch_size)
            except trio.EndOfChannel:
                return
            for candle in candles:
                self._take_candle(candle)
            if len(self._candles) >= self.batch_size:
                await self._emit()

    async def _tick(self) -> None:
        period = min(self.batch_age_s, 1.0)
        while True:
            await trio.sleep(period)
            self._finalize_due()
            if self._oldest_at is not None and (
                trio.current_time() - self._oldest_at >= self.batch_age_s
            ):
                await self._emit()

    def _drain_nowait(self) -> None:
        for source in (self._trades_in, self._candles_in):
            while True:
                try:
                    item = source.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if isinstance(item, Candle):
                    self._take_candle(item)
                else:
                    self._take(item)

    def _touch(self) -> None:
        if self._oldest_at is None:
            self._oldest_at = trio.current_time()

    def _take(self, item: LiveItem) -> None:
        self._touch()
        if not isinstance(item, CoverageMark):
            self._trades.append(item)
            self._trades_seen += 1
            return
        if self._loss() != item.loss_before:
            self._marks_discarded += 1
            _log.warning(
                "coverage withheld: items were lost on the live path",
                symbols=sorted({symbol for symbol, _ in item.spans}),
            )
            return
        self._marks_recorded += 1
        self._coverage.extend(item.spans)

    def _take_candle(self, candle: Candle) -> None:
        self._touch()
        self._candle_updates += 1
        current = self._open.get(candle.symbol)
        if current is None or candle.time > current.time:
            if current is not None:
                self._finalize(current)
            self._open[candle.symbol] = candle
            self._candles[(candle.symbol, candle.time)] = candle
        elif candle.time == current.time:
            self._open[candle.symbol] = candle
            self._candles[(candle.symbol, candle.time)] = candle
        else:
            # An older minute (a snapshot after a reconnect): a later one exists, so it is done.
            self._candles[(candle.symbol, candle.time)] = replace(candle, final=True)
            self._finalized += 1

    def _finalize(self, candle: Candle) -> None:
        self._candles[(candle.symbol, candle.time)] = replace(candle, final=True)
        self._finalized += 1

    def _finalize_due(self) -> None:
        """Finalize in-progress candles whose end has passed by ``final_grace_s``."""
        now = self._clock()
        for symbol, candle in list(self._open.items()):
            if candle.end.timestamp() + self.final_grace_s <= now:
                del self._open[symbol]
                self._touch()
                self._finalize(candle)

    # -- output ---------------------------------------------------------------------------

    async def _emit(self) -> None:
        """Send everything pending as one batch (under a lock, so batches keep their order).

        If the send is cancelled the items stay pending: nothing is lost by a stop request.
        """
        async with self._emit_lock:
            if not (self._trades or self._candles or self._coverage):
                self._oldest_at = None
                return
            trades = tuple(self._trades[: self.batch_size])
            candles = dict(self._candles)
            coverage = tuple(self._coverage)
            # Coverage rides with the last chunk of trades it follows, never ahead of them.
            rest = len(self._trades) > len(trades)
            batch = Batch(trades, tuple(candles.values()), () if rest else coverage)
            await self._batches.send(batch)
            del self._trades[: len(trades)]
            for key, candle in candles.items():
                if self._candles.get(key) is candle:
                    del self._candles[key]
            if not rest:
                del self._coverage[: len(coverage)]
            self._batches_sent += 1
            self._oldest_at = trio.current_time() if self._trades or self._candles else None
