"""Candles derived inside the import, checked against an independent computation from the file."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from histdata.importer import import_paths
from histdata.model import Candle, CandleSource
from histdata.storage import Storage
from histdata.storage.candles import candle_mismatches, write_candles
from histdata.storage.coverage import coverage_report
from histdata.storage.reads import read_candles

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MONDAY = 4 * 86_400  # 1970-01-05, where weeks start
# Wednesday 2024-01-03 00:00:02 UTC: the first trade is two seconds into its minute and the
# file spans a week boundary (Monday 2024-01-08).
FIRST = 1_704_240_002
INTERVALS = (1, 5, 60, 180, 1440, 10080)


def write_file(
    path: Path, *, rows: int, seed: int = 3, unusual: bool = False
) -> list[tuple[int, str, str]]:
    """A time-ordered ``time,price,volume`` file over about eight days; returns its rows.

    With ``unusual``, about one volume in ten is written in exponent notation.
    """
    rng = random.Random(seed)
    t = FIRST
    out: list[tuple[int, str, str]] = []
    for _ in range(rows):
        if rng.random() < 0.5:
            t += rng.randint(1, 90)
        price = f"{rng.randint(40000, 45000)}.{rng.randint(0, 9)}"
        volume = f"0.{rng.randint(1, 10**8):08d}" if not unusual or rng.random() < 0.9 else "1.5E-7"
        out.append((t, price, volume))
    path.write_text("".join(f"{t},{p},{v}\n" for t, p, v in out))
    return out


def expected_candles(
    rows: Sequence[tuple[int, str, str]], minutes: int
) -> list[tuple[datetime, Decimal, Decimal, Decimal, Decimal, Decimal, Decimal, int]]:
    """OHLCV, exact VWAP rounded half-up to 12 places, and count per bucket, in Decimal."""
    step = minutes * 60
    buckets: dict[int, list[tuple[Decimal, Decimal]]] = {}
    for t, price_text, volume_text in rows:
        start = MONDAY + (t - MONDAY) // step * step
        buckets.setdefault(start, []).append((Decimal(price_text), Decimal(volume_text)))
    result = []
    for start, trades in sorted(buckets.items()):
        volume = sum((v for _, v in trades), Decimal(0))
        pv = sum((p * v for p, v in trades), Decimal(0))
        vwap = (pv / volume).quantize(Decimal("1e-12"), rounding=ROUND_HALF_UP)
        prices = [p for p, _ in trades]
        result.append(
            (
                EPOCH + timedelta(seconds=start),
                prices[0],
                max(prices),
                min(prices),
                prices[-1],
                volume,
                vwap,
                len(trades),
            )
        )
    return result


def as_tuple(
    c: Candle,
) -> tuple[datetime, Decimal, Decimal, Decimal, Decimal, Decimal, Decimal, int]:
    assert c.vwap is not None
    return (c.time, c.open, c.high, c.low, c.close, c.volume, c.vwap, c.trades)


async def read_all(storage: Storage, minutes: int) -> list[Candle]:
    return await read_candles(
        storage, "BTC/USD", minutes, EPOCH + timedelta(days=19_700), EPOCH + timedelta(days=19_800)
    )


class TestCandlesFromImportedTrades:
    @pytest.mark.parametrize("unusual", [False, True])
    async def test_every_timeframe_equals_the_file(
        self, storage: Storage, tmp_path: Path, unusual: bool
    ) -> None:
        """1m to 1w candles read right after an import equal a Decimal computation from the file."""
        path = tmp_path / "XBTUSD.csv"
        rows = write_file(path, rows=20_000, unusual=unusual)
        summary = (await import_paths(storage, [path], block_bytes=64_000)).files[0]
        assert summary.rejected_total == 0
        assert summary.candle_holes == []
        assert summary.derived == len(expected_candles(rows, 1))
        for minutes in INTERVALS:
            got = [as_tuple(c) for c in await read_all(storage, minutes)]
            assert got == expected_candles(rows, minutes), f"{minutes}m differs"

    async def test_first_and_last_minutes_are_whole(self, storage: Storage, tmp_path: Path) -> None:
        """The file's span is rounded out to whole minutes: no candle hole at either edge."""
        path = tmp_path / "XBTUSD.csv"
        rows = write_file(path, rows=3_000)
        await import_paths(storage, [path])
        first = EPOCH + timedelta(seconds=rows[0][0] // 60 * 60)
        last = EPOCH + timedelta(seconds=rows[-1][0] // 60 * 60 + 60)
        report = await coverage_report(storage, "BTC/USD", "candles", first, last)
        assert report.holes == []
        [hour] = (await read_all(storage, 60))[:1]
        assert hour.open == Decimal(rows[0][1])

    async def test_strict_span_leaves_the_edge_minutes_as_holes(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """With strict_span the partial first and last minutes are reported, not derived."""
        path = tmp_path / "XBTUSD.csv"
        rows = write_file(path, rows=3_000)
        summary = (await import_paths(storage, [path], strict_span=True)).files[0]
        first = EPOCH + timedelta(seconds=rows[0][0] // 60 * 60)
        last = EPOCH + timedelta(seconds=rows[-1][0] // 60 * 60)
        assert summary.candle_holes[0] == (first, first + timedelta(minutes=1))
        assert summary.candle_holes[-1] == (last, last + timedelta(minutes=1))
        minutes = await read_all(storage, 1)
        assert minutes[0].time == first + timedelta(minutes=1)

    async def test_reimport_changes_nothing(self, storage: Storage, tmp_path: Path) -> None:
        """A second import of the same file stores no trade and changes no candle."""
        path = tmp_path / "XBTUSD.csv"
        write_file(path, rows=5_000)
        await import_paths(storage, [path], block_bytes=20_000)
        before = {m: await read_all(storage, m) for m in INTERVALS}
        again = (await import_paths(storage, [path], block_bytes=50_000)).files[0]
        assert (again.inserted, again.derived) == (0, 0)
        assert {m: await read_all(storage, m) for m in INTERVALS} == before

    async def test_planted_mismatch_is_reported(self, storage: Storage, tmp_path: Path) -> None:
        """A Kraken candle that disagrees with the imported trades is recorded as a mismatch."""
        path = tmp_path / "XBTUSD.csv"
        rows = write_file(path, rows=2_000)
        minute = EPOCH + timedelta(seconds=rows[0][0] // 60 * 60)
        assert await read_all(storage, 1) == []  # nothing stored yet
        planted = Candle(
            "BTC/USD",
            minute,
            Decimal(rows[0][1]),
            Decimal("99999"),
            Decimal("1"),
            Decimal(rows[0][1]),
            Decimal("1"),
            None,
            1,
            source=CandleSource.CSV,
        )
        await write_candles(storage, [planted])
        summary = (await import_paths(storage, [path])).files[0]
        assert summary.candle_mismatches == 1
        [found] = await candle_mismatches(storage, "BTC/USD", minute, minute + timedelta(minutes=1))
        assert found.fields["high"][1] == Decimal("99999")
        served = [c for c in await read_all(storage, 1) if c.time == minute]
        assert served[0].high != Decimal("99999")  # ours is served, Kraken's kept beside it

    async def test_minute_of_a_rejected_row_gets_no_candle(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """A rejected row's minute is reported as a hole, never served as a short candle."""
        base = FIRST - 2  # a whole minute
        lines = [f"{base + 60 * m + s},100.{m},1\n" for m in range(5) for s in (5, 30)]
        lines[5] = f"{base + 150},abc,1\n"  # minute 2, between 2:05 and 3:05
        path = tmp_path / "XBTUSD.csv"
        path.write_text("".join(lines))
        summary = (await import_paths(storage, [path])).files[0]
        minute = timedelta(minutes=1)
        start = EPOCH + timedelta(seconds=base)
        assert summary.candle_holes == [(start + 2 * minute, start + 4 * minute)]
        assert [c.time for c in await read_all(storage, 1)] == [
            start,
            start + minute,
            start + 4 * minute,
        ]
        report = await coverage_report(storage, "BTC/USD", "candles", start, start + 5 * minute)
        assert [(h.start, h.end) for h in report.holes] == [
            (start + 2 * minute, start + 4 * minute)
        ]

    async def test_kraken_candles_imported_after_the_trades_go_beside_ours(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """An OHLCVT file over imported trades goes beside ours; a re-import changes nothing."""
        rows = write_file(tmp_path / "XBTUSD.csv", rows=500)
        await import_paths(storage, [tmp_path / "XBTUSD.csv"])
        ours = await read_all(storage, 1)
        lines = [
            f"{int(c.time.timestamp())},{c.open},{c.high},{c.low},{c.close},{c.volume},{c.trades}\n"
            for c in ours
        ]
        lines[0] = lines[0].rsplit(",", 1)[0] + f",{ours[0].trades + 1}\n"  # one planted
        candles = tmp_path / "XBTUSD_1.csv"
        candles.write_text("".join(lines))
        first = (await import_paths(storage, [candles])).files[0]
        assert first.inserted == len(ours)
        assert await read_all(storage, 1) == ours
        end = EPOCH + timedelta(seconds=rows[-1][0] + 60)
        [mismatch] = await candle_mismatches(storage, "BTC/USD", ours[0].time, end)
        assert mismatch.fields == {"trades": (ours[0].trades, ours[0].trades + 1)}
        again = (await import_paths(storage, [candles])).files[0]
        assert (again.inserted, again.updated, again.present) == (0, 0, len(ours))
