"""Tests for histdata.kraken.rest against the Kraken simulator (real HTTP, no mocks)."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from histdata.errors import KrakenError, RateLimited
from histdata.kraken.parse import KrakenRequestError
from histdata.kraken.ratelimit import RateLimiter
from histdata.kraken.rest import KrakenRest, open_kraken_rest
from histdata.model import CandleSource, Trade
from histdata.sim import SimConfig, open_simulator
from histdata.supervisor.backoff import Backoff
from histdata.symbols import SymbolRegistry

REGISTRY = SymbolRegistry.shipped()
HISTORY_S = 600.0  # 50 trades/s for 10 minutes: 30 pages of 1000


def fast_limiter() -> RateLimiter:
    """A limiter fast enough for tests but with a real, short penalty box."""
    return RateLimiter(rate_per_s=2000.0, burst=50, penalty_base_s=0.01, penalty_max_s=0.1)


def fast_backoff() -> Backoff:
    return Backoff(0.001, 0.01)


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    config = SimConfig(
        seed=1, symbols=("BTC/USD", "ETH/USD"), trade_rate_per_s=50.0, history_s=HISTORY_S
    )
    async with open_simulator(config) as simulator:
        simulator.pause_trading()  # REST history is compared with a fixed ground truth
        yield simulator


@pytest.fixture
async def rest(sim: Any) -> AsyncIterator[KrakenRest]:
    async with open_kraken_rest(
        sim.rest_url, REGISTRY, fast_limiter(), timeout_s=5.0, backoff=fast_backoff()
    ) as client:
        yield client


async def collect(rest: KrakenRest, symbol: str, **kwargs: Any) -> tuple[list[Trade], list[str]]:
    trades: list[Trade] = []
    cursors: list[str] = []
    async for page, cursor in rest.iter_trades(symbol, **kwargs):
        trades.extend(page)
        cursors.append(cursor)
    return trades, cursors


class TestEndpoints:
    async def test_server_time(self, rest: KrakenRest) -> None:
        """Time returns the server's clock as integer Unix seconds."""
        unixtime = await rest.server_time()
        assert isinstance(unixtime, int)
        assert abs(unixtime - time.time()) < 5

    async def test_asset_pairs(self, rest: KrakenRest) -> None:
        """AssetPairs builds a registry that resolves every simulated symbol."""
        registry = await rest.asset_pairs()
        assert registry.canonical("XBTUSD") == "BTC/USD"
        assert registry.canonical("ETHUSD") == "ETH/USD"

    async def test_trades_page_is_exact(self, sim: Any, rest: KrakenRest) -> None:
        """The first page from since=0 equals the simulator's first trades, digit for digit."""
        page = await rest.trades("XXBTZUSD", since="0")
        truth = sim.market.trades("BTC/USD")
        assert page.rejections == []
        assert page.trades == truth[: len(page.trades)]
        assert page.last is not None
        assert len(page.last) == 19

    async def test_ohlc(self, rest: KrakenRest) -> None:
        """OHLC returns REST candles whose final (live) row is not final."""
        page = await rest.ohlc("btc/usd")
        assert page.candles
        assert {c.source for c in page.candles} == {CandleSource.REST}
        assert [c.final for c in page.candles][-1] is False
        assert all(c.final for c in page.candles[:-1])
        assert all(c.symbol == "BTC/USD" for c in page.candles)

    async def test_bad_interval_is_refused_locally(self, rest: KrakenRest) -> None:
        """An interval Kraken does not serve is refused before any request is sent."""
        with pytest.raises(KrakenRequestError):
            await rest.ohlc("BTC/USD", interval=360)
        assert rest.statistics().requests == 0

    async def test_unknown_pair_is_a_request_error(self, rest: KrakenRest) -> None:
        """A pair the exchange does not list raises KrakenRequestError, without retries."""
        with pytest.raises(KrakenRequestError) as info:
            await rest.trades("SOL/USD")
        assert not isinstance(info.value, KrakenError)
        assert rest.statistics().retries == 0


