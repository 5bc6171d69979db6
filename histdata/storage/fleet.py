"""What collectors and query nodes share through the database.

- **Leases** (``fleet_leases``): one holder of a named job at a time — ``maintenance``, a
  symbol's ``repair:`` or ``backfill:`` — until the lease expires. :func:`hold_lease` takes
  one, renews it while the job runs and releases it after, so no range is worked twice and a
  crashed holder's job is free again within one lease time.
- **Heartbeats** (``collectors``): each collector's host, pid, version, symbols and last
  write, for ``histdata status --fleet``.
- **The REST budget** (``rest_budget``): Kraken limits REST per IP, so every process on a
  host draws from one token bucket row (:func:`reserve_rest_slot`).
- **The live stream**: a trade batch that stored new rows notifies
  :data:`TRADES_CHANNEL` with its symbol ids when it commits; query nodes read the new rows
  by key (:func:`trades_after`).
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import structlog
import trio

from histdata.model import Trade
from histdata.storage.database import Storage
from histdata.storage.trades import TRADES_CHANNEL, read_trades

__all__ = [
    "TRADES_CHANNEL",
    "CollectorRow",
    "Lease",
    "TradeKey",
    "beat",
    "collectors",
    "forget_collector",
    "hold_lease",
    "host_budget",
    "release_lease",
    "reserve_rest_slot",
    "symbol_ids",
    "trades_after",
    "try_lease",
]

Connection = psycopg.Connection[Any]
# Trades after this key in trade order: (time, trade id, seq), as storage.trades.read_trades pages.
TradeKey = tuple[datetime, int | None, int]

_log = structlog.get_logger("storage.fleet")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_END = datetime(2262, 1, 1, tzinfo=UTC)  # where int64 nanoseconds end, as the query API


@dataclass(frozen=True, slots=True)
class Lease:
    """The answer to a lease request: whether we hold it, and who does."""

    name: str
    owned: bool
    holder: str
    detail: dict[str, Any]


def _try_lease(
    conn: Connection, name: str, holder: str, ttl_s: float, detail: Mapping[str, Any]
) -> Lease:
    row = conn.execute(
        "INSERT INTO fleet_leases (name, holder, expires_at, detail)"
        " VALUES (%s, %s, clock_timestamp() + %s, %s::jsonb)"
        " ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder,"
        " expires_at = EXCLUDED.expires_at, detail = EXCLUDED.detail"
        " WHERE fleet_leases.expires_at < clock_timestamp()"
        " OR fleet_leases.holder = EXCLUDED.holder RETURNING holder",
        (name, holder, timedelta(seconds=ttl_s), json.dumps(dict(detail))),
    ).fetchone()
    if row is not None:
        return Lease(name, True, holder, dict(detail))
    other = conn.execute(
        "SELECT holder, detail FROM fleet_leases WHERE name = %s", (name,)
    ).fetchone()
    if other is None:  # released between the two statements: ask again next time
        return Lease(name, False, "", {})
    return Lease(name, False, str(other[0]), dict(other[1] or {}))


async def try_lease(
    storage: Storage,
    name: str,
    holder: str,
    *,
    ttl_s: float,
    detail: Mapping[str, Any] | None = None,
) -> Lease:
    """Take or renew lease ``name`` for ``holder`` unless another holder's is unexpired.

    Raises:
        DatabaseUnavailable: the database could not be reached.
    """
    return await storage.run(_try_lease, name, holder, ttl_s, detail or {})


async def release_lease(storage: Storage, name: str, holder: str) -> None:
    """Give lease ``name`` back if ``holder`` holds it."""
    await storage.run(
        lambda conn: conn.execute(
            "DELETE FROM fleet_leases WHERE name = %s AND holder = %s", (name, holder)
        )
    )


@asynccontextmanager
async def hold_lease(
    storage: Storage, name: str, holder: str, *, ttl_s: float = 60.0
) -> AsyncIterator[Lease]:
    """Take lease ``name``; while the block runs, renew it every ``ttl_s / 3``; release it
    after. The block runs either way: it checks ``lease.owned`` and skips its work if not.

    Raises:
        DatabaseUnavailable: the database could not be reached when taking it.
    """
    lease = await try_lease(storage, name, holder, ttl_s=ttl_s)
    if not lease.owned:
        yield lease
        return
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_renew, storage, name, holder, ttl_s)
            try:
                yield lease
            finally:
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    try:
                        await release_lease(storage, name, holder)
                    except Exception as exc:  # it expires by itself; say why it lingers
                        _log.warning("lease not released", lease=name, error=str(exc))
    except BaseExceptionGroup as group:
        # The renewal task never raises, so a group holds the block's own error: callers
        # catch that error (KrakenError, DatabaseUnavailable), not a group around it.
        if len(group.exceptions) == 1:
            raise group.exceptions[0]  # noqa: B904 - the group adds nothing to say
        raise


async def _renew(storage: Storage, name: str, holder: str, ttl_s: float) -> None:
    while True:
        await trio.sleep(ttl_s / 3)
        try:
            await try_lease(storage, name, holder, ttl_s=ttl_s)
        except Exception as exc:  # the next renewal may get through before it expires
            _log.warning("lease renewal failed", lease=name, error=str(exc))


# -- heartbeats -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CollectorRow:
    """One collector's heartbeat row."""

    id: str
    host: str
    pid: int
    version: str
    symbols: tuple[str, ...]
    started_at: datetime
    seen_at: datetime
    last_write: datetime | None
    age_s: float  # seconds since seen_at, by the database's clock


