"""Import throughput: ``histdata import`` vs plain ``psql \\copy`` of the same files, same run.

Usage (alone, or through ``make bench``, which takes its ``--json`` line into the docs)::

    .venv/bin/python -m bench.import_bench --dsn "host=127.0.0.1 user=postgres dbname=postgres" \\
        [--rows 10000000] [--candle-rows 525600] [--quick] [--json] [--keep-dir DIR]

The DSN must be allowed to create databases; throwaway databases are created and dropped.

Three files are generated. A 3-column Kraken trades file (time,price,volume; many trades
share a second); the same file with a few valid rows in an unusual form (volumes in
exponent notation, ``6.6496172E-1``; one row in 50,000); and a 1-minute OHLCVT file
(time,open,high,low,close,volume,trades; one row a minute). The trades baseline loads the
trades file with ``psql \\copy`` into a table with the same columns (time kept as the file's
integer seconds) and an index on the same key columns as ``trades_key``, so both sides pay
for one btree (on a server with TimescaleDB preloaded, both tables are hypertables of 1-day
chunks); the OHLCVT baseline into a plain 7-column table indexed on time. Neither baseline
validates, deduplicates or numbers anything. histdata's runs are the full pipeline: sniffing,
exact parsing and validation, seq numbering, coverage, ``COPY`` per block; for trades, the
1-minute candles derived from every block and the rollups to 1w (``--no-candles`` leaves
them out, for the cost of derivation); the re-import goes through the cross-source check,
staging and ``INSERT … ON CONFLICT``. Each histdata run is a fresh process in a fresh
database (the re-import reuses the first one), so its peak RSS (``ru_maxrss``) is its own.
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
from decimal import Decimal
from pathlib import Path

import psycopg
import trio

from bench.common import Result, add_common_arguments, emit, machine, say, scratch_database, today
from histdata.importer import import_paths
from histdata.logs import configure_logging
from histdata.storage import migrate, open_storage
from histdata.storage.migrations import timescale_available


def generate(path: Path, rows: int, *, seed: int = 1, unusual_every: int = 0) -> None:
    """Write ``rows`` time-ordered trades, about 2.5 per second; with ``unusual_every``, every
    that many rows one volume in exponent notation (the same value)."""
    rng = random.Random(seed)
    t = 1_600_000_000
    with path.open("w") as out:
        chunk = []
        for i in range(rows):
            if rng.random() < 0.4:
                t += rng.randint(1, 3)
            price = f"{rng.randint(10000, 60000)}.{rng.randint(0, 9)}"
            volume = f"0.{rng.randint(1, 10**8):08d}"
            if unusual_every and i % unusual_every == unusual_every // 2:
                volume = f"{Decimal(volume):E}"
            chunk.append(f"{t},{price},{volume}\n")
            if len(chunk) >= 100_000:
                out.write("".join(chunk))
                chunk.clear()
        out.write("".join(chunk))


def generate_candles(path: Path, rows: int, *, seed: int = 2) -> None:
    """Write ``rows`` 1-minute OHLCVT candles, one a minute (a minute is skipped now and then)."""
    rng = random.Random(seed)
    t = 1_577_836_800  # 2020-01-01
    with path.open("w") as out:
        chunk = []
        for _ in range(rows):
            t += 60 * (2 if rng.random() < 0.05 else 1)
            low = rng.randint(10000, 60000)
            o, c = low + rng.randint(0, 50), low + rng.randint(0, 50)
            high = max(o, c) + rng.randint(0, 20)
            volume = f"{rng.randint(0, 99)}.{rng.randint(0, 10**8):08d}"
            chunk.append(f"{t},{o}.1,{high}.9,{low}.0,{c}.5,{volume},{rng.randint(1, 500)}\n")
            if len(chunk) >= 100_000:
                out.write("".join(chunk))
                chunk.clear()
        out.write("".join(chunk))


def _create_tables(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute(
        "CREATE TABLE raw_trades (symbol_id int2 NOT NULL DEFAULT 1, time int8 NOT NULL,"
        " price numeric NOT NULL, volume numeric NOT NULL, trade_id int8,"
        " seq int4 NOT NULL DEFAULT 0)"
    )
    conn.execute("CREATE INDEX raw_trades_key ON raw_trades (symbol_id, time, trade_id, seq)")
    conn.execute(
        "CREATE TABLE raw_candles (time int8 NOT NULL, open numeric NOT NULL,"
        " high numeric NOT NULL, low numeric NOT NULL, close numeric NOT NULL,"
        " volume numeric NOT NULL, trades int4 NOT NULL)"
    )
    conn.execute("CREATE INDEX raw_candles_time ON raw_candles (time)")
    if timescale_available(conn):
        # histdata's trades is then a hypertable of 1-day chunks: so is the baseline.
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        conn.execute(
            "SELECT create_hypertable('raw_trades', 'time', chunk_time_interval => 86400,"
            " create_default_indexes => false)"
        )


def bench_psql(dsn: str, table: str, path: Path) -> float:
    """Seconds for ``psql \\copy`` of ``path`` into ``table`` (see the module docstring)."""
    columns = {"raw_trades": "(time, price, volume)", "raw_candles": ""}[table]
    started = time.perf_counter()
    subprocess.run(
        ["psql", dsn, "-q", "-c", f"\\copy {table} {columns} FROM '{path}' CSV"], check=True
    )
    return time.perf_counter() - started


async def bench_histdata(dsn: str, path: Path, candles: bool) -> tuple[float, int, float]:
    """Seconds, rows inserted and seconds of those in the final rollups for histdata's
    import of ``path``."""
    async with open_storage(dsn) as storage:
        started = time.perf_counter()
        summary = await import_paths(storage, [path], candles=candles)
        return time.perf_counter() - started, summary.inserted, summary.rollup_s


def _histdata_child(
    dsn: str, path: Path, candles: bool, out: multiprocessing.connection.Connection
) -> None:
    configure_logging("warning")
    seconds, inserted, rollup_s = trio.run(bench_histdata, dsn, path, candles)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.send((seconds, inserted, rss, rollup_s))


def run_histdata(dsn: str, path: Path, *, candles: bool = True) -> tuple[float, int, int, float]:
    """Seconds, rows inserted, peak RSS bytes and rollup seconds of an import in a fresh
    process."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_histdata_child, args=(dsn, path, candles, send))
    child.start()
    send.close()
    result: tuple[float, int, int, float] = receive.recv()
    child.join()
    return result


