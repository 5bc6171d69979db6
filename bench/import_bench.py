"""Import throughput: ``histdata import`` vs plain ``psql \\copy`` of the same file, same run.

Usage (alone, or through ``make bench``, which takes its ``--json`` line into the docs)::

    .venv/bin/python -m bench.import_bench --dsn "host=127.0.0.1 user=postgres dbname=postgres" \\
        [--rows 10000000] [--quick] [--json] [--keep-dir DIR]

The DSN must be allowed to create databases; two throwaway databases are created and dropped.
The file is a generated 3-column Kraken trades file (time,price,volume; many trades share a
second). The baseline loads it with ``psql \\copy`` into a table with the same columns (time
kept as the file's integer seconds) and an index on the same key columns as ``trades_key``, so
both sides pay for one btree (on a server with TimescaleDB preloaded, both tables are
hypertables of 1-day chunks); it does no validation, no duplicate check and no ``seq``
numbering. histdata's run is the full pipeline: sniffing, exact parsing and validation, seq
numbering, coverage, and per block of ~270,000 rows either ``COPY`` straight into ``trades``
(the block's seconds hold no stored trade) or the cross-source check, staging and
``INSERT … ON CONFLICT`` (the re-import). Each histdata run is a fresh process, so its peak
RSS (``ru_maxrss``) is its own.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.connection
import os
import random
import resource
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import trio

from bench.common import Result, add_common_arguments, emit, machine, say, scratch_database, today
from histdata.importer import import_paths
from histdata.logs import configure_logging
from histdata.storage import migrate, open_storage
from histdata.storage.migrations import timescale_available


def generate(path: Path, rows: int, *, seed: int = 1) -> None:
    """Write ``rows`` time-ordered trades, about 2.5 per second."""
    rng = random.Random(seed)
    t = 1_600_000_000
    with path.open("w") as out:
        chunk = []
        for _ in range(rows):
            if rng.random() < 0.4:
                t += rng.randint(1, 3)
            price = f"{rng.randint(10000, 60000)}.{rng.randint(0, 9)}"
            chunk.append(f"{t},{price},0.{rng.randint(1, 10**8):08d}\n")
            if len(chunk) >= 100_000:
                out.write("".join(chunk))
                chunk.clear()
        out.write("".join(chunk))


def bench_psql(dsn: str, path: Path) -> float:
    """Seconds for ``psql \\copy`` of ``path`` into an identically indexed table."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE raw_trades (symbol_id int2 NOT NULL DEFAULT 1, time int8 NOT NULL,"
            " price numeric NOT NULL, volume numeric NOT NULL, trade_id int8,"
            " seq int4 NOT NULL DEFAULT 0)"
        )
        conn.execute("CREATE INDEX raw_trades_key ON raw_trades (symbol_id, time, trade_id, seq)")
        if timescale_available(conn):
            # histdata's trades is then a hypertable of 1-day chunks: so is the baseline.
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            conn.execute(
                "SELECT create_hypertable('raw_trades', 'time', chunk_time_interval => 86400,"
                " create_default_indexes => false)"
            )
    started = time.perf_counter()
    subprocess.run(
        ["psql", dsn, "-q", "-c", f"\\copy raw_trades (time, price, volume) FROM '{path}' CSV"],
        check=True,
    )
    return time.perf_counter() - started


async def bench_histdata(dsn: str, path: Path) -> tuple[float, int]:
    """Seconds and rows inserted for histdata's import of ``path``."""
    async with open_storage(dsn) as storage:
        started = time.perf_counter()
        summary = await import_paths(storage, [path])
        return time.perf_counter() - started, summary.inserted


def _histdata_child(dsn: str, path: Path, out: multiprocessing.connection.Connection) -> None:
    configure_logging("warning")
    seconds, inserted = trio.run(bench_histdata, dsn, path)
    out.send((seconds, inserted, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))


