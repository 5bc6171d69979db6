"""Tests for histdata.actors.feed against the Kraken simulator (real WebSocket, no mocks)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from waiting import until  # type: ignore[import-not-found]

from histdata.actors.buffer import CoverageMark, LiveItem, live_weight
from histdata.actors.feed import CatchUpQueue, Feed
from histdata.model import Candle, LiveTrade, Trade
from histdata.sim import SimConfig, open_simulator
from histdata.supervisor import Backoff, Channel, ChildSpec, Overflow, Supervisor
from histdata.symbols import SymbolRegistry

REGISTRY = SymbolRegistry.shipped()


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    config = SimConfig(seed=7, symbols=("BTC/USD",), trade_rate_per_s=200.0, history_s=60.0)
    async with open_simulator(config) as simulator:
        yield simulator


def exact(trade: Trade | LiveTrade) -> Trade:
    """``trade`` with Decimal price and volume, comparable with the simulator's trades."""
    return trade.to_trade() if isinstance(trade, LiveTrade) else trade


class Collected:
    """Drains the feed's channels the way the buffer would."""

    def __init__(self) -> None:
        self.trades: list[Trade | LiveTrade] = []
        self.candles: list[Candle] = []
        self.marks: list[CoverageMark] = []

    async def drain_trades(self, channel: Channel[LiveItem]) -> None:
        async for item in channel:
            if isinstance(item, CoverageMark):
                self.marks.append(item)
            else:
                self.trades.append(item)

    async def drain_candles(self, channel: Channel[Candle]) -> None:
        async for candle in channel:
            self.candles.append(candle)


@asynccontextmanager
async def running_feed(url: str, **kwargs: Any) -> AsyncIterator[tuple[Feed, Collected]]:
    trades: Channel[LiveItem] = Channel("t", 100_000, Overflow.BLOCK, weight=live_weight)
    candles: Channel[Candle] = Channel("c", 100_000, Overflow.BLOCK)
    feed = Feed(
        url,
        ["BTC/USD"],
        REGISTRY,
        trades,
        candles,
        catch_up=kwargs.pop("catch_up", CatchUpQueue()),
        loss=lambda: 0,
        backoff=Backoff(0.05, 0.5),
        mark_interval_s=0.2,
        **kwargs,
    )
    got = Collected()
    supervisor = Supervisor("test", [ChildSpec("feed", feed.run)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(got.drain_trades, trades)
        nursery.start_soon(got.drain_candles, candles)
        await nursery.start(supervisor.run)
        yield feed, got
        supervisor.shutdown()
        trades.close()
        candles.close()


def sessions_are(feed: Feed, n: int) -> Callable[[], bool]:
    return lambda: feed.statistics().sessions == n and feed.statistics().connected


class TestStream:
    async def test_trades_candles_and_coverage_arrive(self, sim: Any) -> None:
        """The simulator's real trades, candle updates and coverage marks reach the channels."""
        async with running_feed(sim.ws_url) as (feed, got):
            # Candles are claimed past the forming minute only as quiet time, a second behind.
            await until(
                lambda: (
                    len(got.trades) > 200
                    and {span.stream for mark in got.marks for _, span in mark.spans}
                    == {"trades", "candles"}
                )
            )
        truth = set(sim.market.trades("BTC/USD"))
        assert {exact(t) for t in got.trades} <= truth
        assert got.candles
        assert all(not c.final for c in got.candles)
        spans = [span for mark in got.marks for _, span in mark.spans]
        assert {span.stream for span in spans} == {"trades", "candles"}
        stats = feed.statistics()
        assert stats.sessions == 1
        assert stats.snapshot_trades > 0
        assert stats.last_trade_at["BTC/USD"] > 0


class TestReconnect:
    async def test_closes_are_counted_and_resubscribed(self, sim: Any) -> None:
        """Each server close ends one session, is counted by code, and a new session subscribes."""
        catch_up = CatchUpQueue()
        async with running_feed(sim.ws_url, catch_up=catch_up) as (feed, _got):
            for n, code in enumerate((1006, 1001, 1011), start=1):
                await until(sessions_are(feed, n))
                sim.faults.close_ws(code)
                await until(sessions_are(feed, n + 1))
        stats = feed.statistics()
        assert stats.closes == {"close_1006": 1, "close_1001": 1, "close_1011": 1}
        assert stats.catch_ups_requested == 3
        assert catch_up.pending() == ["BTC/USD"]

    async def test_silence_forces_a_reconnect(self, sim: Any) -> None:
        """A connection that goes silent without closing is declared stale and replaced."""
        async with running_feed(sim.ws_url, stale_after_s=0.5) as (feed, _got):
            await until(lambda: feed.statistics().sessions == 1)
            sim.faults.silence(2.0)
            await until(lambda: feed.statistics().closes.get("stale", 0) >= 1)
            await until(lambda: feed.statistics().sessions >= 2, timeout_s=20)


class TestValidation:
    async def test_malformed_frames_are_counted_good_trades_kept(self, sim: Any) -> None:
        """Malformed input is counted by reason; the feed keeps running and good trades arrive."""
        sim.faults.malformed_ratio = 0.2
        async with running_feed(sim.ws_url) as (feed, got):
            await until(lambda: sum(feed.statistics().rejections.values()) >= 5)
            await until(lambda: len(got.trades) > 100)
        assert feed.statistics().sessions == 1
        assert all(reason for reason in feed.statistics().rejections)
        assert {exact(t) for t in got.trades} <= set(sim.market.trades("BTC/USD"))


class TestConnectBudget:
    async def test_attempts_stay_within_the_window(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """No more than max_connects attempts start within connect_window_s."""
        feed = Feed(
            "ws://127.0.0.1:9/v2",
            ["BTC/USD"],
            REGISTRY,
            Channel("t", 10, Overflow.BLOCK, weight=live_weight),
            Channel("c", 10, Overflow.BLOCK),
            catch_up=CatchUpQueue(),
            loss=lambda: 0,
            max_connects=3,
            connect_window_s=600.0,
        )
        start = trio.current_time()
        for _ in range(3):
            await feed._wait_for_connect_budget()
        assert trio.current_time() - start < 1
        await feed._wait_for_connect_budget()
        assert trio.current_time() - start >= 600
