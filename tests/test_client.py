"""histdata.client against the query API served on a real Unix socket and database."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
import trio
from test_flusher import Outage  # type: ignore[import-not-found]
from waiting import until  # type: ignore[import-not-found]

from histdata.actors.hub import DROP_SLOW, LiveHub
from histdata.actors.query import QueryApp
from histdata.client import (
    BadRequest,
    Client,
    ClientError,
    NotFound,
    ServiceNotRunning,
    ServiceUnavailable,
    StreamDropped,
)
from histdata.formats import CANDLE_FIELDS
from histdata.model import Candle, CandleSource, CoverageSpan, Side, Trade
from histdata.storage import Storage
from histdata.storage.candles import write_candles
from histdata.storage.trades import write_trades
from histdata.symbols import SymbolRegistry

T0 = datetime(2024, 3, 4, tzinfo=UTC)
T0_NS = int(T0.timestamp()) * 10**9
R = TypeVar("R")


def candles(n: int) -> list[Candle]:
    return [
        Candle(
            symbol="ETH/USD",
            time=T0 + timedelta(minutes=i),
            open=Decimal("3000.01"),
            high=Decimal("3001.5") + i,
            low=Decimal("2999.99"),
            close=Decimal("3000.10") + i,
            volume=Decimal("0.00000001") * (i + 1),
            vwap=None if i == 0 else Decimal("3000.5"),
            trades=2,
            source=CandleSource.REST,
        )
        for i in range(n)
    ]


def trades(n: int, first: int = 0) -> list[Trade]:
    return [
        Trade(
            symbol="ETH/USD",
            time_ns=T0_NS + i * 1_000_000_007,  # sub-microsecond digits
            price=Decimal("3000.12345678"),
            volume=Decimal("0.1"),
            side=Side.BUY if i % 2 else None,
            trade_id=None if i == 1 else 500 + i,
        )
        for i in range(first, first + n)
    ]


class Served:
    """A QueryApp on a real socket, and a Client for it whose calls run in worker threads."""

    def __init__(self, app: QueryApp, hub: LiveHub, path: Path) -> None:
        self.app = app
        self.hub = hub
        self.path = path
        self.client = Client(str(path), timeout_s=30)

    async def call(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run a blocking client call off the event loop that serves it."""
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


@pytest.fixture
def socket_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hdc") as directory:
        yield Path(directory) / "histdata.sock"


def make_app(storage: Storage, hub: LiveHub, *, healthy: bool = True, queue: int = 100) -> QueryApp:
    return QueryApp(
        storage,
        SymbolRegistry.shipped(),
        hub=hub,
        status=lambda: {"healthy": healthy},
        metrics=bytes,
        stream_queue=queue,
        chunk=11,
    )


@pytest.fixture
async def served(
    storage: Storage, socket_path: Path, nursery: trio.Nursery
) -> AsyncIterator[Served]:
    await write_candles(storage, candles(120))
    await write_trades(
        storage,
        trades(4),
        source="rest",
        coverage=[("ETH/USD", CoverageSpan("trades", "rest", T0, T0 + timedelta(hours=1)))],
    )
    hub = LiveHub()
    app = make_app(storage, hub, queue=2)
    await nursery.start(app.serve, socket_path)
    result = Served(app, hub, socket_path)
    yield result
    result.client.close()


START, END = "2024-03-04", "2024-03-05"


