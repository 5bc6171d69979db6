"""REST trade backfill against the Kraken simulator and a real database (no mocks)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import trio
from stored import stored_candles  # type: ignore[import-not-found]

from histdata.actors.backfiller import Backfiller
from histdata.fetch import FetchProgress, backfill_cursor_name, backfill_trades, fetch_trades
from histdata.kraken.ratelimit import RateLimiter
from histdata.kraken.rest import KrakenRest, open_kraken_rest
from histdata.model import Trade, ns_to_datetime
from histdata.sim import SimConfig, open_simulator
from histdata.storage import Storage
from histdata.storage.coverage import coverage_report
from histdata.storage.cursors import get_cursor
from histdata.storage.trades import read_trades
from histdata.supervisor.backoff import Backoff
from histdata.symbols import SymbolRegistry

# Skips only while the simulator module is missing; a simulator that fails to import fails.

REGISTRY = SymbolRegistry.shipped()
HISTORY_S = 300.0  # 50 trades/s for 5 minutes: 15 pages of 1000


def key(trade: Trade) -> tuple[Any, ...]:
    return (trade.trade_id, trade.time_ns, trade.price, trade.volume, trade.side)


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    config = SimConfig(
        seed=3, symbols=("BTC/USD", "ETH/USD"), trade_rate_per_s=50.0, history_s=HISTORY_S
    )
    async with open_simulator(config) as simulator:
        simulator.pause_trading()  # a fixed ground truth
        yield simulator


@pytest.fixture
async def rest(sim: Any) -> AsyncIterator[KrakenRest]:
    limiter = RateLimiter(rate_per_s=500.0, burst=20, penalty_base_s=0.01, penalty_max_s=0.1)
    async with open_kraken_rest(
        sim.rest_url, REGISTRY, limiter, timeout_s=5.0, backoff=Backoff(0.001, 0.01)
    ) as client:
        yield client


async def stored(storage: Storage, truth: list[Trade]) -> list[Trade]:
    first, last = truth[0].time, ns_to_datetime(truth[-1].time_ns + 1000)
    return await read_trades(storage, truth[0].symbol, first, last)


class TestBackfill:
    async def test_killed_backfill_resumes_to_exactly_the_truth(
        self, sim: Any, rest: KrakenRest, storage: Storage
    ) -> None:
        """Killed after some pages, with duplicates and throttles injected, a re-run ends exact."""
        sim.faults.boundary_duplicates = True
        sim.faults.throttle_next(3)
        truth = sim.market.trades("BTC/USD")
        pages = 0
        with trio.CancelScope() as scope:

            def kill_after_five(progress: FetchProgress) -> None:
                nonlocal pages
                pages += 1
                if pages == 5:
                    scope.cancel()

            await backfill_trades(storage, rest, "BTC/USD", since_ns=0, on_page=kill_after_five)
        cursor = await get_cursor(storage, backfill_cursor_name("BTC/USD", 0, None))
        assert cursor is not None
        assert cursor.isdigit()
        assert len(cursor) == 19
        partial = await stored(storage, truth)
        assert 0 < len(partial) < len(truth)
        sim.faults.throttle_next(2)
        result = await backfill_trades(storage, rest, "BTC/USD", since_ns=0)
        assert result.resumed_from == cursor
        assert [key(t) for t in await stored(storage, truth)] == [key(t) for t in truth]
        assert await get_cursor(storage, backfill_cursor_name("BTC/USD", 0, None)) is None
        assert rest.statistics().rate_limited >= 5
        assert rest.statistics().duplicates_dropped > 0

    async def test_backfill_records_trades_coverage(
        self, sim: Any, rest: KrakenRest, storage: Storage
    ) -> None:
        """After a bounded backfill, its whole range reads as observed."""
        truth = sim.market.trades("BTC/USD")
        since, until = truth[10].time_ns, truth[-10].time_ns
        await backfill_trades(storage, rest, "BTC/USD", since_ns=since, until_ns=until)
        report = await coverage_report(
            storage, "BTC/USD", "trades", ns_to_datetime(since), ns_to_datetime(until)
        )
        assert report.holes == []
        got = await stored(storage, truth)
        assert [key(t) for t in got] == [key(t) for t in truth if since <= t.time_ns < until]

    async def test_backfilled_minutes_have_candles_equal_to_the_truth(
        self, sim: Any, rest: KrakenRest, storage: Storage
    ) -> None:
        """Every whole minute a backfill covers gets its candle, equal to the simulator's."""
        truth = sim.market.trades("BTC/USD")
        since, until = truth[10].time_ns, truth[-10].time_ns
        await backfill_trades(storage, rest, "BTC/USD", since_ns=since, until_ns=until)
        first = ns_to_datetime(since).replace(second=0, microsecond=0) + timedelta(minutes=1)
        last = ns_to_datetime(until).replace(second=0, microsecond=0)
        expected = [c for c in sim.market.candles("BTC/USD") if first <= c.time < last]
        got = await stored_candles(storage, "BTC/USD", first, last)
        assert expected
        assert [(c.time, c.open, c.high, c.low, c.close, c.volume, c.trades) for c in got] == [
            (c.time, c.open, c.high, c.low, c.close, c.volume, c.trades) for c in expected
        ]

    async def test_progress_has_an_eta_and_reaches_the_end(
        self, sim: Any, rest: KrakenRest, storage: Storage
    ) -> None:
        """Progress grows monotonically to 1 and gives an ETA once it has moved."""
        truth = sim.market.trades("BTC/USD")
        seen: list[FetchProgress] = []
        await backfill_trades(
            storage,
            rest,
            "BTC/USD",
            since_ns=truth[0].time_ns,
            until_ns=truth[-1].time_ns + 1,
            on_page=seen.append,
        )
        fractions = [p.fraction for p in seen]
        assert fractions == sorted(fractions)
        assert fractions[-1] == 1.0
        assert any(p.eta_s is not None for p in seen[:-1])

    async def test_open_ended_fetch_ends_on_a_live_market(
        self, sim: Any, rest: KrakenRest, storage: Storage
    ) -> None:
        """ "To now" stops at the moment the fetch began even while trades keep coming."""
        sim.resume_trading()
        began = time.time_ns()
        with trio.fail_after(30):
            result = await fetch_trades(storage, rest, "BTC/USD", since_ns=0)
        truth = [t for t in sim.market.trades("BTC/USD") if t.time_ns < began]
        assert result.end_ns >= began
        got = await stored(storage, truth)
        assert [key(t) for t in got[: len(truth)]] == [key(t) for t in truth]


class TestBackfiller:
    async def test_symbols_run_in_parallel_under_one_limiter(
        self, sim: Any, rest: KrakenRest, storage: Storage
    ) -> None:
        """Two symbols backfill concurrently through the shared limiter and both end exact."""
        backfiller = Backfiller(lambda: storage, rest, ["BTC/USD", "XETHZUSD"], since_ns=0)
        both_partway = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backfiller.run)
            while len(backfiller.statistics().done) < 2:
                fractions = backfiller.statistics().fraction
                both_partway = both_partway or (
                    len(fractions) == 2 and all(0 < f < 1 for f in fractions.values())
                )
                await trio.sleep(0.002)
        assert both_partway  # interleaved, not one after the other
        assert sorted(backfiller.statistics().done) == ["BTC/USD", "ETH/USD"]
        for symbol in ("BTC/USD", "ETH/USD"):
            truth = sim.market.trades(symbol)
            assert [key(t) for t in await stored(storage, truth)] == [key(t) for t in truth]
