"""Storage API against a real PostgreSQL: idempotency, exactness, coverage, cursors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from stored import count_trades, stored_candles  # type: ignore[import-not-found]

from histdata.errors import StorageNotOpen, UnknownSymbol
from histdata.model import (
    NS_PER_S,
    Candle,
    CandleSource,
    CoverageSpan,
    LiveTrade,
    Side,
    Trade,
    datetime_to_ns,
)
from histdata.storage import Storage, open_storage
from histdata.storage.candles import write_candles
from histdata.storage.coverage import add_coverage, covered, gaps
from histdata.storage.cursors import delete_cursor, get_cursor, set_cursor
from histdata.storage.symbol_table import register_symbol, register_symbols, stored_symbols
from histdata.storage.trades import last_trade, read_trades, write_trades
from histdata.symbols import SymbolRegistry

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
T0_NS = datetime_to_ns(T0)


def trade(i: int, **kw: object) -> Trade:
    fields: dict[str, object] = {
        "symbol": "BTC/USD",
        "time_ns": T0_NS + i * 250_000_000,
        "price": Decimal("61000.1") + i,
        "volume": Decimal("0.00012345"),
        "side": Side.BUY if i % 2 else Side.SELL,
        "ord_type": "limit",
        "trade_id": 1000 + i,
    }
    fields.update(kw)
    return Trade(**fields)  # type: ignore[arg-type]


def candle(minute: int, **kw: object) -> Candle:
    fields: dict[str, object] = {
        "symbol": "BTC/USD",
        "time": T0 + timedelta(minutes=minute),
        "open": Decimal("100.0"),
        "high": Decimal("101.5"),
        "low": Decimal("99.25"),
        "close": Decimal("100.5"),
        "volume": Decimal("3.14159265"),
        "vwap": Decimal("100.3"),
        "trades": 7,
        "source": CandleSource.REST,
        "final": True,
    }
    fields.update(kw)
    return Candle(**fields)  # type: ignore[arg-type]


END = T0 + timedelta(days=1)


class TestTradeWrites:
    async def test_live_trade_text_is_stored_digit_for_digit(self, storage: Storage) -> None:
        """A LiveTrade's number text reads back as the same decimal, scale and all."""
        live = LiveTrade(
            symbol="BTC/USD",
            time_ns=T0_NS + 123_456_789,
            price="61000.10",
            volume="0.00012000",
            side=Side.SELL,
            ord_type="market",
            trade_id=42,
        )
        result = await write_trades(storage, [live, trade(1)], source="live")
        assert result.inserted == 2
        stored = await read_trades(storage, "BTC/USD", T0, END)
        assert [str(t.price) for t in stored] == ["61000.10", "61001.1"]
        assert [str(t.volume) for t in stored] == ["0.00012000", "0.00012345"]
        assert stored[0] == live.to_trade()

    async def test_same_batch_twice_adds_nothing(self, storage: Storage) -> None:
        """Writing the same batch again stores no new rows and reports them as present."""
        batch = [trade(i) for i in range(100)]
        first = await write_trades(storage, batch, source="rest")
        second = await write_trades(storage, batch, source="rest")
        assert (first.inserted, first.present) == (100, 0)
        assert (second.inserted, second.present) == (0, 100)
        assert await count_trades(storage, "BTC/USD", T0, END) == 100

    async def test_one_duplicate_keeps_the_rest(self, storage: Storage) -> None:
        """A batch containing one already-stored trade still stores all the others."""
        await write_trades(storage, [trade(5)], source="live")
        result = await write_trades(storage, [trade(i) for i in range(10)], source="live")
        assert (result.inserted, result.present) == (9, 1)
        stored = await read_trades(storage, "BTC/USD", T0, END)
        assert [t.trade_id for t in stored] == [1000 + i for i in range(10)]

    async def test_same_trade_from_another_source_with_coarser_time_is_a_duplicate(
        self, storage: Storage
    ) -> None:
        """A trade id already stored with a REST stamp is not re-added from its µs WS stamp."""
        rest = trade(1, time_ns=T0_NS + 827_736_900)
        ws = trade(1, time_ns=T0_NS + 827_736_000)
        await write_trades(storage, [rest], source="rest")
        result = await write_trades(storage, [ws], source="live")
        assert result.inserted == 0
        assert await count_trades(storage, "BTC/USD", T0, END) == 1

    async def test_same_trade_from_another_source_a_millisecond_apart_is_a_duplicate(
        self, storage: Storage
    ) -> None:
        """A live batch of new trades that holds one trade already stored from REST under
        another time stores only the new ones: the batch is not taken for wholly new."""
        await write_trades(storage, [trade(3, time_ns=T0_NS + 750_000_000)], source="rest")
        live = [trade(i) for i in range(3, 8)]
        live[0] = trade(3, time_ns=T0_NS + 750_700_000)  # 0.7 ms after its REST time
        result = await write_trades(storage, live, source="live")
        assert (result.inserted, result.present) == (4, 1)
        stored = await read_trades(storage, "BTC/USD", T0, END)
        assert [t.trade_id for t in stored] == [1003, 1004, 1005, 1006, 1007]

    async def test_a_batch_holding_a_trade_twice_stores_it_once(self, storage: Storage) -> None:
        """New trades with one of them twice: the plain insert fails on the key, and the
        write is redone with the checks, its coverage and cursor still in one piece."""
        span = CoverageSpan("trades", "rest", T0, T0 + timedelta(seconds=3))
        batch = [trade(i) for i in range(6)] + [trade(2)]
        result = await write_trades(
            storage,
            batch,
            source="rest",
            coverage=[("BTC/USD", span)],
            cursor=("backfill:BTC/USD", "42"),
        )
        assert (result.inserted, result.present) == (6, 1)
        stored = await read_trades(storage, "BTC/USD", T0, END)
        assert [t.trade_id for t in stored] == [1000 + i for i in range(6)]
        assert await get_cursor(storage, "backfill:BTC/USD") == "42"
        assert await covered(storage, "BTC/USD", "trades", T0, END) == [(span.start, span.end)]

    async def test_consecutive_batches_sharing_a_timestamp_are_all_kept(
        self, storage: Storage
    ) -> None:
        """A batch whose first trade shares the previous batch's last timestamp (a sweep
        split across two batches) keeps every trade of both."""
        same = T0_NS + 500_000_000
        first = [trade(0), trade(1, time_ns=same)]
        second = [trade(2, time_ns=same), trade(3)]
        assert (await write_trades(storage, first, source="live")).inserted == 2
        assert (await write_trades(storage, second, source="live")).inserted == 2
        assert (await write_trades(storage, second, source="live")).inserted == 0
        stored = await read_trades(storage, "BTC/USD", T0, END)
        assert [t.trade_id for t in stored] == [1000, 1001, 1002, 1003]

    async def test_trades_sharing_a_second_are_all_kept(self, storage: Storage) -> None:
        """Id-less CSV trades with identical time, price and volume are distinct rows by seq."""
        same = [Trade("BTC/USD", T0_NS, Decimal("50000"), Decimal("1"), seq=i) for i in range(5)]
        assert (await write_trades(storage, same, source="csv")).inserted == 5
        assert (await write_trades(storage, same, source="csv")).inserted == 0
        stored = await read_trades(storage, "BTC/USD", T0, END)
        assert [t.seq for t in stored] == [0, 1, 2, 3, 4]

    async def test_decimals_and_nanoseconds_round_trip_exactly(self, storage: Storage) -> None:
        """Prices, volumes and nanosecond timestamps come back digit for digit."""
        original = Trade(
            "ETH/USD",
            1_688_669_597 * NS_PER_S + 827_736_900,
            Decimal("30243.40000"),
            Decimal("0.000000012345678901234567890"),
            Side.SELL,
            "market",
            61_044_952,
        )
        await write_trades(storage, [original], source="rest")
        stored = await read_trades(
            storage, "ETH/USD", datetime(2023, 7, 6, tzinfo=UTC), datetime(2023, 7, 7, tzinfo=UTC)
        )
        assert stored == [original]
        assert str(stored[0].price) == "30243.40000"

    async def test_keyset_pages_go_through_everything_in_order(self, storage: Storage) -> None:
        """Keyset paging returns every trade once, in trade order, including id-less rows."""
        with_ids = [trade(i) for i in range(25)]
        id_less = [Trade("BTC/USD", T0_NS, Decimal("1"), Decimal("1"), seq=i) for i in range(7)]
        await write_trades(storage, with_ids, source="rest")
        await write_trades(storage, id_less, source="csv")
        flat: list[Trade] = []
        while page := await read_trades(
            storage,
            "BTC/USD",
            T0,
            END,
            limit=4,
            after=(flat[-1].time, flat[-1].trade_id, flat[-1].seq) if flat else None,
        ):
            flat.extend(page)
        assert flat == await read_trades(storage, "BTC/USD", T0, END)
        assert len(flat) == 32

    async def test_last_trade_is_the_newest(self, storage: Storage) -> None:
        """last_trade returns the trade with the greatest time and id, or None when empty."""
        assert await last_trade(storage, "BTC/USD") is None
        await write_trades(storage, [trade(i) for i in range(10)], source="live")
        last = await last_trade(storage, "XBTUSD")
        assert last is not None
        assert last.trade_id == 1009

    async def test_unknown_symbol_is_refused(self, storage: Storage) -> None:
        """A trade for a pair the registry does not know raises UnknownSymbol, storing nothing."""
        with pytest.raises(UnknownSymbol):
            await write_trades(storage, [trade(0, symbol="NOPE/USD")], source="live")


