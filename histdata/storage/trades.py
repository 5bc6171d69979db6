"""Trades: the idempotent writers, the bulk ``COPY`` of imported files, and the reads that
return :class:`~histdata.model.Trade` values (the query node's live stream).

Writes are idempotent per row. A batch is sent with binary ``COPY`` into a temporary staging
table and moved with ``INSERT … ON CONFLICT DO NOTHING``: one duplicate never rolls back the
batch, re-sending a batch adds nothing, and trades that share a timestamp are all kept (they
differ in ``trade_id`` or ``seq``). Coverage and cursor updates passed with a write commit in
the same transaction, so a kill between them cannot leave a cursor ahead of its data.

**New trades skip the duplicate checks.** The conflict clause and the cross-source probe
cost more than the insert itself (2,000 live trades: 17 ms plain, 40 ms with both). A live
batch is almost always wholly new, which two index range probes per symbol prove: no stored
trade in the batch's time range (where a key conflict would be), and no stored trade with
an id in the batch's id range within the probe's window of its times (where a cross-source
duplicate would be). Such a batch goes in with a plain ``INSERT``; any other batch takes
the checked one. The proof holds under the per-symbol writers' lock; should a writer that
does not take it insert a clashing row meanwhile, the plain insert fails on the key and the
whole write is redone the checked way, so the rare race costs time, never a row.

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

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from histdata.model import (
    NS_PER_S,
    CoverageSpan,
    LiveTrade,
    Side,
    Trade,
    TradeSource,
    WriteResult,
    datetime_to_ns,
)
from histdata.storage.coverage import Range, add_coverages
from histdata.storage.cursors import store_cursor
from histdata.storage.database import Buffer, Storage, copy_csv, lock_symbols

__all__ = [
    "KEY_ORDER_SCAN",
    "TRADES_CHANNEL",
    "TRADE_KEYSET",
    "TRADE_ORDER",
    "copy_new_trades",
    "drop_cross_source_duplicates",
    "last_trade",
    "read_trades",
    "trade_span",
    "write_trades",
]

Connection = psycopg.Connection[Any]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SOURCE_CODE: dict[str, str] = {"live": "w", "rest": "r", "csv": "c"}
# Trade order and keyset paging (read_trades, reads.start_trade_read). The order is
# the key's (time, trade_id, seq; NULL ids last, as a btree sorts them), so a page is an index
# range scan without a sort; the keyset filter compares with COALESCE, which orders the same
# (no Kraken id nears the int8 maximum), and ``time >= t`` bounds the scan on the index.
TRADE_ORDER = " ORDER BY time, trade_id, seq LIMIT %(n)s"
# Right after a bulk import, before autoanalyze, the planner thinks the range holds a dozen
# rows and picks a bitmap scan of all of it plus a sort, for every page: a million-row read
# took 5 s instead of 2.5. A page is a key-order range scan; this keeps it one.
KEY_ORDER_SCAN = "SET LOCAL enable_bitmapscan = off"
TRADE_KEYSET = (
    " AND time >= %(t)s AND (time, COALESCE(trade_id, 9223372036854775807), seq)"
    " > (%(t)s, COALESCE(%(id)s::int8, 9223372036854775807), %(seq)s)"
)
_SIDE_CODE = {Side.BUY: "b", Side.SELL: "s"}
_SIDE_FROM_CODE = {"b": Side.BUY, "s": Side.SELL}
_ORD_CODE = {"market": "m", "limit": "l"}
_ORD_FROM_CODE = {"m": "market", "l": "limit"}
# A trade id seen from two sources (WS µs stamps, REST printed doubles) may carry times that
# differ below a millisecond; the duplicate probe looks this far either side.
_SAME_TRADE_WINDOW = timedelta(seconds=1)
# pg_advisory_xact_lock(class, symbol id) key of the trades writers' lock (_write_trades);
# coverage merges lock another class (histdata.storage.coverage), so neither waits for the other.
_TRADES_LOCK = 0x74726164  # "trad"
# The NOTIFY channel of committed trade batches (payload: their symbol ids, comma-separated);
# query nodes LISTEN to it (histdata/querynode.py).
TRADES_CHANNEL = "histdata_trades"


# ------------------------------------------------------------------------------ writes


async def write_trades(
    storage: Storage,
    trades: Sequence[Trade | LiveTrade],
    *,
    source: TradeSource,
    coverage: Sequence[tuple[str, CoverageSpan]] = (),
    cursor: tuple[str, str] | None = None,
) -> WriteResult:
    """Store ``trades`` idempotently; optionally record coverage and a cursor atomically.

    A :class:`LiveTrade`'s price and volume text goes to PostgreSQL as text, which
    ``numeric`` input converts exactly (it is plain decimal text).
    ``coverage`` is a list of ``(symbol, span)``; ``cursor`` is ``(name, value)``. All of
    it commits in one transaction, or none of it does.
    """
    if not trades and not coverage and cursor is None:
        return WriteResult(0, 0)
    try:
        return await storage.run(_write_trades, storage, trades, source, coverage, cursor, True)
    except psycopg.errors.UniqueViolation:
        # The batch was proven new, and a writer outside the lock stored one of its trades
        # before the plain insert: nothing committed; redo it with the checks (module docs).
        return await storage.run(_write_trades, storage, trades, source, coverage, cursor, False)


def _write_trades(
    conn: Connection,
    storage: Storage,
    trades: Sequence[Trade | LiveTrade],
    source: TradeSource,
    coverage: Sequence[tuple[str, CoverageSpan]],
    cursor: tuple[str, str] | None,
    unchecked_if_new: bool,
) -> WriteResult:
    inserted = 0
    if trades:
        # Price and volume are staged as text: a live trade carries the text Kraken sent,
        # and the cast in the INSERT below costs less than a Decimal per field here. The
        # time is staged as Unix microseconds for the same reason: a datetime per trade
        # showed in profiles, and the database converts exactly (_STAGED_TIME).
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _stage_trades (symbol_id int2,"
            " time_us int8, time_ns int2, price text, volume text, side text,"
            " ord_type text, trade_id int8, seq int4) ON COMMIT DELETE ROWS"
        )
        ids = {symbol: storage.symbol_id(conn, symbol) for symbol in {t.symbol for t in trades}}
        # The cross-source probe below reads, then inserts: two writers of the same trade
        # (one from REST, one live, 1 µs apart) would both find nothing and both insert.
        # Per symbol, in id order (no deadlock), writers of trades take turns.
        lock_symbols(conn, _TRADES_LOCK, ids.values())
        with conn.cursor() as cur:
            with cur.copy(
                "COPY _stage_trades (symbol_id, time_us, time_ns, price, volume, side,"
                " ord_type, trade_id, seq) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(
                    [
                        *("int2", "int8", "int2", "text", "text"),
                        *("text", "text", "int8", "int4"),
                    ]
                )
                for t in trades:
                    copy.write_row(
                        (
                            ids[t.symbol],
                            t.time_ns // 1000,
                            t.time_ns % 1000,
                            t.price if type(t.price) is str else str(t.price),
                            t.volume if type(t.volume) is str else str(t.volume),
                            _SIDE_CODE.get(t.side) if t.side else None,
                            _ORD_CODE.get(t.ord_type) if t.ord_type else None,
                            t.trade_id,
                            t.seq,
                        )
                    )
            new = unchecked_if_new and _staged_are_new(cur)
            cur.execute(
                _INSERT_STAGED if new else _INSERT_STAGED_CHECKED,
                (_SOURCE_CODE[source],)
                if new
                else (_SOURCE_CODE[source], _SAME_TRADE_WINDOW, _SAME_TRADE_WINDOW),
            )
            inserted = max(cur.rowcount, 0)
        if inserted:  # delivered at commit only: query nodes read the new rows by key
            conn.execute(
                "SELECT pg_notify(%s, %s)",
                (TRADES_CHANNEL, ",".join(str(sid) for sid in sorted(ids.values()))),
            )
    add_coverages(conn, storage, coverage)
    if cursor is not None:
        store_cursor(conn, *cursor)
    return WriteResult(inserted=inserted, present=len(trades) - inserted)


# A staged trade's time: exact, since an int8 below 2^53 (the year 2255 in µs) is exact as
# the float8 that multiplies the interval.
_STAGED_TIME = "('epoch'::timestamptz + s.time_us * interval '1 microsecond')"
_INSERT_STAGED = (
    "INSERT INTO trades (symbol_id, time, time_ns, price, volume, side, ord_type,"
    " trade_id, seq, source)"
    f" SELECT s.symbol_id, {_STAGED_TIME}, s.time_ns, s.price::numeric, s.volume::numeric,"
    ' s.side::"char", s.ord_type::"char", s.trade_id, s.seq, %s::"char"'
    " FROM _stage_trades s"
)
# The same, skipping trades stored under their key or (with an id) from another source.
_INSERT_STAGED_CHECKED = (
    _INSERT_STAGED + " WHERE s.trade_id IS NULL OR NOT EXISTS (SELECT 1 FROM trades t"
    "  WHERE t.symbol_id = s.symbol_id AND t.trade_id = s.trade_id"
    f"  AND t.time BETWEEN {_STAGED_TIME} - %s AND {_STAGED_TIME} + %s)"
    " ON CONFLICT DO NOTHING"
)


def _staged_are_new(cur: psycopg.Cursor[Any]) -> bool:
    """True when no staged trade can clash with a stored one (see the module docs).

    A key clash needs a stored trade at a staged time, so within a symbol's time range; a
    cross-source duplicate needs a stored trade with a staged id (so within the id range)
    within the probe window of a staged time. Two index range probes per symbol, which
    find nothing for a live batch: the previous batch lies before it in both time and id.
    Duplicates within the batch itself are left to the key: the plain insert then fails.
    """
    cur.execute(
        "SELECT NOT EXISTS (SELECT FROM (SELECT symbol_id, min(time) AS lo, max(time) AS hi,"
        "  min(trade_id) AS id_lo, max(trade_id) AS id_hi"
        f"  FROM (SELECT *, {_STAGED_TIME} AS time FROM _stage_trades s) s"
        "  GROUP BY symbol_id) b"
        " WHERE EXISTS (SELECT FROM trades t"
        "   WHERE t.symbol_id = b.symbol_id AND t.time BETWEEN b.lo AND b.hi)"
        " OR EXISTS (SELECT FROM trades t WHERE t.symbol_id = b.symbol_id"
        "   AND t.trade_id BETWEEN b.id_lo AND b.id_hi"
        "   AND t.time BETWEEN b.lo - %s AND b.hi + %s))",
        (_SAME_TRADE_WINDOW, _SAME_TRADE_WINDOW),
    )
    row = cur.fetchone()
    return bool(row and row[0])


async def copy_new_trades(
    storage: Storage,
    symbol: str,
    start: datetime,
    end: datetime,
    rows_csv: Buffer,
    rows: int,
    *,
    coverage: Sequence[tuple[str, CoverageSpan]] = (),
) -> WriteResult | None:
    """``COPY`` id-less CSV trades into ``trades`` unless ``[start, end)`` holds a trade
    with a Kraken id.

    The bulk twin of :func:`write_trades` for the importer. With no stored trade of
    ``symbol`` in the range there is nothing to deduplicate against, so the rows go
    straight into ``trades``. With only id-less (CSV) trades there (a re-import, or the
    re-run of an interrupted one), the rows go through a staging table and
    ``ON CONFLICT DO NOTHING``: an id-less trade is the same trade exactly when its key
    (time, seq) is, so that is the whole check :func:`write_trades` would make. Returns
    None, having written nothing, when the range holds a trade with an id (the
    cross-source check of :func:`drop_cross_source_duplicates`
    is needed) or a concurrent writer stored one of these keys first; the caller then
    writes the rows with :func:`write_trades`.

    ``rows_csv`` holds ``rows`` lines ``symbol_id,time,price,volume,seq,source``: the id
    from :func:`~histdata.storage.symbol_table.register_symbol`, the time as a zone-less UTC
    timestamp (``2020-09-13 12:26:40``) in ``[start, end)``, exact decimal text, the ``seq``
    among same-time rows, and ``c`` (CSV). Coverage commits with the rows, as in write_trades.
    """
    try:
        return await storage.run(
            _copy_new_trades, storage, symbol, start, end, rows_csv, rows, coverage
        )
    except psycopg.errors.UniqueViolation:
        return None


def _copy_new_trades(
    conn: Connection,
    storage: Storage,
    symbol: str,
    start: datetime,
    end: datetime,
    rows_csv: Buffer,
    rows: int,
    coverage: Sequence[tuple[str, CoverageSpan]],
) -> WriteResult | None:
    sid = storage.symbol_id(conn, symbol)
    found = conn.execute(
        "SELECT EXISTS (SELECT FROM trades WHERE symbol_id = %(sid)s AND time >= %(s)s"
        "  AND time < %(e)s),"
        " EXISTS (SELECT FROM trades WHERE symbol_id = %(sid)s AND time >= %(s)s"
        "  AND time < %(e)s AND trade_id IS NOT NULL)",
        {"sid": sid, "s": start, "e": end},
    ).fetchone()
    if found is None or found[1]:
        return None
    stored = bool(found[0])
    conn.execute("SET LOCAL TimeZone = 'UTC'")  # the rows' times carry no zone
    if stored:
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _stage_csv_trades (symbol_id int2,"
            ' time timestamptz, price numeric, volume numeric, seq int4, source "char")'
            " ON COMMIT DELETE ROWS"
        )
    target = "_stage_csv_trades" if stored else "trades"
    copy_csv(
        conn,
        f"COPY {target} (symbol_id, time, price, volume, seq, source) FROM STDIN (FORMAT csv)",
        rows_csv,
        rows,
        "trades",
    )
    inserted = rows
    if stored:
        cur = conn.execute(
            "INSERT INTO trades (symbol_id, time, price, volume, seq, source)"
            " SELECT symbol_id, time, price, volume, seq, source FROM _stage_csv_trades"
            " ON CONFLICT DO NOTHING"
        )
        inserted = max(cur.rowcount, 0)
    add_coverages(conn, storage, coverage)
    return WriteResult(inserted=inserted, present=rows - inserted)


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


# ------------------------------------------------------------------------------- reads


async def read_trades(
    storage: Storage,
    symbol: str,
    start: datetime,
    end: datetime,
    *,
    limit: int | None = None,
    after: tuple[datetime, int | None, int] | None = None,
) -> list[Trade]:
    """Trades of ``symbol`` with ``start <= time < end``, in trade order; with ``after``
    (a trade's ``(time, trade_id, seq)``) only those after that trade."""
    return await storage.run(_read_trades, storage, symbol, start, end, limit, after)


def _read_trades(
    conn: Connection,
    storage: Storage,
    symbol: str,
    start: datetime,
    end: datetime,
    limit: int | None,
    after: tuple[datetime, int | None, int] | None,
) -> list[Trade]:
    info = storage.registry.resolve(symbol)
    sid = storage.known_symbol_id(conn, info.symbol)
    if sid is None:
        return []
    params: dict[str, Any] = {"sid": sid, "s": start, "e": end, "n": limit}
    query = (
        "SELECT time, time_ns, price, volume, side, ord_type, trade_id, seq FROM trades"
        " WHERE symbol_id = %(sid)s AND time >= %(s)s AND time < %(e)s"
    )
    if after is not None:
        query += TRADE_KEYSET
        params.update(t=after[0], id=after[1], seq=after[2])
    conn.execute(KEY_ORDER_SCAN)
    rows = conn.execute((query + TRADE_ORDER).encode(), params).fetchall()
    return [
        Trade(
            symbol=info.symbol,
            time_ns=datetime_to_ns(time) + time_ns,
            price=price,
            volume=volume,
            side=_SIDE_FROM_CODE.get(side) if side else None,
            ord_type=_ORD_FROM_CODE.get(ord_type) if ord_type else None,
            trade_id=trade_id,
            seq=seq,
        )
        for time, time_ns, price, volume, side, ord_type, trade_id, seq in rows
    ]


async def last_trade(storage: Storage, symbol: str) -> Trade | None:
    """The newest stored trade of ``symbol`` (by time, then trade id), or None."""

    def query(conn: Connection) -> Trade | None:
        info = storage.registry.resolve(symbol)
        sid = storage.known_symbol_id(conn, info.symbol)
        if sid is None:
            return None
        row = conn.execute(
            "SELECT time FROM trades WHERE symbol_id = %s ORDER BY time DESC LIMIT 1", (sid,)
        ).fetchone()
        if row is None:
            return None
        found = _read_trades(
            conn, storage, info.symbol, row[0], row[0] + timedelta(microseconds=1), None, None
        )
        return found[-1] if found else None

    return await storage.run(query)


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
