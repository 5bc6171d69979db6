"""1-minute candles: the writer, our candles beside Kraken's (derivation from trades, which
one is served, the reconciliation of the two), and comparisons with Kraken's coarser files.

**Which candle a read returns.** One rule: *ours where trade coverage is complete, else
Kraken's.* A minute is "ours" once it lies in ``derived`` candle coverage, which is recorded
only for whole minutes inside trades coverage when their candle is derived
(:func:`derive_minutes`). ``candles_1m`` holds the served candle of every minute, so reads
and rollups never choose: for an "ours" minute it holds our candle (or no row when the
minute had no trades), elsewhere Kraken's. A Kraken candle of an "ours" minute is kept in
``candles_kraken`` — moved there when we derive the minute, or written there straight away
when it arrives later (:data:`DIVERT_SQL`) — so both are stored and each Kraken candle lives
in exactly one of the two tables.

**Exact VWAP.** Our candles carry ``pv``, the exact ``numeric`` sum of price·volume of the
minute's trades; their stored ``vwap`` is ``pv / volume`` rounded as
:func:`~histdata.storage.rollups.vwap_sql` says. Kraken's candles carry ``pv = vwap·volume``
from Kraken's rounded vwap, the most exact value there is for those minutes.

**Reconciliation.** Every finished minute with a final Kraken candle in ``candles_kraken``
is compared with ours on open, high, low, close, volume and trade count (exactly) and on
VWAP: ours (exact ``pv / volume``) may differ from Kraken's by at most half a unit of the
last decimal Kraken printed. A Kraken candle with trades in an "ours" minute where we hold
no trade is a mismatch too. Mismatches are kept in ``candle_mismatches``; a minute's row is
recomputed whenever either of its candles is written, so a minute whose trades were
re-fetched and now agree drops out.

The writers (:func:`write_candles`, :func:`copy_new_candles`) log every changed minute in
``rollup_dirty`` for the rollup actor (:mod:`histdata.storage.rollups`). The SQL helpers
here run inside the caller's transaction (:meth:`Storage.run`) and take a connection and a
symbol id; the async functions take the :class:`Storage`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from histdata.model import Candle, CandleWriteResult, CoverageSpan
from histdata.storage.coverage import (
    Range,
    add_coverages,
    ceil_to,
    covered,
    floor_to,
    intersect,
    subtract,
    whole_buckets,
)
from histdata.storage.cursors import get_cursor, set_cursor
from histdata.storage.database import Storage, copy_csv
from histdata.storage.rollups import vwap_sql

__all__ = [
    "DIVERT_SQL",
    "CandleMismatch",
    "DeriveResult",
    "DerivedMinutes",
    "candle_differences",
    "candle_mismatches",
    "compare_coarse_candles",
    "copy_new_candles",
    "derive_candles",
    "derive_minutes",
    "derive_observed",
    "mismatch_counts",
    "reconcile",
    "refetch_minutes",
    "store_aside",
    "write_candles",
]

Connection = psycopg.Connection[Any]
_MINUTE = timedelta(minutes=1)
# Changed minutes closer than this share one rollup dirty range (see _mark_dirty).
_DIRTY_MERGE_GAP = timedelta(hours=6)
_CANDLE_COLUMNS = "symbol_id, time, open, high, low, close, volume, vwap, trades, source, final"
_KRAKEN_UPSERT = (
    " ON CONFLICT (symbol_id, time) DO UPDATE SET open = EXCLUDED.open, high = EXCLUDED.high,"
    " low = EXCLUDED.low, close = EXCLUDED.close, volume = EXCLUDED.volume,"
    " vwap = EXCLUDED.vwap, trades = EXCLUDED.trades, source = EXCLUDED.source,"
    " final = EXCLUDED.final, updated_at = now()"
)

# Kraken candles of "ours" minutes, moved out of candles_1m into candles_kraken.
_MOVE_ASIDE = (
    "WITH moved AS (DELETE FROM candles_1m WHERE symbol_id = %(sid)s AND time >= %(s)s"
    f" AND time < %(e)s AND source <> 'trades' RETURNING {_CANDLE_COLUMNS})"
    f" INSERT INTO candles_kraken AS k ({_CANDLE_COLUMNS}) SELECT {_CANDLE_COLUMNS} FROM moved"
    f"{_KRAKEN_UPSERT} RETURNING time"
)
# Open and close are the first and last trade in trade order (time, trade_id, seq: how
# trades are served and how trades_key sorts, NULL ids last), found with one key lookup per
# minute. An ORDER BY inside array_agg sorted every minute's trades and took twice as long.
_DERIVE = f"""
WITH agg AS (
    SELECT date_bin('1 minute', time, 'epoch'::timestamptz) AS time,
           min(time) AS first_at, max(time) AS last_at,
           max(price) AS high, min(price) AS low,
           sum(volume) AS volume, sum(price * volume) AS pv, count(*) AS trades
      FROM trades
     WHERE symbol_id = %(sid)s AND time >= %(s)s AND time < %(e)s
     GROUP BY 1
),
ohlc AS (
    SELECT agg.*, o.price AS open, c.price AS close
      FROM agg
     CROSS JOIN LATERAL (SELECT price FROM trades
                          WHERE symbol_id = %(sid)s AND time = agg.first_at
                          ORDER BY trade_id, seq LIMIT 1) o
     CROSS JOIN LATERAL (SELECT price FROM trades
                          WHERE symbol_id = %(sid)s AND time = agg.last_at
                          ORDER BY trade_id DESC, seq DESC LIMIT 1) c
),
up AS (
INSERT INTO candles_1m AS c
       (symbol_id, time, open, high, low, close, volume, vwap, pv, trades, source, final)
SELECT %(sid)s, time, open, high, low, close, volume, {vwap_sql("pv", "volume", "false")},
       pv, trades, 'trades', true
  FROM ohlc
ON CONFLICT (symbol_id, time) DO UPDATE
   SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
       volume = EXCLUDED.volume, vwap = EXCLUDED.vwap, pv = EXCLUDED.pv,
       trades = EXCLUDED.trades, source = EXCLUDED.source, final = EXCLUDED.final
 WHERE (c.open, c.high, c.low, c.close, c.volume, c.pv, c.trades, c.source, c.final)
       IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close,
                         EXCLUDED.volume, EXCLUDED.pv, EXCLUDED.trades, EXCLUDED.source,
                         EXCLUDED.final)