class TestReads:
    async def test_candles_are_plain_rows_with_exact_values(self, served: Served) -> None:
        """Candles come back as dicts in contract order with Decimals and aware UTC times."""
        rows = await served.call(served.client.candles, "XETHZUSD", "1m", START, END)
        assert len(rows) == 120
        assert list(rows[0]) == ["time", "open", "high", "low", "close", "volume", "vwap", "trades"]
        assert rows[0]["time"] == T0
        assert rows[0]["time"].utcoffset() == timedelta(0)
        assert rows[0]["volume"] == Decimal("0.00000001")
        assert str(rows[0]["close"]) == "3000.10"  # the stored digits, not a float's
        assert rows[0]["vwap"] is None
        assert rows[1]["vwap"] == Decimal("3000.5")
        assert rows[119]["trades"] == 2

    async def test_trades_keep_order_and_nulls_with_nanosecond_times(self, served: Served) -> None:
        """Trades with sub-µs times come back in trade order, times truncated to the µs."""
        rows = await served.call(served.client.trades, "ETH/USD", T0, T0 + timedelta(hours=1))
        assert [r["trade_id"] for r in rows] == [500, None, 502, 503]
        assert [r["side"] for r in rows] == [None, "buy", None, "buy"]
        assert rows[1]["time"] == T0 + timedelta(seconds=1)  # +7 ns dropped
        assert rows[3]["time"] == T0 + timedelta(seconds=3, microseconds=0)
        assert rows[0]["price"] == Decimal("3000.12345678")

    async def test_several_timeframes_in_one_call(self, served: Served) -> None:
        """timeframes() returns each requested interval's candles under its own key."""
        found = await served.call(served.client.timeframes, "ETH/USD", ["1m", 15, "1h"], START, END)
        assert list(found) == ["1m", "15", "1h"]
        assert [len(rows) for rows in found.values()] == [120, 8, 2]
        assert found["1h"][0]["volume"] == sum(c.volume for c in candles(60))
        assert found["15"][1]["time"] == T0 + timedelta(minutes=15)

    async def test_latest_candle_is_the_newest_recent_one(self, served: Served) -> None:
        """latest_candle() is the last candle started within two intervals of now, else None."""
        now = T0 + timedelta(minutes=120, seconds=30)
        latest = await served.call(served.client.latest_candle, "ETH/USD", "1m", now=now)
        assert latest is not None
        assert latest["time"] == T0 + timedelta(minutes=119)
        hourly = await served.call(served.client.latest_candle, "ETH/USD", "1h", now=now)
        assert hourly is not None
        assert hourly["time"] == T0 + timedelta(hours=1)
        later = now + timedelta(minutes=5)
        assert await served.call(served.client.latest_candle, "ETH/USD", "1m", now=later) is None

    async def test_symbols_coverage_and_health(self, served: Served) -> None:
        """symbols(), coverage() and health() return the service's documents."""
        (entry,) = await served.call(served.client.symbols)
        assert entry["symbol"] == "ETH/USD"
        assert entry["candles"]["last"] == "2024-03-04T01:59:00Z"
        coverage = await served.call(served.client.coverage, "ETH/USD", START, END)
        assert coverage["covered"] == [
            {"start": "2024-03-04T00:00:00Z", "end": "2024-03-04T01:00:00Z"}
        ]
        assert coverage["gaps"][0]["start"] == "2024-03-04T01:00:00Z"
        assert (await served.call(served.client.health))["healthy"] is True