class TestSymbolRows:
    async def test_many_registered_at_once(self, storage: Storage) -> None:
        """Several pairs get their rows (and distinct ids) in one call, any spelling."""
        ids = await register_symbols(storage, ["BTC/USD", "XETHZUSD", "XRP/EUR"])
        assert sorted(ids) == ["BTC/USD", "XETHZUSD", "XRP/EUR"]
        assert len(set(ids.values())) == 3
        assert await register_symbol(storage, "ETH/USD") == ids["XETHZUSD"]

    async def test_an_unknown_one_registers_none(self, storage: Storage) -> None:
        """One unknown pair among them raises and leaves no row behind."""
        with pytest.raises(UnknownSymbol):
            await register_symbols(storage, ["BTC/USD", "NOPE/USD"])
        assert await stored_symbols(storage) == []


class TestCandleWrites:
    async def test_in_progress_candle_is_upserted(self, storage: Storage) -> None:
        """Successive versions of a live minute replace each other; the final one stays."""
        await write_candles(storage, [candle(0, source=CandleSource.LIVE, final=False, trades=1)])
        await write_candles(storage, [candle(0, source=CandleSource.LIVE, final=False, trades=2)])
        result = await write_candles(storage, [candle(0, source=CandleSource.LIVE, trades=3)])
        assert (result.inserted, result.updated) == (0, 1)
        [stored] = await stored_candles(storage, "BTC/USD", T0, END)
        assert (stored.trades, stored.final) == (3, True)

    async def test_final_candle_is_not_overwritten_by_another_source(
        self, storage: Storage
    ) -> None:
        """A final Kraken candle survives a candle derived from trades for the same minute."""
        await write_candles(storage, [candle(0)])
        result = await write_candles(storage, [candle(0, source=CandleSource.TRADES, trades=99)])
        assert result.unchanged == 1
        [stored] = await stored_candles(storage, "BTC/USD", T0, END)
        assert stored.trades == 7

    async def test_rewrite_is_unchanged_and_exact(self, storage: Storage) -> None:
        """Re-importing the same candles changes nothing and values round-trip exactly."""
        batch = [candle(i, vwap=None, source=CandleSource.CSV) for i in range(3)]
        assert (await write_candles(storage, batch)).inserted == 3
        again = await write_candles(storage, batch)
        assert (again.inserted, again.updated, again.unchanged) == (0, 0, 3)
        assert await stored_candles(storage, "BTC/USD", T0, END) == batch

    async def test_changed_minutes_are_logged_for_rollups(
        self, storage: Storage, database_url: str
    ) -> None:
        """Every write that changes candles appends a dirty range covering them."""
        await write_candles(storage, [candle(3), candle(7)])
        await write_candles(storage, [candle(3)])  # unchanged: no new dirty range
        with psycopg.connect(database_url) as conn:
            rows = conn.execute("SELECT start_time, end_time FROM rollup_dirty").fetchall()
        assert rows == [(T0 + timedelta(minutes=3), T0 + timedelta(minutes=8))]

    async def test_rollup_intervals_are_refused(self, storage: Storage) -> None:
        """Only 1-minute candles are stored directly."""
        with pytest.raises(ValueError, match="1-minute"):
            await write_candles(storage, [candle(0, interval_min=5)])


