"""Tests for histdata.actors.buffer: batching by size and age, candle finality, coverage."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import trio
import trio.testing

from histdata.actors.buffer import Batch, Buffer, CoverageMark, LiveItem, live_weight
from histdata.model import Candle, CoverageSpan, Trade
from histdata.supervisor import Channel, ChildSpec, Overflow, Supervisor

MINUTE = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def trade(i: int) -> Trade:
    return Trade(
        "BTC/USD", 1_714_564_800_000_000_000 + i, Decimal("100.5"), Decimal(1), None, None, i
    )


def candle(minute: int, close: str, trades: int = 1) -> Candle:
    price = Decimal(close)
    return Candle(
        "BTC/USD",
        MINUTE + timedelta(minutes=minute),
        price,
        price,
        price,
        price,
        Decimal(1),
        price,
        trades,
        final=False,
    )


class Rig:
    def __init__(self, *, batch_size: int = 10, batch_age_s: float = 0.5) -> None:
        self.trades: Channel[LiveItem] = Channel("t", 1000, Overflow.BLOCK, weight=live_weight)
        self.candles: Channel[Candle] = Channel("c", 1000, Overflow.BLOCK)
        self.batches: Channel[Batch] = Channel("b", 100, Overflow.BLOCK, weight=len)
        self.loss = 0
        self.now = MINUTE.timestamp()
        self.buffer = Buffer(
            self.trades,
            self.candles,
            self.batches,
            batch_size=batch_size,
            batch_age_s=batch_age_s,
            loss=lambda: self.loss,
            final_grace_s=2.0,
            clock=lambda: self.now,
        )
        self.supervisor = Supervisor("test", [ChildSpec("buffer", self.buffer.run)])

    def received(self) -> list[Batch]:
        out: list[Batch] = []
        while True:
            try:
                out.append(self.batches.receive_nowait())
            except trio.WouldBlock:
                return out


@pytest.fixture
async def rig_factory() -> AsyncIterator[Callable[..., trio.Nursery]]:
    async with trio.open_nursery() as nursery:
        yield lambda: nursery
        nursery.cancel_scope.cancel()


async def started(nursery: trio.Nursery, **kwargs: float) -> Rig:
    rig = Rig(batch_size=int(kwargs["batch_size"]), batch_age_s=kwargs["batch_age_s"])
    await nursery.start(rig.supervisor.run)
    return rig


class TestBatching:
    async def test_cuts_by_size(
        self, rig_factory: Callable[[], trio.Nursery], autojump_clock: trio.testing.MockClock
    ) -> None:
        """Full batches of batch_size trades go out at once, in order."""
        rig = await started(rig_factory(), batch_size=10, batch_age_s=60)
        for i in range(25):
            await rig.trades.send(trade(i))
        await trio.sleep(1)
        batches = rig.received()
        assert [len(b) for b in batches] == [10, 10]
        assert [t.trade_id for b in batches for t in b.trades] == list(range(20))
        rig.supervisor.shutdown()

    async def test_cuts_by_age(
        self, rig_factory: Callable[[], trio.Nursery], autojump_clock: trio.testing.MockClock
    ) -> None:
        """A partial batch goes out once its oldest trade is batch_age_s old, not before."""
        rig = await started(rig_factory(), batch_size=1000, batch_age_s=0.5)
        await rig.trades.send(trade(1))
        await trio.sleep(0.2)
        assert rig.received() == []
        await trio.sleep(1.0)
        assert [len(b) for b in rig.received()] == [1]
        rig.supervisor.shutdown()

    async def test_stop_drains_queue(
        self, rig_factory: Callable[[], trio.Nursery], autojump_clock: trio.testing.MockClock
    ) -> None:
        """On stop, everything still queued on the input channel is sent as a batch."""
        rig = await started(rig_factory(), batch_size=1000, batch_age_s=60)
        for i in range(7):
            rig.trades.send_nowait(trade(i))
        rig.supervisor.shutdown()
        await trio.sleep(1)
        assert sum(len(b) for b in rig.received()) == 7

    async def test_stop_hands_leftovers_to_fallback(
        self, rig_factory: Callable[[], trio.Nursery], autojump_clock: trio.testing.MockClock
    ) -> None:
        """If the flusher takes nothing within the stop budget, the rest goes to the fallback."""
        kept: list[Batch] = []

        def keep(batch: Batch) -> bool:
            kept.append(batch)
            return True

        trades: Channel[LiveItem] = Channel("t", 100, Overflow.BLOCK, weight=live_weight)
        batches: Channel[Batch] = Channel("b", 1, Overflow.BLOCK, weight=len)
        batches.send_nowait(Batch())  # full: nobody consumes
        buffer = Buffer(
            trades,
            Channel("c", 10, Overflow.BLOCK),
            batches,
            batch_size=5,
            batch_age_s=60,
            loss=lambda: 0,
            fallback=keep,
            stop_send_budget_s=1.0,
        )
        supervisor = Supervisor("test", [ChildSpec("buffer", buffer.run, shutdown_timeout_s=10)])
        nursery = rig_factory()
        await nursery.start(supervisor.run)
        for i in range(12):
            trades.send_nowait(trade(i))
        supervisor.shutdown()
        await trio.sleep(5)
        assert sum(len(b) for b in kept) == 12


class TestCandles:
    async def test_updates_coalesce_and_later_minute_finalizes(
        self, rig_factory: Callable[[], trio.Nursery], autojump_clock: trio.testing.MockClock
    ) -> None:
        """Updates of one minute coalesce; a later interval_begin writes the earlier one final."""
        rig = await started(rig_factory(), batch_size=1000, batch_age_s=0.5)
        await rig.candles.send(candle(0, "1", 1))
        await rig.candles.send(candle(0, "2", 2))
        await rig.candles.send(candle(1, "3", 1))
        await trio.sleep(1)
        (batch,) = rig.received()
        by_time = {c.time: c for c in batch.candles}
        assert by_time[MINUTE].final is True
        assert by_time[MINUTE].close == Decimal(2)
        assert by_time[MINUTE + timedelta(minutes=1)].final is False
        rig.supervisor.shutdown()

    async def test_end_passed_finalizes(
        self, rig_factory: Callable[[], trio.Nursery], autojump_clock: trio.testing.MockClock
    ) -> None:
        """An in-progress candle is written final once its end has passed (plus a grace)."""
        rig = await started(rig_factory(), batch_size=1000, batch_age_s=0.5)
        await rig.candles.send(candle(0, "1"))
        await trio.sleep(1)
        assert [c.final for b in rig.received() for c in b.candles] == [False]
        rig.now = (MINUTE + timedelta(minutes=1, seconds=3)).timestamp()
        await trio.sleep(2)
        assert [c.final for b in rig.received() for c in b.candles] == [True]
        assert rig.buffer.statistics().open_candles == 0
        rig.supervisor.shutdown()


class TestCoverage:
    async def test_mark_withheld_after_loss(
        self, rig_factory: Callable[[], trio.Nursery], autojump_clock: trio.testing.MockClock
    ) -> None:
        """A coverage mark is recorded when nothing was lost, and withheld when something was."""
        rig = await started(rig_factory(), batch_size=1000, batch_age_s=0.5)
        span = (("BTC/USD", CoverageSpan("trades", "live", MINUTE, MINUTE + timedelta(seconds=1))),)
        await rig.trades.send(CoverageMark(span, loss_before=0))
        await trio.sleep(0.1)
        rig.loss = 1
        await rig.trades.send(CoverageMark(span, loss_before=0))
        await trio.sleep(1)
        assert [len(b.coverage) for b in rig.received()] == [1]
        stats = rig.buffer.statistics()
        assert (stats.marks_recorded, stats.marks_discarded) == (1, 1)
        rig.supervisor.shutdown()
