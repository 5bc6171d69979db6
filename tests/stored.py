"""Checking queries for tests: what is stored, where no read the service serves says it.

The served reads (:mod:`histdata.storage.reads`) report neither a 1-minute candle's source
nor whether it is final, and nothing serves a count of stored trades; tests that pin those
down read them here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from histdata.model import Candle, CandleSource
from histdata.storage import Storage

__all__ = ["count_trades", "stored_candles"]

Connection = psycopg.Connection[Any]


async def count_trades(storage: Storage, symbol: str, start: datetime, end: datetime) -> int:
    """How many trades of ``symbol`` are stored in ``[start, end)``."""

    def query(conn: Connection) -> int:
        sid = storage.known_symbol_id(conn, symbol)
        if sid is None:
            return 0
        row = conn.execute(
            "SELECT count(*) FROM trades WHERE symbol_id = %s AND time >= %s AND time < %s",
            (sid, start, end),
        ).fetchone()
        return int(row[0]) if row else 0

    return await storage.run(query)


async def stored_candles(
    storage: Storage, symbol: str, start: datetime, end: datetime
) -> list[Candle]:
    """Stored 1-minute candles of ``symbol`` with ``start <= time < end``, oldest first, with
    their source and ``final`` flag as stored."""

    def query(conn: Connection) -> list[Candle]:
        info = storage.registry.resolve(symbol)
        sid = storage.known_symbol_id(conn, info.symbol)
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

    return await storage.run(query)
