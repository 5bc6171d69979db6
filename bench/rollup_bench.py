"""Rollup benchmark: a year of 1-minute candles rolled up to 5m … 1w, histdata vs SQL cascade.

Usage::

    .venv/bin/python -m bench.rollup_bench [--dsn DSN] [--repeat 3] [--days 365] [--json]
        [--quick]

Creates a scratch database ``histdata_bench_rollup`` (dropped afterwards) and writes 525,600
1-minute candles of one symbol (``--quick``: 30 days) with
:func:`histdata.storage.candles.write_candles`, which logs the dirty ranges as the service
does. Then, alternating, ``--repeat`` times each:

- **histdata**: the rollups emptied and the write's dirty ranges logged again, then passes of
  :func:`histdata.storage.rollups.rollup_pass` until the log is empty (as the rollup actor and
  ``histdata import`` run them);
- **cascade**: the floor, the same rollups written as a user would in plain SQL and run with
  ``psql`` in one transaction: ``candles_5m`` from ``candles_1m`` by ``GROUP BY`` bucket, then
  ``candles_15m`` from ``candles_5m``, … ``candles_1w`` from ``candles_1d``, into fresh tables
  keyed on (symbol, time). On TimescaleDB it runs twice, into plain tables and into
  hypertables of the same chunk interval as histdata's;
- **re-rollup**: the whole year marked dirty again over the stored rollups: nothing may be
  written.

Medians are reported. The cascade's 1h candles are compared with histdata's, row by row.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import time
from typing import Any

import psycopg
import trio

from bench.common import Result, add_common_arguments, emit, machine, say, scratch_database, today
from bench.read_bench import candles_for
from histdata.storage import Storage, open_storage
from histdata.storage.candles import write_candles
from histdata.storage.migrations import HYPERTABLES, hypertables
from histdata.storage.rollups import ROLLUP_LEVELS, rollup_pass

DB = "histdata_bench_rollup"
_NAMES = {5: "5m", 15: "15m", 30: "30m", 60: "1h", 240: "4h", 720: "12h", 1440: "1d", 10080: "1w"}


def cascade_sql(*, hyper: bool) -> str:
    """The floor: each level from the one below by GROUP BY, in one transaction."""
    lines = ["BEGIN;"]
    for parent, child in ROLLUP_LEVELS:
        table = f"candles_{_NAMES[parent]}"
        source = "candles_1m" if child == 1 else f"candles_{_NAMES[child]}"
        lines.append(
            f"CREATE TABLE {table} (symbol_id int2, time timestamptz, open numeric,"
            " high numeric, low numeric, close numeric, volume numeric, pv numeric,"
            " trades bigint, PRIMARY KEY (symbol_id, time));"
        )
        if hyper:
            lines.append(
                f"SELECT create_hypertable('{table}', 'time',"
                f" chunk_time_interval => interval '{HYPERTABLES['candles_rollup']}');"
            )
        lines.append(
            f"INSERT INTO {table} SELECT symbol_id,"
            f" date_bin(interval '{parent} minutes', time, '1970-01-05 00:00+00'),"
            " (array_agg(open ORDER BY time))[1], max(high), min(low),"
            " (array_agg(close ORDER BY time DESC))[1], sum(volume), sum(pv), sum(trades)"
            f" FROM {source} GROUP BY 1, 2;"
        )
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


def drop_cascade(dsn: str) -> None:
    """Drop the cascade's tables of an earlier run (outside the timing)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for parent, _ in reversed(ROLLUP_LEVELS):
            conn.execute(f"DROP TABLE IF EXISTS candles_{_NAMES[parent]}".encode())


def run_cascade(dsn: str, hyper: bool) -> float:
    """Seconds ``psql`` takes to run the cascade, its start included."""
    drop_cascade(dsn)
    began = time.perf_counter()
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn],
        input=cascade_sql(hyper=hyper),
        text=True,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - began


async def drain(storage: Storage) -> tuple[float, int]:
    """Seconds and rows written by rollup passes until the dirty-range log is empty."""
    began = time.perf_counter()
    written = 0
    while True:
        result = await rollup_pass(storage)
        written += result.rows_written
        if not result.claimed:
            return time.perf_counter() - began, written


def redirty(conn: psycopg.Connection[Any], empty: bool) -> None:
    """Log the write's dirty ranges again; with ``empty`` the rollups are removed first."""
    if empty:
        conn.execute("TRUNCATE candles_rollup")
    conn.execute("INSERT INTO rollup_dirty (symbol_id, start_time, end_time) SELECT * FROM _bench")


def mismatches(conn: psycopg.Connection[Any]) -> int:
    """1h buckets where the cascade and histdata differ (either side missing counts)."""
    row = conn.execute(
        "SELECT count(*) FROM candles_1h c FULL JOIN (SELECT * FROM candles_rollup"
        " WHERE interval_min = 60) r USING (symbol_id, time)"
        " WHERE (c.open, c.high, c.low, c.close, c.volume, c.pv, c.trades)"
        " IS DISTINCT FROM (r.open, r.high, r.low, r.close, r.volume, r.pv, r.trades)"
    ).fetchone()
    assert row is not None
    return int(row[0])


