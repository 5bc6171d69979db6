"""Incremental rollups: 1-minute candles folded into 5m … 1w, driven by ``rollup_dirty``.

Every write that changes a 1-minute candle appends the changed range to ``rollup_dirty`` in
the same transaction (:func:`.candles.write_candles`). A rollup pass claims dirty ranges and,
level by level, recomputes every rollup bucket that overlaps them from the level below::

    5m ← 1m   15m ← 5m   30m ← 15m   1h ← 30m   4h ← 1h   12h ← 4h   1d ← 12h   1w ← 1d

Claiming the ranges and writing the recomputed buckets commit in one transaction, so a
reader (see :mod:`histdata.storage.reads`) sees either the old rollups together with the
dirty ranges that invalidate them, or the new rollups without them — never a stale rollup
that looks fresh. A pass recomputes whole buckets from their children (never deltas), so it
is idempotent; passes lock per symbol (a transaction-level advisory lock for every symbol
whose ranges or open buckets they take), so two histdata processes sharing a database roll
up different symbols at once and never interleave levels of the same one; a symbol another
process holds is left to it and counted in ``skipped_symbols``.

Bucket alignment: every interval is aligned to **Monday 1970-01-05 00:00 UTC**
(``date_bin(interval, time, BUCKET_ORIGIN)``). For intervals that divide a day this is the
ordinary epoch alignment (midnight UTC); for weeks it makes weeks start on Monday 00:00 UTC,
the same as PostgreSQL's ``date_trunc('week', …)``. Plain epoch bucketing would start weeks
on Thursday, because 1970-01-01 was a Thursday.

Per bucket: open is the first child's open, close the last child's close, high/low the
extremes, volume and trade count the sums, ``pv`` the sum of the children's ``pv`` (exact
``numeric``, never rebuilt from a rounded vwap: a 1-minute candle of ours carries the exact
Σ price·volume of its trades, see :mod:`histdata.storage.candles`; NULL when any child has
none, e.g. candles from Kraken's OHLCVT CSVs), ``vwap`` is
``pv / volume`` rounded as :func:`vwap_sql` says (stored so reads need not divide), and ``final`` is
true only when every child is final and the bucket has ended. Open buckets are re-examined on
every pass, so a bucket becomes final once it ends even when nothing in it changes again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:  # database imports this module (through storage.candles) at run time
    from histdata.storage.database import Storage

__all__ = [
    "BUCKET_ORIGIN",
    "ROLLUP_LEVELS",
    "VWAP_DECIMALS",
    "RollupPassResult",
    "bucket_floor",
    "rollup_pass",
    "vwap_sql",
]

Connection = psycopg.Connection[Any]

# Monday; see the module docstring for why weeks must not be aligned to the epoch.
BUCKET_ORIGIN = datetime(1970, 1, 5, tzinfo=UTC)
# (interval, child interval) in the order a pass computes them; each divides the next.
ROLLUP_LEVELS: tuple[tuple[int, int], ...] = (
    (5, 1),
    (15, 5),
    (30, 15),
    (60, 30),
    (240, 60),
    (720, 240),
    (1440, 720),
    (10080, 1440),
)
# Decimal places of an aggregated VWAP. sql/0005_rollup_vwap.sql filled the column for rows
# written before it existed with the same rounding: change both together.
VWAP_DECIMALS = 12
# pg_try_advisory_xact_lock(int, int) class of the per-symbol rollup lock ("roll").
_LOCK = 0x726F6C6C


def vwap_sql(pv: str, volume: str, missing: str) -> str:
    """SQL for ``pv / volume`` rounded half-up to :data:`VWAP_DECIMALS` places, trailing zeros
    trimmed; NULL when ``missing`` (a child had no vwap) or the volume is zero.

    The arguments are SQL expressions (column names of the caller's query, never input).
    Exact: ``div`` truncates, so half a unit is added first (both operands are >= 0).
    """
    return (
        f"CASE WHEN {missing} OR {volume} = 0 THEN NULL"
        f" ELSE trim_scale(div(2 * {pv} * 1e{VWAP_DECIMALS} + {volume}, 2 * {volume})"
        f" * 1e-{VWAP_DECIMALS}) END"
    )


# The children of a level, as (time, open, high, low, close, volume, pv, trades, final).
# Interval minutes are bound parameters; only these two fixed texts are ever spliced in.
_CHILDREN_1M = (
    "SELECT symbol_id, time, open, high, low, close, volume, pv, pv IS NULL AS no_pv, trades,"
    " final FROM candles_1m"
)
_CHILDREN_ROLLUP = (
    "SELECT symbol_id, time, open, high, low, close, volume, pv, pv IS NULL AS no_pv, trades,"
    " final FROM candles_rollup WHERE interval_min = %(child)s"
)

_VWAP = vwap_sql("pv", "volume", "pv IS NULL")
# vwap is a function of pv and volume, so the change test below need not compare it.
_LEVEL_SQL = """
WITH spans AS (
    SELECT symbol_id,
           tstzrange(date_bin(%(step)s, start_time, %(origin)s),
                     date_bin(%(step)s, end_time - interval '1 microsecond', %(origin)s)
                         + %(step)s) AS r
      FROM _rollup_work
    UNION ALL
    SELECT symbol_id, tstzrange(time, time + %(step)s)
      FROM candles_rollup
     WHERE interval_min = %(parent)s AND NOT final AND time + %(step)s <= now()
       AND pg_try_advisory_xact_lock(%(lock)s, symbol_id::int4)
),
merged AS (
    SELECT symbol_id, unnest(range_agg(r)) AS r FROM spans GROUP BY symbol_id
),
agg AS (
    SELECT c.symbol_id,
           date_bin(%(step)s, c.time, %(origin)s) AS time,
           (array_agg(c.open ORDER BY c.time))[1] AS open,
           max(c.high) AS high,
           min(c.low) AS low,
           (array_agg(c.close ORDER BY c.time DESC))[1] AS close,
           sum(c.volume) AS volume,
           CASE WHEN bool_or(c.no_pv) THEN NULL ELSE sum(c.pv) END AS pv,
           sum(c.trades) AS trades,
           bool_and(c.final) AS final
      FROM merged m
      JOIN ({children}) c
        ON c.symbol_id = m.symbol_id AND c.time >= lower(m.r) AND c.time < upper(m.r)
     GROUP BY 1, 2
)
INSERT INTO candles_rollup AS r
       (symbol_id, interval_min, time, open, high, low, close, volume, pv, vwap, trades, final)
SELECT symbol_id, %(parent)s, time, open, high, low, close, volume, pv, {vwap}, trades,
       final AND time + %(step)s <= now()
  FROM agg
ON CONFLICT (symbol_id, interval_min, time) DO UPDATE
   SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
       volume = EXCLUDED.volume, pv = EXCLUDED.pv, vwap = EXCLUDED.vwap,
       trades = EXCLUDED.trades, final = EXCLUDED.final
 WHERE (r.open, r.high, r.low, r.close, r.volume, r.pv, r.trades, r.final)
       IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close,
                         EXCLUDED.volume, EXCLUDED.pv, EXCLUDED.trades, EXCLUDED.final)
