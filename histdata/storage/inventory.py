"""What is stored, per symbol and stream, in one grouped query (``histdata symbols``).

For every symbol with rows and each of its streams (``trades``, ``candles`` = 1-minute
candles): the first and last time, the row count, how much of the stored span
``[first, last]`` coverage says was observed (as a fraction), how many holes that span has
(maximal unobserved ranges, repairable or not), and the ranges marked unrecoverable (Kraken
can no longer serve them) with their total length. A candle's span ends a minute after its
last bucket starts. One statement serves hundreds of symbols: each table is read once,
grouped by symbol, never queried symbol by symbol.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from histdata.model import Stream
from histdata.storage.database import Storage

__all__ = ["StreamInventory", "inventory"]

Connection = psycopg.Connection[Any]

_QUERY = """
WITH stored AS (
    SELECT symbol_id, 'trades' AS stream, min(time) AS first, max(time) AS last,
           tstzrange(min(time), max(time), '[]') AS span, count(*) AS n
    FROM trades GROUP BY symbol_id
    UNION ALL
    SELECT symbol_id, 'candles', min(time), max(time),
           tstzrange(min(time), max(time) + interval '1 minute'), count(*)
    FROM candles_1m GROUP BY symbol_id
),
observed AS (
    SELECT symbol_id, stream, range_agg(during) AS ranges FROM coverage GROUP BY 1, 2
),
marked AS (
    SELECT symbol_id, stream, count(*) AS n, sum(upper(during) - lower(during)) AS length
    FROM gap_marks GROUP BY 1, 2
),
joined AS (
    SELECT s.symbol, s.status, s.provisional, d.stream, d.first, d.last, d.n, d.span,
           coalesce(o.ranges, '{}'::tstzmultirange) * tstzmultirange(d.span) AS covered,
           coalesce(m.n, 0) AS marks, m.length AS marked
    FROM stored d
    JOIN symbols s ON s.id = d.symbol_id
    LEFT JOIN observed o ON o.symbol_id = d.symbol_id AND o.stream = d.stream
    LEFT JOIN marked m ON m.symbol_id = d.symbol_id AND m.stream = d.stream
)
SELECT symbol, status, provisional, stream, first, last, n,
       extract(epoch FROM upper(span) - lower(span)),
       (SELECT coalesce(sum(extract(epoch FROM upper(r) - lower(r))), 0) FROM unnest(covered) r),
       (SELECT count(*) FROM unnest(tstzmultirange(span) - covered) r),
       marks, marked
FROM joined ORDER BY symbol, stream DESC
"""


@dataclass(frozen=True, slots=True)
class StreamInventory:
    """One stream of one symbol as stored (see the module docs).

    ``coverage`` is the observed fraction of ``[first, last]`` (1.0 for a single instant
    that is covered, 0.0 when nothing is); ``unrecoverable`` the number of marked ranges and
    ``unrecoverable_length`` their total length.
    """

    symbol: str
    status: str
    provisional: bool
    stream: Stream
    first: datetime
    last: datetime
    rows: int
    coverage: float
    holes: int
    unrecoverable: int
    unrecoverable_length: timedelta


async def inventory(storage: Storage) -> list[StreamInventory]:
    """Every stored symbol's streams, in symbol order, trades before candles.

    Raises:
        DatabaseUnavailable: the database went away.
    """
    return await storage.run(_inventory)


def _inventory(conn: Connection) -> list[StreamInventory]:
    found = []
    for (
        symbol,
        status,
        provisional,
        stream,
        first,
        last,
        rows,
        span_s,
        covered_s,
        holes,
        marks,
        marked,
    ) in conn.execute(_QUERY).fetchall():
        span, covered = float(span_s), float(covered_s)
        # A span of one instant is covered when an observed range contains it.
        instant = 1.0 if holes == 0 else 0.0
        coverage = min(1.0, covered / span) if span > 0 else instant
        found.append(
            StreamInventory(
                symbol=symbol,
                status=status,
                provisional=bool(provisional),
                stream=stream,
                first=first,
                last=last,
                rows=int(rows),
                coverage=coverage,
                holes=int(holes),
                unrecoverable=int(marks),
                unrecoverable_length=marked or timedelta(0),
            )
        )
    return found