class TestFrames:
    async def test_arrow_table_has_exact_decimal_columns(self, served: Served) -> None:
        """frame="arrow" is a pyarrow Table whose decimals are decimal128 at the data's scale."""
        table = await served.call(served.client.candles, "ETH/USD", "1m", START, END, frame="arrow")
        assert isinstance(table, pa.Table)
        assert table.column_names == list(CANDLE_FIELDS)
        assert table.schema.field("volume").type == pa.decimal128(9, 8)
        assert table.schema.field("close").type == pa.decimal128(6, 2)
        assert table.column("volume")[0].as_py() == Decimal("0.00000001")
        assert table.column("vwap")[0].as_py() is None

    async def test_pandas_exact_frame_uses_arrow_decimals_and_a_utc_index(
        self, served: Served
    ) -> None:
        """The default pandas frame has ArrowDtype decimals (not objects) and a ns UTC index."""
        df = await served.call(served.client.candles, "ETH/USD", "1h", START, END, frame="pandas")
        assert str(df.index.dtype) == "datetime64[ns, UTC]"
        assert df.index[1] == pd.Timestamp("2024-03-04T01:00:00Z")
        assert df.dtypes["close"] == pd.ArrowDtype(pa.decimal128(6, 2))
        assert df["close"].iloc[0] == Decimal("3059.10")
        assert (df["close"] - df["open"]).iloc[1] == Decimal("119.09")  # exact arithmetic
        assert df.dtypes["trades"] == np.int64

    async def test_pandas_float_frame_is_vectorisable(self, served: Served) -> None:
        """decimals="float" gives float64 columns, a missing vwap as NaN."""
        df = await served.call(
            served.client.candles, "ETH/USD", "1m", START, END, frame="pandas", decimals="float"
        )
        assert {str(df.dtypes[c]) for c in ("open", "high", "low", "close", "volume", "vwap")} == {
            "float64"
        }
        assert df["close"].iloc[-1] == pytest.approx(3119.10)
        assert np.isnan(df["vwap"].iloc[0])
        assert len(df) == 120

    async def test_pandas_trades_keep_nanoseconds_and_null_ids(self, served: Served) -> None:
        """A trade frame keeps sub-µs times in its index and a missing trade_id as <NA>."""
        df = await served.call(
            served.client.trades, "ETH/USD", T0, T0 + timedelta(hours=1), frame="pandas"
        )
        assert df.index[1].value == T0_NS + 1_000_000_007
        assert str(df.dtypes["trade_id"]) == "Int64"
        assert df["trade_id"].isna().tolist() == [False, True, False, False]
        assert df.dtypes["price"] == pd.ArrowDtype(pa.decimal128(12, 8))

    async def test_polars_frames_exact_and_float(self, served: Served) -> None:
        """polars frames have Decimal columns by default and Float64 ones with "float"."""
        exact = await served.call(
            served.client.candles, "ETH/USD", "1h", START, END, frame="polars"
        )
        floats = await served.call(
            served.client.candles, "ETH/USD", "1h", START, END, frame="polars", decimals="float"
        )
        assert isinstance(exact, pl.DataFrame)
        assert exact.schema["close"] == pl.Decimal(6, 2)
        assert exact["close"][0] == Decimal("3059.10")
        assert floats.schema["close"] == pl.Float64
        assert floats["close"][0] == pytest.approx(3059.1)
        assert exact.schema["time"] == pl.Datetime("us", "UTC")

    async def test_rows_can_be_floats_too(self, served: Served) -> None:
        """decimals="float" applies to plain rows as well."""
        rows = await served.call(served.client.trades, "ETH/USD", START, END, decimals="float")
        assert rows[0]["price"] == pytest.approx(3000.12345678)
        assert isinstance(rows[0]["price"], float)

    async def test_exact_flag_still_works_with_a_deprecation_warning(self, served: Served) -> None:
        """exact=False still yields floats, and warns that decimals= replaces it."""
        with pytest.warns(DeprecationWarning, match="decimals="):
            df = await served.call(
                served.client.candles, "ETH/USD", "1h", START, END, frame="pandas", exact=False
            )
        assert str(df.dtypes["close"]) == "float64"
        with (
            pytest.warns(DeprecationWarning, match="deprecated"),
            pytest.raises(ValueError, match="contradicts"),
        ):
            served.client.candles("ETH/USD", "1h", START, END, exact=True, decimals="float")

    async def test_unknown_frame_is_refused(self, served: Served) -> None:
        """An unknown frame name is a ValueError naming the choices."""
        with pytest.raises(ValueError, match="'arrow', 'pandas' or 'polars'"):
            await served.call(served.client.candles, "ETH/USD", "1h", START, END, frame="numpy")

    async def test_record_batch_stream_of_the_wire_schema(self, served: Served) -> None:
        """open_candle_stream() yields the server's chunks (11 rows here) with decimal text."""

        def read() -> tuple[Any, list[Any]]:
            with served.client.open_candle_stream("ETH/USD", "1m", START, END) as reader:
                return reader.schema, list(reader)

        schema, batches = await served.call(read)
        assert [b.num_rows for b in batches] == [11] * 10 + [10]
        assert schema.field("close").type == pa.string()
        assert schema.metadata[b"interval"] == b"1m"


