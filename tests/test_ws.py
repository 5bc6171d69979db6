"""Tests for histdata.kraken.ws against the Kraken simulator (real WebSocket, no mocks)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest
import trio

from histdata.kraken.ws import (
    CandlesEvent,
    ConnectionClosed,
    Event,
    HeartbeatEvent,
    KrakenWs,
    RejectedFrame,
    StaleConnection,
    StatusEvent,
    SubscriptionFailed,
    TradesEvent,
    open_kraken_ws,
)
from histdata.model import CandleSource, LiveTrade, Trade
from histdata.sim import SimConfig, open_simulator
from histdata.symbols import SHIPPED_PAIRS, SymbolInfo, SymbolRegistry

REGISTRY = SymbolRegistry.shipped()
# A registry built from a stale v1 wsname: it sends XBT/USD, which v2 refuses.
STALE_REGISTRY = SymbolRegistry(
    [SymbolInfo("XBT/USD", "XXBTZUSD", "XBTUSD", "XBT/USD", 1, 8)]
    + [info for info in SHIPPED_PAIRS if info.symbol != "BTC/USD"]
)


def exact(trade: Trade | LiveTrade) -> Trade:
    """``trade`` with Decimal price and volume, comparable with the simulator's trades."""
    return trade.to_trade() if isinstance(trade, LiveTrade) else trade


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    config = SimConfig(
        seed=1, symbols=("BTC/USD", "ETH/USD"), trade_rate_per_s=50.0, history_s=60.0
    )
    async with open_simulator(config) as simulator:
        yield simulator


async def take(conn: KrakenWs, n: int, kind: type[Any] = object) -> list[Any]:
    """The next n events of the given kind (others are skipped)."""
    found: list[Event] = []
    async with aclosing(conn.events()) as events:
        async for event in events:
            if isinstance(event, kind):
                found.append(event)
                if len(found) == n:
                    break
    return found


class TestSubscribe:
    async def test_any_spelling_subscribes_v2(self, sim: Any) -> None:
        """Symbols given as altname or REST key are subscribed under their v2 names."""
        async with open_kraken_ws(sim.ws_url, ["XBTUSD", "XETHZUSD"], REGISTRY) as conn:
            assert conn.symbols == ("BTC/USD", "ETH/USD")
            assert conn.failed_subscriptions == {}
            assert conn.subscribed == {
                ("trade", "BTC/USD"),
                ("trade", "ETH/USD"),
                ("ohlc", "BTC/USD"),
                ("ohlc", "ETH/USD"),
            }

    async def test_status_and_snapshot(self, sim: Any) -> None:
        """The session reports the engine status, then a trade snapshot of recent real trades."""
        async with open_kraken_ws(sim.ws_url, ["BTC/USD"], REGISTRY) as conn:
            (status,) = await take(conn, 1, StatusEvent)
            assert status.system == "online"
            (snapshot,) = await take(conn, 1, TradesEvent)
        assert snapshot.snapshot is True
        assert snapshot.rejections == ()
        truth = set(sim.market.trades("BTC/USD"))
        assert snapshot.trades
        assert {exact(t) for t in snapshot.trades} <= truth

    async def test_live_trades_match_ground_truth(self, sim: Any) -> None:
        """Live trade updates are exactly trades the market produced."""
        async with open_kraken_ws(sim.ws_url, ["BTC/USD"], REGISTRY) as conn:
            events = [e for e in await take(conn, 5, TradesEvent) if not e.snapshot]
        truth = set(sim.market.trades("BTC/USD"))
        live = [trade for event in events for trade in event.trades]
        assert live
        assert {exact(t) for t in live} <= truth

    async def test_candles_are_live_and_not_final(self, sim: Any) -> None:
        """ohlc frames become LIVE candles that are never marked final."""
        async with open_kraken_ws(sim.ws_url, ["BTC/USD"], REGISTRY) as conn:
            (event,) = await take(conn, 1, CandlesEvent)
        assert event.candles
        assert all(c.source is CandleSource.LIVE and not c.final for c in event.candles)
        assert all(c.time.second == 0 and c.interval_min == 1 for c in event.candles)

    async def test_failed_subscription_is_surfaced(self, sim: Any) -> None:
        """A refused symbol lands in failed_subscriptions while the others stream."""
        async with open_kraken_ws(sim.ws_url, ["XBT/USD", "ETH/USD"], STALE_REGISTRY) as conn:
            assert set(conn.failed_subscriptions) == {"XBT/USD"}
            assert "not supported" in conn.failed_subscriptions["XBT/USD"]
            assert ("trade", "ETH/USD") in conn.subscribed
            (event,) = await take(conn, 1, TradesEvent)
            assert {t.symbol for t in event.trades} == {"ETH/USD"}

    async def test_all_failed_raises(self, sim: Any) -> None:
        """When no subscription succeeds the session refuses to start."""
        with pytest.raises(SubscriptionFailed) as info:
            async with open_kraken_ws(sim.ws_url, ["XBT/USD"], STALE_REGISTRY):
                pass
        assert set(info.value.failures) == {"XBT/USD"}


class TestFailures:
    async def test_silence_is_stale(self, sim: Any) -> None:
        """A server that stops sending without closing raises StaleConnection."""
        async with open_kraken_ws(sim.ws_url, ["BTC/USD"], REGISTRY, stale_after_s=0.5) as conn:
            sim.faults.silence(30.0)
            with trio.fail_after(10), pytest.raises(StaleConnection):
                await take(conn, 10_000)

    async def test_heartbeats_and_pings_keep_alive(self, sim: Any) -> None:
        """An idle subscribed session gets heartbeats and answers to its pings."""
        async with open_kraken_ws(sim.ws_url, ["BTC/USD"], REGISTRY, ping_interval_s=0.2) as conn:
            await take(conn, 2, HeartbeatEvent)
            stats = conn.statistics()
        assert stats.heartbeats >= 2
        assert stats.pings_sent >= 1

    @pytest.mark.parametrize("code", [1001, 1006, 1011])
    async def test_close_codes_surface(self, sim: Any, code: int) -> None:
        """A server close raises ConnectionClosed carrying the close code."""
        async with open_kraken_ws(sim.ws_url, ["BTC/USD"], REGISTRY) as conn:
            sim.faults.close_ws(code)
            with trio.fail_after(10), pytest.raises(ConnectionClosed) as info:
                await take(conn, 10_000)
        assert info.value.code == code

    async def test_malformed_rows_rejected_good_rows_kept(self, sim: Any) -> None:
        """With malformed input injected, bad rows and frames are rejected and good trades kept."""
        sim.faults.malformed_ratio = 0.3
        truth: set[Any] = set()
        rejected = 0
        good = 0
        async with open_kraken_ws(sim.ws_url, ["BTC/USD"], REGISTRY) as conn:
            with trio.fail_after(20):
                async with aclosing(conn.events()) as events:
                    async for event in events:
                        if isinstance(event, RejectedFrame):
                            rejected += 1
                        elif isinstance(event, TradesEvent):
                            rejected += len(event.rejections)
                            good += len(event.trades)
                            truth.update(exact(t) for t in event.trades)
                        if rejected >= 5 and good >= 20:
                            break
        assert truth <= set(sim.market.trades("BTC/USD"))
