"""Import throughput: ``histdata import`` vs plain ``psql \\copy`` of the same files, same run.

Usage (alone, or through ``make bench``, which takes its ``--json`` line into the docs)::

    .venv/bin/python -m bench.import_bench --dsn "host=127.0.0.1 user=postgres dbname=postgres" \\
        [--rows 5000000] [--big-rows 50000000] [--candle-rows 525600] [--quick] [--json] \\
        [--files DIR]

The DSN must be allowed to create databases; throwaway databases are created and dropped.

Four files are generated (and kept in ``--files``, by default a folder under the system's
temporary directory, for the next run). A 3-column Kraken trades file (time,price,volume;
many trades share a second) of ``--rows``; the same file with a few valid rows in an unusual
form (volumes in exponent notation, ``6.6496172E-1``; one row in 50,000); a bigger trades
file of ``--big-rows`` (on TimescaleDB left out unless given); and a 1-minute OHLCVT file
(time,open,high,low,close,volume,trades; one row a minute).

Two trades baselines load a trades file with ``psql \\copy``: into a plain table of the
file's three columns (time as the file's integer seconds) indexed on time, and into a
histdata-shaped table (symbol id, time, price, volume, trade id, seq) with an index on the
same four key columns as ``trades_key``, so both sides pay for one btree of that width. The
OHLCVT baseline loads into a plain 7-column table indexed on time. On a server with
TimescaleDB preloaded the trades baselines are hypertables of 1-day chunks, as histdata's
trades. No baseline validates, deduplicates or numbers anything. histdata's runs are the full
pipeline: sniffing, exact parsing and validation, seq numbering, coverage, ``COPY`` per block
(two blocks at a time); for trades, the 1-minute candles derived from every block and the
rollups to 1w (``--no-candles`` leaves them out, for the cost of derivation); the re-import
goes through the cross-source check, staging and ``INSERT … ON CONFLICT``. Each histdata run
is a fresh process in a fresh database (the re-import reuses the first one), so its peak RSS
(``ru_maxrss``) is its own. The rate of a histdata run's first and last tenth of the file
(by bytes read) shows whether it slows as the table grows.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.connection
import os
import random
import resource
import shlex
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import psycopg
import trio

from bench.common import Result, add_common_arguments, emit, machine, say, scratch_database, today
from histdata.commands.common import without_pandas
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


def cached(path: Path, write: Callable[[Path], None]) -> Path:
    """``path``, written by ``write`` unless a previous run left it complete."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        write(partial)
        partial.rename(path)
    return path


