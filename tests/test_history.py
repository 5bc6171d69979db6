"""Coverage reports, gap marks, candles derived from trades, and cross-source dedupe."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from stored import stored_candles  # type: ignore[import-not-found]

from histdata.actors.rollup import RollupActor
from histdata.model import NS_PER_S, Candle, CandleSource, CoverageSpan, Trade
from histdata.storage import Storage
from histdata.storage.candles import (
    candle_mismatches,
    derive_candles,
    derive_observed,
    mismatch_counts,
    refetch_minutes,
    write_candles,
)
from histdata.storage.coverage import HoleKind, add_coverage, coverage_report, mark_unrecoverable
from histdata.storage.trades import drop_cross_source_duplicates, write_trades

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
S0 = int(T0.timestamp())
MIN = timedelta(minutes=1)


def trade(second: float, price: str, volume: str, trade_id: int | None, seq: int = 0) -> Trade:
    return Trade(
        "BTC/USD",
        int(Decimal(str(second)) * NS_PER_S),
        Decimal(price),
        Decimal(volume),
        trade_id=trade_id,
        seq=seq,
    )


def span(stream: str, source: str, start: datetime, end: datetime) -> tuple[str, CoverageSpan]:
    return ("BTC/USD", CoverageSpan(stream, source, start, end))  # type: ignore[arg-type]


def live_candle(values: tuple[str, ...]) -> Candle:
    o, h, lo, c, v, vwap = (Decimal(x) for x in values)
    return Candle("BTC/USD", T0, o, h, lo, c, v, vwap, 2, source=CandleSource.LIVE)


class TestCoverageReport:
    async def test_holes_empty_ranges_and_marks_are_told_apart(self, storage: Storage) -> None:
        """Unobserved, marked-unrecoverable and observed-without-trades ranges are distinct."""
        await write_trades(
            storage,
            [trade(S0 + 30, "10", "1", 1), trade(S0 + 4 * 60 + 5, "11", "1", 2)],
            source="live",
            coverage=[span("trades", "live", T0, T0 + 5 * MIN)],
        )
        await add_coverage(
            storage, "BTC/USD", CoverageSpan("trades", "rest", T0 + 8 * MIN, T0 + 10 * MIN)
        )
        await mark_unrecoverable(storage, "BTC/USD", "trades", T0 + 6 * MIN, T0 + 7 * MIN, "gone")
        report = await coverage_report(storage, "BTC/USD", "trades", T0, T0 + 10 * MIN)
        assert [(h.start, h.end, h.kind) for h in report.holes] == [
            (T0 + 5 * MIN, T0 + 6 * MIN, HoleKind.NOT_OBSERVED),
            (T0 + 6 * MIN, T0 + 7 * MIN, HoleKind.UNRECOVERABLE),
            (T0 + 7 * MIN, T0 + 8 * MIN, HoleKind.NOT_OBSERVED),
        ]
        assert report.holes[1].reason == "gone"
        assert [(e.start, e.end) for e in report.empty] == [
            (T0 + MIN, T0 + 4 * MIN),
            (T0 + 8 * MIN, T0 + 10 * MIN),
        ]
        assert report.repairable == [(T0 + 5 * MIN, T0 + 6 * MIN), (T0 + 7 * MIN, T0 + 8 * MIN)]

    async def test_fully_observed_range_reports_no_holes(self, storage: Storage) -> None:
        """Coverage from several sources that together span the range leaves no hole."""
        await add_coverage(storage, "BTC/USD", CoverageSpan("trades", "csv", T0, T0 + 3 * MIN))
        await add_coverage(
            storage, "BTC/USD", CoverageSpan("trades", "live", T0 + 2 * MIN, T0 + 6 * MIN)
        )
        report = await coverage_report(storage, "BTC/USD", "trades", T0, T0 + 6 * MIN)
        assert report.holes == []


class TestDeriveCandles:
    async def test_candles_are_exact_including_same_second_trades(self, storage: Storage) -> None:
        """OHLC follows trade order (time, then id/seq), volume, count and VWAP are exact."""
        trades = [
            trade(S0 + 1, "100.1", "0.5", None, 0),
            trade(S0 + 1, "100.3", "0.25", None, 1),
            trade(S0 + 1, "99.9", "0.25", None, 2),
            trade(S0 + 59, "100.2", "1", None, 0),
            trade(S0 + 59, "100.0", "2", None, 1),  # the close: last by seq in the last second
            trade(S0 + 125, "101", "3", None, 0),
        ]
        await write_trades(
            storage, trades, source="csv", coverage=[span("trades", "csv", T0, T0 + 3 * MIN)]
        )
        result = await derive_candles(storage, "BTC/USD", T0, T0 + 3 * MIN)
        assert result.derived == 2
        candles = await stored_candles(storage, "BTC/USD", T0, T0 + 3 * MIN)
        first = candles[0]
        assert (first.open, first.high, first.low, first.close) == (
            Decimal("100.1"),
            Decimal("100.3"),
            Decimal("99.9"),
            Decimal("100.0"),
        )
        assert (first.volume, first.trades, first.source) == (Decimal("4"), 5, CandleSource.TRADES)
        pv = sum(t.price * t.volume for t in trades[:5])
        assert first.vwap == pv / Decimal(4)
        assert candles[1].time == T0 + 2 * MIN
        report = await coverage_report(storage, "BTC/USD", "candles", T0, T0 + 3 * MIN)
        assert report.holes == []
        assert [(e.start, e.end) for e in report.empty] == [(T0 + MIN, T0 + 2 * MIN)]

    async def test_partly_observed_minute_is_not_derived(self, storage: Storage) -> None:
        """A minute whose trades were only partly observed gets no candle and no coverage."""
        await write_trades(
            storage,
            [trade(S0 + 10, "1", "1", 5), trade(S0 + 70, "1", "1", 6)],
            source="live",
            coverage=[span("trades", "live", T0, T0 + MIN + timedelta(seconds=30))],
        )
        result = await derive_candles(storage, "BTC/USD", T0, T0 + 2 * MIN)
        assert result.derived == 1
        assert result.covered == [(T0, T0 + MIN)]

    async def test_kraken_candle_is_kept_beside_ours_and_compared(self, storage: Storage) -> None:
        """Where Kraken has a candle, ours is served, Kraken's is kept, and a mismatch recorded."""
        await write_trades(
            storage,
            [trade(S0 + 5, "10", "1", 1), trade(S0 + 6, "12", "1", 2)],
            source="rest",
            coverage=[span("trades", "rest", T0, T0 + MIN)],
        )
        kraken = Candle(
            "BTC/USD",
            T0,
            Decimal(10),
            Decimal(12),
            Decimal(10),
            Decimal(12),
            Decimal(2),
            Decimal(11),
            3,
            source=CandleSource.REST,
        )
        await write_candles(storage, [kraken])
        result = await derive_candles(storage, "BTC/USD", T0, T0 + MIN)
        assert result.compared == 1
        assert result.mismatches[0].fields == {"trades": (2, 3)}
        stored = await stored_candles(storage, "BTC/USD", T0, T0 + MIN)
        assert stored[0].source is CandleSource.TRADES
        assert [m.time for m in await candle_mismatches(storage, "BTC/USD", T0, T0 + MIN)] == [T0]
        assert await refetch_minutes(storage, "BTC/USD", T0, T0 + MIN) == [(T0, T0 + MIN)]

    async def test_kraken_candle_arriving_later_is_diverted(self, storage: Storage) -> None:
        """A Kraken candle written after ours goes beside it; an agreeing one is no mismatch."""
        await write_trades(
            storage,
            [trade(S0 + 5, "10", "1", 1), trade(S0 + 6, "12", "3", 2)],
            source="rest",
            coverage=[span("trades", "rest", T0, T0 + MIN)],
        )
        await derive_candles(storage, "BTC/USD", T0, T0 + MIN)
        # Kraken prints one decimal: 11.5 exactly matches (10·1 + 12·3) / 4.
        agreeing = live_candle(("10", "12", "10", "12", "4", "11.5"))
        result = await write_candles(storage, [agreeing])
        assert result.inserted == 1
        [served] = await stored_candles(storage, "BTC/USD", T0, T0 + MIN)
        assert served.source is CandleSource.TRADES
        assert await candle_mismatches(storage, "BTC/USD", T0, T0 + MIN) == []
        off = live_candle(("10", "12", "10", "12", "4", "11.6"))
        await write_candles(storage, [off])
        [mismatch] = await candle_mismatches(storage, "BTC/USD", T0, T0 + MIN)
        assert mismatch.fields == {"vwap": (Decimal("11.5"), Decimal("11.6"))}
        assert await mismatch_counts(storage) == {"BTC/USD": 1}

    async def test_not_derived_lists_minutes_without_whole_coverage(self, storage: Storage) -> None:
        """Minutes outside complete trades coverage are returned as not derived."""
        await write_trades(
            storage,
            [trade(S0 + 70, "1", "1", 6)],
            source="rest",
            coverage=[span("trades", "rest", T0 + MIN, T0 + 2 * MIN)],
        )
        result = await derive_candles(storage, "BTC/USD", T0, T0 + 3 * MIN)
        assert result.covered == [(T0 + MIN, T0 + 2 * MIN)]
        assert result.not_derived == [(T0, T0 + MIN), (T0 + 2 * MIN, T0 + 3 * MIN)]


