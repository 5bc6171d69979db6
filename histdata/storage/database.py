"""Storage: the connection pool, the transaction runner and the symbol-id cache.

psycopg 3's async objects run only on asyncio, so histdata drives the *sync*
:class:`psycopg_pool.ConnectionPool` from trio through :func:`trio.to_thread.run_sync`, with a
:class:`trio.CapacityLimiter` sized to the pool so no more threads wait than there are
connections. Every connection carries a server-side ``statement_timeout``, which bounds how
long a cancelled caller can wait for its thread.

:class:`Storage` knows no table but ``symbols``: the topic modules beside this one
(:mod:`~histdata.storage.trades`, :mod:`~histdata.storage.candles`,
:mod:`~histdata.storage.coverage`, :mod:`~histdata.storage.cursors`,
:mod:`~histdata.storage.reads` …) are functions that take a Storage and run their SQL through
:meth:`Storage.run`, one transaction per call.

**Symbol ids stand in for the foreign keys** that the hot tables dropped for speed
(``sql/0003``): every id written comes from :meth:`Storage.symbol_id`, which returns either
the id of a committed ``symbols`` row or one its own transaction inserted, and an id is cached
only after that transaction committed. A rolled-back registration therefore never leaves an
id behind that another process could give to another symbol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import psycopg
import psycopg_pool
import structlog
import trio

from histdata.errors import DatabaseRefused, DatabaseUnavailable, StorageNotOpen
from histdata.storage.migrations import HYPERTABLES, check_schema, hypertables, migrate
from histdata.storage.symbol_table import load_into
from histdata.symbols import SymbolRegistry

__all__ = ["Buffer", "Storage", "StorageStatistics", "copy_csv", "lock_symbols", "open_storage"]

T = TypeVar("T")
Connection = psycopg.Connection[Any]

_log = structlog.get_logger("storage")
_RECONNECT_TIMEOUT_S = 5.0


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
    """A psycopg connection pool driven from trio; obtain one with :func:`open_storage`.

    :meth:`run` and every topic function over it raise :class:`DatabaseUnavailable` when the
    database cannot be reached (a transient error: callers keep their data and retry) and
    :class:`StorageNotOpen` when used outside ``open_storage``.
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

    async def aclose(self) -> None:
        """Close the pool; later calls raise :class:`StorageNotOpen`."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await trio.to_thread.run_sync(pool.close)


Buffer = bytes | bytearray | memoryview
# copy_csv hands psycopg its rows in slices of this size rather than one large buffer.
_COPY_WRITE_BYTES = 1 << 20


def lock_symbols(conn: Connection, lock_class: int, symbol_ids: Iterable[int]) -> None:
    """Take ``pg_advisory_xact_lock(lock_class, id)`` for each symbol id, in one statement.

    The ids are locked in ascending order, so two transactions locking overlapping sets
    queue rather than deadlock; one statement, because a round trip per symbol made
    writes of hundreds of symbols slow (each has to win the GIL back from the event loop).
    """
    conn.execute(
        "SELECT pg_advisory_xact_lock(%s, sid)"
        " FROM (SELECT sid FROM unnest(%s::int4[]) AS sid ORDER BY sid) AS ordered",
        (lock_class, sorted(set(symbol_ids))),
    )


def copy_csv(conn: Connection, statement: str, rows_csv: Buffer, rows: int, what: str) -> None:
    """Run ``statement`` (a ``COPY … FROM STDIN (FORMAT csv)``) over ``rows_csv``, which
    holds ``rows`` lines, in the caller's transaction.

    Raises:
        ValueError: the server stored another number of rows than ``rows`` (``what`` names
            them in the message); the transaction must then be rolled back.
    """
    data = memoryview(rows_csv)
    with conn.cursor() as cur:
        with cur.copy(statement) as copy:
            for offset in range(0, len(data), _COPY_WRITE_BYTES):
                copy.write(data[offset : offset + _COPY_WRITE_BYTES])
        if cur.rowcount != rows:
            raise ValueError(f"COPY stored {cur.rowcount} {what}, expected {rows}")


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