RETURNING time, (xmax = 0) AS inserted
)
SELECT (SELECT count(*) FROM ohlc), count(*), count(*) FILTER (WHERE inserted), min(time),
       max(time)
  FROM up
"""
_DIRTY = (
    "INSERT INTO rollup_dirty (symbol_id, start_time, end_time) VALUES (%(sid)s, %(lo)s, %(hi)s)"
)

# Staged Kraken candles (write_candles' _stage_candles) that belong to an "ours" minute: a
# derived candle is stored there, or the minute lies in derived candle coverage.
DIVERT_SQL = """
UPDATE _stage_candles s SET aside = true
 WHERE s.source <> 'trades'
   AND (EXISTS (SELECT 1 FROM candles_1m c
                 WHERE c.symbol_id = s.symbol_id AND c.time = s.time AND c.source = 'trades')
        OR EXISTS (SELECT 1 FROM coverage v
                    WHERE v.symbol_id = s.symbol_id AND v.stream = 'candles'
                      AND v.source = 'derived' AND v.during @> s.time))
"""
_STORE_ASIDE = (
    f"INSERT INTO candles_kraken AS k ({_CANDLE_COLUMNS}) SELECT {_CANDLE_COLUMNS}"
    f" FROM _stage_candles WHERE aside{_KRAKEN_UPSERT}"
    " WHERE (NOT k.final OR (EXCLUDED.final AND k.source = EXCLUDED.source))"
    " AND (k.open, k.high, k.low, k.close, k.volume, k.vwap, k.trades, k.source, k.final)"
    " IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close,"
    " EXCLUDED.volume, EXCLUDED.vwap, EXCLUDED.trades, EXCLUDED.source, EXCLUDED.final)"
    " RETURNING symbol_id, time, (xmax = 0)"
)


def _differs(name: str, ours: str, theirs: str) -> str:
    return (
        f"'{name}', CASE WHEN {ours} IS DISTINCT FROM {theirs}"
        f" THEN jsonb_build_array({ours}::text, {theirs}::text) END"
    )


# ours.vwap is ours rounded; the test itself is on the exact pv: |pv - vwap_k·v| ≤ ½·10^-scale·v.
_COMPARE = f"""
SELECT k.time, d.time IS NOT NULL, jsonb_strip_nulls(jsonb_build_object(
           {_differs("open", "d.open", "k.open")},
           {_differs("high", "d.high", "k.high")},
           {_differs("low", "d.low", "k.low")},
           {_differs("close", "d.close", "k.close")},
           {_differs("volume", "coalesce(d.volume, 0)", "k.volume")},
           {_differs("trades", "coalesce(d.trades, 0)", "k.trades")},
           'vwap', CASE WHEN k.vwap IS NOT NULL AND d.pv IS NOT NULL
                         AND 2 * abs(d.pv - k.vwap * d.volume) * 10::numeric ^ scale(k.vwap)
                             > d.volume
                        THEN jsonb_build_array(d.vwap::text, k.vwap::text) END))
  FROM candles_kraken k
  LEFT JOIN candles_1m d ON d.symbol_id = k.symbol_id AND d.time = k.time AND d.source = 'trades'
 WHERE k.symbol_id = %(sid)s AND k.time >= %(s)s AND k.time < %(e)s AND k.final
   AND k.time + interval '1 minute' <= now()
   AND (d.time IS NOT NULL OR k.trades > 0)
