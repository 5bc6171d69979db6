"""The ``symbols`` table as the registry: AssetPairs answers stored, the registry loaded back.

Every AssetPairs answer the service or ``histdata symbols --refresh`` fetches is stored by
:func:`refresh_symbols`, in one transaction:

- every listed pair is upserted with its names, precision and status, ``last_seen`` now;
- a *provisional* row (names derived from a file name by an offline import, see
  :meth:`~histdata.symbols.SymbolRegistry.for_file_name`) that Kraken lists under any of its
  spellings is confirmed, or, when its derived v2 name was wrong, renamed in place: the id
  stays, so every stored trade, candle and coverage range stays with it, and the old names
  become ``aliases``. Should the right name already have a row of its own, the provisional
  row is left alone and reported as a conflict (merging two ids' rows is an operator's call);
- a non-provisional pair the answer no longer lists becomes ``delisted``; its rows stay.

:func:`load_into` fills a registry from the table, which is how every command, offline too,
knows every pair ever seen. While the table has never held an AssetPairs answer the shipped
pairs stay underneath what it holds, and an empty table yields just them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg

from histdata.symbols import SHIPPED_PAIRS, SymbolInfo, SymbolRegistry

if TYPE_CHECKING:
    from histdata.storage.database import Storage

__all__ = [
    "REFRESH_CURSOR",
    "SymbolRefresh",
    "load_into",
    "refresh_symbols",
    "register_symbol",
    "register_symbols",
    "stored_infos",
    "stored_symbols",
]

Connection = psycopg.Connection[Any]

# The cursor holding the time of the last stored AssetPairs answer (ISO 8601, UTC).
REFRESH_CURSOR = "symbols:asset_pairs"
# Serialises refreshes of several collectors sharing one database ("symb" in ASCII).
_REFRESH_LOCK = 0x73796D62
_COLUMNS = (
    "symbol, rest_key, altname, wsname, price_decimals, volume_decimals, status, provisional,"
    " aliases"
)


@dataclass(frozen=True, slots=True)
class SymbolRefresh:
    """What storing one AssetPairs answer changed.

    ``renamed`` maps a provisional v2 name that turned out wrong to Kraken's; ``conflicts``
    maps a provisional name to the listed name it could not take (that name has a row).
    """

    listed: int
    added: int
    confirmed: int
    delisted: int
    renamed: dict[str, str] = field(default_factory=dict)
    conflicts: dict[str, str] = field(default_factory=dict)
    refreshed_at: str = ""


def stored_infos(conn: Connection) -> list[SymbolInfo]:
    """Every row of the ``symbols`` table as a :class:`SymbolInfo`, in name order."""
    rows = conn.execute(f"SELECT {_COLUMNS} FROM symbols ORDER BY symbol").fetchall()
    return [
        SymbolInfo(
            symbol=symbol,
            rest_key=rest_key,
            altname=altname,
            wsname=wsname,
            price_decimals=int(price_decimals),
            volume_decimals=int(volume_decimals),
            status=status,
            provisional=bool(provisional),
            aliases=tuple(aliases or ()),
        )
        for (
            symbol,
            rest_key,
            altname,
            wsname,
            price_decimals,
            volume_decimals,
            status,
            provisional,
            aliases,
        ) in rows
    ]


def load_into(conn: Connection, registry: SymbolRegistry) -> None:
    """Make ``registry`` know what the table holds (see the module docs for the fallback)."""
    infos = stored_infos(conn)
    refreshed = conn.execute("SELECT 1 FROM cursors WHERE name = %s", (REFRESH_CURSOR,)).fetchone()
    if refreshed is None:
        infos = [*SHIPPED_PAIRS, *infos]  # stored rows come last, so they win
    registry.replace(infos)


async def register_symbol(storage: Storage, symbol: str) -> int:
    """The database id of ``symbol`` (any spelling), registering it on first use.

    For bulk writers that encode the id into their rows
    (:func:`~histdata.storage.trades.copy_new_trades`).

    Raises:
        UnknownSymbol: the registry does not know the spelling.
    """
    return await storage.run(storage.symbol_id, symbol)


async def register_symbols(storage: Storage, symbols: Iterable[str]) -> dict[str, int]:
    """The database ids of ``symbols`` (any spelling, keyed as given), registering missing
    ones, all in one transaction: the service registers every subscribed pair at start,
    hundreds of them, and one transaction each took seconds under live load.

    Raises:
        UnknownSymbol: the registry does not know a spelling (nothing is registered).
    """
    names = list(symbols)

    def register(conn: Connection) -> dict[str, int]:
        return {name: storage.symbol_id(conn, name) for name in names}

    return await storage.run(register)


async def stored_symbols(storage: Storage) -> list[SymbolInfo]:
    """Symbols that have a row in the database, in name order."""
    return await storage.run(stored_infos)


async def refresh_symbols(storage: Storage, listed: SymbolRegistry) -> SymbolRefresh:
    """Store the AssetPairs answer ``listed`` (see the module docs) and reload the registry.

    ``storage.registry`` knows the table's contents afterwards, in place, so every holder of
    it sees new pairs and corrected names.

    Raises:
        DatabaseUnavailable: the database went away (nothing was stored).
    """
    result = await storage.run(_store, listed)
    storage.forget_symbol_ids(result.renamed)
    await storage.run(load_into, storage.registry)
    return result


def _store(conn: Connection, listed: SymbolRegistry) -> SymbolRefresh:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_REFRESH_LOCK,))
    now = datetime.now(UTC)
    rows = conn.execute(
        "SELECT id, symbol, rest_key, altname, wsname, provisional, aliases FROM symbols"
    ).fetchall()
    stored = {row[1] for row in rows}
    renamed: dict[str, str] = {}
    conflicts: dict[str, str] = {}
    for sid, symbol, rest_key, altname, wsname, provisional, aliases in rows:
        if not provisional:
            continue
        match = next(
            (listed.resolve(n) for n in (altname, rest_key, symbol, wsname) if n in listed), None
        )
        if match is None or match.symbol == symbol:
            continue  # not listed (yet), or derived right: the upsert below confirms it
        if match.symbol in stored:
            conflicts[symbol] = match.symbol
            continue
        old = [n for n in (symbol, altname, rest_key, *aliases) if n not in match.spellings]
        conn.execute(
            "UPDATE symbols SET symbol = %s, aliases = %s WHERE id = %s",
            (match.symbol, list(dict.fromkeys(old)), sid),
        )
        stored.discard(symbol)
        stored.add(match.symbol)
        renamed[symbol] = match.symbol
    infos = list(listed)
    confirmed = sum(
        1
        for row in conn.execute(
            "SELECT symbol FROM symbols WHERE provisional AND symbol = ANY(%s)",
            ([info.symbol for info in infos],),
        ).fetchall()
    )
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO symbols (symbol, rest_key, altname, wsname, price_decimals,"
            " volume_decimals, status, provisional, first_seen, last_seen)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, false, %s, %s)"
            " ON CONFLICT (symbol) DO UPDATE SET rest_key = EXCLUDED.rest_key,"
            " altname = EXCLUDED.altname, wsname = EXCLUDED.wsname,"
            " price_decimals = EXCLUDED.price_decimals,"
            " volume_decimals = EXCLUDED.volume_decimals,"
            " status = EXCLUDED.status, provisional = false,"
            " last_seen = EXCLUDED.last_seen",
            [
                (
                    *(info.symbol, info.rest_key, info.altname, info.wsname),
                    *(info.price_decimals, info.volume_decimals, info.status, now, now),
                )
                for info in infos
            ],
        )
        cur.execute(
            "UPDATE symbols SET status = 'delisted' WHERE NOT provisional"
            " AND status <> 'delisted' AND NOT symbol = ANY(%s)",
            ([info.symbol for info in infos],),
        )
        delisted = max(cur.rowcount, 0)
    conn.execute(
        "INSERT INTO cursors (name, value) VALUES (%s, %s) ON CONFLICT (name)"
        " DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
        (REFRESH_CURSOR, now.isoformat()),
    )
    return SymbolRefresh(
        listed=len(infos),
        added=sum(1 for info in infos if info.symbol not in stored),
        confirmed=confirmed,
        delisted=delisted,
        renamed=renamed,
        conflicts=conflicts,
        refreshed_at=now.isoformat(),
    )
