"""Candle reads at any whole-minute interval, always as fresh as the 1-minute candles.

An interval of ``n`` minutes is served from the largest stored interval ``b`` that divides it
(:data:`~histdata.timeutil.STORED_INTERVALS`; 1m is ``candles_1m``, the rest
``candles_rollup``). Buckets of ``b`` that a pending ``rollup_dirty`` range touches are not
taken from ``candles_rollup`` but computed on the fly from 1-minute candles, in the same
snapshot as the probe that found the dirty range, so a read issued before the rollup actor
has run is already correct. When ``n > b`` the ``b`` buckets are aggregated to ``n`` in SQL.
Buckets are aligned as described in :mod:`histdata.storage.rollups` (weeks start Monday
00:00 UTC).

A candle is returned when its bucket *start* is in ``[start, end)``. Values are the text
PostgreSQL prints for the ``numeric`` (exact; scale as stored). The VWAP of an
aggregated bucket is ``sum(pv) / sum(volume)`` of the 1-minute candles' exact ``pv``
(:mod:`histdata.storage.candles`), rounded half-up to :data:`VWAP_DECIMALS` places (trailing
zeros trimmed); it is NULL when a child has no pv or the volume is zero. 1-minute candles
carry their stored vwap: ours that same rounding of their exact pv, Kraken's as Kraken
printed it. Which 1-minute candle is served (ours or Kraken's) is decided when candles are
written, not here: see :mod:`histdata.storage.candles`.

Reads are streamed in windows: a range longer than one window is clamped to the stored data
and read in windows of at most ``chunk`` buckets (trades: about ``chunk`` rows, paged by
time, see :func:`_trade_window`),
each one statement whose one value is the window's CSV text, built by PostgreSQL in the
layout :mod:`histdata.formats` defines and handed on as it came (the SELECT list is built
from its wire schema, column by column). :func:`read_windows` fetches the next window while
the current one is encoded and sent, and never more than that one ahead, so memory stays
flat. Every window is
read in one ``REPEATABLE READ, READ ONLY`` transaction (one snapshot), under the read-only
role when one is given.
"""

from __future__ import annotations

import csv
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, TypeVar

import psycopg
import trio
from psycopg import sql

from histdata.errors import DatabaseUnavailable
from histdata.formats import CANDLES, TRADES, WireSchema
from histdata.model import Candle, CandleSource
from histdata.storage.database import Storage
from histdata.storage.rollups import BUCKET_ORIGIN, VWAP_DECIMALS, bucket_floor, vwap_sql
from histdata.storage.trades import KEY_ORDER_SCAN, TRADE_KEYSET
from histdata.timeutil import STORED_INTERVALS, parse_time

__all__ = [
    "VWAP_DECIMALS",
    "ReadOptions",
    "WindowedRead",
    "base_interval",
    "candle_query",
    "read_candles",
    "read_windows",
    "start_candle_read",
    "start_trade_read",
    "symbol_extent",
    "trade_query",
]

Connection = psycopg.Connection[Any]
S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """How reads reach the database: ``role`` is a read-only role to ``SET LOCAL ROLE`` to."""

    role: str | None = None


_DEFAULT = ReadOptions()


@dataclass(frozen=True, slots=True)
class WindowedRead(Generic[S]):
    """A read under way: its ``first`` window (CSV text, possibly empty), and how to get the
    next: ``step(conn, options, state)`` returns a window and the state after it (None: that
    was the last). Made by :func:`start_candle_read` and :func:`start_trade_read`."""

    first: bytes
    step: Callable[[Connection, ReadOptions, S], tuple[bytes, S | None]]
    state: S | None
    options: ReadOptions


def base_interval(minutes: int) -> int:
    """The largest stored interval that divides ``minutes`` (at least 1)."""
    return max(b for b in STORED_INTERVALS if minutes % b == 0)


def _select(schema: WireSchema, expressions: Mapping[str, str]) -> str:
    """The SELECT list of ``schema``'s columns, in its order, from each column's expression:
    the wire decides the columns, storage only how each is computed."""
    return ", ".join(expressions[name] for name in schema.names)


