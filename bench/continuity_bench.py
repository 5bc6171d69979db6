"""How long one trade-id audit round takes on a symbol holding many trades.

Usage::

    .venv/bin/python -m bench.continuity_bench [--rows 20000000] [--dsn DSN] [--json] [--quick]

Fills a scratch database with ``--rows`` trades of one symbol (ids 1..rows, one every 10 ms,
a few ids left out), audits it until the audited range reaches the newest id (the first,
full pass), then adds a minute of new trades (6,000) and times one round, five times. The
figure the gap filler cares about is that last one: a round's cost follows the new trades,
not the symbol's history.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import psycopg
import trio

from bench.common import Result, add_common_arguments, emit, machine, say, scratch_database, today
from histdata.storage import open_storage
from histdata.storage.continuity import audit_trade_ids
from histdata.storage.symbol_table import register_symbol

SYMBOL = "BTC/USD"
_INSERT = (
    "INSERT INTO trades (symbol_id, time, price, volume, trade_id, source)"
    " SELECT %s, to_timestamp(1700000000 + i / 100.0), 100 + (i %% 7), 0.01, i, 'w'"
    " FROM generate_series(%s::int8, %s::int8) AS i WHERE i %% 1000003 <> 0"
)


def _fill(conninfo: str, sid: int, low: int, high: int) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(_INSERT, (sid, low, high))
        conn.execute("ANALYZE trades")


async def _run(conninfo: str, rows: int) -> dict[str, Any]:
    async with open_storage(conninfo, pool_max=2) as storage:
        sid = await register_symbol(storage, SYMBOL)
        began = time.perf_counter()
        await trio.to_thread.run_sync(_fill, conninfo, sid, 1, rows)
        filled_s = time.perf_counter() - began
        began = time.perf_counter()
        rounds = 0
        while True:
            rounds += 1
            result = await audit_trade_ids(storage, SYMBOL)
            if result.checked == 0:
                break
        first_pass_s = time.perf_counter() - began
        holes = len(result.open)
        times = []
        top = rows
        for _ in range(5):
            await trio.to_thread.run_sync(_fill, conninfo, sid, top + 1, top + 6000)
            top += 6000
            began = time.perf_counter()
            result = await audit_trade_ids(storage, SYMBOL)
            times.append(time.perf_counter() - began)
            assert result.checked >= 5999, result  # one id in a million is left out
    return {
        "rows": rows,
        "fill_s": round(filled_s, 1),
        "first_pass_s": round(first_pass_s, 1),
        "first_pass_rounds": rounds,
        "holes_found": holes,
        "round_with_a_minute_of_new_trades_ms": {
            "median": round(statistics.median(times) * 1000, 1),
            "max": round(max(times) * 1000, 1),
        },
    }


def main() -> None:
    """Run the bench; print a markdown block (or the JSON line with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--rows", type=int, default=20_000_000)
    args = parser.parse_args()
    rows = 1_000_000 if args.quick else args.rows
    say(f"continuity: {rows:,} trades of one symbol")
    with scratch_database(args.dsn, "histdata_continuity_bench") as conninfo:
        got = trio.run(_run, conninfo, rows)
    rounds = got["round_with_a_minute_of_new_trades_ms"]
    emit(
        Result(
            name="continuity",
            title="Trade-id audit: one gap-filler round on a symbol with a long history",
            command=f"python -m bench.continuity_bench --rows {rows}",
            columns=["stored trades", "first full audit", "round with 6,000 new (median / max)"],
            rows=[
                [
                    f"{rows:,}",
                    f"{got['first_pass_s']} s in {got['first_pass_rounds']} rounds",
                    f"{rounds['median']} ms / {rounds['max']} ms",
                ]
            ],
            notes=[
                f"{got['holes_found']} planted holes found. A round reads only the ids above"
                " (and below) the audited range, so its cost follows the new trades.",
            ],
            summary={f"audit round, {rows:,} trades + 1 min new": f"{rounds['median']} ms"},
            machine=machine(args.dsn),
            date=today(),
        ),
        as_json=args.json,
    )


if __name__ == "__main__":
    main()
