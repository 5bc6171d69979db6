"""The read API's endpoints, formats and validation, against a real database."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pytest
import trio

from histdata.actors.hub import LiveHub
from histdata.actors.query import QueryApp, Reply
from histdata.model import Candle, CandleSource, Side, Trade
from histdata.storage import CoverageSpan, Storage
from histdata.symbols import SymbolRegistry

T0 = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday


def candles(n: int) -> list[Candle]:
    return [
        Candle(
            symbol="BTC/USD",
            time=T0 + timedelta(minutes=i),
            open=Decimal("100.5") + i,
            high=Decimal("200.25") + i,
            low=Decimal("50.125"),
            close=Decimal("150.0") + i,
            volume=Decimal("0.00000001") * (i + 1),
            vwap=None if i == 0 else Decimal("120.5"),
            trades=i + 1,
            source=CandleSource.REST,
        )
        for i in range(n)
    ]


def trades(n: int) -> list[Trade]:
    return [
        Trade(
            symbol="BTC/USD",
            time_ns=int(T0.timestamp()) * 10**9 + i * 1_000_000_100,
            price=Decimal("42000.1"),
            volume=Decimal("0.5") + i,
            side=Side.SELL if i % 2 else None,
            trade_id=None if i == 1 else 1000 + i,
        )
        for i in range(n)
    ]


@pytest.fixture
async def app(storage: Storage) -> QueryApp:
    await storage.write_candles(candles(120))
    await storage.write_trades(
        trades(5),
        source="rest",
        coverage=[("BTC/USD", CoverageSpan("trades", "rest", T0, T0 + timedelta(hours=1)))],
    )
    return QueryApp(
        storage,
        SymbolRegistry.shipped(),
        hub=LiveHub(),
        status=lambda: {"healthy": True, "actors": {"rollup": "running"}},
        metrics=lambda: b"# TYPE histdata_up gauge\nhistdata_up 1\n",
        chunk=7,
    )


async def body_of(reply: Reply) -> bytes:
    if isinstance(reply.body, bytes):
        return reply.body
    return b"".join([part async for part in reply.body])


async def get(app: QueryApp, path: str, **query: str) -> tuple[int, str, bytes]:
    reply = await app.handle("GET", path, {k: [v] for k, v in query.items()})
    return reply.status, reply.content_type, await body_of(reply)


RANGE = {"start": "2024-03-04", "end": "2024-03-05"}


class TestCandles:
    async def test_json_has_contract_fields_in_order(self, app: QueryApp) -> None:
        """JSON candles carry symbol, interval and fields in order, decimals as strings."""
        status, ctype, body = await get(app, "/v1/candles", symbol="XBTUSD", interval="60", **RANGE)
        assert (status, ctype) == (200, "application/json")
        doc = orjson.loads(body)
        assert doc["symbol"] == "BTC/USD"
        assert doc["interval"] == "1h"
        assert len(doc["candles"]) == 2
        first = doc["candles"][0]
        assert list(first) == ["time", "open", "high", "low", "close", "volume", "vwap", "trades"]
        assert first["time"] == "2024-03-04T00:00:00Z"
        assert first["open"] == "100.5"
        assert first["high"] == "259.25"
        assert first["close"] == "209.0"
        assert first["vwap"] is None  # the first minute has no vwap
        assert first["trades"] == sum(range(1, 61))
        assert doc["candles"][1]["vwap"] == "120.5"

    async def test_csv_streams_header_and_rows_across_chunks(self, app: QueryApp) -> None:
        """CSV has the header row and one line per candle, across many read windows."""
        status, ctype, body = await get(app, "/v1/candles", symbol="BTC/USD", format="csv", **RANGE)
        assert status == 200
        assert ctype.startswith("text/csv")
        lines = body.decode().splitlines()
        assert lines[0] == "time,open,high,low,close,volume,vwap,trades"
        assert len(lines) == 121
        assert lines[1] == "2024-03-04T00:00:00Z,100.5,200.25,50.125,150.0,0.00000001,,1"

    async def test_arrow_is_an_ipc_stream(self, app: QueryApp) -> None:
        """Arrow is an IPC stream with UTC timestamps and exact decimal text."""
        status, ctype, body = await get(
            app, "/v1/candles", symbol="BTC/USD", interval="3m", format="arrow", **RANGE
        )
        assert (status, ctype) == (200, "application/vnd.apache.arrow.stream")
        table = pa.ipc.open_stream(io.BytesIO(body)).read_all()
        assert table.num_rows == 40
        assert table.column_names == [
            "time",
            "open",
            "high",
            "low",
            "close",
            "volume",
            "vwap",
            "trades",
        ]
        assert table.column("time")[0].as_py() == T0
        assert table.column("volume")[0].as_py() == "0.00000006"
        assert table.schema.metadata[b"interval"] == b"3m"

    async def test_empty_range_is_an_empty_list(self, app: QueryApp) -> None:
        """A known symbol with no rows in range answers 200 with no candles."""
        status, _, body = await get(
            app, "/v1/candles", symbol="ETH/USD", start="2020-01-01", end="2020-01-02"
        )
        assert status == 200
        assert orjson.loads(body)["candles"] == []


class TestTrades:
    @pytest.mark.parametrize("fmt", ["json", "csv", "arrow"])
    async def test_every_format_keeps_trade_order_and_nulls(self, app: QueryApp, fmt: str) -> None:
        """Trades come in trade order with ns times, unknown side/id as nulls, in each format."""
        status, _, body = await get(app, "/v1/trades", symbol="XXBTZUSD", format=fmt, **RANGE)
        assert status == 200
        if fmt == "json":
            rows = orjson.loads(body)["trades"]
            assert list(rows[0]) == ["time", "price", "volume", "side", "trade_id"]
            assert rows[1] == {
                "time": "2024-03-04T00:00:01.000000100Z",
                "price": "42000.1",
                "volume": "1.5",
                "side": "sell",
                "trade_id": None,
            }
            assert len(rows) == 5
        elif fmt == "csv":
            lines = body.decode().splitlines()
            assert lines[0] == "time,price,volume,side,trade_id"
            assert lines[1] == "2024-03-04T00:00:00Z,42000.1,0.5,,1000"
            assert lines[2] == "2024-03-04T00:00:01.000000100Z,42000.1,1.5,sell,"
        else:
            table = pa.ipc.open_stream(io.BytesIO(body)).read_all()
            assert table.column("trade_id").to_pylist() == [1000, None, 1002, 1003, 1004]
            assert table.column("time").cast(pa.int64())[1].as_py() % 10**9 == 100


class TestOtherEndpoints:
    async def test_symbols_lists_stored_symbols_with_extents(self, app: QueryApp) -> None:
        """/v1/symbols gives each stored symbol with first/last time of each stream."""
        status, _, body = await get(app, "/v1/symbols")
        assert status == 200
        (entry,) = orjson.loads(body)["symbols"]
        assert entry["symbol"] == "BTC/USD"
        assert entry["candles"] == {"first": "2024-03-04T00:00:00Z", "last": "2024-03-04T01:59:00Z"}
        assert entry["trades"]["first"] == "2024-03-04T00:00:00Z"

    async def test_coverage_reports_covered_ranges_and_gaps(self, app: QueryApp) -> None:
        """/v1/coverage returns covered spans and their complement."""
        status, _, body = await get(app, "/v1/coverage", symbol="BTC/USD", stream="trades", **RANGE)
        doc = orjson.loads(body)
        assert status == 200
        assert doc["covered"] == [{"start": "2024-03-04T00:00:00Z", "end": "2024-03-04T01:00:00Z"}]
        assert doc["gaps"] == [{"start": "2024-03-04T01:00:00Z", "end": "2024-03-05T00:00:00Z"}]

    async def test_healthz_and_metrics(self, app: QueryApp, storage: Storage) -> None:
        """/healthz is the status JSON (503 when unhealthy); /metrics is Prometheus text."""
        status, _, body = await get(app, "/healthz")
        assert status == 200
        assert orjson.loads(body)["actors"] == {"rollup": "running"}
        status, ctype, body = await get(app, "/metrics")
        assert status == 200
        assert ctype.startswith("text/plain")
        assert b"histdata_up 1" in body
        sick = QueryApp(
            storage,
            SymbolRegistry.shipped(),
            hub=LiveHub(),
            status=lambda: {"healthy": False},
            metrics=lambda: b"",
        )
        assert (await get(sick, "/healthz"))[0] == 503

    async def test_stream_sends_hub_events_as_ndjson(self, app: QueryApp) -> None:
        """/v1/stream relays hub events for the chosen symbols as NDJSON lines."""
        reply = await app.handle("GET", "/v1/stream", {"symbols": ["XBTUSD"]})
        assert reply.content_type == "application/x-ndjson"
        assert not isinstance(reply.body, bytes)
        body: AsyncIterator[bytes] = reply.body
        hello = orjson.loads(await anext(body))
        assert hello == {"type": "hello", "symbols": ["BTC/USD"]}
        app._hub.publish_trades(trades(2))
        first = orjson.loads(await anext(body))
        assert first["type"] == "trade"
        assert first["trade_id"] == 1000
        await body.aclose()  # type: ignore[attr-defined]


def error_of(body: bytes) -> str:
    doc: dict[str, Any] = orjson.loads(body)
    assert list(doc) == ["error"]
    return str(doc["error"])


INJECTIONS = [
    "BTC/USD'; DROP TABLE trades; --",
    "' OR '1'='1",
    "1; SELECT pg_sleep(10)",
    "BTC/USD) UNION SELECT * FROM symbols --",
    "%27%3B",
]


class TestValidation:
    @pytest.mark.parametrize(
        ("query", "parameter"),
        [
            ({"interval": "1h", **RANGE}, "symbol"),
            ({"symbol": "BTC/USD", "interval": "7x", **RANGE}, "interval"),
            ({"symbol": "BTC/USD", "interval": "0", **RANGE}, "interval"),
            ({"symbol": "BTC/USD", "start": "yesterday", "end": "2024-03-05"}, "start"),
            ({"symbol": "BTC/USD", "start": "2024-03-05", "end": "2024-03-04"}, "end"),
            ({"symbol": "BTC/USD", "format": "xml", **RANGE}, "format"),
            ({"symbol": "BTC/USD", "limit": "5", **RANGE}, "limit"),
        ],
    )
    async def test_bad_parameter_is_400_naming_it(
        self, app: QueryApp, query: dict[str, str], parameter: str
    ) -> None:
        """A missing or malformed parameter is 400 with an error naming the parameter."""
        status, ctype, body = await get(app, "/v1/candles", **query)
        assert (status, ctype) == (400, "application/json")
        assert f"'{parameter}'" in error_of(body)

    async def test_repeated_parameter_is_400(self, app: QueryApp) -> None:
        """A parameter given twice is rejected rather than silently picking one."""
        reply = await app.handle(
            "GET", "/v1/trades", {"symbol": ["BTC/USD", "ETH/USD"], "start": ["0"], "end": ["1"]}
        )
        assert reply.status == 400
        assert "'symbol'" in error_of(await body_of(reply))

    async def test_unknown_symbol_is_404(self, app: QueryApp) -> None:
        """A well-formed symbol the registry does not know is 404."""
        status, _, body = await get(app, "/v1/candles", symbol="DOGE/EUR", **RANGE)
        assert status == 404
        assert "DOGE/EUR" in error_of(body)

    async def test_unknown_endpoint_and_method(self, app: QueryApp) -> None:
        """Unknown paths are 404 and other methods 405, both with a JSON error."""
        assert (await get(app, "/v2/candles"))[0] == 404
        reply = await app.handle("POST", "/v1/candles", {})
        assert reply.status == 405

    @pytest.mark.parametrize("attack", INJECTIONS)
    @pytest.mark.parametrize(
        ("path", "parameter"),
        [
            ("/v1/candles", "symbol"),
            ("/v1/candles", "interval"),
            ("/v1/candles", "start"),
            ("/v1/candles", "end"),
            ("/v1/candles", "format"),
            ("/v1/trades", "symbol"),
            ("/v1/trades", "start"),
            ("/v1/coverage", "stream"),
            ("/v1/coverage", "symbol"),
            ("/v1/stream", "symbols"),
        ],
    )
    async def test_sql_injection_is_rejected(
        self, app: QueryApp, storage: Storage, path: str, parameter: str, attack: str
    ) -> None:
        """An injection attempt in any parameter is a 400 naming it, and the tables survive."""
        query = {"symbol": "BTC/USD", **RANGE, parameter: attack}
        if path == "/v1/stream":
            query = {parameter: attack}
        with trio.fail_after(5):
            status, _, body = await get(app, path, **query)
        assert status == 400
        assert f"'{parameter}'" in error_of(body)
        assert await storage.count_trades("BTC/USD", T0, T0 + timedelta(days=1)) == 5