class TestIterTrades:
    async def test_full_history_equals_ground_truth(self, sim: Any, rest: KrakenRest) -> None:
        """Paging the whole history from 0 yields exactly the simulator's trades."""
        trades, cursors = await collect(rest, "BTC/USD", since="0")
        assert trades == sim.market.trades("BTC/USD")
        assert len(cursors) > 10
        assert all(int(a) <= int(b) for a, b in itertools.pairwise(cursors))

    async def test_boundary_duplicates_are_dropped(self, sim: Any, rest: KrakenRest) -> None:
        """Trades Kraken repeats at page boundaries are yielded once."""
        sim.faults.boundary_duplicates = True
        trades, _ = await collect(rest, "BTC/USD", since="0")
        assert trades == sim.market.trades("BTC/USD")
        assert rest.statistics().duplicates_dropped > 0

    async def test_throttling_is_survived(self, sim: Any, rest: KrakenRest) -> None:
        """Injected rate-limit answers penalize the limiter and lose nothing."""
        sim.faults.boundary_duplicates = True
        sim.faults.throttle_next(3)
        trades, _ = await collect(rest, "BTC/USD", since="0")
        assert trades == sim.market.trades("BTC/USD")
        assert rest.statistics().rate_limited == 3
        assert rest.limiter.statistics().rate_limit_errors == 3

    async def test_until_and_resume(self, sim: Any, rest: KrakenRest) -> None:
        """Stopping at until_ns, then resuming from the last cursor, yields every trade once."""
        truth = sim.market.trades("BTC/USD")
        until_ns = truth[len(truth) // 2].time_ns
        first, cursors = await collect(rest, "BTC/USD", since="0", until_ns=until_ns)
        assert first == [t for t in truth if t.time_ns < until_ns]
        assert cursors[-1] == str(until_ns)
        rest_of, _ = await collect(rest, "BTC/USD", since=cursors[-1])
        assert first + rest_of == truth

    async def test_history_without_last_at_nanosecond_times(self) -> None:
        """With ns times printed as doubles and no last, paging still loses no trade."""
        config = SimConfig(
            seed=3,
            symbols=("BTC/USD",),
            trade_rate_per_s=50.0,
            history_s=HISTORY_S,
            same_time_ratio=0.5,
            nanosecond_times=True,
        )
        async with (
            open_simulator(config) as sim,
            open_kraken_rest(
                sim.rest_url, REGISTRY, fast_limiter(), backoff=fast_backoff()
            ) as rest,
        ):
            sim.pause_trading()
            sim.faults.drop_last_ratio = 1.0
            trades, _ = await collect(rest, "BTC/USD", since="0")
            truth = sim.market.trades("BTC/USD")
        assert [t.trade_id for t in trades] == [t.trade_id for t in truth]
        # the printed time is within one double spacing (238 ns today) of the true one: half
        # a spacing to the nearest double, half again to its shortest text; rarely exact
        assert all(abs(a.time_ns - b.time_ns) < 240 for a, b in zip(trades, truth, strict=True))
        assert any(a.time_ns != b.time_ns for a, b in zip(trades, truth, strict=True))

    async def test_bounded_history_ends_at_until(self, sim: Any, rest: KrakenRest) -> None:
        """A bound past the newest trade is reached once Kraken has nothing newer."""
        truth = sim.market.trades("BTC/USD")
        until_ns = truth[-1].time_ns + 1
        trades, cursors = await collect(rest, "BTC/USD", since="0", until_ns=until_ns)
        assert trades == truth
        assert cursors[-1] == str(until_ns)


class TestTransport:
    async def test_persistent_throttling_gives_up(self, sim: Any) -> None:
        """A limit that never lifts ends in RateLimited after the bounded attempts."""
        sim.faults.throttle_next(100)
        limiter = fast_limiter()
        async with open_kraken_rest(
            sim.rest_url, REGISTRY, limiter, max_attempts=3, backoff=fast_backoff()
        ) as client:
            with pytest.raises(RateLimited):
                await client.trades("BTC/USD", since="0")
            assert client.statistics().requests == 3
        assert limiter.statistics().penalty_streak >= 1

    async def test_timeouts_are_retried_then_raised(self, sim: Any) -> None:
        """A server slower than the timeout is retried, then reported as a KrakenError."""
        sim.faults.slow_s = 1.0
        async with open_kraken_rest(
            sim.rest_url,
            REGISTRY,
            fast_limiter(),
            timeout_s=0.1,
            max_attempts=2,
            backoff=fast_backoff(),
        ) as client:
            with pytest.raises(KrakenError, match="Timeout"):
                await client.server_time()
            stats = client.statistics()
        assert (stats.requests, stats.transport_errors) == (2, 2)

    async def test_connection_refused(self) -> None:
        """Nothing listening is a transient KrakenError after retries."""
        async with open_kraken_rest(
            "http://127.0.0.1:9", REGISTRY, fast_limiter(), max_attempts=2, backoff=fast_backoff()
        ) as client:
            with pytest.raises(KrakenError):
                await client.server_time()