def measure(dsn: str, trades: Path, unusual: Path, candles: Path) -> dict[str, float]:
    """Every run on the files in scratch databases: the psql baselines first, then histdata."""
    pid = os.getpid()
    figures: dict[str, float] = {}
    with scratch_database(dsn, f"bench_psql_{pid}") as psql_dsn:
        with psycopg.connect(psql_dsn, autocommit=True) as conn:
            _create_tables(conn)
        say("import: psql \\copy of the trades …")
        figures["psql_s"] = bench_psql(psql_dsn, "raw_trades", trades)
        say("import: psql \\copy of the OHLCVT file …")
        figures["psql_candles_s"] = bench_psql(psql_dsn, "raw_candles", candles)

    def record(name: str, run: tuple[float, int, int, float]) -> None:
        seconds, inserted, rss, rollup_s = run
        figures.update(
            {
                f"{name}_s": seconds,
                f"{name}_inserted": inserted,
                f"{name}_rss": rss,
                f"{name}_rollup_s": rollup_s,
            }
        )

    with scratch_database(dsn, f"bench_hd_{pid}") as histdata_dsn:
        migrate(histdata_dsn)
        say("import: histdata import …")
        record("histdata", run_histdata(histdata_dsn, trades))
        say("import: histdata re-import …")
        record("rerun", run_histdata(histdata_dsn, trades))
    for name, path, derive in (
        ("no_candles", trades, False),
        ("unusual", unusual, True),
        ("candles", candles, True),
    ):
        with scratch_database(dsn, f"bench_hd_{name}_{pid}") as fresh:
            migrate(fresh)
            say(f"import: histdata import ({name}) …")
            record(name, run_histdata(fresh, path, candles=derive))
    return figures