def _window_query(schema: WireSchema, query: str) -> bytes:
    """``query`` (a SELECT of ``schema``'s columns, ordered) as one statement returning the
    window's CSV text as a single ``bytea``: one line per row, fields joined by commas, NULL
    an empty field — what ``COPY (query) TO STDOUT (FORMAT csv)`` prints for these columns,
    whose values never need quoting (ISO times, numbers, ``buy``/``sell``).

    Not COPY itself: COPY sends one message per row, and receiving 525,600 of them through
    psycopg took 5.2 s of a year of 1-minute candles where this took 2.9 s (psql's one COPY
    of the same rows: 2.1 s). string_agg keeps the order of the sorted subquery it reads
    (PostgreSQL documents that for an outer level with no join or grouping, as here) as long
    as the plan is not parallel, which :func:`_begin` rules out.
    """
    return _window_select(schema, query, "")


def _counted_window(schema: WireSchema, query: str) -> bytes:
    """:func:`_window_query` with a second value: the number of rows in the window."""
    return _window_select(schema, query, ", count(*)")


def _window_select(schema: WireSchema, query: str, extra: str) -> bytes:
    names = ", ".join(schema.names)
    line = "concat(" + ", ',', ".join(f"w.{name}" for name in schema.names) + ", E'\\n')"
    return (
        f"SELECT convert_to(string_agg({line}, ''), 'UTF8'){extra} FROM ({query}) AS w({names})"
    ).encode()


def _fetch(conn: Connection, statement: bytes, params: Mapping[str, Any]) -> bytes:
    """The text of a :func:`_window_query` statement (empty when it read no row)."""
    return _fetch_counted(conn, statement, params)[0]


def _fetch_counted(
    conn: Connection, statement: bytes, params: Mapping[str, Any]
) -> tuple[bytes, int]:
    """The text of a :func:`_window_query` or :func:`_counted_window` statement and the
    second value (0 for a statement without one)."""
    with conn.cursor(binary=True) as cur:
        cur.execute(statement, params, prepare=True)
        row = cur.fetchone()
    if row is None or row[0] is None:
        return b"", 0
    return bytes(row[0]), int(row[1]) if len(row) > 1 else 0


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
# How each wire column of a candle is computed from ``base`` or ``grouped``. Candle times are
# whole minutes: no fraction to print. numeric prints its exact text in COPY.
_CANDLE_COLUMNS = {
    "time": "to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
    **{name: name for name in ("open", "high", "low", "close", "volume", "vwap", "trades")},
}
# Aggregated buckets divide out their VWAP (1m rows, stored rollups and fresh buckets carry it).
_GROUPED_COLUMNS = {**_CANDLE_COLUMNS, "vwap": vwap_sql("pv", "volume", "no_pv")}


def candle_query(n: int, b: int, dirty: bool) -> str:
    """The SELECT of the ``n``-minute candles of a window from ``b``-minute ones (``dirty``:
    pending rollup ranges are recomputed from 1m), in :data:`~histdata.formats.CANDLES`
    columns; parameters ``sid s e b b_min n origin``."""
    base = _BASE_1M if b == 1 else _BASE_ROLLUP if dirty else _BASE_STORED
    head = "WITH " + base
    if n == b:
        return f"{head}SELECT {_select(CANDLES, _CANDLE_COLUMNS)} FROM base ORDER BY time"
    head += _GROUPED
    return f"{head}SELECT {_select(CANDLES, _GROUPED_COLUMNS)} FROM grouped ORDER BY time"


_QUERIES: dict[tuple[int, int, bool], bytes] = {}


def _begin(conn: Connection, options: ReadOptions) -> None:
    # One round trip. One snapshot for every statement of the read (the dirty-range probe
    # and the window it chooses the query for). The planner's guess for the dirty-range
    # branch is huge; with JIT on, compiling for it costs 20-300 ms on a query that runs in
    # a few milliseconds. No parallel plans: string_agg over the sorted window could be
    # split into per-worker partial aggregates and lose the order (a window is at most
    # tens of thousands of rows; workers would not pay for themselves anyway).
    conn.execute(
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET LOCAL jit = off;"
        " SET LOCAL max_parallel_workers_per_gather = 0"
    )
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


