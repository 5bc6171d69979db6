"""Gap repair after an outage, against the Kraken simulator and a real database (no mocks)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
import trio
from stored import stored_candles  # type: ignore[import-not-found]
from waiting import until  # type: ignore[import-not-found]

from histdata.actors.gapfiller import GapFiller
from histdata.kraken.ratelimit import RateLimiter
from histdata.kraken.rest import KrakenRest, open_kraken_rest
from histdata.model import Candle, CoverageSpan, Stream, Trade, ns_to_datetime
from histdata.repair import repair_symbol
from histdata.sim import SimConfig, open_simulator
from histdata.storage import Storage
from histdata.storage.candles import candle_mismatches, derive_candles, write_candles
from histdata.storage.continuity import id_holes
from histdata.storage.coverage import coverage_report, floor_to
from histdata.storage.trades import read_trades, write_trades
from histdata.supervisor.backoff import Backoff
from histdata.symbols import SymbolRegistry

REGISTRY = SymbolRegistry.shipped()
MIN = timedelta(minutes=1)


def key(trade: Trade) -> tuple[Any, ...]:
    return (trade.trade_id, trade.time_ns, trade.price, trade.volume)


def ohlcvt(candle: Candle) -> tuple[Any, ...]:
    return (
        candle.time,
        candle.open,
        candle.high,
        candle.low,
        candle.close,
        candle.volume,
        candle.trades,
    )


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    config = SimConfig(seed=5, symbols=("BTC/USD",), trade_rate_per_s=20.0, history_s=1800.0)
    async with open_simulator(config) as simulator:
        simulator.pause_trading()
        yield simulator


@pytest.fixture
async def rest(sim: Any) -> AsyncIterator[KrakenRest]:
    limiter = RateLimiter(rate_per_s=500.0, burst=20, penalty_base_s=0.01, penalty_max_s=0.1)
    async with open_kraken_rest(
        sim.rest_url, REGISTRY, limiter, timeout_s=5.0, backoff=Backoff(0.001, 0.01)
    ) as client:
        yield client


async def live_with_outage(
    sim: Any, storage: Storage, outage: tuple[datetime, datetime]
) -> tuple[datetime, datetime, list[Trade]]:
    """Store the simulator's history as the live path would, minus a WebSocket outage.

    Returns the observed range ``[start, end)`` (whole minutes) and the ground-truth trades.
    """
    truth = sim.market.trades("BTC/USD")
    start = floor_to(truth[0].time, MIN) + MIN
    end = floor_to(truth[-1].time, MIN)
    for low, high in ((start, outage[0]), (outage[1], end)):
        await write_trades(
            storage,
            [t for t in truth if low <= t.time < high],
            source="live",
            coverage=[("BTC/USD", CoverageSpan("trades", "live", low, high))],
        )
        await write_candles(
            storage,
            [c for c in sim.market.candles("BTC/USD") if low <= c.time and c.end <= high],
            coverage=[("BTC/USD", CoverageSpan("candles", "live", low, high))],
        )
    return start, end, [t for t in truth if start <= t.time < end]


async def stored_trades(storage: Storage, start: datetime, end: datetime) -> list[Trade]:
    return await read_trades(storage, "BTC/USD", start, end)


class TestRepair:
    async def test_outage_is_repaired_and_no_gaps_remain(
        self, sim: Any, rest: KrakenRest, storage: Storage
    ) -> None:
        """A few minutes of outage: every missed trade and candle is filled, no holes remain."""
        truth_end = sim.market.trades("BTC/USD")[-1].time
        outage = (floor_to(truth_end, MIN) - 9 * MIN, floor_to(truth_end, MIN) - 5 * MIN)
        start, end, truth = await live_with_outage(sim, storage, outage)
        before = await coverage_report(storage, "BTC/USD", "trades", start, end)
        assert [(h.start, h.end) for h in before.holes] == [outage]
        sim.faults.throttle_next(2)
        result = await repair_symbol(storage, rest, "BTC/USD", start, end)
        assert result.trade_holes == 1
        assert result.trades_inserted == sum(1 for t in truth if outage[0] <= t.time < outage[1])
        assert [key(t) for t in await stored_trades(storage, start, end)] == [key(t) for t in truth]
        expected = [
            ohlcvt(c) for c in sim.market.candles("BTC/USD") if start <= c.time and c.end <= end
        ]
        got = [ohlcvt(c) for c in await stored_candles(storage, "BTC/USD", start, end)]
        assert got == expected
        assert result.mismatches == []
        streams: tuple[Stream, ...] = ("trades", "candles")
        for stream in streams:
            report = await coverage_report(storage, "BTC/USD", stream, start, end)
            assert report.holes == [], stream

    async def test_repeat_repair_adds_nothing(
        self, sim: Any, rest: KrakenRest, storage: Storage
    ) -> None:
        """A second repair of the same range finds no hole and writes nothing."""
        truth_end = sim.market.trades("BTC/USD")[-1].time
        outage = (floor_to(truth_end, MIN) - 4 * MIN, floor_to(truth_end, MIN) - 2 * MIN)
        start, end, _ = await live_with_outage(sim, storage, outage)
        await repair_symbol(storage, rest, "BTC/USD", start, end)
        again = await repair_symbol(storage, rest, "BTC/USD", start, end)
        assert (again.trade_holes, again.candle_holes, again.trades_inserted) == (0, 0, 0)


class TestIdRepair:
    async def test_missing_ids_inside_covered_time_are_fetched_again(
        self, sim: Any, rest: KrakenRest, storage: Storage
    ) -> None:
        """Trades lost inside a range coverage calls observed are found by id and refetched."""
        truth = sim.market.trades("BTC/USD")
        start = floor_to(truth[0].time, MIN) + MIN
        end = floor_to(truth[-1].time, MIN)
        wanted = [t for t in truth if start <= t.time < end]
        lost = {t.trade_id for t in wanted[100:140]} | {wanted[500].trade_id}
        await write_trades(
            storage,
            [t for t in wanted if t.trade_id not in lost],
            source="live",
            coverage=[("BTC/USD", CoverageSpan("trades", "live", start, end))],
        )
        assert (await coverage_report(storage, "BTC/USD", "trades", start, end)).holes == []
        result = await repair_symbol(storage, rest, "BTC/USD", start, end)
        assert (result.trade_holes, result.id_holes, result.id_holes_left) == (0, 2, 0)
        assert [key(t) for t in await stored_trades(storage, start, end)] == [
            key(t) for t in wanted
        ]

    async def test_ids_rest_does_not_serve_are_marked_unfillable(
        self, sim: Any, rest: KrakenRest, storage: Storage
    ) -> None:
        """A break that REST cannot fill is reported as unfillable, not fetched forever."""
        truth = sim.market.trades("BTC/USD")
        start = floor_to(truth[0].time, MIN) + MIN
        wanted = [t for t in truth if start <= t.time][:300]
        # Renumber the tail: ids 1,000,000+ are not Kraken's, so REST can never serve the gap.
        shifted = [replace(t, trade_id=t.trade_id + 1_000_000) for t in wanted[200:]]
        await write_trades(storage, [*wanted[:200], *shifted], source="live")
        result = await repair_symbol(storage, rest, "BTC/USD", start, wanted[-1].time)
        assert (result.id_holes, result.id_holes_left) == (1, 1)
        (hole,) = await id_holes(storage, "BTC/USD", start, wanted[-1].time)
        assert hole.status == "unfillable"
        again = await repair_symbol(storage, rest, "BTC/USD", start, wanted[-1].time)
        assert again.id_holes == 0


class TestMismatchRepair:
    async def test_a_minute_that_disagrees_with_kraken_is_fetched_again(
        self, sim: Any, rest: KrakenRest, storage: Storage
    ) -> None:
        """A trade lost from an observed minute makes our candle disagree with Kraken's; the
        repair fetches that minute's trades again and the mismatch is gone."""
        truth = sim.market.trades("BTC/USD")
        start = floor_to(truth[0].time, MIN) + MIN
        end = start + 10 * MIN
        wanted = [t for t in truth if start <= t.time < end]
        minute = floor_to(wanted[len(wanted) // 2].time, MIN)
        # Lose one trade in the middle of that minute, as an unseen drop would.
        in_minute = [t for t in wanted if minute <= t.time < minute + MIN]
        lost = in_minute[len(in_minute) // 2]
        await write_trades(
            storage,
            [t for t in wanted if t is not lost],
            source="live",
            coverage=[("BTC/USD", CoverageSpan("trades", "live", start, end))],
        )
        kraken = [c for c in sim.market.candles("BTC/USD") if start <= c.time and c.end <= end]
        await write_candles(storage, kraken)
        await derive_candles(storage, "BTC/USD", start, end)
        (mismatch,) = await candle_mismatches(storage, "BTC/USD", start, end)
        assert mismatch.time == minute
        result = await repair_symbol(storage, rest, "BTC/USD", start, end)
        assert result.mismatches_refetched == 1
        assert await candle_mismatches(storage, "BTC/USD", start, end) == []


class TestGapFiller:
    async def test_catch_up_request_repairs_the_symbol(
        self, sim: Any, rest: KrakenRest, storage: Storage
    ) -> None:
        """The actor repairs at start, then again for a catch-up request sent after a reconnect."""
        truth_end = sim.market.trades("BTC/USD")[-1].time
        outage = (floor_to(truth_end, MIN) - 6 * MIN, floor_to(truth_end, MIN) - 3 * MIN)
        start, end, truth = await live_with_outage(sim, storage, outage)
        filler = GapFiller(
            lambda: storage, rest, ["XBTUSD"], interval_s=3600.0, lookback=timedelta(hours=1)
        )
        send, receive = trio.open_memory_channel[str](4)
        async with trio.open_nursery() as nursery:
            await nursery.start(filler.run, receive)
            await until(lambda: filler.statistics().repairs >= 1)
            await send.send("BTC/USD")
            await until(lambda: filler.statistics().repairs >= 2)
            nursery.cancel_scope.cancel()
        stats = filler.statistics()
        assert stats.failures == 0
        assert stats.requests >= 1
        assert [key(t) for t in await stored_trades(storage, start, end)] == [key(t) for t in truth]
        report = await coverage_report(
            storage, "BTC/USD", "trades", start, ns_to_datetime(truth[-1].time_ns)
        )
        assert report.holes == []