class TestCoverage:
    async def test_touching_ranges_merge_and_gaps_are_the_complement(
        self, storage: Storage
    ) -> None:
        """Adjacent observations merge into one range; gaps list exactly the unobserved parts."""
        hour = timedelta(hours=1)
        for start, end in [(0, 1), (1, 2), (4, 5)]:
            await add_coverage(
                storage,
                "BTC/USD",
                CoverageSpan("trades", "live", T0 + start * hour, T0 + end * hour),
            )
        await add_coverage(
            storage, "BTC/USD", CoverageSpan("trades", "rest", T0 + 3 * hour, T0 + 4 * hour)
        )
        observed = await covered(storage, "BTC/USD", "trades", T0, T0 + 6 * hour)
        assert observed == [(T0, T0 + 2 * hour), (T0 + 3 * hour, T0 + 5 * hour)]
        holes = await gaps(storage, "BTC/USD", "trades", T0, T0 + 6 * hour)
        assert holes == [(T0 + 2 * hour, T0 + 3 * hour), (T0 + 5 * hour, T0 + 6 * hour)]
        assert await gaps(storage, "BTC/USD", "candles", T0, T0 + hour) == [(T0, T0 + hour)]

    async def test_coverage_and_cursor_commit_with_the_trades(self, storage: Storage) -> None:
        """A page's trades, its coverage and its cursor are stored together."""
        span = CoverageSpan("trades", "rest", T0, T0 + timedelta(seconds=3))
        await write_trades(
            storage,
            [trade(i) for i in range(10)],
            source="rest",
            coverage=[("BTC/USD", span)],
            cursor=("backfill:BTC/USD", "1709294402500000000"),
        )
        assert await get_cursor(storage, "backfill:BTC/USD") == "1709294402500000000"
        assert await covered(storage, "BTC/USD", "trades", T0, END) == [(span.start, span.end)]

    async def test_one_write_covers_many_symbols_merging_each(self, storage: Storage) -> None:
        """A mark over several symbols merges each symbol's spans with its own ranges only:
        touching ones join, separate ones stay apart, other symbols are untouched."""
        hour = timedelta(hours=1)

        def span(start: int, end: int) -> CoverageSpan:
            return CoverageSpan("trades", "live", T0 + start * hour, T0 + end * hour)

        await add_coverage(storage, "BTC/USD", span(0, 1))
        await add_coverage(storage, "ETH/USD", span(2, 3))
        await write_trades(
            storage,
            [],
            source="live",
            coverage=[
                ("ETH/USD", span(5, 6)),
                ("BTC/USD", span(1, 2)),
                ("ETH/USD", span(3, 4)),
                ("XRP/EUR", span(0, 1)),
                ("BTC/USD", span(2, 3)),
            ],
        )
        end = T0 + 10 * hour
        assert await covered(storage, "BTC/USD", "trades", T0, end) == [(T0, T0 + 3 * hour)]
        assert await covered(storage, "ETH/USD", "trades", T0, end) == [
            (T0 + 2 * hour, T0 + 4 * hour),
            (T0 + 5 * hour, T0 + 6 * hour),
        ]
        assert await covered(storage, "XRP/EUR", "trades", T0, end) == [(T0, T0 + hour)]
        assert await covered(storage, "XRP/EUR", "candles", T0, end) == []
        rows = await storage.run(lambda c: c.execute("SELECT count(*) FROM coverage").fetchone())
        assert rows == (4,)  # stored merged: BTC one range, ETH two, XRP one