class TestErrors:
    async def test_bad_parameter_is_bad_request_naming_it(self, served: Served) -> None:
        """A 400 raises BadRequest carrying the status and the server's message."""
        with pytest.raises(BadRequest, match="'interval'") as caught:
            await served.call(served.client.candles, "ETH/USD", "7x", START, END)
        assert caught.value.status == 400
        with pytest.raises(BadRequest, match="'end'"):
            await served.call(served.client.trades, "ETH/USD", END, START)

    async def test_unknown_symbol_is_not_found(self, served: Served) -> None:
        """A 404 raises NotFound for every call that names a symbol."""
        with pytest.raises(NotFound, match="DOGE/EUR"):
            await served.call(served.client.candles, "DOGE/EUR", "1m", START, END)
        with pytest.raises(NotFound):
            await served.call(served.client.coverage, "DOGE/EUR", START, END)

    async def test_database_outage_is_service_unavailable(
        self, served: Served, pg_admin_dsn: str, database_url: str
    ) -> None:
        """With the database down the service answers 503, raised as ServiceUnavailable."""
        outage = Outage(pg_admin_dsn, database_url)
        await outage.start()
        try:
            with pytest.raises(ServiceUnavailable) as caught:
                await served.call(served.client.trades, "ETH/USD", START, END)
        finally:
            await outage.end()
        assert caught.value.status == 503
        assert len(await served.call(served.client.trades, "ETH/USD", START, END)) == 4

    async def test_unhealthy_service_is_service_unavailable(
        self, storage: Storage, socket_path: Path, nursery: trio.Nursery
    ) -> None:
        """health() raises ServiceUnavailable when /healthz answers 503."""
        await nursery.start(make_app(storage, LiveHub(), healthy=False).serve, socket_path)
        with Client(str(socket_path)) as client, pytest.raises(ServiceUnavailable):
            await trio.to_thread.run_sync(client.health)

    # httpcore 1.0.9 never closes the socket of a failed Unix connect; the client drops it
    # at once, which closes it with this warning.
    @pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
    async def test_no_service_is_service_not_running(self, socket_path: Path) -> None:
        """Without a listener (no file, or a stale one) calls raise ServiceNotRunning."""
        with Client(str(socket_path)) as client:
            with pytest.raises(ServiceNotRunning, match=str(socket_path)):
                await trio.to_thread.run_sync(client.symbols)
            await trio.Path(socket_path).touch()
            with pytest.raises(ServiceNotRunning):
                await trio.to_thread.run_sync(lambda: next(client.stream()))

    async def test_naive_time_is_refused_before_any_request(self, socket_path: Path) -> None:
        """A naive datetime is a ValueError: histdata never guesses a time zone."""
        with Client(str(socket_path)) as client, pytest.raises(ValueError, match="naive"):
            client.candles("ETH/USD", "1m", datetime(2024, 1, 1), datetime(2024, 1, 2))

    def test_errors_share_one_base(self) -> None:
        """Every client error is a ClientError, so one except clause catches them all."""
        for cls in (BadRequest, NotFound, ServiceUnavailable, ServiceNotRunning, StreamDropped):
            assert issubclass(cls, ClientError)


class TestStream:
    async def test_stream_yields_live_events_for_the_symbols(self, served: Served) -> None:
        """The iterator yields the chosen symbols' trades and candles as dicts, hello skipped."""
        events = served.client.stream(["XETHZUSD"])

        def take(n: int) -> list[dict[str, Any]]:
            return [next(events) for _ in range(n)]

        async with trio.open_nursery() as nursery:
            got: list[dict[str, Any]] = []

            async def reader() -> None:
                got.extend(await served.call(take, 2))

            nursery.start_soon(reader)
            await until(lambda: served.hub.statistics().subscribers == 1)
            served.hub.publish_trades([Trade("BTC/USD", 1, Decimal(1), Decimal(1)), *trades(1)])
            served.hub.publish_candles(candles(1))
        await served.call(events.close)
        assert [(e["type"], e["symbol"]) for e in got] == [
            ("trade", "ETH/USD"),
            ("candle", "ETH/USD"),
        ]
        assert got[0]["price"] == "3000.12345678"
        assert got[1]["final"] is True

    async def test_falling_behind_raises_stream_dropped(self, served: Served) -> None:
        """A client whose queue overflows gets what was queued, then StreamDropped."""
        received: list[dict[str, Any]] = []

        def consume() -> StreamDropped:
            try:
                for event in served.client.stream():
                    received.append(event)
            except StreamDropped as exc:
                return exc
            raise AssertionError("the stream ended without being dropped")

        async with trio.open_nursery() as nursery:
            outcome: list[StreamDropped] = []

            async def reader() -> None:
                outcome.append(await served.call(consume))

            nursery.start_soon(reader)
            await until(lambda: served.hub.statistics().subscribers == 1)
            served.hub.publish_trades(trades(10))  # the queue holds 2
        assert outcome[0].reason == DROP_SLOW
        # What was queued (2), plus one if the server was already waiting for the first event.
        assert [e["trade_id"] for e in received] in ([500, None], [500, None, 502])
        assert served.hub.statistics().dropped == {DROP_SLOW: 1}