def result(
    figures: dict[str, float], rows: int, candle_rows: int, sizes: dict[str, float], where: str
) -> Result:
    """The figures as the bench runner's result."""

    def row(label: str, key: str, n: int, baseline: str) -> list[str]:
        rate = n / figures[f"{key}_s"]
        rss = figures.get(f"{key}_rss", figures.get(f"{key.removesuffix('_copy')}_rss"))
        memory = f"{rss / 2**20:,.0f} MiB" if rss is not None else "(psql)"
        versus = rate / (n / figures[baseline])
        return [label, f"{figures[f'{key}_s']:,.2f}", f"{rate:,.0f}", f"{versus:.2f}x", memory]

    derivation = figures["histdata_s"] / figures["no_candles_s"]
    unusual = figures["histdata_s"] / figures["unusual_s"]
    candles = figures["psql_candles_s"] / figures["candles_s"]
    # Kraken's candles need no derivation: the import proper is the part before the rollups.
    figures["candles_copy_s"] = figures["candles_s"] - figures["candles_rollup_s"]
    candles_copy = figures["psql_candles_s"] / figures["candles_copy_s"]
    return Result(
        name="import",
        title="Import",
        command=shlex.join(
            [
                *(".venv/bin/python", "-m", "bench.import_bench"),
                *("--rows", str(rows), "--candle-rows", str(candle_rows)),
            ]
        ),
        columns=["run", "seconds", "rows/s", "vs psql's rate", "histdata peak RSS"],
        rows=[
            row("trades: `psql \\copy` into an identically indexed table", "psql", rows, "psql_s"),
            row("trades: `histdata import` (candles 1m…1w derived)", "histdata", rows, "psql_s"),
            row("trades: `histdata import --no-candles`", "no_candles", rows, "psql_s"),
            row("trades: `histdata import` again (adds 0)", "rerun", rows, "psql_s"),
            row("trades with unusual rows: `histdata import`", "unusual", rows, "psql_s"),
            row(
                "OHLCVT 1m: `psql \\copy` into a 7-column table indexed on time",
                "psql_candles",
                candle_rows,
                "psql_candles_s",
            ),
            row(
                "OHLCVT 1m: `histdata import`, before its rollups to 1w",
                "candles_copy",
                candle_rows,
                "psql_candles_s",
            ),
            row(
                "OHLCVT 1m: `histdata import`, rollups included",
                "candles",
                candle_rows,
                "psql_candles_s",
            ),
        ],
        notes=[
            f"Trades file: {rows:,} rows of Kraken's 3-column form (`time,price,volume`, about "
            f"2.5 trades per second), {sizes['trades']:,.1f} MB. The unusual file is the same "
            "with one volume in 50,000 in exponent notation. OHLCVT file: "
            f"{candle_rows:,} 1-minute candles, {sizes['candles']:,.1f} MB. Each histdata run "
            "is compared with `psql \\copy` of the same kind of file in the same run.",
            f"Deriving the candles (1m from the trades, then the rollups to 1w) costs "
            f"{derivation:.2f}x the import without them.",
            "Peak RSS is `ru_maxrss` of the histdata process (each run is a fresh one).",
        ],
        summary={
            f"import rows/s ({rows:,} rows, candles derived)": (
                f"{rows / figures['histdata_s']:,.0f}"
            ),
            "import vs psql \\copy (rate)": f"{figures['psql_s'] / figures['histdata_s']:.2f}x",
            "import with derivation vs without (time)": f"{derivation:.2f}x",
            "unusual rows vs clean file (rate)": f"{unusual:.2f}x",
            "OHLCVT import vs psql \\copy (rate, before rollups)": f"{candles_copy:.2f}x",
            "OHLCVT import vs psql \\copy (rate, rollups included)": f"{candles:.2f}x",
            "import peak RSS": f"{figures['histdata_rss'] / 2**20:,.0f} MiB",
        },
        machine=where,
        date=today(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--rows", type=int, help="trades (10,000,000; --quick 100,000)")
    parser.add_argument(
        "--candle-rows", type=int, help="1-minute candles (525,600, a year; --quick 50,000)"
    )
    parser.add_argument("--keep-dir", type=Path, help="write (and keep) the files here")
    args = parser.parse_args()
    if not args.dsn:
        parser.error("--dsn (or HISTDATA_TEST_DSN) is required")
    rows = args.rows or (100_000 if args.quick else 10_000_000)
    candle_rows = args.candle_rows or (50_000 if args.quick else 525_600)
    where = machine(args.dsn)
    with tempfile.TemporaryDirectory(prefix="import_bench_") as scratch:
        workdir = args.keep_dir or Path(scratch)
        paths = {
            "trades": workdir / "clean" / "XBTUSD.csv",
            "unusual": workdir / "unusual" / "XBTUSD.csv",
            "candles": workdir / "XBTUSD_1.csv",
        }
        for path in paths.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        say(f"import: writing {rows:,} trades and {candle_rows:,} candles to {workdir} …")
        generate(paths["trades"], rows)
        generate(paths["unusual"], rows, unusual_every=50_000)
        generate_candles(paths["candles"], candle_rows)
        sizes = {name: path.stat().st_size / 1e6 for name, path in paths.items()}
        figures = measure(args.dsn, paths["trades"], paths["unusual"], paths["candles"])
    expected = {
        "histdata": rows,
        "rerun": 0,
        "no_candles": rows,
        "unusual": rows,
        "candles": candle_rows,
    }
    wrong = {
        k: figures[f"{k}_inserted"] for k, v in expected.items() if figures[f"{k}_inserted"] != v
    }
    if wrong:
        raise SystemExit(f"import inserted other counts than expected {expected}: {wrong}")
    emit(result(figures, rows, candle_rows, sizes, where), as_json=args.json)


if __name__ == "__main__":
    main()
