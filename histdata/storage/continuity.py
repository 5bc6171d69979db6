"""Trade-id continuity: a second truth about holes, independent of coverage.

Kraken numbers every pair's trades with consecutive integers (``trade_id`` on WebSocket v2,
the last field of a REST ``Trades`` row). From a symbol's lowest stored id onward, an id that
is not stored is a missing trade, whatever coverage claims; id-less rows (Kraken's 3-column
CSV files) take no part, and neither do rows with id 0 (Kraken served runs of id 0 until
mid-2024; docs/kraken.md). Two views:

- :func:`id_holes` finds the breaks among the trades of a time range as it reads them (one
  window query over the range, plus the nearest trade with an id on either side), labelled
  with what the gap filler learned about them. It never writes: ``gaps`` and ``/v1/coverage``
  use it, on a standby or as a read-only user too.
- :func:`audit_trade_ids` is the gap filler's incremental check. ``trade_id_audit`` keeps the id
  range already checked per symbol; a round checks only the ids above it (new trades) and
  below it (an older backfill), records every break in ``trade_id_holes`` and re-checks the
  holes still open. A round over a symbol with a minute of new trades reads a minute of index
  entries, however many trades the symbol holds.

A hole the gap filler re-fetched from REST but that is still missing its ids is marked
``unfillable`` (:func:`mark_unfillable`) and reported so, never retried forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg

from histdata.storage.database import Storage

__all__ = ["AuditResult", "IdHole", "audit_trade_ids", "id_holes", "mark_unfillable", "open_holes"]

Connection = psycopg.Connection[Any]
HoleStatus = Literal["open", "unfillable"]
# pg_advisory_xact_lock(int4, int4) class for per-symbol audits (coverage merges use another).
_AUDIT_LOCK = 0x69647331
# Ids checked per direction per round: bounds one round's work after a large backfill.
_AUDIT_BATCH = 1_000_000


@dataclass(frozen=True, slots=True)
class IdHole:
    """Trade ids ``first_id..last_id`` are not stored; the trades around them are at
    ``after`` (id ``first_id - 1``) and ``before`` (id ``last_id + 1``)."""

    first_id: int
    last_id: int
    after: datetime
    before: datetime
    status: HoleStatus = "open"
    reason: str = ""

    @property
    def missing(self) -> int:
        """How many trades are missing."""
        return self.last_id - self.first_id + 1

    def describe(self) -> str:
        """One line for people: ``trade ids a..b missing (n) between T1 and T2``."""
        ids = f"{self.first_id}" if self.missing == 1 else f"{self.first_id}..{self.last_id}"
        text = (
            f"trade ids {ids} missing ({self.missing}) between"
            f" {self.after.isoformat()} and {self.before.isoformat()}"
        )
        return f"{text}; unfillable: {self.reason}" if self.status == "unfillable" else text


@dataclass(frozen=True, slots=True)
class AuditResult:
    """One audit round of one symbol: ids checked, holes found and closed, holes open now."""

    checked: int
    found: int
    closed: int
    open: tuple[IdHole, ...]


# Breaks among the rows of `s` (trade_id, time) in id order; the CTE `s` is prepended.
_BREAKS = (
    " w AS (SELECT trade_id, time, lag(trade_id) OVER o AS pid, lag(time) OVER o AS ptime"
    " FROM s WINDOW o AS (ORDER BY trade_id))"
    " SELECT pid + 1, trade_id - 1, ptime, time FROM w WHERE trade_id > pid + 1 ORDER BY 1"
)


def _range_breaks(conn: Connection, sid: int, start: datetime, end: datetime) -> list[IdHole]:
    rows = conn.execute(
        "WITH s AS ("
        " SELECT trade_id, time FROM trades WHERE symbol_id = %(sid)s AND trade_id > 0"
        "  AND time >= %(a)s AND time < %(b)s"
        " UNION ALL (SELECT trade_id, time FROM trades WHERE symbol_id = %(sid)s"
        "  AND trade_id > 0 AND time < %(a)s ORDER BY time DESC LIMIT 1)"
        " UNION ALL (SELECT trade_id, time FROM trades WHERE symbol_id = %(sid)s"
        "  AND trade_id > 0 AND time >= %(b)s ORDER BY time LIMIT 1)),"
        f"{_BREAKS}",
        {"sid": sid, "a": start, "b": end},
    ).fetchall()
    return [IdHole(a, b, t1, t2) for a, b, t1, t2 in rows]


async def id_holes(storage: Storage, symbol: str, start: datetime, end: datetime) -> list[IdHole]:
    """Breaks in the trade ids of ``symbol`` touching ``[start, end)``, in id order.

    A break is reported when its surrounding trades straddle or lie in the range; holes the
    gap filler marked unfillable carry that status and reason. Reads only.

    Raises:
        UnknownSymbol: the registry does not know the spelling.
        DatabaseUnavailable: the database is down.
    """

    def query(conn: Connection) -> list[IdHole]:
        sid = storage.known_symbol_id(conn, symbol)
        if sid is None:
            return []
        found = _range_breaks(conn, sid, start, end)
        if not found:
            return found
        marked = {
            (a, b): reason
            for a, b, reason in conn.execute(
                "SELECT first_id, last_id, reason FROM trade_id_holes WHERE symbol_id = %s"
                " AND status = 'unfillable' AND first_id <= %s AND last_id >= %s",
                (sid, found[-1].last_id, found[0].first_id),
            ).fetchall()
        }
        return [
            IdHole(h.first_id, h.last_id, h.after, h.before, "unfillable", marked[key])
            if (key := (h.first_id, h.last_id)) in marked
            else h
            for h in found
        ]

    return await storage.run(query)


async def open_holes(storage: Storage, symbol: str) -> list[IdHole]:
    """The holes the audit recorded for ``symbol`` that are not filled, in id order."""

    def query(conn: Connection) -> list[IdHole]:
        sid = storage.known_symbol_id(conn, symbol)
        if sid is None:
            return []
        return _stored_holes(conn, sid, "open")

    return await storage.run(query)


def _stored_holes(conn: Connection, sid: int, status: HoleStatus) -> list[IdHole]:
    rows = conn.execute(
        "SELECT first_id, last_id, after_time, before_time, status, reason FROM trade_id_holes"
        " WHERE symbol_id = %s AND status = %s ORDER BY first_id",
        (sid, status),
    ).fetchall()
    return [IdHole(*row) for row in rows]


async def audit_trade_ids(storage: Storage, symbol: str) -> AuditResult:
    """Check the ids of ``symbol`` stored since the last round; re-check open holes.

    Runs in one transaction under a per-symbol advisory lock, so two collectors never audit
    one symbol at once.

    Raises:
        UnknownSymbol: the registry does not know the spelling.
        DatabaseUnavailable: the database is down (nothing is recorded; the next round redoes
            the work).
    """
    return await storage.run(_audit, storage, symbol)


def _audit(conn: Connection, storage: Storage, symbol: str) -> AuditResult:
    sid = storage.known_symbol_id(conn, symbol)
    if sid is None:
        return AuditResult(0, 0, 0, ())
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_AUDIT_LOCK, sid))
    row = conn.execute(
        "SELECT low_id, low_time, high_id, high_time FROM trade_id_audit WHERE symbol_id = %s",
        (sid,),
    ).fetchone()
    if row is None:
        first = conn.execute(
            "SELECT trade_id, time FROM trades WHERE symbol_id = %s AND trade_id > 0"
            " ORDER BY trade_id LIMIT 1",
            (sid,),
        ).fetchone()
        if first is None:
            return AuditResult(0, 0, 0, ())
        row = (first[0], first[1], first[0], first[1])
    low_id, low_time, high_id, high_time = row
    # Upwards: the ids stored above the audited range (new trades); then downwards: ids
    # stored below it (a backfill of older history).
    up_breaks, (high_id, high_time), up_count = _scan(conn, sid, high_id, high_time, up=True)
    down_breaks, (low_id, low_time), down_count = _scan(conn, sid, low_id, low_time, up=False)
    found = up_breaks + down_breaks
    checked = up_count + down_count
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO trade_id_holes (symbol_id, first_id, last_id, after_time, before_time)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [(sid, h.first_id, h.last_id, h.after, h.before) for h in found],
        )
    conn.execute(
        "INSERT INTO trade_id_audit (symbol_id, low_id, low_time, high_id, high_time)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (symbol_id) DO UPDATE SET"
        " low_id = EXCLUDED.low_id, low_time = EXCLUDED.low_time, high_id = EXCLUDED.high_id,"
        " high_time = EXCLUDED.high_time, updated_at = now()",
        (sid, low_id, low_time, high_id, high_time),
    )
    closed = 0
    for hole in _stored_holes(conn, sid, "open"):
        closed += _recheck(conn, sid, hole)
    return AuditResult(checked, len(found), closed, tuple(_stored_holes(conn, sid, "open")))


def _scan(
    conn: Connection, sid: int, edge_id: int, edge_time: datetime, *, up: bool
) -> tuple[list[IdHole], tuple[int, datetime], int]:
    """Breaks among at most ``_AUDIT_BATCH`` ids beyond ``edge_id`` (above it when ``up``);
    returns them, the new edge (id, time) and how many ids were read."""
    beyond, order = (">", "") if up else ("<", " DESC")
    rows = conn.execute(
        "WITH s AS (SELECT trade_id, time FROM (SELECT trade_id, time FROM trades"
        f"  WHERE symbol_id = %(sid)s AND trade_id > 0 AND trade_id {beyond} %(id)s"
        f"  ORDER BY trade_id{order} LIMIT %(n)s) AS fresh"
        " UNION ALL SELECT %(id)s::int8, %(t)s::timestamptz),"
        " w AS (SELECT trade_id, time, lag(trade_id) OVER o AS pid, lag(time) OVER o AS ptime,"
        f"  row_number() OVER (ORDER BY trade_id{order}) AS far, count(*) OVER () AS n"
        " FROM s WINDOW o AS (ORDER BY trade_id))"
        " SELECT pid + 1, trade_id - 1, ptime, time, far = n, n - 1 FROM w"
        " WHERE trade_id > pid + 1 OR far = n ORDER BY far = n, 1",
        {"sid": sid, "id": edge_id, "t": edge_time, "n": _AUDIT_BATCH},
    ).fetchall()
    *breaks, far = rows
    holes = [IdHole(a, b, t1, t2) for a, b, t1, t2, _, _ in breaks]
    first_missing, before_far, after, far_time, _, count = far
    if first_missing is not None and before_far >= first_missing:
        holes.append(IdHole(first_missing, before_far, after, far_time))  # it ends a break too
    return holes, (before_far + 1, far_time), count


def _recheck(conn: Connection, sid: int, hole: IdHole) -> int:
    """Replace ``hole`` by what is still missing inside it; returns 1 if it is gone."""
    rest = conn.execute(
        "WITH s AS (SELECT trade_id, time FROM trades WHERE symbol_id = %(sid)s"
        "  AND trade_id BETWEEN %(a)s AND %(b)s"
        " UNION ALL SELECT %(a)s - 1, %(t1)s::timestamptz UNION ALL SELECT %(b)s + 1, %(t2)s),"
        f"{_BREAKS}",
        {"sid": sid, "a": hole.first_id, "b": hole.last_id, "t1": hole.after, "t2": hole.before},
    ).fetchall()
    if [(a, b) for a, b, _, _ in rest] == [(hole.first_id, hole.last_id)]:
        return 0
    conn.execute(
        "DELETE FROM trade_id_holes WHERE symbol_id = %s AND first_id = %s", (sid, hole.first_id)
    )
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO trade_id_holes (symbol_id, first_id, last_id, after_time, before_time)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [(sid, a, b, t1, t2) for a, b, t1, t2 in rest],
        )
    return 0 if rest else 1


async def mark_unfillable(storage: Storage, symbol: str, hole: IdHole, reason: str) -> None:
    """Record that REST could not fill ``hole``: it stays reported, with ``reason``, and the
    gap filler stops re-fetching it."""

    def query(conn: Connection) -> None:
        sid = storage.known_symbol_id(conn, symbol)
        if sid is None:
            return
        conn.execute(
            "INSERT INTO trade_id_holes (symbol_id, first_id, last_id, after_time, before_time,"
            " status, reason) VALUES (%s, %s, %s, %s, %s, 'unfillable', %s)"
            " ON CONFLICT (symbol_id, first_id) DO UPDATE SET last_id = EXCLUDED.last_id,"
            " status = 'unfillable', reason = EXCLUDED.reason",
            (sid, hole.first_id, hole.last_id, hole.after, hole.before, reason),
        )

    await storage.run(query)
