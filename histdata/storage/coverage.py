"""Coverage: which parts of the timeline were observed, from which source, and what is
known about the rest.

A coverage row says a stream (trades or 1-minute candles) of a symbol was observed over a
time range from one source; touching and overlapping ranges of the same source are merged
when added (:func:`add_coverages`, which the writers in :mod:`histdata.storage.trades` and
:mod:`histdata.storage.candles` call inside their own transaction, so coverage commits with
the rows it vouches for). On top of that: gap marks for holes Kraken can no longer serve,
the coverage report (observed, not observed, observed but empty), and the range arithmetic
the report, repair and the importer share.

Everything here runs through :meth:`Storage.run`, one transaction per call, with parameterised
SQL only; reads never register a symbol (they work in the query path's read-only role). The
interval arithmetic is done in SQL where it touches many rows (occupied buckets, aggregation)
and in Python where it touches few (merging a handful of ranges).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from histdata.model import CoverageSpan, Stream
from histdata.storage.database import Storage, lock_symbols

__all__ = [
    "CoverageReport",
    "HoleKind",
    "Range",
    "ReportRange",
    "add_coverage",
    "add_coverages",
    "ceil_to",
    "coverage_report",
    "covered",
    "floor_to",
    "gaps",
    "intersect",
    "mark_unrecoverable",
    "subtract",
    "unrecoverable_marks",
    "whole_buckets",
]

Connection = psycopg.Connection[Any]
Range = tuple[datetime, datetime]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# pg_advisory_xact_lock(class, symbol id) key of add_coverages' merge lock; the trades
# writers' lock (histdata.storage.trades) has another class, so neither waits for the other.
_COVERAGE_LOCK = 0x68697374  # "hist"


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


# ---------------------------------------------------------------------------- coverage


async def add_coverage(storage: Storage, symbol: str, span: CoverageSpan) -> None:
    """Record that ``span`` of ``symbol`` was observed, merging with touching ranges."""
    await storage.run(add_coverages, storage, [(symbol, span)])


def add_coverages(
    conn: Connection, storage: Storage, coverage: Sequence[tuple[str, CoverageSpan]]
) -> None:
    """Add spans of any number of symbols, each merged with the ranges it overlaps or
    touches, in three statements however many symbols there are.

    A live coverage mark names every subscribed symbol: with hundreds of them, two
    statements per span made coverage most of a write's time. The per-symbol locks that
    serialise merges are taken in id order, so two writers covering many symbols (the
    live flusher and its journal replay) queue instead of deadlocking.
    """
    spans = [(storage.symbol_id(conn, sym), sp) for sym, sp in coverage if sp.end > sp.start]
    if not spans:
        return
    lock_symbols(conn, _COVERAGE_LOCK, (sid for sid, _ in spans))
    added = [(sid, sp.stream, sp.source, sp.start, sp.end) for sid, sp in spans]
    merged = conn.execute(
        "DELETE FROM coverage c USING unnest(%s::int2[], %s::text[], %s::text[],"
        " %s::timestamptz[], %s::timestamptz[]) AS n(sid, stream, source, low, high)"
        " WHERE c.symbol_id = n.sid AND c.stream = n.stream AND c.source = n.source"
        " AND (c.during && tstzrange(n.low, n.high) OR c.during -|- tstzrange(n.low, n.high))"
        " RETURNING c.symbol_id, c.stream, c.source, lower(c.during), upper(c.during)",
        [list(column) for column in zip(*added, strict=True)],
    ).fetchall()
    ranges: dict[tuple[int, str, str], list[tuple[datetime, datetime]]] = {}
    for sid, stream, source, low, high in [*added, *merged]:
        ranges.setdefault((sid, stream, source), []).append((low, high))
    rows: list[tuple[int, str, str, datetime, datetime]] = []
    for (sid, stream, source), found in ranges.items():
        found.sort()
        low, high = found[0]
        for next_low, next_high in found[1:]:
            if next_low > high:  # neither overlapping nor touching: a range of its own
                rows.append((sid, stream, source, low, high))
                low = next_low
            high = max(high, next_high)
        rows.append((sid, stream, source, low, high))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO coverage (symbol_id, stream, source, during)"
            " VALUES (%s, %s, %s, tstzrange(%s, %s))",
            rows,
        )


async def covered(
    storage: Storage, symbol: str, stream: Stream, start: datetime, end: datetime
) -> list[tuple[datetime, datetime]]:
    """The parts of ``[start, end)`` observed from any source, merged and in order."""

    def query(conn: Connection) -> list[tuple[datetime, datetime]]:
        sid = storage.known_symbol_id(conn, symbol)
        if sid is None:
            return []
        rows = conn.execute(
            "SELECT lower(r), upper(r) FROM unnest(("
            " SELECT range_agg(during * tstzrange(%s, %s)) FROM coverage"
            " WHERE symbol_id = %s AND stream = %s AND during && tstzrange(%s, %s)"
            ")) AS r ORDER BY 1",
            (start, end, sid, stream, start, end),
        ).fetchall()
        return [(row[0], row[1]) for row in rows]

    return await storage.run(query)


async def gaps(
    storage: Storage, symbol: str, stream: Stream, start: datetime, end: datetime
) -> list[tuple[datetime, datetime]]:
    """The parts of ``[start, end)`` never observed: the complement of :func:`covered`."""
    holes: list[tuple[datetime, datetime]] = []
    position = start
    for low, high in await covered(storage, symbol, stream, start, end):
        if low > position:
            holes.append((position, low))
        position = max(position, high)
    if position < end:
        holes.append((position, end))
    return holes


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
    observed = await covered(storage, symbol, stream, start, end)
    marks = await unrecoverable_marks(storage, symbol, stream, start, end)
    holes: list[ReportRange] = []
    for low, high in subtract([(start, end)], observed):
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
    empty = [ReportRange(a, b, HoleKind.NO_TRADES) for a, b in subtract(observed, occupied)]
    return CoverageReport(symbol, stream, start, end, interval, observed, holes, empty)


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
