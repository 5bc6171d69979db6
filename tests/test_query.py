"""The read API's endpoints, formats and validation, against a real database."""

from __future__ import annotations

import io
import os
import random
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import h11
import httpx
import orjson
import pyarrow as pa
import pytest
import trio
from test_flusher import Outage  # type: ignore[import-not-found]

from histdata.actors.hub import DROP_SLOW, LiveHub
from histdata.actors.query import QueryApp, Reply
from histdata.errors import DatabaseUnavailable
from histdata.formats import csv_line, trade_row
from histdata.model import Candle, CandleSource, CoverageSpan, Side, Trade
from histdata.storage import Storage
from histdata.storage.candles import write_candles
from histdata.storage.reads import read_windows, start_trade_read
from histdata.storage.trades import read_trades, write_trades
from histdata.symbols import SymbolRegistry

T0 = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday
T0_NS = int(T0.timestamp()) * 10**9


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
    await write_candles(storage, candles(120))
    await write_trades(
        storage,
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
    if isinstance(reply.body, AbstractAsyncContextManager):
        async with reply.body as chunks:
            return b"".join([part async for part in chunks])
    return b"".join([part async for part in reply.body])


async def get(app: QueryApp, path: str, **query: str) -> tuple[int, str, bytes]:
    reply = await app.handle("GET", path, {k: [v] for k, v in query.items()})
    return reply.status, reply.content_type, await body_of(reply)


RANGE = {"start": "2024-03-04", "end": "2024-03-05"}
PARAMS_RANGE = {name: [value] for name, value in RANGE.items()}


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
        assert table.column("volume")[0].as_py() == Decimal("0.00000006")
        assert table.schema.field("volume").type == pa.decimal128(38, 12)
        assert table.schema.metadata[b"interval"] == b"3m"

    async def test_arrow_float_decimals(self, app: QueryApp) -> None:
        """decimals=float sends decimal columns as float64; a bad choice is a 400."""
        query = {"symbol": "BTC/USD", "interval": "3m", "format": "arrow", **RANGE}
        _, _, body = await get(app, "/v1/candles", decimals="float", **query)
        table = pa.ipc.open_stream(io.BytesIO(body)).read_all()
        assert table.schema.field("close").type == pa.float64()
        assert table.column("volume")[0].as_py() == 6e-8
        status, _, body = await get(app, "/v1/candles", decimals="double", **query)
        assert status == 400
        assert "'decimals'" in orjson.loads(body)["error"]

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

    async def test_text_rows_equal_the_stored_trades_across_pages(self, storage: Storage) -> None:
        """The socket's trade rows, built in SQL, are exactly what ``trade_row`` makes of the
        stored trades: ns, µs and whole-second times, sides, ids, scale; pages of 2 break
        inside runs of same-time trades without losing or repeating one."""
        base = int(T0.timestamp()) * 10**9
        with_ids = [
            Trade("BTC/USD", base, Decimal("100.50"), Decimal("0.00100000"), Side.BUY, trade_id=1),
            Trade("BTC/USD", base + 5_000, Decimal("7"), Decimal("1E-8"), Side.SELL, trade_id=2),
            Trade("BTC/USD", base + 123_456_789, Decimal("42000.1"), Decimal("3"), trade_id=3),
            Trade("BTC/USD", base + 123_456_789, Decimal("42000.2"), Decimal("3"), trade_id=4),
        ]
        idless = [
            Trade("BTC/USD", base + 2 * 10**9, Decimal(p), Decimal("1"), seq=i)
            for i, p in enumerate(["1", "1.0", "1.00"])
        ]
        await write_trades(storage, with_ids, source="rest")
        await write_trades(storage, idless, source="csv")
        end = T0 + timedelta(seconds=3)
        expected = [trade_row(t) for t in await read_trades(storage, "BTC/USD", T0, end)]
        read = await start_trade_read(storage, "BTC/USD", T0, end, chunk=2)
        async with read_windows(storage, read) as windows:
            pages = [page async for page in windows]
        assert [page.count(b"\n") for page in pages] == [4, 3]  # the cap, twice the chunk
        assert b"".join(pages) == b"".join(csv_line(row) for row in expected)
        assert expected[1][0] == "2024-03-04T00:00:00.000005Z"
        assert expected[2][0] == "2024-03-04T00:00:00.123456789Z"

    async def test_time_paged_reads_lose_and_repeat_nothing(self, storage: Storage) -> None:
        """Pages cut by time, their spans guessed from the density just read, give exactly
        the stored trades in order for any page size and any sub-range, through bursts of
        same-time trades longer than a page, hours-long holes and thinning and thickening
        rates, inside a range of millennia, and no page holds more than twice the size aimed at."""
        rng = random.Random(15)
        base, stored = T0_NS, list[Trade]()
        for _ in range(40):
            base += rng.choice([1, 1_000, 10**9, 3_600 * 10**9, 86_400 * 10**9])
            for _ in range(rng.choice([1, 1, 3, 9, 25])):
                base += rng.choice([0, 0, 0, 1_000, 10**6, 10**9])
                stored.append(
                    Trade(
                        "BTC/USD",
                        base,
                        Decimal(rng.randint(1, 9)),
                        Decimal("1"),
                        trade_id=len(stored) + 1,
                    )
                )
        await write_trades(storage, stored, source="rest")
        last = stored[-1].time_ns // 1000
        ranges = [
            (T0, T0 + timedelta(microseconds=last - T0_NS // 1000 + 1)),
            (datetime(1970, 1, 2, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC)),
        ]
        for _ in range(4):
            a, b = sorted(rng.sample(stored, 2), key=lambda t: t.time_ns)
            ranges.append((ns_time(a.time_ns), ns_time(b.time_ns)))
        for start, end in ranges:
            expected = b"".join(
                csv_line(trade_row(t)) for t in await read_trades(storage, "BTC/USD", start, end)
            )
            for chunk in (1, 2, 5, 40):
                read = await start_trade_read(storage, "BTC/USD", start, end, chunk=chunk)
                async with read_windows(storage, read) as windows:
                    pages = [page async for page in windows]
                assert b"".join(pages) == expected, (start, end, chunk)
                assert max((p.count(b"\n") for p in pages), default=0) <= 2 * chunk


def ns_time(time_ns: int) -> datetime:
    """The whole microsecond at or below ``time_ns``, as a range edge."""
    return datetime.fromtimestamp(time_ns // 1000 / 10**6, UTC)


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
        """/v1/coverage returns covered spans, their complement and the trade-id holes."""
        status, _, body = await get(app, "/v1/coverage", symbol="BTC/USD", stream="trades", **RANGE)
        doc = orjson.loads(body)
        assert status == 200
        assert doc["covered"] == [{"start": "2024-03-04T00:00:00Z", "end": "2024-03-04T01:00:00Z"}]
        assert doc["gaps"] == [{"start": "2024-03-04T01:00:00Z", "end": "2024-03-05T00:00:00Z"}]
        # Trade 1 of the fixture has no id, so Kraken's id 1001 is missing between 1000 and 1002.
        (hole,) = doc["id_holes"]
        assert (hole["first_id"], hole["last_id"], hole["status"]) == (1001, 1001, "open")
        assert doc["mismatches"] == []

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
        body = reply.body
        assert not isinstance(body, bytes | AbstractAsyncContextManager)
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

    async def test_outage_mid_body_cuts_the_body_short(
        self, app: QueryApp, pg_admin_dsn: str, database_url: str
    ) -> None:
        """A database lost after the first chunk raises out of the body instead of ending it."""
        reply = await app.handle(
            "GET", "/v1/candles", {"symbol": ["BTC/USD"], "format": ["csv"], **PARAMS_RANGE}
        )
        assert reply.status == 200
        assert isinstance(reply.body, AbstractAsyncContextManager)
        outage = Outage(pg_admin_dsn, database_url)

        async def read_through_the_outage(body: AbstractAsyncContextManager[Any]) -> None:
            async with body as windows:
                chunks = aiter(windows)
                assert (await anext(chunks)).startswith(b"time,open")
                assert (await anext(chunks)).count(b"\n") == 7
                await outage.start()
                try:
                    async for _ in chunks:
                        pass
                finally:
                    await outage.end()

        with pytest.raises(DatabaseUnavailable):
            await read_through_the_outage(reply.body)
        assert app.failures == 1


# -- over the real Unix socket -----------------------------------------------------------------


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A short socket path (AF_UNIX paths are limited to about 100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="hdq") as directory:
        yield Path(directory) / "histdata.sock"


@pytest.fixture
async def http(
    app: QueryApp, socket_path: Path, nursery: trio.Nursery
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the app served over a real Unix socket."""
    await nursery.start(app.serve, socket_path)
    async with httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=str(socket_path)), base_url="http://localhost"
    ) as client:
        yield client


async def table_state(storage: Storage) -> tuple[list[str], list[int]]:
    """The public tables and the row counts of the data tables, to show nothing was dropped."""

    def read(conn: Any) -> tuple[list[str], list[int]]:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        counts = [
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("symbols", "trades", "candles_1m", "coverage")
        ]
        return names, counts

    return await storage.run(read)


class TestSocket:
    async def test_socket_file_is_0660_and_removed_on_exit(
        self, app: QueryApp, socket_path: Path
    ) -> None:
        """The served socket file has mode 0660 whatever the umask, and is gone after serving."""
        old = os.umask(0o077)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(app.serve, socket_path)
                mode = (await trio.Path(socket_path).stat()).st_mode
                assert stat.S_ISSOCK(mode)
                assert stat.S_IMODE(mode) == 0o660
                nursery.cancel_scope.cancel()
        finally:
            os.umask(old)
        assert not await trio.Path(socket_path).exists()

    async def test_candles_in_each_format(self, http: httpx.AsyncClient) -> None:
        """Candles arrive over the socket as JSON, CSV and an Arrow stream pyarrow reads back."""
        query = {"symbol": "XBT/USD", "interval": "5m", **RANGE}
        as_json = await http.get("/v1/candles", params=query)
        as_csv = await http.get("/v1/candles", params={**query, "format": "csv"})
        as_arrow = await http.get("/v1/candles", params={**query, "format": "arrow"})
        assert as_json.headers["content-type"] == "application/json"
        assert as_csv.headers["content-type"] == "text/csv; charset=utf-8"
        assert as_arrow.headers["content-type"] == "application/vnd.apache.arrow.stream"
        assert all(r.headers["transfer-encoding"] == "chunked" for r in (as_json, as_csv))
        rows = as_json.json()["candles"]
        lines = as_csv.text.splitlines()
        table = pa.ipc.open_stream(io.BytesIO(as_arrow.content)).read_all()
        assert len(rows) == len(lines) - 1 == table.num_rows == 24
        assert lines[0] == "time,open,high,low,close,volume,vwap,trades"
        assert lines[1].split(",") == [str(v) if v is not None else "" for v in rows[0].values()]
        assert table.to_pylist()[1] == {
            **{k: None if v is None else Decimal(v) for k, v in list(rows[1].items())[1:-1]},
            "time": T0 + timedelta(minutes=5),
            "trades": rows[1]["trades"],
        }

    async def test_trades_in_each_format(self, http: httpx.AsyncClient) -> None:
        """Trades arrive over the socket in each format with the same rows in trade order."""
        query = {"symbol": "BTC/USD", **RANGE}
        rows = (await http.get("/v1/trades", params=query)).json()["trades"]
        lines = (await http.get("/v1/trades", params={**query, "format": "csv"})).text
        body = (await http.get("/v1/trades", params={**query, "format": "arrow"})).content
        table = pa.ipc.open_stream(io.BytesIO(body)).read_all()
        assert [r["trade_id"] for r in rows] == [1000, None, 1002, 1003, 1004]
        assert lines.splitlines()[1:] == [
            ",".join("" if v is None else str(v) for v in r.values()) for r in rows
        ]
        assert table.column("price").to_pylist() == [Decimal(r["price"]) for r in rows]
        assert table.column("side").to_pylist() == [r["side"] for r in rows]

    async def test_symbols_coverage_health_and_metrics(self, http: httpx.AsyncClient) -> None:
        """The JSON endpoints and the Prometheus text answer over the socket."""
        symbols = await http.get("/v1/symbols")
        assert [s["symbol"] for s in symbols.json()["symbols"]] == ["BTC/USD"]
        coverage = await http.get(
            "/v1/coverage", params={"symbol": "XXBTZUSD", "stream": "candles", **RANGE}
        )
        assert coverage.status_code == 200
        assert coverage.json()["symbol"] == "BTC/USD"
        assert coverage.json()["stream"] == "candles"
        health = await http.get("/healthz")
        assert (health.status_code, health.json()["healthy"]) == (200, True)
        metrics = await http.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "histdata_up 1" in metrics.text

    async def test_bad_parameter_is_a_json_400_naming_it(self, http: httpx.AsyncClient) -> None:
        """A bad parameter on any endpoint is a JSON 400 whose error names the parameter."""
        cases: list[tuple[str, dict[str, str], str]] = [
            ("/v1/candles", {"symbol": "BTC USD", **RANGE}, "symbol"),
            ("/v1/candles", {"symbol": "BTC/USD", "interval": "1y", **RANGE}, "interval"),
            ("/v1/candles", {"symbol": "BTC/USD", "start": "soon", "end": "2024-03-05"}, "start"),
            ("/v1/candles", {"symbol": "BTC/USD", "start": "2024-03-04", "end": "x"}, "end"),
            ("/v1/candles", {"symbol": "BTC/USD", "format": "parquet", **RANGE}, "format"),
            ("/v1/trades", {"symbol": "BTC/USD", "format": "", **RANGE}, "format"),
            ("/v1/trades", {"symbol": "BTC/USD", "start": "2024-03-04"}, "end"),
            ("/v1/trades", {"symbol": "BTC/USD", "interval": "1m", **RANGE}, "interval"),
            ("/v1/coverage", {"symbol": "BTC/USD", "stream": "book", **RANGE}, "stream"),
            ("/v1/stream", {"symbols": "BTC/USD,ETH USD"}, "symbols"),
            ("/v1/symbols", {"symbol": "BTC/USD"}, "symbol"),
            ("/healthz", {"verbose": "1"}, "verbose"),
            ("/metrics", {"format": "json"}, "format"),
            ("/v1/coverage", {"symbol": "BTC/USD", "start": "1", "end": "1"}, "end"),
            ("/v1/trades", {"symbol": "BTC/USD", "start": "1e9", "end": "2e9"}, "start"),
            ("/v1/trades", {"symbol": "BTC/USD", "start": "0", "end": "9999-12-31"}, "end"),
            ("/v1/candles", {"symbol": "BTC/USD", "start": "1969-12-31", "end": "1"}, "start"),
            ("/v1/trades", {"symbol": "BTC/USD", "start": "0", "end": "99999999999999"}, "end"),
        ]
        for path, query, parameter in cases:
            response = await http.get(path, params=query)
            assert response.status_code == 400, (path, query)
            assert response.headers["content-type"] == "application/json"
            assert f"'{parameter}'" in error_of(response.content)

    @pytest.mark.parametrize("path", ["/v1/candles", "/v1/trades", "/v1/coverage"])
    async def test_widest_valid_range_is_answered(self, http: httpx.AsyncClient, path: str) -> None:
        """The epoch to the latest time allowed is a valid range at any interval."""
        query = {"symbol": "BTC/USD", "start": "0", "end": "2262-01-01T00:00:00Z"}
        if path == "/v1/candles":
            query["interval"] = "527040"  # the longest: 366 days
        response = await http.get(path, params=query)
        assert response.status_code == 200
        assert response.json()

    async def test_unknown_symbol_is_a_json_404(self, http: httpx.AsyncClient) -> None:
        """A well-formed symbol the registry does not know is a JSON 404 on every endpoint."""
        cases: list[tuple[str, dict[str, str]]] = [
            ("/v1/candles", {"symbol": "DOGE/EUR", **RANGE}),
            ("/v1/trades", {"symbol": "NOPE", **RANGE}),
            ("/v1/coverage", {"symbol": "XDG/XBT", **RANGE}),
            ("/v1/stream", {"symbols": "BTC/USD,FAKE/USD"}),
        ]
        for path, query in cases:
            response = await http.get(path, params=query)
            assert response.status_code == 404, (path, query)
            assert "error" in response.json()

    @pytest.mark.parametrize(
        ("path", "parameters"),
        [
            ("/v1/candles", ("symbol", "interval", "start", "end", "format")),
            ("/v1/trades", ("symbol", "start", "end", "format")),
            ("/v1/coverage", ("symbol", "stream", "start", "end")),
            ("/v1/stream", ("symbols",)),
        ],
    )
    async def test_sql_injection_in_any_parameter_is_rejected(
        self, http: httpx.AsyncClient, storage: Storage, path: str, parameters: tuple[str, ...]
    ) -> None:
        """Injection attempts in any parameter are 400s naming it, and every table survives."""
        before = await table_state(storage)
        base = {"symbols": "BTC/USD"} if path == "/v1/stream" else {"symbol": "BTC/USD", **RANGE}
        for parameter in parameters:
            for attack in [*INJECTIONS, *(a.replace("BTC/USD", "") for a in INJECTIONS)]:
                with trio.fail_after(10):
                    response = await http.get(path, params={**base, parameter: attack})
                assert response.status_code == 400, (parameter, attack)
                assert f"'{parameter}'" in error_of(response.content)
        assert await table_state(storage) == before

    async def test_stream_relays_events_and_heartbeats(
        self, storage: Storage, socket_path: Path, nursery: trio.Nursery
    ) -> None:
        """A stream client gets hello, its symbol's trades and candles, and idle heartbeats."""
        hub = LiveHub()
        app = QueryApp(
            storage, SymbolRegistry.shipped(), hub=hub, status=dict, metrics=bytes, heartbeat_s=0.05
        )
        await nursery.start(app.serve, socket_path)
        async with await StreamClient.open(socket_path, "/v1/stream?symbols=XBTUSD") as client:
            assert await client.event() == {"type": "hello", "symbols": ["BTC/USD"]}
            assert client.headers[b"content-type"] == b"application/x-ndjson"
            hub.publish_trades([Trade("ETH/USD", 1, Decimal(1), Decimal(1)), *trades(1)])
            hub.publish_candles(candles(1))
            got = [await client.event() for _ in range(2)]
            assert [(e["type"], e["symbol"]) for e in got] == [
                ("trade", "BTC/USD"),
                ("candle", "BTC/USD"),
            ]
            assert got[1]["volume"] == "0.00000001"
            assert await client.event() == {"type": "heartbeat"}

    async def test_slow_stream_client_is_dropped_while_a_fast_one_keeps_up(
        self, storage: Storage, socket_path: Path, nursery: trio.Nursery
    ) -> None:
        """A client that stops reading is dropped with a counted reason; a reading one is not."""
        hub = LiveHub()
        app = QueryApp(
            storage, SymbolRegistry.shipped(), hub=hub, status=dict, metrics=bytes, stream_queue=50
        )
        await nursery.start(app.serve, socket_path)
        async with (
            await StreamClient.open(socket_path, "/v1/stream", rcvbuf=4096) as slow,
            await StreamClient.open(socket_path, "/v1/stream") as fast,
        ):
            assert (await slow.event())["type"] == "hello"  # then it never reads again
            assert (await fast.event())["type"] == "hello"
            published = 0
            # The slow socket's kernel buffers fill, then its hub queue: it is dropped.
            while hub.statistics().dropped.get(DROP_SLOW, 0) == 0:
                assert published < 100_000, "the slow client was never dropped"
                hub.publish_trades(trades_at(published, 25))
                published += 25
                for _ in range(25):
                    await fast.event()  # the fast client reads everything, batch by batch
            hub.publish_trades(trades_at(published, 1))
            assert (await fast.event())["trade_id"] == published
            stats = hub.statistics()
            assert stats.dropped == {DROP_SLOW: 1}
            assert stats.subscribers == 1
            assert stats.trades_published == published + 1
            # The dropped client gets what was queued, then a final error line, then the end.
            events = await slow.rest()
            assert [e["trade_id"] for e in events[:-1]] == list(range(len(events) - 1))
            assert events[-1]["type"] == "error"
            assert events[-1]["reason"] == DROP_SLOW


class StreamClient:
    """A ``/v1/stream`` reader on a raw socket, parsed with h11 (no buffering client between)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._conn = h11.Connection(h11.CLIENT)
        self._buffer = b""
        self.headers: dict[bytes, bytes] = {}

    @classmethod
    async def open(cls, path: Path, target: str, *, rcvbuf: int | None = None) -> StreamClient:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(str(path))
        client = cls(trio.SocketStream(sock))
        request = h11.Request(method="GET", target=target, headers=[("host", "histdata")])
        await client._stream.send_all(client._conn.send(request))
        await client._stream.send_all(client._conn.send(h11.EndOfMessage()))
        return client

    async def __aenter__(self) -> StreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stream.aclose()

    async def _line(self) -> bytes | None:
        while b"\n" not in self._buffer:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                self._conn.receive_data(await self._stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                assert event.status_code == 200
                self.headers = dict(event.headers)
            elif isinstance(event, h11.Data):
                self._buffer += event.data
            else:
                assert isinstance(event, h11.EndOfMessage), event
                assert not self._buffer
                return None
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    async def event(self) -> dict[str, Any]:
        """The next event; fails if the stream ended."""
        line = await self._line()
        assert line is not None, "the stream ended"
        event: dict[str, Any] = orjson.loads(line)
        return event

    async def rest(self) -> list[dict[str, Any]]:
        """Every remaining event up to the end of the body."""
        events = []
        while (line := await self._line()) is not None:
            events.append(orjson.loads(line))
        return events


def trades_at(first: int, n: int) -> list[Trade]:
    return [
        Trade("BTC/USD", T0_NS + i, Decimal("42000.1"), Decimal("0.5"), trade_id=i)
        for i in range(first, first + n)
    ]
