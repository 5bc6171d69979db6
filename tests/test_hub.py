"""LiveHub: bounded per-client queues, symbol filtering and counted drops of slow clients."""

from __future__ import annotations

from decimal import Decimal

import orjson

from histdata.actors.hub import DROP_SLOW, LiveHub
from histdata.model import Side, Trade


def trade(n: int, symbol: str = "BTC/USD") -> Trade:
    return Trade(
        symbol=symbol,
        time_ns=1_700_000_000_123_456_789 + n,
        price=Decimal("42000.1"),
        volume=Decimal("0.00000001"),
        side=Side.BUY,
        trade_id=n,
    )


class TestLiveHub:
    async def test_subscriber_receives_only_its_symbols_as_ndjson(self) -> None:
        """A subscriber gets NDJSON lines for its symbols and nothing for the others."""
        hub = LiveHub(queue=10)
        with hub.subscribe(["ETH/USD"]) as sub:
            hub.publish_trades([trade(1), trade(2, "ETH/USD")])
            line = sub.events.receive_nowait()
            event = orjson.loads(line)
            assert line.endswith(b"\n")
            assert event["symbol"] == "ETH/USD"
            assert event["price"] == "42000.1"
            assert event["volume"] == "0.00000001"
            assert event["time"] == "2023-11-14T22:13:20.123456791Z"
            assert event["trade_id"] == 2
        assert hub.statistics().subscribers == 0

    async def test_slow_client_is_dropped_while_publishing_continues(self) -> None:
        """A full queue drops that client with a counted reason; others keep receiving."""
        hub = LiveHub(queue=3)
        with hub.subscribe() as slow, hub.subscribe(queue=100) as fast:
            hub.publish_trades(trade(n) for n in range(10))
            assert slow.dropped_reason == DROP_SLOW
            received = [line async for line in slow.events]
            assert len(received) == 3
            assert len([fast.events.receive_nowait() for _ in range(10)]) == 10
            hub.publish_trades([trade(11)])
            assert orjson.loads(fast.events.receive_nowait())["trade_id"] == 11
        stats = hub.statistics()
        assert stats.dropped == {DROP_SLOW: 1}
        assert stats.trades_published == 11

    async def test_close_ends_subscriptions_normally(self) -> None:
        """Closing the hub ends each iteration after the queued events, not as a drop."""
        hub = LiveHub()
        with hub.subscribe() as sub:
            hub.publish_trades([trade(1)])
            hub.close()
            assert len([line async for line in sub.events]) == 1
            assert sub.dropped_reason is None
