"""The Storage API: the only code in histdata that speaks SQL to the time-series tables.

psycopg 3's async objects run only on asyncio, so histdata drives the *sync*
:class:`psycopg_pool.ConnectionPool` from trio through :func:`trio.to_thread.run_sync`, with a
:class:`trio.CapacityLimiter` sized to the pool so no more threads wait than there are
connections. Every connection carries a server-side ``statement_timeout``, which bounds how
long a cancelled caller can wait for its thread.

Writes are idempotent per row. A batch is sent with binary ``COPY`` into a temporary staging
table and moved with ``INSERT … ON CONFLICT DO NOTHING`` (trades) or a guarded upsert
(candles): one duplicate never rolls back the batch, re-sending a batch adds nothing, and
trades that share a timestamp are all kept (they differ in ``trade_id`` or ``seq``).
Coverage and cursor updates passed with a write commit in the same transaction, so a kill
between them cannot leave a cursor ahead of its data.

**Symbol ids stand in for the foreign keys** that the hot tables dropped for speed
(``sql/0003``): every id written comes from :meth:`Storage.symbol_id`, which returns either
the id of a committed ``symbols`` row or one its own transaction inserted, and an id is cached
only after that transaction committed. A rolled-back registration therefore never leaves an
id behind that another process could give to another symbol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal, ParamSpec, TypeVar

import psycopg
import psycopg_pool
import structlog
import trio

from histdata.errors import DatabaseRefused, DatabaseUnavailable, StorageNotOpen
from histdata.model import Candle, CandleSource, LiveTrade, Side, Trade, datetime_to_ns
from histdata.storage.candles import DIVERT_SQL, store_aside
from histdata.storage.migrations import HYPERTABLES, check_schema, hypertables, migrate
from histdata.storage.symbol_table import load_into, stored_infos
from histdata.symbols import SymbolInfo, SymbolRegistry

__all__ = [
    "TRADES_CHANNEL",
    "CandleWriteResult",
    "CoverageSpan",
    "Storage",
    "StorageStatistics",
    "Stream",
    "TradeSource",
    "WriteResult",
    "open_storage",
]

P = ParamSpec("P")
T = TypeVar("T")
Connection = psycopg.Connection[Any]
Stream = Literal["trades", "candles"]
TradeSource = Literal["live", "rest", "csv"]
CoverageSource = Literal["live", "rest", "csv", "derived"]

_log = structlog.get_logger("storage")
_SOURCE_CODE: dict[str, str] = {"live": "w", "rest": "r", "csv": "c"}
# Trade order and keyset paging (Storage.iter_trades, reads.iter_trade_rows). The order is
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
_RECONNECT_TIMEOUT_S = 5.0
_SAME_TRADE_WINDOW = timedelta(seconds=1)
# pg_advisory_xact_lock(class, symbol id) keys: _add_coverage's merge lock and the trades
# writers' lock (Storage._write_trades). Different classes, so neither waits for the other.
_COVERAGE_LOCK = 0x68697374  # "hist"
_TRADES_LOCK = 0x74726164  # "trad"
# The NOTIFY channel of committed trade batches (payload: their symbol ids, comma-separated);
# query nodes LISTEN to it (histdata/querynode.py).
TRADES_CHANNEL = "histdata_trades"
# Changed minutes closer than this share one rollup dirty range (see Storage._mark_dirty).
_DIRTY_MERGE_GAP = timedelta(hours=6)
# copy_new_trades hands psycopg its rows in slices of this size rather than one large buffer.
_COPY_WRITE_BYTES = 1 << 20
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Rows of a trade batch that were new (``inserted``) or already stored (``present``)."""

    inserted: int
    present: int


@dataclass(frozen=True, slots=True)
class CandleWriteResult:
    """Candles that were new, changed an existing row, or matched what was stored."""

    inserted: int
    updated: int
    unchanged: int


