"""Candle reads at any whole-minute interval, always as fresh as the 1-minute candles.

An interval of ``n`` minutes is served from the largest stored interval ``b`` that divides it
(:data:`~histdata.timeutil.STORED_INTERVALS`; 1m is ``candles_1m``, the rest
``candles_rollup``). Buckets of ``b`` that a pending ``rollup_dirty`` range touches are not
taken from ``candles_rollup`` but computed on the fly from 1-minute candles, in the same
snapshot as the probe that found the dirty range, so a read issued before the rollup actor
has run is already correct. When ``n > b`` the ``b`` buckets are aggregated to ``n`` in SQL.
Buckets are aligned as described in :mod:`histdata.storage.rollups` (weeks start Monday
00:00 UTC).

A candle is returned when its bucket *start* is in ``[start, end)``. Values are returned as
the text PostgreSQL prints for the ``numeric`` (exact; scale as stored). The VWAP of an
aggregated bucket is ``sum(pv) / sum(volume)`` of the 1-minute candles' exact ``pv``
(:mod:`histdata.storage.candles`), rounded half-up to :data:`VWAP_DECIMALS` places (trailing
zeros trimmed); it is NULL when a child has no pv or the volume is zero. 1-minute candles
carry their stored vwap: ours that same rounding of their exact pv, Kraken's as Kraken
printed it. Which 1-minute candle is served (ours or Kraken's) is decided when candles are
written, not here: see :mod:`histdata.storage.candles`.

Large ranges are streamed: :func:`iter_candle_rows` clamps a range longer than one window to
the stored data and reads windows of at most ``chunk`` buckets, one statement each, so memory
stays flat.
Every window is read in one ``REPEATABLE READ, READ ONLY`` transaction (one snapshot), under
the read-only role when one is given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import psycopg
from psycopg import sql

from histdata.model import Candle, CandleSource, ns_to_datetime
from histdata.storage.database import Storage
from histdata.storage.rollups import BUCKET_ORIGIN, VWAP_DECIMALS, bucket_floor, vwap_sql
from histdata.storage.trades import KEY_ORDER_SCAN, TRADE_KEYSET, TRADE_ORDER
from histdata.timeutil import STORED_INTERVALS, parse_time

__all__ = [
    "VWAP_DECIMALS",
    "CandleRow",
    "ReadOptions",
    "TradeRow",
    "base_interval",
    "iter_candle_rows",
    "iter_trade_rows",
    "latest_candle_row",
    "read_candles",
    "row_to_candle",
    "symbol_extent",
]

Connection = psycopg.Connection[Any]

# (epoch µs, ISO time with Z, open, high, low, close, volume, vwap or None, trades). Text, not
# Decimal: the socket formats write these strings as they are, which is exact and fast.
CandleRow = tuple[int, str, str, str, str, str, str, str | None, int]
# (Unix ns, ISO time with Z and 0, 6 or 9 fraction digits, price, volume, side or None, trade
# id or None), text as for candles.
TradeRow = tuple[int, str, str, str, str | None, int | None]


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """How reads reach the database: ``role`` is a read-only role to ``SET LOCAL ROLE`` to."""

    role: str | None = None


_DEFAULT = ReadOptions()


def base_interval(minutes: int) -> int:
    """The largest stored interval that divides ``minutes`` (at least 1)."""
    return max(b for b in STORED_INTERVALS if minutes % b == 0)


# The b-buckets of [S, E) when no dirty range touches them (the usual case): the stored rollups.
_BASE_STORED = """
base AS (
    SELECT time, open, high, low, close, volume, pv, pv IS NULL AS no_pv, trades, vwap
      FROM candles_rollup
     WHERE symbol_id = %(sid)s AND interval_min = %(b_min)s AND time >= %(s)s AND time < %(e)s
)
"""
# Whether a dirty range touches [S, E): it decides between the query above and the one below.
_DIRTY_PROBE = (
    "SELECT EXISTS (SELECT FROM rollup_dirty"
    " WHERE symbol_id = %(sid)s AND start_time < %(e)s AND end_time > %(s)s)"
)
# The b-buckets of [S, E): stored rollups outside pending dirty ranges, plus the dirty ones
# recomputed from 1m. The dirty ranges are widened to b-bucket edges first; the dirty test
# on the stored rows is a scalar subquery, evaluated once.
_BASE_ROLLUP = f"""
dirty AS (
    SELECT range_agg(tstzrange(
               date_bin(%(b)s, start_time, %(origin)s),
               date_bin(%(b)s, end_time - interval '1 microsecond', %(origin)s) + %(b)s)) AS m
      FROM rollup_dirty
     WHERE symbol_id = %(sid)s AND start_time < %(e)s AND end_time > %(s)s
),
base AS (
    SELECT r.time, r.open, r.high, r.low, r.close, r.volume, r.pv, r.pv IS NULL AS no_pv,
           r.trades, r.vwap
      FROM candles_rollup r
     WHERE r.symbol_id = %(sid)s AND r.interval_min = %(b_min)s
       AND r.time >= %(s)s AND r.time < %(e)s
       AND NOT coalesce((SELECT m FROM dirty) @> r.time, false)
    UNION ALL
    SELECT *, {vwap_sql("pv", "volume", "no_pv")}
      FROM (SELECT date_bin(%(b)s, c.time, %(origin)s) AS time,
                   (array_agg(c.open ORDER BY c.time))[1] AS open, max(c.high) AS high,
                   min(c.low) AS low, (array_agg(c.close ORDER BY c.time DESC))[1] AS close,
                   sum(c.volume) AS volume, sum(c.pv) AS pv,
                   bool_or(c.pv IS NULL) AS no_pv, sum(c.trades) AS trades
              FROM dirty CROSS JOIN LATERAL unnest(dirty.m) AS d(r)
              JOIN candles_1m c ON c.symbol_id = %(sid)s
                   AND c.time >= greatest(lower(d.r), %(s)s)
                   AND c.time < least(upper(d.r), %(e)s)
             GROUP BY 1) fresh
)
"""
_BASE_1M = """
base AS (
    SELECT time, open, high, low, close, volume, pv, pv IS NULL AS no_pv, trades, vwap
      FROM candles_1m
     WHERE symbol_id = %(sid)s AND time >= %(s)s AND time < %(e)s
)
"""
_GROUPED = """,
grouped AS (
    SELECT date_bin(%(n)s, time, %(origin)s) AS time,
           (array_agg(open ORDER BY time))[1] AS open, max(high) AS high, min(low) AS low,
           (array_agg(close ORDER BY time DESC))[1] AS close, sum(volume) AS volume,
           sum(pv) AS pv, bool_or(no_pv) AS no_pv, sum(trades) AS trades
      FROM base GROUP BY 1
)
"""
_TIME_COLUMNS = (
    "(extract(epoch FROM time) * 1000000)::int8,"
    " to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
    " open::text, high::text, low::text, close::text, volume::text, "
)


def _query(n: int, b: int, dirty: bool) -> bytes:
    base = _BASE_1M if b == 1 else _BASE_ROLLUP if dirty else _BASE_STORED
    head = "WITH " + base
    if n == b:  # 1m rows carry their own vwap, stored rollups and fresh buckets theirs
        tail = f"SELECT {_TIME_COLUMNS} vwap::text, trades FROM base ORDER BY time"
    else:
        head += _GROUPED
        vwap = vwap_sql("pv", "volume", "no_pv")
        tail = f"SELECT {_TIME_COLUMNS} ({vwap})::text, trades FROM grouped ORDER BY time"
    return (head + tail).encode()


_QUERIES: dict[tuple[int, int, bool], bytes] = {}


def _begin(conn: Connection, options: ReadOptions) -> None:
    # One round trip. One snapshot for every statement of the read (the dirty-range probe
    # and the window it chooses the query for). The planner's guess for the dirty-range
    # branch is huge; with JIT on, compiling for it costs 20-300 ms on a query that runs in
    # a few milliseconds.
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET LOCAL jit = off")
    if options.role:
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(options.role)))


def _lookup(conn: Connection, symbol: str) -> int | None:
    """The id of a canonical symbol name, without registering it (reads never write)."""
    row = conn.execute("SELECT id FROM symbols WHERE symbol = %s", (symbol,)).fetchone()
    return int(row[0]) if row else None


def _extent(
    conn: Connection, sid: int, b: int, start: datetime, end: datetime
) -> tuple[datetime, datetime] | None:
    """First and last stored minute of ``[start, end)`` for ``sid`` (1m rows or b rollups)."""
    row = conn.execute(
        "SELECT least((SELECT min(time) FROM candles_1m WHERE symbol_id = %(sid)s"
        "  AND time >= %(s)s AND time < %(e)s),"
        " (SELECT min(time) FROM candles_rollup WHERE symbol_id = %(sid)s"
        "  AND interval_min = %(b)s AND time >= %(s)s AND time < %(e)s)),"
        " greatest((SELECT max(time) FROM candles_1m WHERE symbol_id = %(sid)s"
        "  AND time >= %(s)s AND time < %(e)s),"
        " (SELECT max(time) FROM candles_rollup WHERE symbol_id = %(sid)s"
        "  AND interval_min = %(b)s AND time >= %(s)s AND time < %(e)s))",
        {"sid": sid, "b": b, "s": start, "e": end},
    ).fetchone()
    if row is None or row[0] is None:
        return None
    return row[0], row[1]


def _aligned(start: datetime, end: datetime, n: int) -> tuple[datetime, datetime]:
    """The data range behind buckets starting in ``[start, end)``: edges rounded up to ``n``."""
    step = timedelta(minutes=n)

    def ceil(t: datetime) -> datetime:
        floor = bucket_floor(t, n)
        return floor if floor == t else floor + step

    return ceil(start), ceil(end)


def _window(
    conn: Connection, options: ReadOptions, sid: int, n: int, s: datetime, e: datetime
) -> list[CandleRow]:
    _begin(conn, options)
    return _read_window(conn, sid, n, s, e)


def _read_window(conn: Connection, sid: int, n: int, s: datetime, e: datetime) -> list[CandleRow]:
    b = base_interval(n)
    params = {
        "sid": sid,
        "s": s,
        "e": e,
        "b": timedelta(minutes=b),
        "b_min": b,
        "n": timedelta(minutes=n),
        "origin": BUCKET_ORIGIN,
    }
    # Without pending dirty ranges the rollup rows are read as stored: no plan for the
    # recomputation from 1-minute candles (on TimescaleDB, planning it over every chunk of
    # candles_1m took longer than the read) and no sort to merge it.
    dirty = b > 1 and bool(conn.execute(_DIRTY_PROBE, params).fetchone()[0])  # type: ignore[index]
    key = (n, b, dirty)
    query = _QUERIES.get(key)
    if query is None:
        query = _QUERIES.setdefault(key, _query(*key))
    with conn.cursor() as cur:
        cur.execute(query, params, prepare=True)
        return cur.fetchall()


def _plan(
    conn: Connection,
    options: ReadOptions,
    symbol: str,
    n: int,
    start: datetime,
    end: datetime,
    span: timedelta,
) -> tuple[int, datetime, datetime] | None:
    """The symbol id and the range to read in windows of ``span``: the aligned range clamped
    to the stored data, or left as it is when it fits one window (the clamp would cost more
    than it saves: on TimescaleDB its four min/max probes plan over every chunk)."""
    _begin(conn, options)
    sid = _lookup(conn, symbol)
    if sid is None:
        return None
    s, e = _aligned(start, end, n)
    if s >= e:
        return None
    if e - s <= span:
        return sid, s, e
    found = _extent(conn, sid, base_interval(n), s, e)
    if found is None:
        return None
    first, last = found
    return sid, bucket_floor(first, n), bucket_floor(last, n) + timedelta(minutes=n)


def _plan_and_read(
    conn: Connection,
    options: ReadOptions,
    symbol: str,
    n: int,
    start: datetime,
    end: datetime,
    span: timedelta,
) -> tuple[tuple[int, datetime, datetime], list[CandleRow]] | None:
    """:func:`_plan`, then the first window of up to ``span`` in the same transaction (most
    reads fit one window: one thread hop and one snapshot instead of two)."""
    plan = _plan(conn, options, symbol, n, start, end, span)
    if plan is None:
        return None
    sid, low, high = plan
    return plan, _read_window(conn, sid, n, low, min(low + span, high))


async def iter_candle_rows(
    storage: Storage,
    symbol: str,
    interval_min: int,
    start: datetime,
    end: datetime,
    *,
    chunk: int = 20_000,
    options: ReadOptions = _DEFAULT,
) -> AsyncIterator[list[CandleRow]]:
    """Yield the ``interval_min`` candles of ``symbol`` starting in ``[start, end)``, oldest first.

    ``symbol`` is the canonical name (resolve spellings with the registry first); a symbol
    with no stored rows yields nothing. Each yielded list is one window of at most ``chunk``
    buckets read in one statement; empty windows are skipped.

    Raises:
        ValueError: ``interval_min`` is not a positive number of minutes.
        DatabaseUnavailable: the database could not be reached.
    """
    if interval_min < 1:
        raise ValueError(f"interval must be a positive number of minutes, not {interval_min}")
    span = timedelta(minutes=interval_min) * chunk
    planned = await storage.run(_plan_and_read, options, symbol, interval_min, start, end, span)
    if planned is None:
        return
    (sid, low, high), rows = planned
    if rows:
        yield rows
    position = min(low + span, high)
    while position < high:
        upper = min(position + span, high)
        rows = await storage.run(_window, options, sid, interval_min, position, upper)
        if rows:
            yield rows
        position = upper


def row_to_candle(symbol: str, interval_min: int, row: CandleRow) -> Candle:
    """Turn a text row into a :class:`~histdata.model.Candle`.

    ``source`` is not part of the read contract (an aggregated bucket mixes sources); it is
    reported as :attr:`CandleSource.TRADES`, and ``final`` as True.
    """
    _, time, o, h, lo, c, v, vwap, n = row
    return Candle(
        symbol=symbol,
        time=parse_time(time),
        open=Decimal(o),
        high=Decimal(h),
        low=Decimal(lo),
        close=Decimal(c),
        volume=Decimal(v),
        vwap=None if vwap is None else Decimal(vwap),
        trades=n,
        interval_min=interval_min,
        source=CandleSource.TRADES,
    )


async def read_candles(
    storage: Storage,
    symbol: str,
    interval_min: int,
    start: datetime,
    end: datetime,
    *,
    options: ReadOptions = _DEFAULT,
) -> list[Candle]:
    """All candles of ``[start, end)`` at ``interval_min`` as :class:`Candle` values.

    For ranges too big for memory use :func:`iter_candle_rows`. Raises as that does.
    """
    out: list[Candle] = []
    async for rows in iter_candle_rows(storage, symbol, interval_min, start, end, options=options):
        out.extend(row_to_candle(symbol, interval_min, row) for row in rows)
    return out


async def latest_candle_row(
    storage: Storage,
    symbol: str,
    interval_min: int,
    *,
    options: ReadOptions = _DEFAULT,
) -> CandleRow | None:
    """The newest ``interval_min`` candle of ``symbol`` (possibly still in progress), or None."""

    def last_minute(conn: Connection) -> tuple[int, datetime] | None:
        _begin(conn, options)
        sid = _lookup(conn, symbol)
        if sid is None:
            return None
        row = conn.execute(
            "SELECT max(time) FROM candles_1m WHERE symbol_id = %s", (sid,)
        ).fetchone()
        return None if row is None or row[0] is None else (sid, row[0])

    found = await storage.run(last_minute)
    if found is None:
        return None
    sid, last = found
    s = bucket_floor(last, interval_min)
    rows = await storage.run(
        _window, options, sid, interval_min, s, s + timedelta(minutes=interval_min)
    )
    return rows[-1] if rows else None


async def symbol_extent(
    storage: Storage,
    options: ReadOptions = _DEFAULT,
) -> dict[str, dict[str, tuple[datetime, datetime] | None]]:
    """Per stored symbol, the first and last stored time of its trades and 1m candles.

    The last time is the newest row's time (a candle's bucket start, a trade's time).
    """

    def query(conn: Connection) -> dict[str, dict[str, tuple[datetime, datetime] | None]]:
        _begin(conn, options)
        rows = conn.execute(
            "SELECT s.symbol,"
            " (SELECT min(time) FROM trades WHERE symbol_id = s.id),"
            " (SELECT max(time) FROM trades WHERE symbol_id = s.id),"
            " (SELECT min(time) FROM candles_1m WHERE symbol_id = s.id),"
            " (SELECT max(time) FROM candles_1m WHERE symbol_id = s.id)"
            " FROM symbols s ORDER BY s.symbol"
        ).fetchall()
        return {
            symbol: {
                "trades": (t0, t1) if t0 is not None else None,
                "candles": (c0, c1) if c0 is not None else None,
            }
            for symbol, t0, t1, c0, c1 in rows
        }

    return await storage.run(query)


# A trade's time is ``time`` (µs) plus ``time_ns`` (0..999 ns below it); the ISO text has 9
# fraction digits when there are nanoseconds, 6 when there are microseconds, else none (as
# histdata.formats.format_time_ns). The trailing ``seq`` is the keyset, cut before yielding.
_UTC_TIME = "time AT TIME ZONE 'UTC'"
_TRADE_PAGE = (
    "SELECT (extract(epoch FROM time) * 1000000)::int8 * 1000 + time_ns,"
    f" to_char({_UTC_TIME}, 'YYYY-MM-DD\"T\"HH24:MI:SS')"
    f" || CASE WHEN time_ns <> 0 THEN to_char({_UTC_TIME}, '.US') || lpad(time_ns::text, 3, '0')"
    f"  WHEN to_char({_UTC_TIME}, 'US') <> '000000' THEN to_char({_UTC_TIME}, '.US')"
    "  ELSE '' END || 'Z',"
    " price::text, volume::text, CASE side WHEN 'b' THEN 'buy' WHEN 's' THEN 'sell' END,"
    " trade_id, seq"
    " FROM trades WHERE symbol_id = %(sid)s AND time >= %(s)s AND time < %(e)s"
)


def _trade_page(
    conn: Connection,
    options: ReadOptions,
    symbol: str,
    start: datetime,
    end: datetime,
    limit: int,
    after: tuple[datetime, int | None, int] | None,
) -> list[tuple[Any, ...]] | None:
    _begin(conn, options)
    conn.execute(KEY_ORDER_SCAN)
    sid = _lookup(conn, symbol)
    if sid is None:
        return None
    params: dict[str, Any] = {"sid": sid, "s": start, "e": end, "n": limit}
    query = _TRADE_PAGE
    if after is not None:
        query += TRADE_KEYSET
        params.update(t=after[0], id=after[1], seq=after[2])
    with conn.cursor() as cur:
        cur.execute((query + TRADE_ORDER).encode(), params, prepare=True)
        return cur.fetchall()


async def iter_trade_rows(
    storage: Storage,
    symbol: str,
    start: datetime,
    end: datetime,
    *,
    chunk: int = 50_000,
    options: ReadOptions = _DEFAULT,
) -> AsyncIterator[list[TradeRow]]:
    """Yield the trades of ``symbol`` with ``start <= time < end`` in trade order, as text rows
    the socket formats write without building a :class:`~histdata.model.Trade` per row.

    ``symbol`` is the canonical name; one with no stored rows yields nothing. Each list is
    one keyset-paged statement of at most ``chunk`` rows, so memory stays flat.

    Raises:
        DatabaseUnavailable: the database could not be reached.
    """
    after: tuple[datetime, int | None, int] | None = None
    while True:
        rows = await storage.run(_trade_page, options, symbol, start, end, chunk, after)
        if not rows:
            return
        yield cast(list[TradeRow], [row[:6] for row in rows])
        if len(rows) < chunk:
            return
        ns, trade_id, seq = rows[-1][0], rows[-1][5], rows[-1][6]
        after = (ns_to_datetime(ns), trade_id, seq)
