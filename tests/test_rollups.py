"""Rollups against an independent computation from random 1-minute candles (real database)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import psycopg
import pytest

from histdata.model import Candle, CandleSource
from histdata.storage import Storage
from histdata.storage.candles import write_candles
from histdata.storage.reads import read_candles
from histdata.storage.rollups import ROLLUP_LEVELS, rollup_pass

SYMBOL = "BTC/USD"
START = datetime(2024, 1, 3, 7, 0, tzinfo=UTC)  # a Wednesday morning: weeks straddle it
DAYS = 75
INTERVALS = (1, 3, 5, 15, 30, 60, 120, 240, 720, 1440, 4320, 10080)
MONDAY = datetime(1970, 1, 5, tzinfo=UTC)


def random_candles(seed: int, start: datetime, days: int) -> list[Candle]:
    """~90% of the minutes of ``days`` days, a random walk with mixed decimal scales; the
    third week has no vwap (like Kraken's OHLCVT CSVs)."""
    rng = random.Random(seed)
    price = Decimal("42000.0")
    out = []
    for minute in range(days * 1440):
        if rng.random() < 0.1:
            continue
        time = start + timedelta(minutes=minute)
        prices = [price + Decimal(rng.randint(-500, 500)) / 10 for _ in range(4)]
        o, c = prices[0], prices[1]
        high, low = max(prices), min(prices)
        volume = Decimal(rng.randint(0, 10**8)) / 10**8
        no_vwap = timedelta(days=14) <= time - start < timedelta(days=21)
        vwap = None if no_vwap else (low + (high - low) * Decimal(rng.randint(0, 1000)) / 1000)
        out.append(
            Candle(
                symbol=SYMBOL,
                time=time,
                open=o,
                high=high,
                low=low,
                close=c,
                volume=volume,
                vwap=vwap,
                trades=rng.randint(0, 50),
                source=CandleSource.REST,
            )
        )
        price = c
    return out


def bucket_of(time: datetime, minutes: int) -> datetime:
    """Independent bucketing: weeks start Monday 00:00 UTC; days at midnight; day multiples
    counted from the first Monday after the epoch; shorter intervals from midnight."""
    if minutes == 10080:
        day = time.replace(hour=0, minute=0, second=0, microsecond=0)
        return day - timedelta(days=day.weekday())
    if minutes % 1440 == 0:
        days = (time - MONDAY).days
        return MONDAY + timedelta(days=days - days % (minutes // 1440))
    midnight = time.replace(hour=0, minute=0, second=0, microsecond=0)
    into = int((time - midnight).total_seconds()) // 60
    return midnight + timedelta(minutes=into - into % minutes)


def round_vwap(pv: Fraction, volume: Fraction) -> Decimal:
    """The contract's VWAP: exact quotient rounded half-up to 12 places."""
    scaled = pv / volume * 10**12
    return (Decimal(int(scaled * 2 + 1) // 2) / Decimal(10**12)).quantize(
        Decimal("1e-12"), rounding=ROUND_HALF_UP
    )


def expected(candles: Sequence[Candle], minutes: int) -> list[tuple[object, ...]]:
    """Independent OHLCV/VWAP/trades per bucket, from the 1-minute rows."""
    groups: dict[datetime, list[Candle]] = defaultdict(list)
    for c in sorted(candles, key=lambda c: c.time):
        groups[bucket_of(c.time, minutes)].append(c)
    out: list[tuple[object, ...]] = []
    for time in sorted(groups):
        rows = groups[time]
        volume = sum((c.volume for c in rows), Decimal(0))
        if minutes == 1:
            vwap = rows[0].vwap
        elif any(c.vwap is None for c in rows) or volume == 0:
            vwap = None
        else:
            pv = sum(
                (Fraction(c.vwap) * Fraction(c.volume) for c in rows if c.vwap is not None),
                Fraction(0),
            )
            vwap = round_vwap(pv, Fraction(volume))
        out.append(
            (
                time,
                rows[0].open,
                max(c.high for c in rows),
                min(c.low for c in rows),
                rows[-1].close,
                volume,
                vwap,
                sum(c.trades for c in rows),
            )
        )
    return out


def as_tuples(candles: Sequence[Candle]) -> list[tuple[object, ...]]:
    return [(c.time, c.open, c.high, c.low, c.close, c.volume, c.vwap, c.trades) for c in candles]


async def write(storage: Storage, candles: Sequence[Candle]) -> None:
    for i in range(0, len(candles), 20_000):
        await write_candles(storage, candles[i : i + 20_000])


async def rollup_all(storage: Storage) -> None:
    while (await rollup_pass(storage)).claimed:
        pass


class TestRollupAgainstIndependentComputation:
    async def test_every_interval_matches_before_and_after_the_rollup(
        self, storage: Storage
    ) -> None:
        """Stored and odd intervals equal the independent computation, both when served
        from pending dirty ranges (rollup not yet run) and from the materialised rollups."""
        candles = random_candles(7, START, DAYS)
        await write(storage, candles)
        end = START + timedelta(days=DAYS + 7)
        begin = START - timedelta(days=7)
        for minutes in INTERVALS:
            got = await read_candles(storage, SYMBOL, minutes, begin, end)
            assert as_tuples(got) == expected(candles, minutes), f"{minutes}m before rollup"
        await rollup_all(storage)
        for minutes in INTERVALS:
            got = await read_candles(storage, SYMBOL, minutes, begin, end)
            assert as_tuples(got) == expected(candles, minutes), f"{minutes}m after rollup"

    async def test_stored_rollups_carry_exact_pv_and_final_flags(self, storage: Storage) -> None:
        """Each materialised level holds exact sum(vwap·volume) and is final only once ended."""
        candles = random_candles(11, START, 9)
        await write(storage, candles)
        await rollup_all(storage)

        def stored(conn, minutes):  # type: ignore[no-untyped-def]
            return conn.execute(
                "SELECT time, pv, final FROM candles_rollup WHERE interval_min = %s ORDER BY time",
                (minutes,),
            ).fetchall()

        for minutes, _ in ROLLUP_LEVELS:
            rows = await storage.run(stored, minutes)
            groups: dict[datetime, list[Candle]] = defaultdict(list)
            for c in candles:
                groups[bucket_of(c.time, minutes)].append(c)
            assert [r[0] for r in rows] == sorted(groups)
            for time, pv, final in rows:
                kids = groups[time]
                want = (
                    None
                    if any(c.vwap is None for c in kids)
                    else sum((c.vwap * c.volume for c in kids if c.vwap is not None), Decimal(0))
                )
                assert pv == want
                assert final  # 2024 is long over and every child is final

    @pytest.mark.parametrize("minutes", [1, 3, 60, 10080])
    async def test_range_edges_select_buckets_by_start(
        self, storage: Storage, minutes: int
    ) -> None:
        """A candle is returned when its bucket start lies in [start, end)."""
        candles = random_candles(3, START, 10)
        await write(storage, candles)
        await rollup_all(storage)
        begin = START + timedelta(days=2, minutes=7)
        end = START + timedelta(days=8, minutes=1)
        got = await read_candles(storage, SYMBOL, minutes, begin, end)
        want = [row for row in expected(candles, minutes) if begin <= row[0] < end]  # type: ignore[operator]
        assert as_tuples(got) == want


class TestIncrementalUpdate:
    async def test_changing_one_old_minute_updates_every_parent(self, storage: Storage) -> None:
        """A corrected old minute changes its 5m…1w parents after the rollup runs, and a read
        before the rollup runs already shows the change."""
        candles = random_candles(5, START, 21)
        await write(storage, candles)
        await rollup_all(storage)
        target = candles[len(candles) // 2]
        fixed = Candle(
            symbol=SYMBOL,
            time=target.time,
            open=target.open,
            high=target.high + 10_000,
            low=target.low,
            close=target.close,
            volume=target.volume + 5,
            vwap=target.vwap,
            trades=target.trades + 1,
            source=target.source,
        )
        assert (await write_candles(storage, [fixed])).updated == 1
        changed = [fixed if c.time == target.time else c for c in candles]
        end = START + timedelta(days=30)
        for minutes in (5, 60, 1440, 10080, 4320):
            got = await read_candles(storage, SYMBOL, minutes, START - timedelta(days=7), end)
            assert as_tuples(got) == expected(changed, minutes), f"{minutes}m before rollup"

        def stored_high(conn, minutes):  # type: ignore[no-untyped-def]
            return conn.execute(
                "SELECT high, trades FROM candles_rollup WHERE interval_min = %s"
                " AND time <= %s ORDER BY time DESC LIMIT 1",
                (minutes, target.time),
            ).fetchone()

        assert (await storage.run(stored_high, 60))[0] != fixed.high
        result = await rollup_pass(storage)
        assert result.claimed == 1
        for minutes, _ in ROLLUP_LEVELS:
            high, trades = await storage.run(stored_high, minutes)
            assert high == fixed.high, minutes
            bucket = [
                c for c in changed if bucket_of(c.time, minutes) == bucket_of(target.time, minutes)
            ]
            assert trades == sum(c.trades for c in bucket)
        for minutes in (5, 60, 1440, 10080):
            got = await read_candles(storage, SYMBOL, minutes, START - timedelta(days=7), end)
            assert as_tuples(got) == expected(changed, minutes), f"{minutes}m after rollup"

    async def test_open_bucket_becomes_final_after_it_ends(self, storage: Storage) -> None:
        """Buckets still open at their last pass are re-examined and marked final once ended,
        although no child changes again."""
        await write(storage, random_candles(1, START, 2))
        await rollup_all(storage)
        # As if every level had last been computed while its bucket was still running.
        await storage.run(lambda conn: conn.execute("UPDATE candles_rollup SET final = false"))

        def open_rows(conn):  # type: ignore[no-untyped-def]
            return conn.execute("SELECT count(*) FROM candles_rollup WHERE NOT final").fetchone()[0]

        assert await storage.run(open_rows) > 0
        result = await rollup_pass(storage)
        assert result.claimed == 0
        assert await storage.run(open_rows) == 0

    async def test_bucket_in_progress_is_not_final(self, storage: Storage) -> None:
        """A rollup bucket that has not ended yet is stored as not final, although its
        only child is final."""
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        if now.hour == 23 and now.minute == 59:
            now -= timedelta(minutes=1)  # keep the day (and week) from ending mid-test
        (minute,) = random_candles(1, now, 1)[:1]
        await write_candles(storage, [minute])
        await rollup_all(storage)

        def finals(conn):  # type: ignore[no-untyped-def]
            return conn.execute(
                "SELECT DISTINCT final FROM candles_rollup WHERE interval_min IN (1440, 10080)"
            ).fetchall()

        assert await storage.run(finals) == [(False,)]


class TestFleet:
    async def test_a_symbol_another_process_rolls_up_is_left_to_it(
        self, storage: Storage, database_url: str
    ) -> None:
        """Passes lock per symbol: one held elsewhere is skipped and counted, the others are
        rolled up, and the skipped one is rolled up once it is free."""
        minute = datetime(2024, 1, 3, 7, 0, tzinfo=UTC)
        one = Decimal(1)
        candles = [
            Candle(s, minute, one, one, one, one, one, one, 1, source=CandleSource.REST)
            for s in ("BTC/USD", "ETH/USD")
        ]
        await write(storage, candles)
        hourly = (
            "SELECT s.symbol FROM candles_rollup r JOIN symbols s ON s.id = r.symbol_id"
            " WHERE r.interval_min = 60 ORDER BY 1"
        )
        with psycopg.connect(database_url, autocommit=True) as other:
            sid = other.execute("SELECT id FROM symbols WHERE symbol = 'BTC/USD'").fetchone()
            assert sid is not None
            other.execute("SELECT pg_advisory_lock(%s, %s)", (0x726F6C6C, sid[0]))
            result = await rollup_pass(storage)
            assert (result.claimed, result.skipped_symbols) == (1, 1)
            assert other.execute(hourly).fetchall() == [("ETH/USD",)]
            # Released here, not by closing: a closed session's backend lets go of its locks
            # a moment after the client has gone, and the pass below could still find it held.
            other.execute("SELECT pg_advisory_unlock(%s, %s)", (0x726F6C6C, sid[0]))
        await rollup_all(storage)
        with psycopg.connect(database_url, autocommit=True) as conn:
            assert conn.execute(hourly).fetchall() == [("BTC/USD",), ("ETH/USD",)]
