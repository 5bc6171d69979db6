"""Cursors: named positions that let a long job (a backfill, candle derivation) resume.

A cursor is a row of text under a name. :func:`store_cursor` runs inside a caller's
transaction, so a writer can move a cursor in the same commit as the rows it stands for
(:func:`histdata.storage.trades.write_trades`): a kill between them cannot leave a cursor
ahead of its data.
"""

from __future__ import annotations

from typing import Any

import psycopg

from histdata.storage.database import Storage

__all__ = ["delete_cursor", "get_cursor", "set_cursor", "store_cursor"]

Connection = psycopg.Connection[Any]


async def get_cursor(storage: Storage, name: str) -> str | None:
    """The stored value of cursor ``name``, or None when it was never set."""

    def query(conn: Connection) -> str | None:
        row = conn.execute("SELECT value FROM cursors WHERE name = %s", (name,)).fetchone()
        return str(row[0]) if row else None

    return await storage.run(query)


async def set_cursor(storage: Storage, name: str, value: str) -> None:
    """Store ``value`` under cursor ``name`` (exact text, e.g. a 19-digit nanosecond id).

    Cursors only move forward: a value that is a number below the stored number is
    ignored, so of two processes backfilling one symbol the slower cannot move the cursor
    back over what the faster stored. A value that is not a number replaces any other.
    """
    await storage.run(store_cursor, name, value)


def store_cursor(conn: Connection, name: str, value: str) -> None:
    """:func:`set_cursor` inside the caller's transaction."""
    conn.execute(
        "INSERT INTO cursors AS c (name, value) VALUES (%s, %s) ON CONFLICT (name)"
        " DO UPDATE SET value = EXCLUDED.value, updated_at = now()"
        " WHERE NOT (c.value ~ '^[0-9]{1,30}$' AND EXCLUDED.value ~ '^[0-9]{1,30}$'"
        " AND EXCLUDED.value::numeric < c.value::numeric)",
        (name, value),
    )


async def delete_cursor(storage: Storage, name: str) -> None:
    """Forget cursor ``name`` (a finished backfill)."""
    await storage.run(lambda conn: conn.execute("DELETE FROM cursors WHERE name = %s", (name,)))