async def bench(storage: Storage, dsn: str, repeat: int, days: int) -> dict[str, Any]:
    """Write the candles, then time each side ``repeat`` times, alternating; the figures."""
    candles = candles_for(days)
    began = time.perf_counter()
    for i in range(0, len(candles), 50_000):
        await write_candles(storage, candles[i : i + 50_000])
    say(f"rollups: wrote {len(candles):,} candles in {time.perf_counter() - began:.1f} s")

    def keep(conn: psycopg.Connection[Any]) -> bool:
        conn.execute(
            "CREATE TABLE _bench AS SELECT symbol_id, start_time, end_time FROM rollup_dirty"
        )
        conn.execute("DELETE FROM rollup_dirty")
        conn.execute("ANALYZE")
        return bool(hypertables(conn))

    timescale = await storage.run(keep)
    floors = [False, True] if timescale else [False]
    runs: dict[str, list[float]] = {"histdata": [], "again": []}
    for hyper in floors:
        runs[f"cascade{hyper}"] = []
    written = again_written = 0
    for i in range(repeat):
        for hyper in floors if i % 2 else []:
            runs[f"cascade{hyper}"].append(await trio.to_thread.run_sync(run_cascade, dsn, hyper))
        await storage.run(redirty, True)
        seconds, written = await drain(storage)
        runs["histdata"].append(seconds)
        for hyper in [] if i % 2 else floors:
            runs[f"cascade{hyper}"].append(await trio.to_thread.run_sync(run_cascade, dsn, hyper))
        await storage.run(redirty, False)
        seconds, again_written = await drain(storage)
        runs["again"].append(seconds)
        say(f"rollups: run {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in runs.items()))
    # The last cascade ran into hypertables on TimescaleDB: compare those.
    differ = await storage.run(mismatches)
    return {
        "runs": runs,
        "floors": floors,
        "written": written,
        "again_written": again_written,
        "differ": differ,
        "rows": len(candles),
    }


async def run(dsn: str, repeat: int, days: int) -> dict[str, Any]:
    """The whole bench in a scratch database."""
    with scratch_database(dsn, DB) as bench_dsn:
        async with open_storage(bench_dsn, pool_max=2) as storage:
            return await bench(storage, bench_dsn, repeat, days)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--repeat", type=int, help="runs of each side, median kept (default 3)")
    parser.add_argument("--days", type=int, help="days of 1-minute candles (default 365)")
    args = parser.parse_args()
    if not args.dsn:
        parser.error("--dsn (or HISTDATA_TEST_DSN) is required")
    repeat = args.repeat or (1 if args.quick else 3)
    days = args.days or (30 if args.quick else 365)
    where = machine(args.dsn)
    figures = trio.run(run, args.dsn, repeat, days)
    runs = figures["runs"]
    median = {name: statistics.median(values) for name, values in runs.items()}
    ours = median["histdata"]
    floor = min(median[f"cascade{hyper}"] for hyper in figures["floors"])
    rows = [
        [
            "histdata: rollup passes until the log is empty",
            f"{figures['written']:,}",
            f"{ours:.2f} s",
            f"{ours / floor:.2f}x",
        ]
    ]
    for hyper in figures["floors"]:
        label = "hypertables" if hyper else "plain tables"
        seconds = median[f"cascade{hyper}"]
        rows.append(
            [
                f"SQL cascade in psql, {label}",
                f"{figures['written']:,}",
                f"{seconds:.2f} s",
                f"{seconds / floor:.2f}x",
            ]
        )
    rows.append(
        [
            "histdata: the same range rolled up again (nothing changed)",
            f"{figures['again_written']:,}",
            f"{median['again']:.2f} s",
            f"{median['again'] / floor:.2f}x",
        ]
    )
    command = shlex.join(
        [
            *(".venv/bin/python", "-m", "bench.rollup_bench"),
            *("--repeat", str(repeat), "--days", str(days)),
        ]
    )
    period = "1 year" if days == 365 else f"{days} days"
    result = Result(
        name="rollups",
        title="Rollups",
        command=command,
        columns=["run", "rows written", "median", "vs the fastest cascade"],
        rows=rows,
        notes=[
            f"One symbol, {figures['rows']:,} 1-minute candles ({period}) written with"
            " `write_candles`; every level 5m … 1w from the level below on both"
            f" sides; median of {repeat}, the two sides alternating.",
            "The cascade computes open, high, low, close, volume, Σpv and trades; histdata"
            " also the exact VWAP from Σpv/Σv, the final flags and the change test that"
            " keeps a re-rollup from rewriting rows, under the per-symbol lock.",
            f"1h buckets that differ between the cascade and histdata: {figures['differ']}.",
        ],
        summary={
            f"rollups after {period} of 1m (histdata / cascade)": (
                f"{ours:.2f} s / {floor:.2f} s ({ours / floor:.2f}x)"
            ),
            "re-rollup of the same range (rows written)": (
                f"{median['again']:.2f} s ({figures['again_written']})"
            ),
        },
        machine=where,
        date=today(),
    )
    emit(result, as_json=args.json)


if __name__ == "__main__":
    main()
