"""The flusher actor: writes the buffer's batches to the database, or to the journal.

Per batch, in order:

- The batch taken is merged with the batches queued behind it, up to ``max_batch_trades``:
  a database that falls behind gets fewer, larger writes (backpressure), and the backlog
  stays in the ``live.trades`` channel, whose spill sink declines while the database is up
  (see :attr:`Flusher.database_up`): spilling a backlog the database could still take cost
  a second write path's CPU and made the service slower.
- The batch is split by symbol into ``writers`` disjoint parts of about equal size,
  written concurrently over as many pooled connections; the next batch waits for all of
  them, so each symbol's trades, candles and coverage still reach the database in order,
  and each part carries only its own symbols' coverage, in the transaction of the trades
  it covers.
- While the database answers, each part is written directly: trades (with the trade-stream
  coverage, in one transaction) and then the 1-minute candles (with the candle-stream
  coverage).
- When a write raises :class:`~histdata.errors.DatabaseUnavailable`, the batch goes to the
  disk journal at once, and so does every batch after it while the database is down: nothing
  waits in memory for the database to return, so memory stays flat through an outage of any
  length.
- A replay task writes the journal back (retrying with a jittered backoff from ``retry_s``).
  Its first successful write marks the database up again, and from then on new batches go
  straight to the database *beside* the replay: a backlog drains at the database's spare
  rate instead of every new batch queueing behind it (under sustained load a journal that
  also takes every new batch may never drain). Batches may so reach the database out of
  order, which writes allow: trades and coverage are idempotent sets, and a candle row is
  only ever replaced by a later or final version (a stale in-progress version replayed over
  a newer one is corrected by the next live update of that minute).
- A batch the database refuses for any other reason (a bug, not an outage) would fail the
  same way on every retry; it is set aside in ``journal/quarantine`` with a loud log instead of
  blocking the live path or being lost.

On stop the flusher drains its input channel, writes what it can within
``stop_write_budget_s`` and journals the rest; the journal is replayed at the next start.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
import trio

from histdata.actors.buffer import Batch, merge_batches
from histdata.actors.journal import Journal
from histdata.errors import DatabaseUnavailable
from histdata.model import Candle, CoverageSpan, LiveTrade, Trade
from histdata.storage import Storage
from histdata.storage.candles import write_candles
from histdata.storage.trades import write_trades
from histdata.supervisor import Backoff, Channel, cancel_when, current_child_stopping
from histdata.supervisor.changes import statistics_changed

__all__ = ["Flusher", "FlusherStatistics"]

_log = structlog.get_logger("histdata.actors.flusher", actor="flusher")
# How often journaled spill writes are fsynced (the power-cut window of the spill path).
_SYNC_INTERVAL_S = 0.2


@dataclass(frozen=True, slots=True)
class FlusherStatistics:
    """Counters of the flusher actor."""

    batches_written: int
    trades_inserted: int  # trades written that were new to the database, replays included
    trades_present: int  # trades written that the database already held (e.g. a replay)
    candles_written: int
    batches_journaled: int
    trades_journaled: int
    replays: int
    trades_replayed: int
    quarantined_batches: int
    write_failures: int
    database_up: bool
    journaling: bool
    last_progress_at: float | None  # Unix time of the last write or journal append
    last_error: str | None


class Flusher:
    """Writes batches via a :class:`Storage` with the journal as fallback (see module docs).

    ``storage`` returns the open Storage, raising :class:`DatabaseUnavailable` while there is
    none. ``run`` is the supervised child; counters survive restarts.
    """

    def __init__(
        self,
        batches: Channel[Batch],
        storage: Callable[[], Storage],
        journal: Journal,
        *,
        retry_s: float = 1.0,
        max_retry_s: float = 30.0,
        group_trades: int = 5000,
        max_batch_trades: int = 20_000,
        writers: int = 1,
        stop_write_budget_s: float = 2.0,
        observe_write: Callable[[float], None] | None = None,
    ) -> None:
        self._batches = batches
        self._storage = storage
        self.journal = journal
        self._backoff = Backoff(retry_s, max(retry_s, max_retry_s))
        self._group_trades = group_trades
        self._max_batch_trades = max_batch_trades
        self._writers = max(1, writers)
        self._stop_budget_s = stop_write_budget_s
        self._observe_write = observe_write
        self._wake = trio.Event()
        self._database_up = True
        self._handling = False
        self._batches_written = 0
        self._trades_present = 0
        self._trades_inserted = 0
        self._candles_written = 0
        self._batches_journaled = 0
        self._trades_journaled = 0
        self._replays = 0
        self._trades_replayed = 0
        self._quarantined = 0
        self._failures = 0
        self._last_progress_at: float | None = None
        self._busy_since: float | None = None  # when the batch in hand was taken
        self._started_at = time.time()
        self._last_error: str | None = None

    def statistics(self) -> FlusherStatistics:
        """A snapshot of the flusher's counters and state."""
        return FlusherStatistics(
            batches_written=self._batches_written,
            trades_present=self._trades_present,
            trades_inserted=self._trades_inserted,
            candles_written=self._candles_written,
            batches_journaled=self._batches_journaled,
            trades_journaled=self._trades_journaled,
            replays=self._replays,
            trades_replayed=self._trades_replayed,
            quarantined_batches=self._quarantined,
            write_failures=self._failures,
            database_up=self._database_up,
            journaling=not self.journal.empty,
            last_progress_at=self._last_progress_at,
            last_error=self._last_error,
        )

    @property
    def database_up(self) -> bool:
        """False from a write that found the database unavailable until a write succeeds."""
        return self._database_up

    def healthy(self, *, stall_s: float) -> bool:
        """True while the flusher is idle or made progress within ``stall_s`` seconds.

        Progress is a database write or a journal append, so an outage that is being
        journaled is healthy; a flusher stuck on a batch for ``stall_s`` is not.
        """
        if not self._handling and self._batches.statistics().depth == 0:
            return True
        # A flusher that just took its first batch has made no progress yet but is not stuck.
        since = max(t for t in (self._last_progress_at, self._busy_since, self._started_at) if t)
        return time.time() - since < stall_s

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write batches until asked to stop, then drain (see the module docs)."""
        stopping = current_child_stopping()
        try:
            await self._run(stopping, task_status)
        finally:
            # Cancelled at the stop deadline (a write stalled): what is still queued goes to
            # the journal without waiting (page cache; a kill keeps it, fsynced at next sync).
            self._journal_queued_nowait()
        await self.journal.sync()
        _log.info("flusher stopped", journal_bytes=self.journal.bytes)

    async def _run(self, stopping: trio.Event, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._replayer)
            nursery.start_soon(self._syncer)
            task_status.started()
            # A stop ends the wait for the next batch, never a write in progress: that one
            # finishes, or the stop deadline cancels it and it is journaled (see _handle).
            while (batch := await self._next_batch(stopping)) is not None:
                await self._handle(self._with_queued(batch))
            # Stop requested: everything upstream has stopped and flushed into our channel.
            with trio.move_on_after(self._stop_budget_s) as budget:
                await self._drain(direct=True)
            if budget.cancelled_caught:
                await self._drain(direct=False)
            nursery.cancel_scope.cancel()

    def _journal_queued_nowait(self) -> None:
        while True:
            try:
                batch = self._batches.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            self._journal_nowait(batch)

    def _journal_nowait(self, batch: Batch) -> None:
        """Journal ``batch`` without waiting (page cache; fsynced by the next sync)."""
        if self.journal.append_nowait(batch):
            self._batches_journaled += 1
            self._trades_journaled += len(batch.trades)
            statistics_changed.notify()

    async def _next_batch(self, stopping: trio.Event) -> Batch | None:
        """The next batch, or None once ``stopping`` is set (or the channel closed)."""
        got: Batch | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_when, stopping, nursery.cancel_scope)
            with contextlib.suppress(trio.EndOfChannel):
                got = await self._batches.receive()
            nursery.cancel_scope.cancel()
        return got

    def _with_queued(self, batch: Batch) -> Batch:
        """``batch`` merged with those queued behind it, up to about ``max_batch_trades``."""
        group, trades = [batch], len(batch.trades)
        while trades < self._max_batch_trades:
            try:
                queued = self._batches.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            group.append(queued)
            trades += len(queued.trades)
        return batch if len(group) == 1 else merge_batches(group)

    def _split(self, batch: Batch) -> list[Batch]:
        """``batch`` as up to ``writers`` parts of disjoint symbols, about equal in trades.

        A symbol's trades, candles and coverage stay in one part (its coverage commits with
        its trades). Symbols go, busiest first, to the part with the fewest trades so far:
        the next batch waits for the slowest part, and a split by a hash of the name put
        three of four equally busy symbols on one writer (75% of the trades on the critical
        path, the other writer idle). Any assignment keeps each symbol's writes in order,
        because no two batches are written at once.
        """
        if self._writers == 1:
            return [batch]
        weight: dict[str, int] = {}
        for trade in batch.trades:
            weight[trade.symbol] = weight.get(trade.symbol, 0) + 1
        for candle in batch.candles:
            weight.setdefault(candle.symbol, 0)
        for symbol, _ in batch.coverage:
            weight.setdefault(symbol, 0)
        load = [0] * self._writers
        part_of: dict[str, int] = {}
        for symbol in sorted(weight, key=lambda s: (-weight[s], s)):
            index = load.index(min(load))
            part_of[symbol] = index
            load[index] += weight[symbol] + 1  # +1: a symbol with no trades still costs a write
        trades: list[list[Trade | LiveTrade]] = [[] for _ in range(self._writers)]
        candles: list[list[Candle]] = [[] for _ in range(self._writers)]
        coverage: list[list[tuple[str, CoverageSpan]]] = [[] for _ in range(self._writers)]
        for trade in batch.trades:
            trades[part_of[trade.symbol]].append(trade)
        for candle in batch.candles:
            candles[part_of[candle.symbol]].append(candle)
        for symbol, span in batch.coverage:
            coverage[part_of[symbol]].append((symbol, span))
        parts = [
            Batch(tuple(t), tuple(c), tuple(v))
            for t, c, v in zip(trades, candles, coverage, strict=True)
        ]
        return [part for part in parts if not part.empty]

    async def _drain(self, *, direct: bool) -> None:
        while True:
            try:
                batch = self._batches.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            if direct:
                await self._handle(batch)
            else:
                await self._journal(batch)

    # -- one batch ----------------------------------------------------------------------

    async def _handle(self, batch: Batch) -> None:
        self._handling = True
        self._busy_since = time.time()
        try:
            parts = self._split(batch)
            if len(parts) == 1:
                await self._handle_part(parts[0])
                return
            async with trio.open_nursery() as nursery:
                for part in parts:
                    nursery.start_soon(self._handle_part, part)
        finally:
            self._handling = False
            self._busy_since = None

    async def _handle_part(self, batch: Batch) -> None:
        if not self._database_up:
            await self._journal(batch)
            return
        try:
            await self._write(batch)
        except DatabaseUnavailable as exc:
            self._database_down(exc)
            await self._journal(batch)
        except Exception as exc:
            await self._quarantine(batch, exc)
        except trio.Cancelled:
            # The stop deadline passed mid-write (a stalled statement; the thread is
            # abandoned): keep the batch in the journal. If the write did commit after
            # all, its replay adds nothing.
            self._journal_nowait(batch)
            raise

    async def _write(self, batch: Batch) -> None:
        storage = self._storage()
        began = time.monotonic()
        trade_cover = [(s, span) for s, span in batch.coverage if span.stream == "trades"]
        candle_cover = [(s, span) for s, span in batch.coverage if span.stream == "candles"]
        inserted = 0
        if batch.trades or trade_cover:
            result = await write_trades(storage, batch.trades, source="live", coverage=trade_cover)
            inserted = result.inserted
        if batch.candles or candle_cover:
            await write_candles(storage, batch.candles, coverage=candle_cover)
        if self._observe_write is not None:
            self._observe_write(time.monotonic() - began)
        self._batches_written += 1
        self._trades_inserted += inserted
        self._trades_present += len(batch.trades) - inserted
        self._candles_written += len(batch.candles)
        self._last_progress_at = time.time()
        statistics_changed.notify()

    async def _journal(self, batch: Batch) -> None:
        if await self.journal.append(batch):
            self._batches_journaled += 1
            self._trades_journaled += len(batch.trades)
        self._last_progress_at = time.time()
        statistics_changed.notify()
        self._wake.set()

    def _database_down(self, exc: Exception) -> None:
        self._failures += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        if self._database_up:
            _log.warning("database unavailable; journaling batches", error=str(exc))
        self._database_up = False
        self._wake.set()
        statistics_changed.notify()

    async def _quarantine(self, batch: Batch, exc: Exception) -> None:
        self._quarantined += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        directory = self.journal.directory / "quarantine"
        _log.error(
            "database refused a batch; quarantined for inspection",
            trades=len(batch.trades),
            candles=len(batch.candles),
            directory=str(directory),
            exc_info=exc,
        )
        quarantine = Journal(directory, max_bytes=self.journal.max_bytes)
        await quarantine.append(batch)
        await quarantine.aclose()
        statistics_changed.notify()

    # -- replay -------------------------------------------------------------------------

    async def _replayer(self) -> None:
        """Replay the journal whenever it holds records, backing off while the database is down."""
        while True:
            if self.journal.empty:
                self._database_up = True
                self._backoff.reset()
                statistics_changed.notify()
                # The channel's spill path appends to the journal without passing through the
                # flusher, so look again at least as often as spilled records are synced.
                with trio.move_on_after(_SYNC_INTERVAL_S):
                    await self._wake.wait()
                self._wake = trio.Event()
                continue
            try:
                self._replays += 1
                replayed = await self.journal.replay(
                    self._replay_batch, group_trades=self._group_trades
                )
            except DatabaseUnavailable as exc:
                self._database_down(exc)
                delay = self._backoff.next_delay()
                with trio.move_on_after(delay):
                    await trio.sleep_forever()
                continue
            except Exception as exc:
                # Not an outage: the journal holds a batch the database refuses. Leave the
                # journal in place for an operator rather than spin on it.
                self._last_error = f"{type(exc).__name__}: {exc}"
                _log.error("journal replay failed; will retry", exc_info=exc)
                await trio.sleep(self._backoff.max_s)
                continue
            if replayed:
                _log.info("journal replayed", trades=replayed)

    async def _replay_batch(self, batch: Batch) -> None:
        # Counted per batch: under sustained load one replay pass can run for minutes, and
        # status must show the database up and the replay moving meanwhile.
        await self._write(batch)
        self._database_up = True
        self._trades_replayed += len(batch.trades)
        statistics_changed.notify()

    async def _syncer(self) -> None:
        """Fsync spilled records regularly (the spill path appends without waiting)."""
        while True:
            await trio.sleep(_SYNC_INTERVAL_S)
            await self.journal.sync()