"""


@dataclass(frozen=True, slots=True)
class CandleMismatch:
    """A minute whose two candles disagree, with both values of each differing field."""

    time: datetime
    fields: dict[str, tuple[object, object]]  # field → (ours, theirs)


@dataclass(frozen=True, slots=True)
class DerivedMinutes:
    """What :func:`derive_minutes` did to one range."""

    derived: int  # minutes with trades, aggregated
    inserted: int  # our candles new in candles_1m
    updated: int  # our candles that changed (re-derived with other trades)
    moved_aside: int  # Kraken candles moved from candles_1m to candles_kraken
    compared: int
    mismatches: list[CandleMismatch]


def derive_minutes(conn: Connection, sid: int, start: datetime, end: datetime) -> DerivedMinutes:
    """Derive the candles of whole minutes ``[start, end)`` from stored trades, set-based.

    The caller guarantees the range lies inside trades coverage and records it as
    ``derived`` candle coverage in the same transaction. Kraken candles of the range move to
    ``candles_kraken``, changed minutes are logged for the rollups, and the range is
    reconciled. Idempotent: a second call changes nothing. A stored candle of ours whose
    minute has no trade left is not removed (trades are only ever removed by retention,
    which removes their candles' chunks too).
    """
    params = {"sid": sid, "s": start, "e": end}
    # A day of trades crosses jit_above_cost: compiling the plan took 270 ms of a 620 ms
    # derivation, for a query that runs once.
    conn.execute("SET LOCAL jit = off")
    moved = [row[0] for row in conn.execute(_MOVE_ASIDE, params).fetchall()]
    row = conn.execute(_DERIVE.encode(), params).fetchone()
    assert row is not None  # an aggregate without GROUP BY yields one row
    derived, changed, inserted, first, last = row
    changed_at = [*moved, *((first, last) if changed else ())]
    if changed_at:
        conn.execute(_DIRTY, {"sid": sid, "lo": min(changed_at), "hi": max(changed_at) + _MINUTE})
    compared, mismatches = reconcile(conn, sid, start, end)
    return DerivedMinutes(
        derived=int(derived),
        inserted=int(inserted),
        updated=int(changed) - int(inserted),
        moved_aside=len(moved),
        compared=compared,
        mismatches=mismatches,
    )


def store_aside(conn: Connection) -> list[tuple[int, datetime, bool]]:
    """Write the staged Kraken candles marked by :data:`DIVERT_SQL` to ``candles_kraken``
    and reconcile their minutes; returns (symbol id, minute, new) of the rows that changed."""
    changed = [(int(sid), t, bool(new)) for sid, t, new in conn.execute(_STORE_ASIDE).fetchall()]
    by_symbol: dict[int, list[datetime]] = {}
    for sid, time, _ in changed:
        by_symbol.setdefault(sid, []).append(time)
    for sid, times in by_symbol.items():
        reconcile(conn, sid, min(times), max(times) + _MINUTE)
    return changed


def _mismatch(time: datetime, fields: dict[str, list[Any]]) -> CandleMismatch:
    def value(name: str, text: Any) -> object:
        if text is None or name == "trades":
            return None if text is None else int(text)
        return Decimal(text)

    return CandleMismatch(
        time, {name: (value(name, a), value(name, b)) for name, (a, b) in fields.items()}
    )


def reconcile(
    conn: Connection, sid: int, start: datetime, end: datetime
) -> tuple[int, list[CandleMismatch]]:
    """Recompute ``candle_mismatches`` for ``[start, end)``; returns (minutes compared with
    both candles present, the mismatches found)."""
    params = {"sid": sid, "s": start, "e": end}
    rows = conn.execute(_COMPARE.encode(), params).fetchall()
    conn.execute(
        "DELETE FROM candle_mismatches WHERE symbol_id = %(sid)s AND time >= %(s)s"
        " AND time < %(e)s",
        params,
    )
    found = [(time, fields) for time, _, fields in rows if fields]
    if found:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO candle_mismatches (symbol_id, time, fields) VALUES (%s, %s, %s)",
                [(sid, time, Jsonb(fields)) for time, fields in found],
            )
    compared = sum(1 for _, both, _ in rows if both)
    return compared, [_mismatch(time, fields) for time, fields in found]


async def write_candles(
    storage: Storage,
    candles: Sequence[Candle],
    *,
    coverage: Sequence[tuple[str, CoverageSpan]] = (),
) -> CandleWriteResult:
    """Upsert 1-minute candles and log the changed ranges for the rollup actor.

    A stored row is replaced only when it is not final yet, or when the new candle is
    final and from the same source (a corrected re-delivery); a final candle is never
    overwritten by one of another source, nor by an in-progress one. A Kraken candle of
    a minute served from our own trades goes to ``candles_kraken`` beside ours instead,
    and the minute is reconciled (the module docstring). Rows whose values
    did not change count as ``unchanged`` and are not rewritten.

    Raises:
        ValueError: a candle is not a 1-minute candle.
    """
    if any(c.interval_min != 1 for c in candles):
        raise ValueError("write_candles stores 1-minute candles; rollups are derived")
    if not candles and not coverage:
        return CandleWriteResult(0, 0, 0)
    return await storage.run(_write_candles, storage, candles, coverage)


def _write_candles(
    conn: Connection,
    storage: Storage,
    candles: Sequence[Candle],
    coverage: Sequence[tuple[str, CoverageSpan]],
) -> CandleWriteResult:
    inserted = updated = 0
    if candles:
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _stage_candles (symbol_id int2, time timestamptz,"
            " open numeric, high numeric, low numeric, close numeric, volume numeric,"
            " vwap numeric, trades int4, source text, final bool, aside bool DEFAULT false)"
            " ON COMMIT DELETE ROWS"
        )
        ids = {symbol: storage.symbol_id(conn, symbol) for symbol in {c.symbol for c in candles}}
        # The last version of a candle in the batch wins (a live minute re-emitted).
        latest = {(c.symbol, c.time): c for c in candles}
        with conn.cursor() as cur:
            with cur.copy(
                "COPY _stage_candles (symbol_id, time, open, high, low, close, volume, vwap,"
                " trades, source, final) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(
                    [
                        *("int2", "timestamptz", "numeric", "numeric", "numeric"),
                        *("numeric", "numeric", "numeric", "int4", "text", "bool"),
                    ]
                )
                for c in latest.values():
                    copy.write_row(
                        (
                            ids[c.symbol],
                            c.time,
                            c.open,
                            c.high,
                            c.low,
                            c.close,
                            c.volume,
                            c.vwap,
                            c.trades,
                            c.source.value,
                            c.final,
                        )
                    )
            # Kraken's candle of a minute we serve from our own trades is kept beside
            # ours, not served (storage/candles.py).
            cur.execute(DIVERT_SQL)
            aside = store_aside(conn) if cur.rowcount else []
            cur.execute(
                "INSERT INTO candles_1m AS c (symbol_id, time, open, high, low, close, volume,"
                " vwap, pv, trades, source, final)"
                " SELECT symbol_id, time, open, high, low, close, volume, vwap, vwap * volume,"
                " trades, source, final FROM _stage_candles WHERE NOT aside"
                " ON CONFLICT (symbol_id, time) DO UPDATE SET open = EXCLUDED.open,"
                " high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,"
                " volume = EXCLUDED.volume, vwap = EXCLUDED.vwap, pv = EXCLUDED.pv,"
                " trades = EXCLUDED.trades, source = EXCLUDED.source, final = EXCLUDED.final"
                " WHERE (NOT c.final OR (EXCLUDED.final AND c.source = EXCLUDED.source))"
                # An in-progress candle only grows: an older version (a journal replayed
                # beside direct writes) never replaces a newer one of the same source.
                " AND (EXCLUDED.final OR c.source <> EXCLUDED.source"
                " OR EXCLUDED.trades >= c.trades)"
                " AND (c.open, c.high, c.low, c.close, c.volume, c.vwap, c.trades, c.source,"
                " c.final) IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low,"
                " EXCLUDED.close, EXCLUDED.volume, EXCLUDED.vwap, EXCLUDED.trades,"
                " EXCLUDED.source, EXCLUDED.final)"
                " RETURNING symbol_id, time, (xmax = 0) AS inserted"
            )
            changed = cur.fetchall()
        inserted = sum(1 for row in changed if row[2]) + sum(1 for row in aside if row[2])
        updated = len(changed) + len(aside) - inserted
        _mark_dirty(conn, ((sid, time) for sid, time, _ in changed))
    add_coverages(conn, storage, coverage)
    return CandleWriteResult(inserted, updated, len(candles) - inserted - updated)


def _mark_dirty(conn: Connection, changed: Iterable[tuple[int, datetime]]) -> None:
    """Append dirty ranges covering the changed minutes.

    Minutes less than :data:`_DIRTY_MERGE_GAP` apart share one range; farther ones get
    their own, so a repaired minute from last month and the live minute in one batch do
    not make the rollup recompute the month between them.
    """
    by_symbol: dict[int, list[datetime]] = {}
    for sid, time in changed:
        by_symbol.setdefault(sid, []).append(time)
    rows: list[tuple[int, datetime, datetime]] = []
    for sid, times in by_symbol.items():
        times.sort()
        low = high = times[0]
        for time in times[1:]:
            if time - high > _DIRTY_MERGE_GAP:
                rows.append((sid, low, high + timedelta(minutes=1)))
                low = time
            high = time
        rows.append((sid, low, high + timedelta(minutes=1)))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO rollup_dirty (symbol_id, start_time, end_time) VALUES (%s, %s, %s)",
            rows,
        )


async def copy_new_candles(
    storage: Storage,
    symbol: str,
    start: datetime,
    end: datetime,
    rows_csv: bytes | memoryview,
    rows: int,
    *,
    coverage: Sequence[tuple[str, CoverageSpan]] = (),
) -> CandleWriteResult | None:
    """``COPY`` Kraken OHLCVT 1-minute candles straight into ``candles_1m`` when
    ``[start, end)`` holds no candle of ``symbol`` and none of it is served from our trades.

    The bulk twin of :func:`write_candles` for the importer: with nothing stored
    in the range there is nothing to upsert against or to divert beside our own candles, so
    the rows go in as text. Returns None, having written nothing, otherwise (or when a
    concurrent writer stored one of these minutes first); the caller then writes the rows
    with :func:`write_candles`. The range is logged for the rollups, and
    ``coverage`` commits with the rows.

    ``rows_csv`` holds ``rows`` lines
    ``symbol_id,time,open,high,low,close,volume,trades,csv,true``: the id from
    :func:`~histdata.storage.symbol_table.register_symbol`, the time a zone-less UTC
    timestamp in ``[start, end)``, exact decimal text.

    Raises:
        DatabaseUnavailable: the database is down.
    """
    try:
        return await storage.run(
            _copy_new_candles, storage, symbol, start, end, rows_csv, rows, coverage
        )
    except psycopg.errors.UniqueViolation:
        return None


def _copy_new_candles(
    conn: Connection,
    storage: Storage,
    symbol: str,
    start: datetime,
    end: datetime,
    rows_csv: bytes | memoryview,
    rows: int,
    coverage: Sequence[tuple[str, CoverageSpan]],
) -> CandleWriteResult | None:
    sid = storage.symbol_id(conn, symbol)
    busy = conn.execute(
        "SELECT EXISTS (SELECT FROM candles_1m WHERE symbol_id = %(sid)s AND time >= %(s)s"
        "  AND time < %(e)s)"
        " OR EXISTS (SELECT FROM candles_kraken WHERE symbol_id = %(sid)s AND time >= %(s)s"
        "  AND time < %(e)s)"
        " OR EXISTS (SELECT FROM coverage WHERE symbol_id = %(sid)s AND stream = 'candles'"
        "  AND source = 'derived' AND during && tstzrange(%(s)s, %(e)s))",
        {"sid": sid, "s": start, "e": end},
    ).fetchone()
    if busy is None or busy[0]:
        return None
    conn.execute("SET LOCAL TimeZone = 'UTC'")  # the rows' times carry no zone
    copy_csv(
        conn,
        "COPY candles_1m (symbol_id, time, open, high, low, close, volume, trades, source,"
        " final) FROM STDIN (FORMAT csv)",
        rows_csv,
        rows,
        "candles",
    )
    conn.execute(_DIRTY, {"sid": sid, "lo": start, "hi": end})
    add_coverages(conn, storage, coverage)
    return CandleWriteResult(rows, 0, 0)


async def candle_mismatches(
    storage: Storage, symbol: str, start: datetime, end: datetime
) -> list[CandleMismatch]:
    """Recorded mismatches of ``symbol`` (any spelling) in ``[start, end)``, oldest first.

    Only reads, so it works in the query path's read-only role.

    Raises:
        UnknownSymbol: the registry does not know the spelling.
        DatabaseUnavailable: the database is down.
    """

    def query(conn: Connection) -> list[CandleMismatch]:
        sid = storage.known_symbol_id(conn, symbol)
        if sid is None:
            return []
        rows = conn.execute(
            "SELECT time, fields FROM candle_mismatches WHERE symbol_id = %s AND time >= %s"
            " AND time < %s ORDER BY time",
            (sid, start, end),
        ).fetchall()
        return [_mismatch(time, fields) for time, fields in rows]

    return await storage.run(query)


async def refetch_minutes(
    storage: Storage, symbol: str, start: datetime, end: datetime
) -> list[tuple[datetime, datetime]]:
    """The mismatched minutes of ``[start, end)`` whose trades should be fetched again from
    REST, merged into ranges ``[first, last + 1m)`` of consecutive minutes, oldest first.

    A re-fetch that stores the missing trades, followed by
    :func:`derive_candles` over the range, clears the minutes that
    then agree.

    Raises:
        UnknownSymbol, DatabaseUnavailable: as :func:`candle_mismatches`.
    """
    ranges: list[tuple[datetime, datetime]] = []
    for m in await candle_mismatches(storage, symbol, start, end):
        if ranges and ranges[-1][1] == m.time:
            ranges[-1] = (ranges[-1][0], m.time + _MINUTE)
        else:
            ranges.append((m.time, m.time + _MINUTE))
    return ranges


async def mismatch_counts(storage: Storage) -> dict[str, int]:
    """Recorded mismatched minutes per symbol, for metrics (symbols without any left out).

    Raises:
        DatabaseUnavailable: the database is down.
    """

    def query(conn: Connection) -> dict[str, int]:
        rows = conn.execute(
            "SELECT s.symbol, count(*) FROM candle_mismatches m JOIN symbols s"
            " ON s.id = m.symbol_id GROUP BY s.symbol ORDER BY s.symbol"
        ).fetchall()
        return {symbol: int(n) for symbol, n in rows}

    return await storage.run(query)


# -------------------------------------------------------------- candles from trades


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


# One transaction derives at most this much: its dirty range and its reconciliation stay
# small, and an interrupted repair of years keeps what it finished.
_DERIVE_CHUNK = timedelta(days=1)


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
    whole = whole_buckets(await covered(storage, symbol, "trades", start, end), minute)
    derived = inserted = updated = compared = 0
    mismatches: list[CandleMismatch] = []
    for low, high in whole:
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
        derived, inserted, updated, compared, mismatches, whole, subtract(aligned, whole)
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
        mark = await get_cursor(storage, name)
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
        await set_cursor(storage, name, end.isoformat())
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
    add_coverages(conn, storage, [(symbol, CoverageSpan("candles", "derived", start, end))])
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
    observed = await covered(storage, symbol, "candles", start, end)
    ours = await storage.run(_rollup, storage, symbol, step, start, end)
    matched = unverifiable = 0
    mismatches: list[CandleMismatch] = []
    for candle in candles:
        bucket = (candle.time, candle.time + step)
        if intersect([bucket], observed) != [bucket]:
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