def run_histdata(dsn: str, path: Path) -> tuple[float, int, int]:
    """Seconds, rows inserted and peak RSS bytes of an import in a fresh process."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_histdata_child, args=(dsn, path, send))
    child.start()
    send.close()
    result: tuple[float, int, int] = receive.recv()
    child.join()
    return result


def measure(dsn: str, path: Path) -> dict[str, float]:
    """Both sides on ``path`` in scratch databases: psql first, then histdata twice."""
    pid = os.getpid()
    with (
        scratch_database(dsn, f"bench_psql_{pid}") as psql_dsn,
        scratch_database(dsn, f"bench_hd_{pid}") as histdata_dsn,
    ):
        migrate(histdata_dsn)
        say("import: psql \\copy …")
        psql_s = bench_psql(psql_dsn, path)
        say("import: histdata import …")
        histdata_s, inserted, histdata_rss = run_histdata(histdata_dsn, path)
        say("import: histdata re-import …")
        rerun_s, again, rerun_rss = run_histdata(histdata_dsn, path)
    return {
        "psql_s": psql_s,
        "histdata_s": histdata_s,
        "inserted": inserted,
        "histdata_rss": histdata_rss,
        "rerun_s": rerun_s,
        "again": again,
        "rerun_rss": rerun_rss,
    }


def result(figures: dict[str, float], rows: int, size_mb: float, where: str) -> Result:
    """The figures as the bench runner's result."""
    psql_rate = rows / figures["psql_s"]

    def row(label: str, seconds: float, rss: float | None) -> list[str]:
        rate = rows / seconds
        memory = f"{rss / 2**20:,.0f} MiB" if rss is not None else "(psql)"
        return [label, f"{seconds:,.2f}", f"{rate:,.0f}", f"{rate / psql_rate:.2f}x", memory]

    histdata_rate = rows / figures["histdata_s"]
    return Result(
        name="import",
        title="Import",
        command=shlex.join([".venv/bin/python", "-m", "bench.import_bench", "--rows", str(rows)]),
        columns=["run", "seconds", "rows/s", "vs psql's rate", "histdata peak RSS"],
        rows=[
            row("`psql \\copy` into an identically indexed table", figures["psql_s"], None),
            row("`histdata import` (first import)", figures["histdata_s"], figures["histdata_rss"]),
            row("`histdata import` again (adds 0)", figures["rerun_s"], figures["rerun_rss"]),
        ],
        notes=[
            f"File: {rows:,} rows of Kraken's 3-column trades form (`time,price,volume`, about "
            f"2.5 trades per second), {size_mb:,.1f} MB; both sides load the same file in the "
            "same run, one after the other.",
            "Peak RSS is `ru_maxrss` of the histdata process (each run is a fresh one).",
        ],
        summary={
            f"import rows/s ({rows:,} rows)": f"{histdata_rate:,.0f}",
            "import vs psql \\copy (rate)": f"{histdata_rate / psql_rate:.2f}x",
            "import peak RSS": f"{figures['histdata_rss'] / 2**20:,.0f} MiB",
        },
        machine=where,
        date=today(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--rows", type=int, help="rows in the file (10,000,000; --quick 100,000)")
    parser.add_argument("--keep-dir", type=Path, help="write (and keep) the file here")
    args = parser.parse_args()
    if not args.dsn:
        parser.error("--dsn (or HISTDATA_TEST_DSN) is required")
    rows = args.rows or (100_000 if args.quick else 10_000_000)
    where = machine(args.dsn)
    with tempfile.TemporaryDirectory(prefix="import_bench_") as scratch:
        workdir = args.keep_dir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "XBTUSD.csv"
        say(f"import: writing {rows:,} rows to {path} …")
        generate(path, rows)
        size_mb = path.stat().st_size / 1e6
        figures = measure(args.dsn, path)
    if figures["inserted"] != rows or figures["again"] != 0:
        raise SystemExit(
            f"import inserted {figures['inserted']:,.0f} of {rows:,}, "
            f"the re-import {figures['again']:,.0f} (expected 0)"
        )
    emit(result(figures, rows, size_mb, where), as_json=args.json)


if __name__ == "__main__":
    main()