# Where a candle read stands: symbol id, interval, next window's start, the end, window span.
_CandleState = tuple[int, int, datetime, datetime, timedelta]


def _candle_window(conn: Connection, state: _CandleState) -> tuple[bytes, _CandleState | None]:
    """The window at ``state`` (in the transaction begun) and the state after it."""
    sid, n, s, high, span = state
    e = min(s + span, high)
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
    statement = _QUERIES.get(key)
    if statement is None:
        statement = _QUERIES.setdefault(key, _window_query(CANDLES, candle_query(*key)))
    window = _fetch(conn, statement, params)
    return window, ((sid, n, e, high, span) if e < high else None)


def _next_candles(
    conn: Connection, options: ReadOptions, state: _CandleState
) -> tuple[bytes, _CandleState | None]:
    _begin(conn, options)
    return _candle_window(conn, state)


def _plan(
    conn: Connection,
    options: ReadOptions,
    symbol: str,
    n: int,
    start: datetime,
    end: datetime,
    span: timedelta,
) -> tuple[bytes, _CandleState | None]:
    """The first window and the state after it, in one transaction (most reads fit one
    window: one thread hop and one snapshot). The range is the aligned one, clamped to the
    stored data when it is longer than one window (for one window the clamp would cost more
    than it saves: on TimescaleDB its four min/max probes plan over every chunk)."""
    _begin(conn, options)
    sid = _lookup(conn, symbol)
    if sid is None:
        return b"", None
    s, e = _aligned(start, end, n)
    if s >= e:
        return b"", None
    if e - s > span:
        found = _extent(conn, sid, base_interval(n), s, e)
        if found is None:
            return b"", None
        s, e = bucket_floor(found[0], n), bucket_floor(found[1], n) + timedelta(minutes=n)
    return _candle_window(conn, (sid, n, s, e, span))


async def start_candle_read(
    storage: Storage,
    symbol: str,
    interval_min: int,
    start: datetime,
    end: datetime,
    *,
    chunk: int = 20_000,
    options: ReadOptions = _DEFAULT,
) -> WindowedRead[_CandleState]:
    """Begin reading the ``interval_min`` candles of ``symbol`` starting in ``[start, end)``,
    oldest first: the first window is read now (so an outage is raised here, before anything
    is sent), the rest by :func:`read_windows`, windows of at most ``chunk`` buckets.

    ``symbol`` is the canonical name (resolve spellings with the registry first); a symbol
    with no stored rows reads nothing.

    Raises:
        ValueError: ``interval_min`` is not a positive number of minutes.
        DatabaseUnavailable: the database could not be reached.
    """
    if interval_min < 1:
        raise ValueError(f"interval must be a positive number of minutes, not {interval_min}")
    span = timedelta(minutes=interval_min) * chunk
    first, state = await storage.run(_plan, options, symbol, interval_min, start, end, span)
    return WindowedRead(first, _next_candles, state, options)


@trio.as_safe_channel
async def read_windows(storage: Storage, read: WindowedRead[Any]) -> AsyncGenerator[bytes, None]:
    """The windows of ``read`` (CSV text in wire order, see :mod:`histdata.formats`), the
    first one included; empty windows are skipped. The next window is fetched while the
    caller handles the current one, never more than one ahead.

    Use as ``async with read_windows(storage, read) as windows: async for window in …``.

    Raises:
        DatabaseUnavailable: the database could not be reached.
    """
    if read.first:
        yield read.first
    if read.state is None:
        return
    send, receive = trio.open_memory_channel[bytes](0)

    async def fetch() -> None:
        async with send:
            state = read.state
            while state is not None:
                window, state = await storage.run(read.step, read.options, state)
                if window:
                    await send.send(window)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            async with receive:
                async for window in receive:
                    yield window
    except BaseExceptionGroup as group:
        # The one failure a read has (the fetch task's outage) is raised as itself, as from
        # a read without a prefetch; anything else stays grouped.
        failed, rest = group.split(DatabaseUnavailable)
        if failed is None or rest is not None or len(failed.exceptions) != 1:
            raise
        raise failed.exceptions[0] from None