"""


@dataclass(frozen=True, slots=True)
class RollupPassResult:
    """What one pass did: dirty ranges claimed and rollup rows written, per interval."""

    claimed: int
    written: dict[int, int]
    skipped_symbols: int  # symbols with dirty ranges another process is rolling up now

    @property
    def rows_written(self) -> int:
        """Rollup rows inserted or changed in this pass, over all intervals."""
        return sum(self.written.values())


def bucket_floor(time: datetime, minutes: int) -> datetime:
    """The start of the ``minutes``-long bucket containing ``time`` (same as the SQL side)."""
    step = timedelta(minutes=minutes)
    return BUCKET_ORIGIN + ((time - BUCKET_ORIGIN) // step) * step


def _pass(conn: Connection, limit: int) -> RollupPassResult:
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS _rollup_work (symbol_id int2, start_time timestamptz,"
        " end_time timestamptz) ON COMMIT DELETE ROWS"
    )
    claimed = conn.execute(
        "WITH claimed AS (DELETE FROM rollup_dirty WHERE id IN"
        " (SELECT id FROM rollup_dirty WHERE pg_try_advisory_xact_lock(%s, symbol_id::int4)"
        "  ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)"
        " RETURNING symbol_id, start_time, end_time)"
        " INSERT INTO _rollup_work SELECT symbol_id, start_time, end_time FROM claimed",
        (_LOCK, limit),
    ).rowcount
    written: dict[int, int] = {}
    for parent, child in ROLLUP_LEVELS:
        children = _CHILDREN_1M if child == 1 else _CHILDREN_ROLLUP
        cur = conn.execute(
            _LEVEL_SQL.format(children=children, vwap=_VWAP).encode(),
            {
                "step": timedelta(minutes=parent),
                "origin": BUCKET_ORIGIN,
                "parent": parent,
                "child": child,
                "lock": _LOCK,
            },
        )
        written[parent] = max(cur.rowcount, 0)
    # Our own locks are re-entrant: what fails here is held by another process.
    row = conn.execute(
        "SELECT count(DISTINCT symbol_id) FROM rollup_dirty"
        " WHERE NOT pg_try_advisory_xact_lock(%s, symbol_id::int4)",
        (_LOCK,),
    ).fetchone()
    skipped = int(row[0]) if row else 0
    return RollupPassResult(claimed=max(claimed, 0), written=written, skipped_symbols=skipped)


async def rollup_pass(storage: Storage, *, limit: int = 10_000) -> RollupPassResult:
    """Claim up to ``limit`` dirty ranges and bring every rollup level up to date for them.

    Also re-examines open rollup buckets that have ended since they were computed. Returns
    what was done; symbols another process is rolling up are left to it (``skipped_symbols``).

    Raises:
        DatabaseUnavailable: the database could not be reached (nothing was claimed).
    """
    return await storage.run(_pass, limit)
