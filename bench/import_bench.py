"""Import throughput: ``histdata import`` vs plain ``psql \\copy`` of the same file, same run.

Usage::

    .venv/bin/python bench/import_bench.py --dsn "host=127.0.0.1 user=postgres dbname=postgres" \\
        [--rows 1000000] [--keep-dir DIR]

The DSN must be allowed to create databases; two throwaway databases are created and dropped.
The file is a generated 3-column Kraken trades file (time,price,volume; many trades share a
second). The baseline loads it with ``psql \\copy`` into a table with the same columns (time
kept as the file's integer seconds) and an index on the same key columns as ``trades_key``, so
both sides pay for one btree; it does no validation, no duplicate check and no ``seq``
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
import platform
import random
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import psycopg.conninfo
import trio

from histdata.importer import import_paths
from histdata.storage import migrate, open_storage


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


def machine() -> str:
    """nproc, memory and CPU model of this machine."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout
    total = next((line.split()[1] for line in memory.splitlines() if line.startswith("Mem:")), "?")
    return f"nproc={os.cpu_count()}, memory={total}, cpu={cpu}"


def with_db(dsn: str, name: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, dbname=name)


def bench_psql(dsn: str, path: Path) -> float:
    """Seconds for ``psql \\copy`` of ``path`` into an identically indexed table."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE raw_trades (symbol_id int2 NOT NULL DEFAULT 1, time int8 NOT NULL,"
            " price numeric NOT NULL, volume numeric NOT NULL, trade_id int8,"
            " seq int4 NOT NULL DEFAULT 0)"
        )
        conn.execute("CREATE INDEX raw_trades_key ON raw_trades (symbol_id, time, trade_id, seq)")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("HISTDATA_TEST_DSN", ""))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep-dir", type=Path)
    args = parser.parse_args()
    if not args.dsn:
        parser.error("--dsn (or HISTDATA_TEST_DSN) is required")
    workdir = args.keep_dir or Path(tempfile.mkdtemp(prefix="import_bench_"))
    path = workdir / "XBTUSD.csv"
    generate(path, args.rows)
    size_mb = path.stat().st_size / 1e6
    names = {"histdata": f"bench_hd_{os.getpid()}", "psql": f"bench_psql_{os.getpid()}"}
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        for name in names.values():
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        migrate(with_db(args.dsn, names["histdata"]))
        psql_s = bench_psql(with_db(args.dsn, names["psql"]), path)
        histdata_s, inserted, histdata_rss = run_histdata(
            with_db(args.dsn, names["histdata"]), path
        )
        assert inserted == args.rows, f"inserted {inserted} of {args.rows}"
        rerun_s, again, rerun_rss = run_histdata(with_db(args.dsn, names["histdata"]), path)
        assert again == 0, f"re-import inserted {again}"
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            for name in names.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
    psql_rate, histdata_rate = args.rows / psql_s, args.rows / histdata_s
    print(f"machine: {machine()}")
    print(f"file: {args.rows} rows, {size_mb:.1f} MB")
    print(f"psql \\copy:          {psql_s:7.2f} s  {psql_rate:10,.0f} rows/s")
    print(
        f"histdata import:     {histdata_s:7.2f} s  {histdata_rate:10,.0f} rows/s"
        f"  ({histdata_rate / psql_rate:.2f}x psql's rate,"
        f" peak RSS {histdata_rss / 2**20:,.0f} MiB)"
    )
    print(
        f"histdata re-import:  {rerun_s:7.2f} s  {args.rows / rerun_s:10,.0f} rows/s"
        f"  (adds 0, peak RSS {rerun_rss / 2**20:,.0f} MiB)"
    )


if __name__ == "__main__":
    main()