def _candle_from_line(symbol: str, interval_min: int, fields: list[str]) -> Candle:
    time, o, h, lo, c, v, vwap, n = fields
    return Candle(
        symbol=symbol,
        time=parse_time(time),
        open=Decimal(o),
        high=Decimal(h),
        low=Decimal(lo),
        close=Decimal(c),
        volume=Decimal(v),
        vwap=Decimal(vwap) if vwap else None,
        trades=int(n),
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

    ``source`` is not part of the read contract (an aggregated bucket mixes sources); it is
    reported as :attr:`CandleSource.TRADES`, and ``final`` as True. For ranges too big for
    memory use :func:`start_candle_read`. Raises as that does.
    """
    read = await start_candle_read(storage, symbol, interval_min, start, end, options=options)
    out: list[Candle] = []
    async with read_windows(storage, read) as windows:
        async for window in windows:
            lines = csv.reader(window.decode().splitlines())
            out.extend(_candle_from_line(symbol, interval_min, fields) for fields in lines)
    return out


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
# histdata.formats.format_time_ns).
_UTC_TIME = "time AT TIME ZONE 'UTC'"
_TRADE_COLUMNS = {
    "time": (
        f"to_char({_UTC_TIME}, 'YYYY-MM-DD\"T\"HH24:MI:SS')"
        f" || CASE WHEN time_ns <> 0"
        f"  THEN to_char({_UTC_TIME}, '.US') || lpad(time_ns::text, 3, '0')"
        f"  WHEN to_char({_UTC_TIME}, 'US') <> '000000' THEN to_char({_UTC_TIME}, '.US')"
        "  ELSE '' END || 'Z'"
    ),
    "price": "price",
    "volume": "volume",
    "side": "CASE side WHEN 'b' THEN 'buy' WHEN 's' THEN 'sell' END",
    "trade_id": "trade_id",
}
_TRADE_RANGE = " FROM trades WHERE symbol_id = %(sid)s AND time >= %(s)s AND time < %(e)s"
_TRADE_KEY_ORDER = " ORDER BY time, trade_id, seq"
# The key of a full page's last trade, for the next page to start after it: an index-only walk
# of the page's keys (a page's text cannot say where it stopped). Only a page that reached
# its row cap needs it.
_TRADE_BOUNDARY = "SELECT time, trade_id, seq" + _TRADE_RANGE
_TRADE_QUERIES: dict[bool, bytes] = {}
# A trade key: (time, trade_id or None, seq).
_TradeKey = tuple[datetime, int | None, int]
# Where a trade read stands: symbol id, the range left [s, e), the key read last at s (None:
# s itself is next), the page size aimed at, and the time span the next page covers (None:
# all the range left, capped at the page's row limit).
_TradeState = tuple[int, datetime, datetime, _TradeKey | None, int, timedelta | None]
# A page holds at most this many times the size aimed at, however wrong its span's guess.
_PAGE_CAP = 2
# The least span a page covers: its start plus this is past the trades at its start time.
_MICROSECOND = timedelta(microseconds=1)


def trade_query(after: bool) -> str:
    """The SELECT of the trades of ``[s, e)`` in :data:`~histdata.formats.TRADES` columns, in
    trade order: parameters ``sid s e``, with ``after`` also ``t id seq`` (the key read
    last, excluded)."""
    query = f"SELECT {_select(TRADES, _TRADE_COLUMNS)}{_TRADE_RANGE}"
    if after:
        query += TRADE_KEYSET
    return query + _TRADE_KEY_ORDER


def _trade_window(conn: Connection, state: _TradeState) -> tuple[bytes, _TradeState | None]:
    """The page at ``state`` (in the transaction begun) and the state after it.

    A page is a time span, not a count: the trades of ``[start, start + span)`` (after the
    key read last, when the previous page ended inside a run of same-time trades), with a
    row cap. A page that stays under its cap ends at a time, so the next one starts there
    without a probe; only a full page asks the index for its last key. Each span is the
    last one scaled to the page size aimed at by the density just seen, so pages track the
    data as it thickens and thins; a page that found nothing jumps to the next trade.
    """
    sid, s, e, after, n, span = state
    conn.execute(KEY_ORDER_SCAN)
    cap = _PAGE_CAP * n
    start = after[0] if after is not None else s
    page_end = e if span is None or span >= e - start else start + span
    params: dict[str, Any] = {"sid": sid, "s": start, "e": page_end, "cap": cap}
    if after is not None:
        params.update(t=after[0], id=after[1], seq=after[2])
    statement = _TRADE_QUERIES.get(after is not None)
    if statement is None:
        query = trade_query(after is not None) + " LIMIT %(cap)s"
        statement = _TRADE_QUERIES.setdefault(after is not None, _counted_window(TRADES, query))
    window, count = _fetch_counted(conn, statement, params)
    if count == cap:
        keyset = TRADE_KEYSET if after is not None else ""
        last = conn.execute(
            (_TRADE_BOUNDARY + keyset + _TRADE_KEY_ORDER + " OFFSET %(skip)s LIMIT 1").encode(),
            params | {"skip": cap - 1},
            prepare=True,
        ).fetchone()
        assert last is not None  # the page just read holds cap trades in this snapshot
        key: _TradeKey = (last[0], last[1], last[2])
        span = _scaled(key[0] - start, n, cap, e - key[0])
        return window, (sid, key[0], e, key, n, span)
    if page_end >= e:
        return window, None
    if count == 0:
        row = conn.execute(
            "SELECT min(time)" + _TRADE_RANGE, {"sid": sid, "s": page_end, "e": e}, prepare=True
        ).fetchone()
        if row is None or row[0] is None:
            return window, None
        return window, (sid, row[0], e, None, n, span)
    return window, (sid, page_end, e, None, n, _scaled(page_end - start, n, count, e - page_end))


def _scaled(seen: timedelta, n: int, rows: int, rest: timedelta) -> timedelta:
    """The span that should hold ``n`` rows where ``seen`` held ``rows``: at least a
    microsecond, at most ``rest`` (in integers: a sparse range's guess could overflow)."""
    us = seen // _MICROSECOND * n // rows
    return timedelta(microseconds=max(1, min(us, rest // _MICROSECOND)))


def _next_trades(
    conn: Connection, options: ReadOptions, state: _TradeState
) -> tuple[bytes, _TradeState | None]:
    _begin(conn, options)
    return _trade_window(conn, state)


def _first_trades(
    conn: Connection, options: ReadOptions, symbol: str, start: datetime, end: datetime, n: int
) -> tuple[bytes, _TradeState | None]:
    _begin(conn, options)
    sid = _lookup(conn, symbol)
    if sid is None:
        return b"", None
    return _trade_window(conn, (sid, start, end, None, n, None))


async def start_trade_read(
    storage: Storage,
    symbol: str,
    start: datetime,
    end: datetime,
    *,
    chunk: int = 50_000,
    options: ReadOptions = _DEFAULT,
) -> WindowedRead[_TradeState]:
    """Begin reading the trades of ``symbol`` with ``start <= time < end`` in trade order:
    the first page now, the rest by :func:`read_windows`, each in its own snapshot. Pages aim
    at ``chunk`` trades and never hold more than twice that (see :func:`_trade_window`).

    ``symbol`` is the canonical name; one with no stored rows reads nothing.

    Raises:
        ValueError: ``chunk`` is below 1.
        DatabaseUnavailable: the database could not be reached.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, not {chunk}")
    first, state = await storage.run(_first_trades, options, symbol, start, end, chunk)
    return WindowedRead(first, _next_trades, state, options)