async def beat(
    storage: Storage,
    ident: str,
    *,
    host: str,
    pid: int,
    version: str,
    symbols: Sequence[str],
    started_at: datetime,
    last_write: datetime | None,
) -> None:
    """Insert or refresh the heartbeat row ``ident``."""
    await storage.run(
        lambda conn: conn.execute(
            "INSERT INTO collectors (id, host, pid, version, symbols, started_at, seen_at,"
            " last_write) VALUES (%s, %s, %s, %s, %s, %s, now(), %s) ON CONFLICT (id) DO UPDATE"
            " SET symbols = EXCLUDED.symbols, seen_at = now(),"
            " last_write = COALESCE(EXCLUDED.last_write, collectors.last_write)",
            (ident, host, pid, version, list(symbols), started_at, last_write),
        )
    )


async def forget_collector(storage: Storage, ident: str) -> None:
    """Remove heartbeat row ``ident`` (a collector that stopped cleanly)."""
    await storage.run(lambda conn: conn.execute("DELETE FROM collectors WHERE id = %s", (ident,)))


async def collectors(storage: Storage) -> list[CollectorRow]:
    """Every heartbeat row, most recently seen first. Reads only."""

    def query(conn: Connection) -> list[CollectorRow]:
        rows = conn.execute(
            "SELECT id, host, pid, version, symbols, started_at, seen_at, last_write,"
            " extract(epoch FROM now() - seen_at)::float8 FROM collectors ORDER BY seen_at DESC"
        ).fetchall()
        return [
            CollectorRow(r[0], r[1], r[2], r[3], tuple(r[4]), r[5], r[6], r[7], float(r[8]))
            for r in rows
        ]

    return await storage.run(query)


# -- the REST budget --------------------------------------------------------------------------


async def reserve_rest_slot(storage: Storage, host: str, *, rate_per_s: float, burst: int) -> float:
    """Reserve one request in ``host``'s shared REST bucket; seconds to wait before sending.

    Raises:
        DatabaseUnavailable: the database could not be reached.
    """

    def take(conn: Connection) -> float:
        row = conn.execute(
            "INSERT INTO rest_budget AS b (host, tokens, updated_at)"
            " VALUES (%(h)s, %(burst)s - 1, clock_timestamp()) ON CONFLICT (host) DO UPDATE"
            " SET tokens = LEAST(%(burst)s::float8, b.tokens + %(rate)s"
            "  * extract(epoch FROM clock_timestamp() - b.updated_at)::float8) - 1,"
            " updated_at = clock_timestamp() RETURNING tokens",
            {"h": host, "burst": float(burst), "rate": rate_per_s},
        ).fetchone()
        tokens = float(row[0]) if row else 0.0
        return max(0.0, -tokens / rate_per_s)

    return await storage.run(take)


def host_budget(
    storage: Callable[[], Storage], *, rate_per_s: float, burst: int
) -> Callable[[], Awaitable[float]]:
    """This host's shared REST budget as a :class:`~histdata.kraken.RateLimiter` ``shared``
    hook; ``storage`` returns the open Storage (or raises while there is none)."""
    host = socket.gethostname()

    async def reserve() -> float:
        return await reserve_rest_slot(storage(), host, rate_per_s=rate_per_s, burst=burst)

    return reserve


# -- the live stream --------------------------------------------------------------------------


async def trades_after(
    storage: Storage, symbol: str, after: TradeKey | None, limit: int
) -> list[Trade]:
    """Up to ``limit`` stored trades of ``symbol`` after ``after`` in trade order (from the
    first when None). Reads only."""
    start = after[0] if after is not None else _EPOCH
    return await read_trades(storage, symbol, start, _END, limit=limit, after=after)


async def symbol_ids(storage: Storage) -> dict[int, str]:
    """Every stored symbol's database id and canonical name. Reads only."""
    rows = await storage.run(lambda conn: conn.execute("SELECT id, symbol FROM symbols").fetchall())
    return {int(sid): str(name) for sid, name in rows}