@dataclass(frozen=True, slots=True)
class CoverageSpan:
    """A half-open time range ``[start, end)`` of one stream observed from one source."""

    stream: Stream
    source: CoverageSource
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class StorageStatistics:
    """Pool and query counters, for ``/metrics`` and ``histdata status``."""

    pool_size: int
    pool_available: int
    requests_waiting: int
    queries: int
    failures: int
    timescale: bool


class Storage:
    """Async facade over a psycopg connection pool; obtain one with :func:`open_storage`.

    Every method raises :class:`DatabaseUnavailable` when the database cannot be reached
    (a transient error: callers keep their data and retry) and :class:`StorageNotOpen` when
    used outside ``open_storage``.
    """

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool[Any],
        registry: SymbolRegistry,
        *,
        timescale: bool,
        read_only: bool = False,
        read_role: str | None = None,
    ) -> None:
        self._pool: psycopg_pool.ConnectionPool[Any] | None = pool
        self._limiter = trio.CapacityLimiter(pool.max_size)
        self.registry = registry
        self.timescale = timescale
        # Every transaction is READ ONLY (a query node, a read command): nothing is written.
        self.read_only = read_only
        # The role reads ``SET LOCAL ROLE`` to (see storage/reads.py); None: the user's own.
        self.read_role = read_role
        self._symbol_ids: dict[str, int] = {}  # ids of committed symbol rows only
        # Per connection (by id) while its transaction runs: symbols it registered itself.
        self._registering: dict[int, dict[str, int]] = {}
        self._queries = 0
        self._failures = 0

    # -- plumbing ---------------------------------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in a worker thread with a pooled connection, in one transaction.

        The transaction commits when ``fn`` returns and rolls back if it raises. A caller that
        is cancelled returns at once while the worker thread finishes on its own, so the
        transaction may still commit: every write through here is idempotent for that reason.
        This is the hook for the other ``histdata.storage`` modules; code outside storage does
        not call it.

        Raises:
            StorageNotOpen: storage is closed.
            DatabaseUnavailable: no connection could be had, or the connection broke.
        """
        pool = self._pool
        if pool is None:
            raise StorageNotOpen("storage is not open; use `async with open_storage(...)`")
        self._queries += 1
        try:
            # Abandoned on cancel: a statement stalled by a lock must not hold a stop past its
            # deadline (the thread keeps its limiter token and connection until the statement
            # ends, bounded by statement_timeout, and its transaction commits or rolls back).
            return await trio.to_thread.run_sync(
                partial(self._call, pool, fn, *args),
                limiter=self._limiter,
                abandon_on_cancel=True,
            )
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            self._failures += 1
            raise DatabaseUnavailable(f"database unavailable: {exc}".strip()) from exc

    def _call(self, pool: psycopg_pool.ConnectionPool[Any], fn: Callable[..., T], *args: Any) -> T:
        with pool.connection() as conn:
            registered: dict[str, int] = {}
            self._registering[id(conn)] = registered
            try:
                with conn.transaction():
                    result = fn(conn, *args)
            finally:
                del self._registering[id(conn)]
            # Only now is a symbol row this transaction inserted visible to everyone: caching
            # its id any earlier let a rolled-back registration leave an id that no row has.
            self._symbol_ids.update(registered)
            return result

    async def ping(self) -> None:
        """Round-trip one trivial query (raises :class:`DatabaseUnavailable` when down)."""
        await self.run(lambda conn: conn.execute("SELECT 1").fetchone())

    def statistics(self) -> StorageStatistics:
        """Current pool and query counters."""
        stats = self._pool.get_stats() if self._pool is not None else {}
        return StorageStatistics(
            pool_size=int(stats.get("pool_size", 0)),
            pool_available=int(stats.get("pool_available", 0)),
            requests_waiting=int(stats.get("requests_waiting", 0)),
            queries=self._queries,
            failures=self._failures,
            timescale=self.timescale,
        )

    # -- symbols ----------------------------------------------------------------------------

    def known_symbol_id(self, conn: Connection, symbol: str) -> int | None:
        """Return the database id of ``symbol`` (any spelling), or None if it has no row yet.

        Only reads, so it works in the read-only transactions of the query path.

        Raises:
            UnknownSymbol: the registry does not know the spelling.
        """
        info = self.registry.resolve(symbol)
        cached = self._symbol_ids.get(info.symbol)
        if cached is not None:
            return cached
        own = self._registering.get(id(conn), {}).get(info.symbol)
        if own is not None:
            return own
        # An alias is a name a refresh corrected (histdata.storage.symbol_table): a process
        # that still knows the old name must find the same row, never register a second one.
        row = conn.execute(
            "SELECT id FROM symbols WHERE symbol = %s OR %s = ANY(aliases) ORDER BY symbol = %s"
            " DESC LIMIT 1",
            (info.symbol, info.symbol, info.symbol),
        ).fetchone()
        if row is None:
            return None
        # Not registered by this transaction (that would be in `own`), so it is committed.
        self._symbol_ids[info.symbol] = int(row[0])
        return int(row[0])

    def symbol_id(self, conn: Connection, symbol: str) -> int:
        """Return the database id of ``symbol`` (any spelling), registering it on first use.

        Raises:
            UnknownSymbol: the registry does not know the spelling.
        """
        known = self.known_symbol_id(conn, symbol)
        if known is not None:
            return known
        info = self.registry.resolve(symbol)
        # A row another writer inserted meanwhile is taken as it is: names and precision are
        # the refresh's business (histdata.storage.symbol_table), never a writer's.
        row = conn.execute(
            "INSERT INTO symbols (symbol, rest_key, altname, wsname, price_decimals,"
            " volume_decimals, status, provisional, aliases)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (symbol) DO UPDATE SET symbol = EXCLUDED.symbol RETURNING id",
            (
                info.symbol,
                info.rest_key,
                info.altname,
                info.wsname,
                info.price_decimals,
                info.volume_decimals,
                info.status,
                info.provisional,
                list(info.aliases),
            ),
        ).fetchone()
        assert row is not None  # RETURNING always yields the row
        registering = self._registering.get(id(conn))
        if registering is not None:
            registering[info.symbol] = int(row[0])
        return int(row[0])

    def forget_symbol_ids(self, symbols: Iterable[str]) -> None:
        """Drop cached ids of ``symbols`` (v2 names that a committed rename retired)."""
        for symbol in symbols:
            self._symbol_ids.pop(symbol, None)

    async def stored_symbols(self) -> list[SymbolInfo]:
        """Symbols that have a row in the database, in name order."""

        def query(conn: Connection) -> list[SymbolInfo]:
            return stored_infos(conn)

        return await self.run(query)

    # -- trades -----------------------------------------------------------------------------

    async def write_trades(
        self,
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
        return await self.run(self._write_trades, trades, source, coverage, cursor)

    def _write_trades(
        self,
        conn: Connection,
        trades: Sequence[Trade | LiveTrade],
        source: TradeSource,
        coverage: Sequence[tuple[str, CoverageSpan]],
        cursor: tuple[str, str] | None,
    ) -> WriteResult:
        inserted = 0
        if trades:
            # Price and volume are staged as text: a live trade carries the text Kraken sent,
            # and the cast in the INSERT below costs less than a Decimal per field here.
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS _stage_trades_text (symbol_id int2,"
                " time timestamptz, time_ns int2, price text, volume text, side text,"
                " ord_type text, trade_id int8, seq int4) ON COMMIT DELETE ROWS"
            )
            ids = {symbol: self.symbol_id(conn, symbol) for symbol in {t.symbol for t in trades}}
            # The cross-source probe below reads, then inserts: two writers of the same trade
            # (one from REST, one live, 1 µs apart) would both find nothing and both insert.
            # Per symbol, in id order (no deadlock), writers of trades take turns.
            for sid in sorted(ids.values()):
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_TRADES_LOCK, sid))
            with conn.cursor() as cur:
                with cur.copy(
                    "COPY _stage_trades_text (symbol_id, time, time_ns, price, volume, side,"
                    " ord_type, trade_id, seq) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(
                        [
                            *("int2", "timestamptz", "int2", "text", "text"),
                            *("text", "text", "int8", "int4"),
                        ]
                    )
                    for t in trades:
                        copy.write_row(
                            (
                                ids[t.symbol],
                                t.time,
                                t.time_ns % 1000,
                                t.price if type(t.price) is str else str(t.price),
                                t.volume if type(t.volume) is str else str(t.volume),
                                _SIDE_CODE.get(t.side) if t.side else None,
                                _ORD_CODE.get(t.ord_type) if t.ord_type else None,
                                t.trade_id,
                                t.seq,
                            )
                        )
                cur.execute(
                    "INSERT INTO trades (symbol_id, time, time_ns, price, volume, side, ord_type,"
                    " trade_id, seq, source)"
                    " SELECT s.symbol_id, s.time, s.time_ns, s.price::numeric, s.volume::numeric,"
                    ' s.side::"char",'
                    ' s.ord_type::"char", s.trade_id, s.seq, %s::"char" FROM _stage_trades_text s'
                    " WHERE s.trade_id IS NULL OR NOT EXISTS (SELECT 1 FROM trades t"
                    "  WHERE t.symbol_id = s.symbol_id AND t.trade_id = s.trade_id"
                    "  AND t.time BETWEEN s.time - %s AND s.time + %s)"
                    " ON CONFLICT DO NOTHING",
                    (_SOURCE_CODE[source], _SAME_TRADE_WINDOW, _SAME_TRADE_WINDOW),
                )
                inserted = max(cur.rowcount, 0)
            if inserted:  # delivered at commit only: query nodes read the new rows by key
                conn.execute(
                    "SELECT pg_notify(%s, %s)",
                    (TRADES_CHANNEL, ",".join(str(sid) for sid in sorted(ids.values()))),
                )
        self._add_coverages(conn, coverage)
        if cursor is not None:
            self._set_cursor(conn, *cursor)
        return WriteResult(inserted=inserted, present=len(trades) - inserted)

    async def register_symbol(self, symbol: str) -> int:
        """The database id of ``symbol`` (any spelling), registering it on first use.

        For bulk writers that encode the id into their rows (:meth:`copy_new_trades`).

        Raises:
            UnknownSymbol: the registry does not know the spelling.
        """
        return await self.run(self.symbol_id, symbol)

    async def register_symbols(self, symbols: Iterable[str]) -> dict[str, int]:
        """The database ids of ``symbols`` (any spelling, keyed as given), registering missing
        ones, all in one transaction: the service registers every subscribed pair at start,
        hundreds of them, and one transaction each took seconds under live load.

        Raises:
            UnknownSymbol: the registry does not know a spelling (nothing is registered).
        """
        names = list(symbols)

        def register(conn: Connection) -> dict[str, int]:
            return {name: self.symbol_id(conn, name) for name in names}

        return await self.run(register)

    async def copy_new_trades(
        self,
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

        The bulk twin of :meth:`write_trades` for the importer. With no stored trade of
        ``symbol`` in the range there is nothing to deduplicate against, so the rows go
        straight into ``trades``. With only id-less (CSV) trades there (a re-import, or the
        re-run of an interrupted one), the rows go through a staging table and
        ``ON CONFLICT DO NOTHING``: an id-less trade is the same trade exactly when its key
        (time, seq) is, so that is the whole check :meth:`write_trades` would make. Returns
        None, having written nothing, when the range holds a trade with an id (the
        cross-source check of :func:`~histdata.storage.history.drop_cross_source_duplicates`
        is needed) or a concurrent writer stored one of these keys first; the caller then
        writes the rows with :meth:`write_trades`.

        ``rows_csv`` holds ``rows`` lines ``symbol_id,time,price,volume,seq,source``: the id
        from :meth:`register_symbol`, the time as a zone-less UTC timestamp
        (``2020-09-13 12:26:40``) in ``[start, end)``, exact decimal text, the ``seq`` among
        same-time rows, and ``c`` (CSV). Coverage commits with the rows, as in write_trades.
        """
        try:
            return await self.run(
                self._copy_new_trades, symbol, start, end, rows_csv, rows, coverage
            )
        except psycopg.errors.UniqueViolation:
            return None

    def _copy_new_trades(
        self,
        conn: Connection,
        symbol: str,
        start: datetime,
        end: datetime,
        rows_csv: Buffer,
        rows: int,
        coverage: Sequence[tuple[str, CoverageSpan]],
    ) -> WriteResult | None:
        sid = self.symbol_id(conn, symbol)
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
        data = memoryview(rows_csv)
        with conn.cursor() as cur:
            with cur.copy(
                f"COPY {target} (symbol_id, time, price, volume, seq, source)"
                " FROM STDIN (FORMAT csv)"
            ) as copy:
                for offset in range(0, len(data), _COPY_WRITE_BYTES):
                    copy.write(data[offset : offset + _COPY_WRITE_BYTES])
            if cur.rowcount != rows:
                raise ValueError(f"COPY stored {cur.rowcount} trades, expected {rows}")
            inserted = rows
            if stored:
                cur.execute(
                    "INSERT INTO trades (symbol_id, time, price, volume, seq, source)"
                    " SELECT symbol_id, time, price, volume, seq, source FROM _stage_csv_trades"
                    " ON CONFLICT DO NOTHING"
                )
                inserted = max(cur.rowcount, 0)
        self._add_coverages(conn, coverage)
        return WriteResult(inserted=inserted, present=rows - inserted)

    async def read_trades(
        self,
        symbol: str,
        start: datetime,
        end: datetime,
        *,
        limit: int | None = None,
        after: tuple[datetime, int | None, int] | None = None,
    ) -> list[Trade]:
        """Trades of ``symbol`` with ``start <= time < end``, in trade order; with ``after``
        (a trade's ``(time, trade_id, seq)``) only those after that trade."""
        return await self.run(self._read_trades, symbol, start, end, limit, after)

    async def iter_trades(
        self, symbol: str, start: datetime, end: datetime, *, chunk: int = 50_000
    ) -> AsyncIterator[list[Trade]]:
        """Yield the trades of ``[start, end)`` in trade order, ``chunk`` rows at a time.

        Each chunk is one keyset-paged query, so memory stays flat for any range.
        """
        after: tuple[datetime, int | None, int] | None = None
        while True:
            rows = await self.run(self._read_trades, symbol, start, end, chunk, after)
            if rows:
                yield rows
            if len(rows) < chunk:
                return
            last = rows[-1]
            after = (last.time, last.trade_id, last.seq)

    def _read_trades(
        self,
        conn: Connection,
        symbol: str,
        start: datetime,
        end: datetime,
        limit: int | None,
        after: tuple[datetime, int | None, int] | None,
    ) -> list[Trade]:
        info = self.registry.resolve(symbol)
        sid = self.known_symbol_id(conn, info.symbol)
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

    async def last_trade(self, symbol: str) -> Trade | None:
        """The newest stored trade of ``symbol`` (by time, then trade id), or None."""

        def query(conn: Connection) -> Trade | None:
            info = self.registry.resolve(symbol)
            sid = self.known_symbol_id(conn, info.symbol)
            if sid is None:
                return None
            row = conn.execute(
                "SELECT time FROM trades WHERE symbol_id = %s ORDER BY time DESC LIMIT 1", (sid,)
            ).fetchone()
            if row is None:
                return None
            found = self._read_trades(
                conn, info.symbol, row[0], row[0] + timedelta(microseconds=1), None, None
            )
            return found[-1] if found else None

        return await self.run(query)

    async def count_trades(self, symbol: str, start: datetime, end: datetime) -> int:
        """How many trades of ``symbol`` are stored in ``[start, end)``."""

        def query(conn: Connection) -> int:
            sid = self.known_symbol_id(conn, symbol)
            if sid is None:
                return 0
            row = conn.execute(
                "SELECT count(*) FROM trades WHERE symbol_id = %s AND time >= %s AND time < %s",
                (sid, start, end),
            ).fetchone()
            return int(row[0]) if row else 0

        return await self.run(query)

    # -- candles ----------------------------------------------------------------------------

    async def write_candles(
        self,
        candles: Sequence[Candle],
        *,
        coverage: Sequence[tuple[str, CoverageSpan]] = (),
    ) -> CandleWriteResult:
        """Upsert 1-minute candles and log the changed ranges for the rollup actor.

        A stored row is replaced only when it is not final yet, or when the new candle is
        final and from the same source (a corrected re-delivery); a final candle is never
        overwritten by one of another source, nor by an in-progress one. A Kraken candle of
        a minute served from our own trades goes to ``candles_kraken`` beside ours instead,
        and the minute is reconciled (:mod:`histdata.storage.candles`). Rows whose values
        did not change count as ``unchanged`` and are not rewritten.

        Raises:
            ValueError: a candle is not a 1-minute candle.
        """
        if any(c.interval_min != 1 for c in candles):
            raise ValueError("write_candles stores 1-minute candles; rollups are derived")
        if not candles and not coverage:
            return CandleWriteResult(0, 0, 0)
        return await self.run(self._write_candles, candles, coverage)

    def _write_candles(
        self,
        conn: Connection,
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
            ids = {symbol: self.symbol_id(conn, symbol) for symbol in {c.symbol for c in candles}}
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
                    " trades = EXCLUDED.trades, source = EXCLUDED.source, final = EXCLUDED.final,"
                    " updated_at = now()"
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
            self._mark_dirty(conn, ((sid, time) for sid, time, _ in changed))
        self._add_coverages(conn, coverage)
        return CandleWriteResult(inserted, updated, len(candles) - inserted - updated)

    @staticmethod
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

    async def read_candles(self, symbol: str, start: datetime, end: datetime) -> list[Candle]:
        """Stored 1-minute candles of ``symbol`` with ``start <= time < end``, oldest first."""

        def query(conn: Connection) -> list[Candle]:
            info = self.registry.resolve(symbol)
            sid = self.known_symbol_id(conn, info.symbol)
            if sid is None:
                return []
            rows = conn.execute(
                "SELECT time, open, high, low, close, volume, vwap, trades, source, final"
                " FROM candles_1m WHERE symbol_id = %s AND time >= %s AND time < %s ORDER BY time",
                (sid, start, end),
            ).fetchall()
            return [
                Candle(
                    symbol=info.symbol,
                    time=time,
                    open=o,
                    high=h,
                    low=lo,
                    close=c,
                    volume=v,
                    vwap=vwap,
                    trades=n,
                    source=CandleSource(source),
                    final=final,
                )
                for time, o, h, lo, c, v, vwap, n, source, final in rows
            ]

        return await self.run(query)

    # -- coverage ---------------------------------------------------------------------------

    async def add_coverage(self, symbol: str, span: CoverageSpan) -> None:
        """Record that ``span`` of ``symbol`` was observed, merging with touching ranges."""
        await self.run(self._add_coverages, [(symbol, span)])

    def _add_coverages(
        self, conn: Connection, coverage: Sequence[tuple[str, CoverageSpan]]
    ) -> None:
        """Add spans of any number of symbols, each merged with the ranges it overlaps or
        touches, in three statements however many symbols there are.

        A live coverage mark names every subscribed symbol: with hundreds of them, two
        statements per span made coverage most of a write's time. The per-symbol locks that
        serialise merges are taken in id order, so two writers covering many symbols (the
        live flusher and its journal replay) queue instead of deadlocking.
        """
        spans = [(self.symbol_id(conn, sym), sp) for sym, sp in coverage if sp.end > sp.start]
        if not spans:
            return
        conn.execute(
            "SELECT pg_advisory_xact_lock(%s, sid)"
            " FROM (SELECT sid FROM unnest(%s::int4[]) AS sid ORDER BY sid) AS ordered",
            (_COVERAGE_LOCK, sorted({sid for sid, _ in spans})),
        )
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
        self, symbol: str, stream: Stream, start: datetime, end: datetime
    ) -> list[tuple[datetime, datetime]]:
        """The parts of ``[start, end)`` observed from any source, merged and in order."""

        def query(conn: Connection) -> list[tuple[datetime, datetime]]:
            sid = self.known_symbol_id(conn, symbol)
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

        return await self.run(query)

    async def gaps(
        self, symbol: str, stream: Stream, start: datetime, end: datetime
    ) -> list[tuple[datetime, datetime]]:
        """The parts of ``[start, end)`` never observed: the complement of :meth:`covered`."""
        holes: list[tuple[datetime, datetime]] = []
        position = start
        for low, high in await self.covered(symbol, stream, start, end):
            if low > position:
                holes.append((position, low))
            position = max(position, high)
        if position < end:
            holes.append((position, end))
        return holes

    # -- cursors ----------------------------------------------------------------------------

    async def get_cursor(self, name: str) -> str | None:
        """The stored value of cursor ``name``, or None when it was never set."""

        def query(conn: Connection) -> str | None:
            row = conn.execute("SELECT value FROM cursors WHERE name = %s", (name,)).fetchone()
            return str(row[0]) if row else None

        return await self.run(query)

    async def set_cursor(self, name: str, value: str) -> None:
        """Store ``value`` under cursor ``name`` (exact text, e.g. a 19-digit nanosecond id).

        Cursors only move forward: a value that is a number below the stored number is
        ignored, so of two processes backfilling one symbol the slower cannot move the cursor
        back over what the faster stored. A value that is not a number replaces any other.
        """
        await self.run(self._set_cursor, name, value)

    @staticmethod
    def _set_cursor(conn: Connection, name: str, value: str) -> None:
        conn.execute(
            "INSERT INTO cursors AS c (name, value) VALUES (%s, %s) ON CONFLICT (name)"
            " DO UPDATE SET value = EXCLUDED.value, updated_at = now()"
            " WHERE NOT (c.value ~ '^[0-9]{1,30}$' AND EXCLUDED.value ~ '^[0-9]{1,30}$'"
            " AND EXCLUDED.value::numeric < c.value::numeric)",
            (name, value),
        )

    async def delete_cursor(self, name: str) -> None:
        """Forget cursor ``name`` (a finished backfill)."""
        await self.run(lambda conn: conn.execute("DELETE FROM cursors WHERE name = %s", (name,)))

    async def aclose(self) -> None:
        """Close the pool; later calls raise :class:`StorageNotOpen`."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await trio.to_thread.run_sync(pool.close)


def _configure(statement_timeout_s: float, read_only: bool) -> Callable[[Connection], None]:
    def configure(conn: Connection) -> None:
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false),"
            " set_config('default_transaction_read_only', %s, false)",
            (f"{int(statement_timeout_s * 1000)}ms", "on" if read_only else "off"),
        )
        conn.commit()

    return configure


def _inspect(
    conninfo: str, *, check: bool, role: str, connect_timeout_s: float
) -> tuple[bool, str | None]:
    """``(timescale, read role)`` of the database, checking the schema version first if
    ``check``: SELECTs only, so it runs on a standby and as a read-only user."""
    with psycopg.connect(
        conninfo, autocommit=True, connect_timeout=max(1, round(connect_timeout_s))
    ) as conn:
        if check:
            check_schema(conn)
        timescale = hypertables(conn) == frozenset(HYPERTABLES)
        usable = None
        if role:
            # A role is cluster-wide, its grants per database: one made for another database
            # (or before this one's tables) would refuse every read here.
            row = conn.execute(
                "SELECT CASE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = %(r)s) THEN"
                " pg_has_role(current_user, %(r)s, 'USAGE')"
                " AND has_schema_privilege(%(r)s, current_schema(), 'USAGE')"
                " AND NOT EXISTS (SELECT FROM pg_tables WHERE schemaname = current_schema()"
                "  AND NOT has_table_privilege(%(r)s, format('%%I.%%I', schemaname, tablename),"
                " 'SELECT'))"
                " ELSE false END",
                {"r": role},
            ).fetchone()
            usable = role if row and row[0] else None
        return timescale, usable


@asynccontextmanager
async def open_storage(
    conninfo: str,
    *,
    registry: SymbolRegistry | None = None,
    pool_min: int = 1,
    pool_max: int = 8,
    statement_timeout_s: float = 60.0,
    connect_timeout_s: float = 10.0,
    apply_migrations: bool = True,
    read_only: bool = False,
    reader_role: str = "",
) -> AsyncIterator[Storage]:
    """Open a connection pool on ``conninfo``, migrate the schema, and yield :class:`Storage`.

    Without ``registry`` the registry is loaded from the ``symbols`` table (the shipped
    pairs while it has never held an AssetPairs answer; see
    :mod:`histdata.storage.symbol_table`); a given one is used as it is.
    With ``read_only`` nothing is written, not even the schema: the schema version is checked
    with a SELECT instead (see :func:`~histdata.storage.migrations.check_schema`) and every
    transaction is ``READ ONLY``, so it works on a hot standby and as a user with only USAGE
    and SELECT. ``reader_role`` (``[database] readonly_role``) is created by the migration
    where permitted; reads use it whenever the user may ``SET ROLE`` to it.

    Raises:
        DatabaseUnavailable: the database did not accept a connection within
            ``connect_timeout_s``.
        DatabaseRefused: ``read_only`` and the user may not read ``schema_migrations``; or
            migrating was refused (a hot standby, a user who may not create the schema).
        SchemaError: the schema is newer than this histdata (older too, when ``read_only``).
    """
    if apply_migrations and not read_only:
        try:
            result = await trio.to_thread.run_sync(
                partial(migrate, conninfo, reader_role=reader_role)
            )
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"cannot migrate: {exc}".strip()) from exc
        except (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege) as exc:
            # A hot standby, or a user who may not own the schema: a writer cannot start here,
            # and retrying will not change that (a query node is `histdata serve`).
            raise DatabaseRefused(
                f"cannot migrate: {' '.join(str(exc).split())} (on a standby or as a read-only"
                " user, run `histdata serve` instead)"
            ) from exc
        if result.applied:
            _log.info("schema migrated", applied=list(result.applied), timescale=result.timescale)
        if result.plain_tables:
            _log.warning(
                "TimescaleDB is available but these tables are plain; `histdata migrate"
                " --timescale` converts them",
                tables=list(result.plain_tables),
            )
    try:
        timescale, read_role = await trio.to_thread.run_sync(
            partial(
                _inspect,
                conninfo,
                check=read_only,
                role=reader_role,
                connect_timeout_s=connect_timeout_s,
            )
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"connection failed: {exc}".strip()) from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DatabaseRefused(
            f"cannot read the schema version: {' '.join(str(exc).split())}"
        ) from exc
    pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
        conninfo,
        min_size=pool_min,
        max_size=pool_max,
        open=False,
        configure=_configure(statement_timeout_s, read_only),
        timeout=connect_timeout_s,
        # psycopg_pool retries a lost connection with doubling delays (1, 2, 4, 8… s) for
        # reconnect_timeout, so after a long outage the first new connection could come a
        # minute after the database did. Giving up early instead makes the next request
        # (the flusher's replay probe) start a fresh attempt at once: recovery in seconds.
        reconnect_timeout=_RECONNECT_TIMEOUT_S,
        name="histdata",
    )
    try:
        await trio.to_thread.run_sync(partial(pool.open, wait=True, timeout=connect_timeout_s))
    except psycopg_pool.PoolTimeout as exc:
        await trio.to_thread.run_sync(pool.close)
        raise DatabaseUnavailable(f"database did not accept connections: {exc}") from exc
    storage = Storage(
        pool,
        registry if registry is not None else SymbolRegistry([]),
        timescale=timescale,
        read_only=read_only,
        read_role=read_role,
    )
    try:
        if registry is None:
            await storage.run(load_into, storage.registry)
        yield storage
    finally:
        with trio.CancelScope(shield=True):
            await storage.aclose()