class TestCrossSource:
    async def test_rest_trades_matching_csv_rows_are_dropped(self, storage: Storage) -> None:
        """REST trades whose second, price and volume match stored id-less rows are dropped."""
        await write_trades(
            storage, [trade(S0, "5", "1", None, 0), trade(S0, "5", "1", None, 1)], source="csv"
        )
        incoming = [
            trade(S0 + 0.2, "5", "1", 10),
            trade(S0 + 0.7, "5", "1.0", 11),
            trade(S0 + 0.9, "5", "1", 12),
            trade(S0 + 1.1, "5", "1", 13),
        ]
        kept, dropped = await drop_cross_source_duplicates(storage, incoming)
        assert dropped == 2
        assert [t.trade_id for t in kept] == [12, 13]


class TestDeriveObserved:
    async def test_live_minutes_get_our_candle_beside_krakens(self, storage: Storage) -> None:
        """Finished, observed live minutes are derived once; Kraken's candle is kept beside."""
        kraken = live_candle(("10", "12", "10", "12", "4", "11.5"))
        await write_candles(storage, [kraken])
        await write_trades(
            storage,
            [
                trade(S0 + 5, "10", "1", 1),
                trade(S0 + 6, "12", "3", 2),
                trade(S0 + 70, "11", "1", 3),
            ],
            source="live",
            coverage=[span("trades", "live", T0, T0 + MIN + timedelta(seconds=30))],
        )
        now = T0 + 5 * MIN
        first = await derive_observed(storage, now=now)
        assert (first.inserted, first.compared, first.mismatches) == (1, 1, [])
        [served] = await stored_candles(storage, "BTC/USD", T0, T0 + 2 * MIN)
        assert (served.time, served.source, served.vwap) == (
            T0,
            CandleSource.TRADES,
            Decimal("11.5"),
        )
        again = await derive_observed(storage, now=now)
        assert (again.inserted, again.updated) == (0, 0)
        # Coverage reaches the second minute's end: only then is it derived.
        await add_coverage(storage, "BTC/USD", CoverageSpan("trades", "live", T0, T0 + 2 * MIN))
        later = await derive_observed(storage, now=now)
        assert later.inserted == 1

    async def test_unfinished_minute_is_not_derived(self, storage: Storage) -> None:
        """The minute of ``now`` is left alone even when coverage runs to its end."""
        await write_trades(
            storage,
            [trade(S0 + 5, "10", "1", 1)],
            source="live",
            coverage=[span("trades", "live", T0, T0 + MIN)],
        )
        result = await derive_observed(storage, now=T0 + timedelta(seconds=50))
        assert result.inserted == 0
        assert await stored_candles(storage, "BTC/USD", T0, T0 + MIN) == []

    async def test_kraken_candle_in_an_observed_empty_minute_is_a_mismatch(
        self, storage: Storage
    ) -> None:
        """Kraken's candle with trades, where we observed none, is kept aside, not served."""
        await write_trades(
            storage, [], source="live", coverage=[span("trades", "live", T0, T0 + MIN)]
        )
        await derive_candles(storage, "BTC/USD", T0, T0 + MIN)
        await write_candles(storage, [live_candle(("10", "12", "10", "12", "4", "11.5"))])
        assert await stored_candles(storage, "BTC/USD", T0, T0 + MIN) == []
        [mismatch] = await candle_mismatches(storage, "BTC/USD", T0, T0 + MIN)
        assert mismatch.fields["trades"] == (0, 2)


class TestRollupActor:
    async def test_a_drain_derives_observed_minutes_and_counts_them(self, storage: Storage) -> None:
        """The rollup actor derives the finished observed minutes before it rolls them up."""
        start = datetime.now(UTC).replace(second=0, microsecond=0) - 10 * MIN
        base = int(start.timestamp())
        await write_trades(
            storage,
            [trade(base + 5, "10", "1", 1), trade(base + 65, "11", "1", 2)],
            source="live",
            coverage=[span("trades", "live", start, start + 2 * MIN)],
        )
        actor = RollupActor(lambda: storage)
        await actor.drain()
        stats = actor.statistics()
        assert (stats.candles_derived, stats.candle_mismatches) == (2, 0)
        assert stats.ranges_claimed >= 1
