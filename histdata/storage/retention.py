"""Retention and TimescaleDB compression: the SQL of the maintenance actor.

Retention removes rows older than a cutoff. On TimescaleDB it drops whole chunks
(``drop_chunks``: instant, no row locks). On plain PostgreSQL it deletes in small batches,
each its own short transaction, walking the ``(symbol_id, time)`` indexes per symbol, so
writers never wait behind a long lock and the table is never scanned whole. The coverage of
a trimmed stream is trimmed with it: a deleted range is reported as a gap, not as "observed,
no trades".

Compression is a TimescaleDB feature under the Timescale License; with the Apache-2 build
(``timescaledb.license = 'apache'``) or without TimescaleDB it is skipped (the caller logs
that once).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg
import psycopg.errors
import structlog
import trio
from psycopg import sql

from histdata.storage.database import Storage

__all__ = [
    "RetentionResult",
    "apply_retention",
    "compress_old_chunks",
    "compression_allowed",
]

Connection = psycopg.Connection[Any]
RetentionTable = Literal["trades", "candles"]

_log = structlog.get_logger("storage.retention")
# A batch small enough that each DELETE holds its row locks for milliseconds.
_DELETE_BATCH = 5_000
# Stream name → the physical tables it lives in (whitelist: only these names reach SQL).
_TABLES: dict[str, tuple[str, ...]] = {
    "trades": ("trades",),
    "candles": ("candles_1m", "candles_rollup", "candles_kraken"),
}
_SEGMENT_BY = {"trades": "symbol_id", "candles_1m": "symbol_id", "candles_rollup": "symbol_id"}


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """What one retention run removed: ``rows`` on plain PostgreSQL, ``chunks`` on Timescale."""

    stream: str
    cutoff: datetime
    rows: int
    chunks: int


def _cutoff(conn: Connection, days: int) -> datetime:
    row = conn.execute("SELECT now() - %s", (timedelta(days=days),)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _trim_mismatches(conn: Connection, cutoff: datetime) -> None:
    conn.execute("DELETE FROM candle_mismatches WHERE time < %s", (cutoff,))


def _drop_chunks(conn: Connection, table: str, cutoff: datetime) -> int:
    rows = conn.execute(
        "SELECT drop_chunks(%s::regclass, older_than => %s::timestamptz)", (table, cutoff)
    ).fetchall()
    return len(rows)


def _delete_batch(conn: Connection, table: str, sid: int, cutoff: datetime) -> int:
    query = sql.SQL(
        "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t}"
        " WHERE symbol_id = %s AND time < %s LIMIT %s))"
    ).format(t=sql.Identifier(table))
    return max(conn.execute(query, (sid, cutoff, _DELETE_BATCH)).rowcount, 0)


def _trim_coverage(conn: Connection, stream: str, cutoff: datetime) -> None:
    conn.execute("DELETE FROM coverage WHERE stream = %s AND upper(during) <= %s", (stream, cutoff))
    conn.execute(
        "UPDATE coverage SET during = tstzrange(%s, upper(during), '[)')"
        " WHERE stream = %s AND lower(during) < %s",
        (cutoff, stream, cutoff),
    )


async def apply_retention(
    storage: Storage, days: Mapping[RetentionTable, int]
) -> list[RetentionResult]:
    """Remove rows older than ``days[stream]`` days for each stream with a non-zero value.

    ``trades`` covers the trades table; ``candles`` covers 1-minute candles and every rollup
    (so every interval answers the same for the same range). Batches run as separate
    transactions with a checkpoint between them, so a cancel stops between batches.

    Raises:
        ValueError: an unknown stream name.
        DatabaseUnavailable: the database could not be reached.
    """
    results = []
    for stream, keep_days in days.items():
        if stream not in _TABLES:
            raise ValueError(f"no retention for {stream!r}; use one of {', '.join(_TABLES)}")
        if keep_days <= 0:
            continue
        cutoff = await storage.run(_cutoff, keep_days)
        rows = chunks = 0
        for table in _TABLES[stream]:
            if storage.timescale:
                chunks += await storage.run(_drop_chunks, table, cutoff)
                continue
            ids = await storage.run(
                lambda conn: [r[0] for r in conn.execute("SELECT id FROM symbols").fetchall()]
            )
            for sid in ids:
                while True:
                    removed = await storage.run(_delete_batch, table, sid, cutoff)
                    rows += removed
                    await trio.lowlevel.checkpoint()
                    if removed < _DELETE_BATCH:
                        break
        await storage.run(_trim_coverage, stream, cutoff)
        if stream == "candles":
            # The findings about minutes that are gone go with them (a small plain table).
            await storage.run(_trim_mismatches, cutoff)
        results.append(RetentionResult(stream=stream, cutoff=cutoff, rows=rows, chunks=chunks))
    return results


async def compression_allowed(storage: Storage) -> bool:
    """True when TimescaleDB is in use under the Timescale License (compression available)."""
    if not storage.timescale:
        return False
    row = await storage.run(
        lambda conn: conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
    )
    return bool(row and row[0] == "timescale")


def _compress(conn: Connection, table: str, after: timedelta) -> int:
    enabled = conn.execute(
        "SELECT compression_enabled FROM timescaledb_information.hypertables"
        " WHERE hypertable_name = %s",
        (table,),
    ).fetchone()
    if enabled is None:
        return 0
    if not enabled[0]:
        conn.execute(
            sql.SQL(
                "ALTER TABLE {t} SET (timescaledb.compress,"
                " timescaledb.compress_segmentby = {seg}, timescaledb.compress_orderby = 'time')"
            ).format(t=sql.Identifier(table), seg=sql.Literal(_SEGMENT_BY[table]))
        )
    rows = conn.execute(
        "SELECT compress_chunk(c, if_not_compressed => true)"
        " FROM show_chunks(%s::regclass, older_than => %s) c",
        (table, after),
    ).fetchall()
    return len(rows)


async def compress_old_chunks(storage: Storage, after_days: int) -> int:
    """Compress hypertable chunks older than ``after_days``; returns how many were processed.

    Enables compression (segmented by symbol, ordered by time) on first use. Call only when
    :func:`compression_allowed` is true.

    Raises:
        DatabaseUnavailable: the database could not be reached.
    """
    done = 0
    for table in ("trades", "candles_1m", "candles_rollup"):
        done += await storage.run(_compress, table, timedelta(days=after_days))
    return done
