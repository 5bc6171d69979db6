"""History SQL beyond plain reads and writes: coverage reports, unrecoverable holes, candles
derived from trades, and comparisons between sources.

Everything here runs through :meth:`Storage.run`, one transaction per call, with parameterised
SQL only; reads never register a symbol (they work in the query path's read-only role). The
interval arithmetic is done in SQL where it touches many rows (occupied buckets, aggregation)
and in Python where it touches few (merging a handful of ranges).

**Trades from sources that cannot dedupe against each other.** Kraken's 3-column CSV files
have no trade ids and whole-second times; REST and WebSocket trades have ids and sub-second
times, so the database key cannot tell that a CSV row and a REST trade are the same trade.
:func:`drop_cross_source_duplicates` closes that hole: an incoming trade is dropped when a
stored trade *of the other kind* (id-less vs with id) has the same second, price and volume,
matched as multisets (two identical CSV rows against one identical REST trade drop one). It is
applied by the importer (CSV against REST/live) and by backfill and repair (REST against CSV),
so either order of arrival stores each trade once.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from histdata.model import NS_PER_S, Candle, Trade
from histdata.storage.candles import CandleMismatch, DerivedMinutes, derive_minutes
from histdata.storage.database import CoverageSpan, Storage, Stream

__all__ = [
    "CandleMismatch",
    "CoverageReport",
    "DeriveResult",
    "HoleKind",
    "Range",
    "ReportRange",
    "compare_coarse_candles",
    "coverage_report",
    "derive_candles",
    "derive_observed",
    "drop_cross_source_duplicates",
    "mark_unrecoverable",
    "trade_span",
    "unrecoverable_marks",
]

Connection = psycopg.Connection[Any]
Range = tuple[datetime, datetime]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class HoleKind(enum.StrEnum):
    """How a part of the timeline is known (or not)."""

    NOT_OBSERVED = "not observed"  # nobody was listening: a gap to repair
    NO_TRADES = "observed, no trades"  # we were listening and nothing happened
    UNRECOVERABLE = "unrecoverable"  # not observed, and Kraken can no longer serve it


@dataclass(frozen=True, slots=True)
class ReportRange:
    """One range of a coverage report; ``reason`` is set for unrecoverable holes."""

    start: datetime
    end: datetime
    kind: HoleKind
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CoverageReport:
    """Coverage of one stream of one symbol over ``[start, end)``.

    ``covered`` are the observed ranges (any source, merged); ``holes`` the ranges not
    observed (kind NOT_OBSERVED or UNRECOVERABLE); ``empty`` the observed ranges with no
    trades (for candles: no candle), at ``interval`` granularity.
    """

    symbol: str
    stream: Stream
    start: datetime
    end: datetime
    interval: timedelta
    covered: list[Range]
    holes: list[ReportRange]
    empty: list[ReportRange]

    @property
    def repairable(self) -> list[Range]:
        """Holes not marked unrecoverable: what a repair should try."""
        return [(h.start, h.end) for h in self.holes if h.kind is HoleKind.NOT_OBSERVED]


@dataclass(frozen=True, slots=True)
class DeriveResult:
    """What :func:`derive_candles` did."""

    derived: int  # minutes with trades, now served from our own candle
    inserted: int
    updated: int
    compared: int  # minutes where a final Kraken candle existed to compare with
    mismatches: list[CandleMismatch]
    covered: list[Range]  # the minute-aligned ranges recorded as derived candle coverage
    not_derived: list[Range] = field(default_factory=list)  # minutes without whole coverage


# ------------------------------------------------------------------------ range arithmetic


def subtract(ranges: Sequence[Range], cuts: Sequence[Range]) -> list[Range]:
    """``ranges`` minus ``cuts``; both sorted and non-overlapping within themselves."""
    result: list[Range] = []
    for start, end in ranges:
        position = start
        for low, high in cuts:
            if high <= position or low >= end:
                continue
            if low > position:
                result.append((position, low))
            position = max(position, high)
        if position < end:
            result.append((position, end))
    return result


def intersect(ranges: Sequence[Range], others: Sequence[Range]) -> list[Range]:
    """The parts of ``ranges`` that lie inside ``others`` (both sorted, non-overlapping)."""
    result: list[Range] = []
    for start, end in ranges:
        for low, high in others:
            low, high = max(low, start), min(high, end)
            if low < high:
                result.append((low, high))
    return result


def floor_to(value: datetime, step: timedelta) -> datetime:
    """``value`` rounded down to a multiple of ``step`` since the Unix epoch."""
    return _EPOCH + ((value - _EPOCH) // step) * step


def ceil_to(value: datetime, step: timedelta) -> datetime:
    """``value`` rounded up to a multiple of ``step`` since the Unix epoch."""
    floored = floor_to(value, step)
    return floored if floored == value else floored + step


def whole_buckets(ranges: Sequence[Range], step: timedelta) -> list[Range]:
    """Shrink each range to the whole ``step`` buckets it contains (empty ones dropped)."""
    result: list[Range] = []
    for start, end in ranges:
        low, high = ceil_to(start, step), floor_to(end, step)
        if low < high:
            result.append((low, high))
    return result


# ------------------------------------------------------------------ cross-source dedupe


async def drop_cross_source_duplicates(
    storage: Storage, trades: Sequence[Trade]
) -> tuple[list[Trade], int]:
    """Drop trades already stored from a source of the other kind (see the module docstring).

    Returns the trades to write and how many were dropped. One query per symbol over the
    batch's whole seconds; with no overlap (the usual case) nothing is dropped.

    Raises:
        DatabaseUnavailable: the database is down.
    """
    if not trades:
        return [], 0
    by_symbol: dict[str, list[Trade]] = {}
    for trade in trades:
        by_symbol.setdefault(trade.symbol, []).append(trade)
    kept: list[Trade] = []
    dropped = 0
    for symbol, group in by_symbol.items():
        times = [t.time_ns for t in group]
        lo, hi = min(times) // NS_PER_S, max(times) // NS_PER_S + 1
        idless = sum(1 for t in group if t.trade_id is None)
        want_with_id, want_idless = idless > 0, idless < len(group)
        stored = await storage.run(_other_kind, storage, symbol, lo, hi, want_idless, want_with_id)
        if not stored[0] and not stored[1]:
            kept.extend(group)
            continue
        for trade in group:
            pool = stored[1] if trade.trade_id is None else stored[0]
            key = (trade.time_ns // NS_PER_S, trade.price, trade.volume)
            if pool[key] > 0:
                pool[key] -= 1
                dropped += 1
            else:
                kept.append(trade)
    return kept, dropped


_STORED_IDLESS = (
    "SELECT floor(extract(epoch FROM time))::int8, price, volume, true FROM trades"
    " WHERE symbol_id = %s AND time >= %s AND time < %s AND trade_id IS NULL"
)
_STORED_WITH_ID = (
    "SELECT floor(extract(epoch FROM time))::int8, price, volume, false FROM trades"
    " WHERE symbol_id = %s AND time >= %s AND time < %s AND trade_id IS NOT NULL"
)


def _other_kind(
    conn: Connection,
    storage: Storage,
    symbol: str,
    lo_s: int,
    hi_s: int,
    want_idless: bool,
    want_with_id: bool,
) -> tuple[Counter[tuple[int, Decimal, Decimal]], Counter[tuple[int, Decimal, Decimal]]]:
    """(id-less, with id) stored trades of ``[lo_s, hi_s)`` as (second, price, volume) counts.

    Only the kinds asked for are fetched: a re-imported CSV batch must not read back its own
    50,000 id-less rows just to ignore them.
    """
    sid = storage.known_symbol_id(conn, symbol)
    if sid is None:  # nothing stored for it yet
        return Counter(), Counter()
    bounds = (sid, _EPOCH + timedelta(seconds=lo_s), _EPOCH + timedelta(seconds=hi_s))
    rows: list[tuple[Any, ...]] = []
    # One fixed statement per kind: a literal IS [NOT] NULL becomes an index condition on
    # trades_key, where a parameterised OR of both would make the planner filter row by row.
    if want_idless:
        rows += conn.execute(_STORED_IDLESS, bounds).fetchall()
    if want_with_id:
        rows += conn.execute(_STORED_WITH_ID, bounds).fetchall()
    idless: Counter[tuple[int, Decimal, Decimal]] = Counter()
    with_id: Counter[tuple[int, Decimal, Decimal]] = Counter()
    for second, price, volume, no_id in rows:
        (idless if no_id else with_id)[(int(second), price, volume)] += 1
    return idless, with_id


# ------------------------------------------------------------------------- gap marks


async def mark_unrecoverable(
    storage: Storage, symbol: str, stream: Stream, start: datetime, end: datetime, reason: str
) -> None:
    """Record ``[start, end)`` as a hole Kraken cannot serve, so repairs stop retrying it."""

    def query(conn: Connection) -> None:
        sid = storage.symbol_id(conn, symbol)
        conn.execute(
            "INSERT INTO gap_marks (symbol_id, stream, during, reason)"
            " SELECT %s, %s, tstzrange(%s, %s), %s WHERE NOT EXISTS (SELECT 1 FROM gap_marks"
            " WHERE symbol_id = %s AND stream = %s AND during @> tstzrange(%s, %s))",
            (sid, stream, start, end, reason, sid, stream, start, end),
        )

    if end > start:
        await storage.run(query)


async def unrecoverable_marks(
    storage: Storage, symbol: str, stream: Stream, start: datetime, end: datetime
) -> list[tuple[datetime, datetime, str]]:
    """Marked holes overlapping ``[start, end)``, clipped to it, oldest first."""

    def query(conn: Connection) -> list[tuple[datetime, datetime, str]]:
        sid = storage.known_symbol_id(conn, symbol)
        if sid is None:
            return []
        rows = conn.execute(
            "SELECT greatest(lower(during), %s), least(upper(during), %s), reason FROM gap_marks"
            " WHERE symbol_id = %s AND stream = %s AND during && tstzrange(%s, %s)"
            " ORDER BY lower(during)",
            (start, end, sid, stream, start, end),
        ).fetchall()
        return [(a, b, r) for a, b, r in rows]

    return await storage.run(query)


# --------------------------------------------------------------------- coverage report


async def coverage_report(
    storage: Storage,
    symbol: str,
    stream: Stream,
    start: datetime,
    end: datetime,
    *,
    interval: timedelta = timedelta(minutes=1),
) -> CoverageReport:
    """Report ``[start, end)``: observed ranges, holes, and observed-but-empty ranges.

    A hole overlapping a gap mark is reported UNRECOVERABLE with the mark's reason. Empty
    ranges are the observed parts with no trade (or no candle) in any ``interval`` bucket.

    Raises:
        DatabaseUnavailable: the database is down.
    """
    symbol = storage.registry.canonical(symbol)
    covered = await storage.covered(symbol, stream, start, end)
    marks = await unrecoverable_marks(storage, symbol, stream, start, end)
    holes: list[ReportRange] = []
    for low, high in subtract([(start, end)], covered):
        marked = [(a, b, r) for a, b, r in marks if a < high and b > low]
        position = low
        for a, b, reason in marked:
            a, b = max(a, low), min(b, high)
            if a > position:
                holes.append(ReportRange(position, a, HoleKind.NOT_OBSERVED))
            if b > max(a, position):
                holes.append(ReportRange(max(a, position), b, HoleKind.UNRECOVERABLE, reason))
            position = max(position, b)
        if position < high:
            holes.append(ReportRange(position, high, HoleKind.NOT_OBSERVED))
    occupied = await storage.run(_occupied, storage, symbol, stream, start, end, interval)
    empty = [ReportRange(a, b, HoleKind.NO_TRADES) for a, b in subtract(covered, occupied)]
    return CoverageReport(symbol, stream, start, end, interval, covered, holes, empty)


def _occupied(
    conn: Connection,
    storage: Storage,
    symbol: str,
    stream: Stream,
    start: datetime,
    end: datetime,
    interval: timedelta,
) -> list[Range]:
    """Merged runs of ``interval`` buckets that hold at least one trade (or candle)."""
    sid = storage.known_symbol_id(conn, symbol)
    if sid is None:
        return []
    table = "trades" if stream == "trades" else "candles_1m"  # whitelist, never user text
    rows = conn.execute(
        "WITH occ AS (SELECT DISTINCT date_bin(%s, time, 'epoch'::timestamptz) AS b"
        f" FROM {table} WHERE symbol_id = %s AND time >= %s AND time < %s),"
        " islands AS (SELECT b, b - %s * (row_number() OVER (ORDER BY b))::int8 AS grp"
        " FROM occ)"
        " SELECT min(b), max(b) + %s FROM islands GROUP BY grp ORDER BY 1",
        (interval, sid, floor_to(start, interval), end, interval, interval),
    ).fetchall()
    return [(max(a, start), min(b, end)) for a, b in rows]


# -------------------------------------------------------------- candles from trades


# One transaction derives at most this much: its dirty range and its reconciliation stay
# small, and an interrupted repair of years keeps what it finished.
_DERIVE_CHUNK = timedelta(days=1)


async def trade_span(storage: Storage, symbol: str, start: datetime, end: datetime) -> Range | None:
    """``[first, last]`` stored trade times of ``symbol`` in ``[start, end)``, or None.

    Two index probes: the ends of a backfilled range, so derivation reads only where trades
    are, not the decades before a pair's listing that a backfill ``since 0`` covers.
    """

    def query(conn: Connection) -> Range | None:
        sid = storage.known_symbol_id(conn, symbol)
        if sid is None:
            return None
        row = conn.execute(
            "SELECT (SELECT time FROM trades WHERE symbol_id = %(s)s AND time >= %(a)s"
            "  AND time < %(b)s ORDER BY time LIMIT 1),"
            " (SELECT time FROM trades WHERE symbol_id = %(s)s AND time >= %(a)s"
            "  AND time < %(b)s ORDER BY time DESC LIMIT 1)",
            {"s": sid, "a": start, "b": end},
        ).fetchone()
        return None if row is None or row[0] is None else (row[0], row[1])

    return await storage.run(query)


async def derive_candles(
    storage: Storage, symbol: str, start: datetime, end: datetime
) -> DeriveResult:
    """Derive exact 1-minute candles from stored trades wherever trades coverage spans a
    whole minute of ``[start, end)``, store them, and reconcile them with Kraken's.

    Offline: only stored trades and coverage are read, never REST. Set-based in SQL
    (:func:`~histdata.storage.candles.derive_minutes`), one transaction per day of minutes.
    A partly observed minute never becomes a complete-looking candle: it is returned in
    ``not_derived`` (the minute-aligned parts of the range without complete trades
    coverage), for REST to fill. The derived minutes, with trades or without, are recorded as
    ``derived`` candle coverage, and from then on the served candle of those minutes is ours
    (Kraken's is kept beside it; see :mod:`histdata.storage.candles`). Idempotent.

    Raises:
        UnknownSymbol: the registry does not know the spelling.
        DatabaseUnavailable: the database is down.
    """
    symbol = storage.registry.canonical(symbol)
    minute = timedelta(minutes=1)
    covered = whole_buckets(await storage.covered(symbol, "trades", start, end), minute)
    derived = inserted = updated = compared = 0
    mismatches: list[CandleMismatch] = []
    for low, high in covered:
        position = low
        while position < high:
            upper = min(high, floor_to(position, _DERIVE_CHUNK) + _DERIVE_CHUNK)
            done = await storage.run(_derive_chunk, storage, symbol, position, upper)
            derived += done.derived
            inserted += done.inserted
            updated += done.updated
            compared += done.compared
            mismatches.extend(done.mismatches)
            position = upper
    aligned = [(floor_to(start, minute), ceil_to(end, minute))]
    return DeriveResult(
        derived, inserted, updated, compared, mismatches, covered, subtract(aligned, covered)
    )


# The watermark cursor of derive_observed, per symbol: minutes before it were looked at.
_OBSERVED_CURSOR = "candles:derived:{symbol}"


async def derive_observed(
    storage: Storage, *, now: datetime, lookback: timedelta = timedelta(days=1)
) -> DeriveResult:
    """Derive our own candle for every newly finished minute of observed trades, every symbol.

    What the rollup actor runs before each pass, so live 1-minute candles are derived from
    our trades and kept beside Kraken's (:mod:`histdata.storage.candles`). Per symbol a
    watermark (cursor ``candles:derived:<symbol>``) moves to the end of the whole minutes its
    trades coverage reached, up to the minute of ``now``; a symbol seen for the first time
    starts ``lookback`` before ``now``. Minutes the watermark passes without coverage (a
    hole) are left for repair: the repair derives them once it has stored their trades
    (:func:`derive_candles`). Returns the totals over all symbols (``covered`` and
    ``not_derived`` are left empty).

    Raises:
        DatabaseUnavailable: the database is down.
    """
    minute = timedelta(minutes=1)
    limit = floor_to(now, minute)
    derived = inserted = updated = compared = 0
    mismatches: list[CandleMismatch] = []
    for symbol, reached in await storage.run(_coverage_ends):
        name = _OBSERVED_CURSOR.format(symbol=symbol)
        mark = await storage.get_cursor(name)
        start = datetime.fromisoformat(mark) if mark else floor_to(now - lookback, minute)
        end = min(limit, floor_to(reached, minute))
        if end <= start:
            continue
        done = await derive_candles(storage, symbol, start, end)
        derived += done.derived
        inserted += done.inserted
        updated += done.updated
        compared += done.compared
        mismatches.extend(done.mismatches)
        await storage.set_cursor(name, end.isoformat())
    return DeriveResult(derived, inserted, updated, compared, mismatches, [])


def _coverage_ends(conn: Connection) -> list[tuple[str, datetime]]:
    """Per symbol with trades coverage, where that coverage ends."""
    rows = conn.execute(
        "SELECT s.symbol, max(upper(c.during)) FROM coverage c JOIN symbols s"
        " ON s.id = c.symbol_id WHERE c.stream = 'trades' GROUP BY s.symbol ORDER BY s.symbol"
    ).fetchall()
    return [(symbol, end) for symbol, end in rows]


def _derive_chunk(
    conn: Connection, storage: Storage, symbol: str, start: datetime, end: datetime
) -> DerivedMinutes:
    sid = storage.symbol_id(conn, symbol)
    done = derive_minutes(conn, sid, start, end)
    storage._add_coverages(conn, [(symbol, CoverageSpan("candles", "derived", start, end))])
    return done


def candle_differences(ours: Candle, theirs: Candle) -> dict[str, tuple[object, object]]:
    """The fields (open, high, low, close, volume, trades) where two candles differ."""
    diff: dict[str, tuple[object, object]] = {}
    for name in ("open", "high", "low", "close", "volume", "trades"):
        a, b = getattr(ours, name), getattr(theirs, name)
        if a != b:
            diff[name] = (a, b)
    return diff


# ------------------------------------------------------- coarse candles vs our minutes


async def compare_coarse_candles(
    storage: Storage, symbol: str, interval_min: int, candles: Sequence[Candle]
) -> tuple[int, list[CandleMismatch], int]:
    """Check Kraken candles of ``interval_min`` minutes against our stored 1-minute candles.

    A bucket is checked only when candle coverage spans it whole; returns ``(matched,
    mismatches, unverifiable)``. Minutes with no candle inside coverage count as minutes
    without trades, as Kraken's files omit them too.

    Raises:
        DatabaseUnavailable: the database is down.
    """
    if not candles:
        return 0, [], 0
    symbol = storage.registry.canonical(symbol)
    step = timedelta(minutes=interval_min)
    start = min(c.time for c in candles)
    end = max(c.time for c in candles) + step
    covered = await storage.covered(symbol, "candles", start, end)
    ours = await storage.run(_rollup, storage, symbol, step, start, end)
    matched = unverifiable = 0
    mismatches: list[CandleMismatch] = []
    for candle in candles:
        bucket = (candle.time, candle.time + step)
        if intersect([bucket], covered) != [bucket]:
            unverifiable += 1
            continue
        mine = ours.get(candle.time)
        if mine is None:
            mismatches.append(CandleMismatch(candle.time, {"trades": (0, candle.trades)}))
            continue
        o, h, lo, c, v, n = mine
        diff = candle_differences(
            Candle(symbol, candle.time, o, h, lo, c, v, None, n, interval_min), candle
        )
        if diff:
            mismatches.append(CandleMismatch(candle.time, diff))
        else:
            matched += 1
    return matched, mismatches, unverifiable


def _rollup(
    conn: Connection,
    storage: Storage,
    symbol: str,
    step: timedelta,
    start: datetime,
    end: datetime,
) -> dict[datetime, tuple[Any, ...]]:
    sid = storage.known_symbol_id(conn, symbol)
    if sid is None:
        return {}
    rows = conn.execute(
        "SELECT date_bin(%s, time, 'epoch'::timestamptz) AS b,"
        " (array_agg(open ORDER BY time))[1], max(high), min(low),"
        " (array_agg(close ORDER BY time DESC))[1], sum(volume), sum(trades)"
        " FROM candles_1m WHERE symbol_id = %s AND time >= %s AND time < %s"
        " GROUP BY 1",
        (step, sid, start, end),
    ).fetchall()
    return {row[0]: (row[1], row[2], row[3], row[4], row[5], int(row[6])) for row in rows}