class TestCursors:
    async def test_cursor_round_trip_is_exact_text(self, storage: Storage) -> None:
        """A 19-digit nanosecond cursor is stored and returned unchanged, and can be deleted."""
        assert await get_cursor(storage, "c") is None
        await set_cursor(storage, "c", "1616666442301045766")
        await set_cursor(storage, "c", "1616666442301045767")
        assert await get_cursor(storage, "c") == "1616666442301045767"
        await delete_cursor(storage, "c")
        assert await get_cursor(storage, "c") is None


class TestLifecycle:
    async def test_use_after_close_fails_clearly(self, database_url: str) -> None:
        """Storage used after its context ends raises StorageNotOpen, not AttributeError."""
        async with open_storage(database_url, registry=SymbolRegistry.shipped()) as opened:
            await opened.ping()
        with pytest.raises(StorageNotOpen, match="not open"):
            await read_trades(opened, "BTC/USD", T0, END)

    async def test_unreachable_database_is_transient(self) -> None:
        """A server that refuses connections raises DatabaseUnavailable within the timeout."""
        from histdata.errors import DatabaseUnavailable

        with pytest.raises(DatabaseUnavailable):
            async with open_storage(
                "host=127.0.0.1 port=1 dbname=x connect_timeout=1", connect_timeout_s=1.0
            ):
                pass