def _create_tables(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute(
        "CREATE TABLE raw_plain (time int8 NOT NULL, price numeric NOT NULL,"
        " volume numeric NOT NULL)"
    )
    conn.execute("CREATE INDEX raw_plain_time ON raw_plain (time)")
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
        for table in ("raw_plain", "raw_trades"):
            conn.execute(
                f"SELECT create_hypertable('{table}', 'time', chunk_time_interval => 86400,"
                " create_default_indexes => false)".encode()
            )


def bench_psql(dsn: str, table: str, path: Path) -> float:
    """Seconds for ``psql \\copy`` of ``path`` into ``table`` (see the module docstring)."""
    columns = {"raw_plain": "", "raw_trades": "(time, price, volume)", "raw_candles": ""}[table]
    started = time.perf_counter()
    subprocess.run(
        ["psql", dsn, "-q", "-c", f"\\copy {table} {columns} FROM '{path}' CSV"], check=True
    )
    return time.perf_counter() - started


Run = tuple[float, int, int, float, float]  # seconds, inserted, RSS, rollup s, flatness


def flatness(progress: list[tuple[float, int]]) -> float:
    """The rate (bytes/s) over the last tenth of the bytes written over that of the first
    tenth; ``progress`` holds (monotonic seconds, bytes read) after each batch written. 1.0
    when there are too few batches to tell."""
    if len(progress) < 4:
        return 1.0
    first, last = progress[0], progress[-1]
    tenth = (last[1] - first[1]) / 10
    head = next(p for p in progress if p[1] >= first[1] + tenth)
    tail = next(p for p in reversed(progress) if p[1] <= last[1] - tenth)
    if head is first or tail is last:
        return 1.0
    head_rate = (head[1] - first[1]) / (head[0] - first[0])
    tail_rate = (last[1] - tail[1]) / (last[0] - tail[0])
    return tail_rate / head_rate


async def bench_histdata(dsn: str, path: Path, candles: bool) -> tuple[float, int, float, float]:
    """Seconds, rows inserted, seconds of those in the final rollups, and the rate flatness
    (:func:`flatness`, before the rollups) of histdata's import of ``path``."""
    progress: list[tuple[float, int]] = []

    def on_progress(_: object, done: int) -> None:
        progress.append((time.monotonic(), done))

    async with open_storage(dsn) as storage:
        started = time.perf_counter()
        summary = await import_paths(storage, [path], candles=candles, on_progress=on_progress)
        seconds = time.perf_counter() - started
        # The first calls come as the first blocks' COPYs start (two run at once), not as
        # they finish; the last is the file's end, after its last candles were derived.
        return seconds, summary.inserted, summary.rollup_s, flatness(progress[2:-1])


def _histdata_child(
    dsn: str, path: Path, candles: bool, out: multiprocessing.connection.Connection
) -> None:
    without_pandas()  # as `histdata import` does
    configure_logging("warning")
    seconds, inserted, rollup_s, flat = trio.run(bench_histdata, dsn, path, candles)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.send((seconds, inserted, rss, rollup_s, flat))


def run_histdata(dsn: str, path: Path, *, candles: bool = True) -> Run:
    """Seconds, rows inserted, peak RSS bytes, rollup seconds and rate flatness of an import
    in a fresh process."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_histdata_child, args=(dsn, path, candles, send))
    child.start()
    send.close()
    result: Run = receive.recv()
    child.join()
    return result


def measure(dsn: str, files: dict[str, Path], repeat: int) -> dict[str, float]:
    """Every run on the files in scratch databases: for each trades file the psql baselines
    first, then histdata. The runs on the small files (baselines included) are made
    ``repeat`` times, in rounds, and each figure is the median of its rounds; the big file
    is run once."""
    rounds = [_measure(dsn, files, big=False) for _ in range(repeat)]
    figures = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    if "big" in files:
        figures.update(_measure(dsn, files, big=True))
    return figures


def _measure(dsn: str, files: dict[str, Path], *, big: bool) -> dict[str, float]:
    """One round of :func:`measure`: the small files' runs, or (``big``) the big file's."""
    pid = os.getpid()
    figures: dict[str, float] = {}

    def baselines(prefix: str, path: Path, *, candles: Path | None = None) -> None:
        with scratch_database(dsn, f"bench_psql_{pid}") as psql_dsn:
            with psycopg.connect(psql_dsn, autocommit=True) as conn:
                _create_tables(conn)
            say(f"import: psql \\copy of {path} into the plain table …")
            figures[f"{prefix}psql_plain_s"] = bench_psql(psql_dsn, "raw_plain", path)
            say(f"import: psql \\copy of {path} into the histdata-shaped table …")
            figures[f"{prefix}psql_s"] = bench_psql(psql_dsn, "raw_trades", path)
            if candles is not None:
                say("import: psql \\copy of the OHLCVT file …")
                figures["psql_candles_s"] = bench_psql(psql_dsn, "raw_candles", candles)

    def record(name: str, run: Run) -> None:
        seconds, inserted, rss, rollup_s, flat = run
        figures.update(
            {
                f"{name}_s": seconds,
                f"{name}_inserted": inserted,
                f"{name}_rss": rss,
                f"{name}_rollup_s": rollup_s,
                f"{name}_flatness": flat,
            }
        )

    if big:
        baselines("big_", files["big"])
        runs = [("big_no_candles", files["big"], False)]
    else:
        baselines("", files["trades"], candles=files["candles"])
        with scratch_database(dsn, f"bench_hd_{pid}") as histdata_dsn:
            migrate(histdata_dsn)
            say("import: histdata import …")
            record("histdata", run_histdata(histdata_dsn, files["trades"]))
            say("import: histdata re-import …")
            record("rerun", run_histdata(histdata_dsn, files["trades"]))
        runs = [
            ("no_candles", files["trades"], False),
            ("unusual", files["unusual"], True),
            ("candles", files["candles"], True),
        ]
    for name, path, derive in runs:
        with scratch_database(dsn, f"bench_hd_{name}_{pid}") as fresh:
            migrate(fresh)
            say(f"import: histdata import ({name}) …")
            record(name, run_histdata(fresh, path, candles=derive))
    return figures


def result(
    figures: dict[str, float],
    repeat: int,
    rows: int,
    big_rows: int,
    candle_rows: int,
    sizes: dict[str, float],
    where: str,
) -> Result:
    """The figures as the bench runner's result."""

    def row(label: str, key: str, n: int, plain: str, shaped: str | None) -> list[str]:
        seconds = figures[f"{key}_s"]
        rate = n / seconds
        rss = figures.get(f"{key}_rss", figures.get(f"{key.removesuffix('_copy')}_rss"))
        memory = f"{rss / 2**20:,.0f} MiB" if rss is not None else "(psql)"
        versus_shaped = f"{figures[shaped] / seconds:.2f}x" if shaped else "—"
        flat = figures.get(f"{key.removesuffix('_copy')}_flatness")
        return [
            label,
            f"{seconds:,.2f}",
            f"{rate:,.0f}",
            f"{figures[plain] / seconds:.2f}x",
            versus_shaped,
            f"{flat:.2f}" if flat is not None else "—",
            memory,
        ]

    def trades_rows(prefix: str, n: int) -> list[list[str]]:
        plain, shaped = f"{prefix}psql_plain_s", f"{prefix}psql_s"
        size = f"{n:,}"
        out = [
            row(
                f"trades {size}: `psql \\copy`, plain 3 columns + btree(time)",
                plain[:-2],
                n,
                plain,
                shaped,
            ),
            row(
                f"trades {size}: `psql \\copy`, histdata-shaped, 4-column index",
                shaped[:-2],
                n,
                plain,
                shaped,
            ),
        ]
        if not prefix:
            out += [
                row(
                    f"trades {size}: `histdata import` (candles 1m…1w derived)",
                    "histdata",
                    n,
                    plain,
                    shaped,
                ),
                row(
                    f"trades {size}: `histdata import --no-candles`", "no_candles", n, plain, shaped
                ),
                row(f"trades {size}: `histdata import` again (adds 0)", "rerun", n, plain, shaped),
                row(
                    f"trades {size} with unusual rows: `histdata import`",
                    "unusual",
                    n,
                    plain,
                    shaped,
                ),
            ]
        else:
            out.append(
                row(
                    f"trades {size}: `histdata import --no-candles`",
                    "big_no_candles",
                    n,
                    plain,
                    shaped,
                )
            )
        return out

    derivation = figures["histdata_s"] / figures["no_candles_s"]
    unusual = figures["histdata_s"] / figures["unusual_s"]
    candles = figures["psql_candles_s"] / figures["candles_s"]
    # Kraken's candles need no derivation: the import proper is the part before the rollups.
    figures["candles_copy_s"] = figures["candles_s"] - figures["candles_rollup_s"]
    candles_copy = figures["psql_candles_s"] / figures["candles_copy_s"]
    table = trades_rows("", rows)
    if big_rows:
        table += trades_rows("big_", big_rows)
    table += [
        row(
            "OHLCVT 1m: `psql \\copy` into a 7-column table indexed on time",
            "psql_candles",
            candle_rows,
            "psql_candles_s",
            None,
        ),
        row(
            "OHLCVT 1m: `histdata import`, before its rollups to 1w",
            "candles_copy",
            candle_rows,
            "psql_candles_s",
            None,
        ),
        row(
            "OHLCVT 1m: `histdata import`, rollups included",
            "candles",
            candle_rows,
            "psql_candles_s",
            None,
        ),
    ]
    summary = {
        f"import rows/s ({rows:,} rows, candles derived)": f"{rows / figures['histdata_s']:,.0f}",
        "import --no-candles vs psql \\copy, plain 3 columns (rate)": (
            f"{figures['psql_plain_s'] / figures['no_candles_s']:.2f}x"
        ),
        "import --no-candles vs psql \\copy, histdata-shaped (rate)": (
            f"{figures['psql_s'] / figures['no_candles_s']:.2f}x"
        ),
        "import with derivation vs without (time)": f"{derivation:.2f}x",
        "unusual rows vs clean file (rate)": f"{unusual:.2f}x",
        "OHLCVT import vs psql \\copy (rate, before rollups)": f"{candles_copy:.2f}x",
        "OHLCVT import vs psql \\copy (rate, rollups included)": f"{candles:.2f}x",
        "import peak RSS": f"{figures['histdata_rss'] / 2**20:,.0f} MiB",
    }
    notes = [
        f"Trades file: {rows:,} rows of Kraken's 3-column form (`time,price,volume`, about "
        f"2.5 trades per second), {sizes['trades']:,.1f} MB. The unusual file is the same "
        "with one volume in 50,000 in exponent notation. OHLCVT file: "
        f"{candle_rows:,} 1-minute candles, {sizes['candles']:,.1f} MB. Each histdata run "
        "is compared with `psql \\copy` of the same file in the same run, one after the other; "
        f"the small files' runs, baselines included, were made in {repeat} rounds and each "
        "figure is the median of its rounds (the big file: one round).",
        "The two ratio columns are the run's rate over that of `psql \\copy` into the plain "
        "3-column table (the OHLCVT rows: the 7-column one) and into the histdata-shaped one. "
        "Flatness is the rate of the last tenth of the file over that of the first (1.00: no "
        "slower as the table grows).",
        f"Deriving the candles (1m from the trades, then the rollups to 1w) costs "
        f"{derivation:.2f}x the import without them.",
        "Peak RSS is `ru_maxrss` of the histdata process (each run is a fresh one).",
    ]
    if big_rows:
        big = figures["big_psql_plain_s"] / figures["big_no_candles_s"]
        summary[f"import --no-candles vs psql \\copy, plain, {big_rows:,} rows (rate)"] = (
            f"{big:.2f}x"
        )
        summary[f"import rate, last tenth vs first, {big_rows:,} rows"] = (
            f"{figures['big_no_candles_flatness']:.2f}"
        )
        notes.insert(1, f"Big trades file: {big_rows:,} rows, {sizes['big']:,.1f} MB.")
    command = [
        *(".venv/bin/python", "-m", "bench.import_bench"),
        *("--rows", str(rows), "--big-rows", str(big_rows), "--candle-rows", str(candle_rows)),
        *("--repeat", str(repeat)),
    ]
    return Result(
        name="import",
        title="Import",
        command=shlex.join(command),
        columns=[
            "run",
            "seconds",
            "rows/s",
            "vs psql, plain",
            "vs psql, histdata-shaped",
            "flatness",
            "histdata peak RSS",
        ],
        rows=table,
        notes=notes,
        summary=summary,
        machine=where,
        date=today(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--rows", type=int, help="trades (5,000,000; --quick 100,000)")
    parser.add_argument(
        "--big-rows",
        type=int,
        help="trades of the big file (50,000,000 on plain PostgreSQL; 0, none, with --quick"
        " and on TimescaleDB, where the whole run would not fit in one bench session)",
    )
    parser.add_argument(
        "--candle-rows", type=int, help="1-minute candles (525,600, a year; --quick 50,000)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help="rounds of the small files' runs, medians taken (3; --quick 1); the big file once",
    )
    parser.add_argument(
        "--files",
        type=Path,
        default=Path(tempfile.gettempdir()) / "histdata-import-bench",
        help="where the generated files are kept for the next run",
    )
    args = parser.parse_args()
    if not args.dsn:
        parser.error("--dsn (or HISTDATA_TEST_DSN) is required")
    rows = args.rows or (100_000 if args.quick else 5_000_000)
    with psycopg.connect(args.dsn) as conn:
        on_timescale = timescale_available(conn)
    big_rows = args.big_rows
    if big_rows is None:
        big_rows = 0 if args.quick or on_timescale else 50_000_000
    candle_rows = args.candle_rows or (50_000 if args.quick else 525_600)
    where = machine(args.dsn)
    folder: Path = args.files
    say(f"import: the files ({rows:,} and {big_rows:,} trades, {candle_rows:,} candles) …")
    files = {
        "trades": cached(folder / f"clean-{rows}" / "XBTUSD.csv", lambda p: generate(p, rows)),
        "unusual": cached(
            folder / f"unusual-{rows}" / "XBTUSD.csv",
            lambda p: generate(p, rows, unusual_every=50_000),
        ),
        "candles": cached(
            folder / f"candles-{candle_rows}" / "XBTUSD_1.csv",
            lambda p: generate_candles(p, candle_rows),
        ),
    }
    if big_rows:
        files["big"] = cached(
            folder / f"clean-{big_rows}" / "XBTUSD.csv", lambda p: generate(p, big_rows)
        )
    sizes = {name: path.stat().st_size / 1e6 for name, path in files.items()}
    repeat = args.repeat or (1 if args.quick else 3)
    figures = measure(args.dsn, files, repeat)
    expected = {
        "histdata": rows,
        "rerun": 0,
        "no_candles": rows,
        "unusual": rows,
        "candles": candle_rows,
        **({"big_no_candles": big_rows} if big_rows else {}),
    }
    wrong = {
        k: figures[f"{k}_inserted"] for k, v in expected.items() if figures[f"{k}_inserted"] != v
    }
    if wrong:
        raise SystemExit(f"import inserted other counts than expected {expected}: {wrong}")
    emit(result(figures, repeat, rows, big_rows, candle_rows, sizes, where), as_json=args.json)


if __name__ == "__main__":
    main()