class TestDirtyRanges:
    async def test_far_apart_minutes_get_separate_ranges(
        self, storage: Storage, database_url: str
    ) -> None:
        """A repaired old minute and a current one in one batch do not dirty the span between."""
        await write_candles(storage, [candle(0), candle(1), candle(60 * 24 * 30)])
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "SELECT start_time, end_time FROM rollup_dirty ORDER BY start_time"
            ).fetchall()
        month = timedelta(days=30)
        assert rows == [
            (T0, T0 + timedelta(minutes=2)),
            (T0 + month, T0 + month + timedelta(minutes=1)),
        ]


class TestReadOnlyPaths:
    async def test_reads_of_a_symbol_never_stored_return_nothing(
        self, storage: Storage, database_url: str
    ) -> None:
        """Reading a known but never-stored symbol returns empty results and writes no row."""
        assert await read_trades(storage, "ETH/USD", T0, END) == []
        assert await stored_candles(storage, "ETH/USD", T0, END) == []
        assert await covered(storage, "ETH/USD", "trades", T0, END) == []
        assert await last_trade(storage, "ETH/USD") is None
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT count(*) FROM symbols").fetchone() == (0,)


class TestSymbolRegistration:
    async def test_an_id_from_a_rolled_back_registration_is_not_kept(
        self, storage: Storage, database_url: str
    ) -> None:
        """A transaction that registered a symbol and then failed leaves no cached id; the
        next write registers it again, and the id it uses has a committed row."""

        def register_then_fail(conn: psycopg.Connection[object]) -> None:
            storage.symbol_id(conn, "ETH/USD")
            conn.execute("SELECT 1/0")

        with pytest.raises(psycopg.errors.DivisionByZero):
            await storage.run(register_then_fail)
        # Another process takes the id the rolled-back insert had used.
        async with open_storage(database_url, pool_max=1) as other:
            await register_symbol(other, "SOL/USD")
        eth = Trade("ETH/USD", T0_NS, Decimal("3000.5"), Decimal("1"), trade_id=1)
        await write_trades(storage, [eth], source="live")
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "SELECT s.symbol FROM trades t JOIN symbols s ON s.id = t.symbol_id"
            ).fetchall()
        assert rows == [("ETH/USD",)]


class TestCandleVersions:
    async def test_an_older_in_progress_version_never_replaces_a_newer_one(
        self, storage: Storage
    ) -> None:
        """A replayed in-progress candle with fewer trades leaves the newer version stored."""
        newer = candle(0, trades=9, final=False, close=Decimal("101"))
        older = candle(0, trades=4, final=False, close=Decimal("99"))
        await write_candles(storage, [newer])
        await write_candles(storage, [older])
        (stored,) = await stored_candles(storage, "BTC/USD", T0, END)
        assert (stored.trades, stored.close) == (9, Decimal("101"))
