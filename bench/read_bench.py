"""Read benchmark: a year of 1-minute candles and a million trades, the socket API and the
client against PostgreSQL's own ``COPY`` of the same rows, side by side in one run.

Usage::

    .venv/bin/python -m bench.read_bench [--dsn DSN] [--repeat 3] [--days 365]
        [--trades 1000000] [--json] [--quick]

Creates a scratch database ``histdata_bench_read`` (dropped afterwards), writes 525,600
1-minute candles (``--quick``: 30 days) of one symbol and runs the rollup, imports 1,000,000
of its trades (``--quick``: 100,000) from a generated Kraken CSV, serves it with
:class:`QueryApp` behind :func:`histdata.httpserver.serve_http` on a Unix socket as the
service wires it, and then times, each run of a read followed by a run of its floor (A B A
B …), ``--repeat`` pairs, medians:

- **floor**: ``psql -c "COPY (SELECT …) TO STDOUT (FORMAT csv)"`` of the very statement the
  read path runs, over the whole range at once, output thrown away: what PostgreSQL itself
  takes to produce and ship the rows, with a C client;
- **API**: ``curl --unix-socket`` receiving the whole body of ``GET /v1/candles`` or
  ``/v1/trades`` (CSV, Arrow exact, Arrow float), in its own process;
- **client**: ``Client.candles(..., frame="pandas")`` (float and exact) in a Python process of
  its own, the call alone timed (the process's imports not included);
- **command**: ``histdata candles SYMBOL -i 1m`` for one day through the socket, the whole
  process's wall time (start-up included), against a floor of ``psql`` copying the same day.

The ratio is the median of each pair's read / floor.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
import trio

from bench.common import Result, add_common_arguments, emit, machine, say, scratch_database, today
from bench.import_bench import generate
from histdata.actors.hub import LiveHub
from histdata.actors.query import QueryApp
from histdata.httpserver import Request, Response, open_unix_listener, serve_http
from histdata.importer import import_paths
from histdata.model import Candle, CandleSource
from histdata.storage import Storage, open_storage
from histdata.storage.candles import write_candles
from histdata.storage.reads import base_interval, candle_query, trade_query
from histdata.storage.rollups import BUCKET_ORIGIN, rollup_pass
from histdata.storage.trades import KEY_ORDER_SCAN
from histdata.symbols import SymbolRegistry

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2023, 1, 1, tzinfo=UTC)
DB = "histdata_bench_read"
# bench.import_bench.generate starts its trades at this second, about 2.5 a second after it.
TRADES_START = datetime.fromtimestamp(1_600_000_000, UTC)
TRADES_END = TRADES_START + timedelta(days=365)
# The client's call, timed inside its own process (argv: socket, path, frame, decimals, query).
_CLIENT = """
import sys, time, urllib.parse
import pandas
from histdata.client import Client
socket, kind, frame, decimals, query = sys.argv[1:]
q = dict(urllib.parse.parse_qsl(query))
with Client(socket, timeout_s=None) as hd:
    began = time.perf_counter()
    if kind == "candles":
        got = hd.candles(q["symbol"], q["interval"], q["start"], q["end"], frame=frame,
                         decimals=decimals)
    else:
        got = hd.trades(q["symbol"], q["start"], q["end"], frame=frame, decimals=decimals)
    print(time.perf_counter() - began, len(got))
"""


def candles_for(days: int) -> list[Candle]:
    """One candle a minute for ``days`` days from :data:`START`, a seeded random walk."""
    rng = random.Random(1)
    price = Decimal("20000.0")
    out = []
    for minute in range(days * 24 * 60):
        step = Decimal(rng.randint(-50, 50)) / 10
        o, c = price, price + step
        out.append(
            Candle(
                symbol="BTC/USD",
                time=START + timedelta(minutes=minute),
                open=o,
                high=max(o, c) + Decimal("1.5"),
                low=min(o, c) - Decimal("1.5"),
                close=c,
                volume=Decimal(rng.randint(1, 10**8)) / 10**8,
                vwap=(o + c) / 2,
                trades=rng.randint(1, 40),
                source=CandleSource.CSV,
            )
        )
        price = c
    return out


async def write_trades(storage: Storage, count: int) -> None:
    """Import ``count`` generated trades (Kraken's 3-column CSV, as the import bench does)."""
    with tempfile.TemporaryDirectory(prefix="read_bench_") as scratch:
        path = Path(scratch) / "XBTUSD.csv"
        await trio.to_thread.run_sync(generate, path, count)
        summary = await import_paths(storage, [path])
    if summary.inserted != count:
        raise SystemExit(f"imported {summary.inserted:,} of {count:,} trades")


def vacuum(dsn: str) -> None:
    """VACUUM ANALYZE the scratch database (VACUUM cannot run in a transaction block)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def copy_statement(dsn: str, query: str, params: dict[str, Any]) -> str:
    """``COPY (query) TO STDOUT (FORMAT csv)`` with ``params`` bound, for psql."""
    with psycopg.connect(dsn) as conn:
        bound = psycopg.ClientCursor(conn).mogrify(query, params)
    return f"COPY ({bound}) TO STDOUT (FORMAT csv)"


def candle_copy(dsn: str, sid: int, minutes: int, start: datetime, end: datetime) -> list[str]:
    """psql's arguments for the floor of a candle read: the read path's statement over the
    whole range (rollups are materialised here, so it finds no dirty range)."""
    b = base_interval(minutes)
    params = {
        "sid": sid,
        "s": start,
        "e": end,
        "b": timedelta(minutes=b),
        "b_min": b,
        "n": timedelta(minutes=minutes),
        "origin": BUCKET_ORIGIN,
    }
    copy = copy_statement(dsn, candle_query(minutes, b, False), params)
    return ["psql", "-X", "-q", dsn, "-c", "SET jit = off", "-c", copy]


def trade_copy(dsn: str, sid: int) -> list[str]:
    """psql's arguments for the floor of the trade read: all of its pages in one statement."""
    params = {"sid": sid, "s": TRADES_START, "e": TRADES_END}
    copy = copy_statement(dsn, trade_query(False), params)
    # KEY_ORDER_SCAN is SET LOCAL, for a transaction; psql runs each -c on its own.
    scan = KEY_ORDER_SCAN.replace(" LOCAL", "")
    return ["psql", "-X", "-q", dsn, "-c", scan, "-c", copy]


async def timed(command: Sequence[str]) -> tuple[float, bytes]:
    """Wall seconds of ``command`` (its stdout kept, stderr passed through)."""
    began = time.perf_counter()
    done = await trio.run_process(list(command), capture_stdout=True, cwd=ROOT)
    return time.perf_counter() - began, done.stdout


async def client_call(command: Sequence[str]) -> tuple[float, bytes]:
    """The client's own timing of its call (see ``_CLIENT``)."""
    _, out = await timed(command)
    return float(out.split()[0]), out


async def side_by_side(
    repeat: int, read: Sequence[str], floor: Sequence[str], *, client: bool = False
) -> tuple[float, float, float, bytes]:
    """Median seconds of ``read`` and of ``floor``, run in turn, the median of their pairwise
    ratios, and ``read``'s last output."""
    reads, floors, ratios, out = [], [], [], b""
    for _ in range(repeat):
        t_read, out = await (client_call(read) if client else timed(read))
        t_floor, _ = await timed(floor)
        reads.append(t_read)
        floors.append(t_floor)
        ratios.append(t_read / t_floor)
    return statistics.median(reads), statistics.median(floors), statistics.median(ratios), out


def curl(socket: Path, path: str, params: dict[str, str]) -> list[str]:
    """curl receiving the whole body over the Unix socket, printing its size."""
    url = f"http://histdata{path}?{urlencode(params)}"
    return ["curl", "-sS", "--fail", "--unix-socket", str(socket), "-o", "/dev/null",
            "-w", "%{size_download}", url]  # fmt: skip


def client(socket: Path, kind: str, frame: str, decimals: str, params: dict[str, str]) -> list[str]:
    """The client's call in a Python process of its own."""
    return [sys.executable, "-c", _CLIENT, str(socket), kind, frame, decimals, urlencode(params)]


async def bench(storage: Storage, dsn: str, repeat: int, days: int, trades: int) -> list[list[str]]:
    """Write and roll up the candles, import the trades, then time each read; the rows."""
    end = START + timedelta(days=days)
    candles = candles_for(days)
    began = time.perf_counter()
    for i in range(0, len(candles), 50_000):
        await write_candles(storage, candles[i : i + 50_000])
    say(f"reads: wrote {len(candles):,} candles in {time.perf_counter() - began:.1f} s")
    began = time.perf_counter()
    while (await rollup_pass(storage, limit=1000)).claimed:
        pass
    say(f"reads: rollup in {time.perf_counter() - began:.1f} s")
    began = time.perf_counter()
    await write_trades(storage, trades)
    say(f"reads: imported {trades:,} trades in {time.perf_counter() - began:.1f} s")
    sid = await storage.run(lambda conn: conn.execute("SELECT id FROM symbols").fetchone()[0])
    # As a table looks once autovacuum has been by: statistics, and the visibility map an
    # index-only scan (a full trade page's last key) needs to skip the heap.
    await trio.to_thread.run_sync(vacuum, dsn)
    app = QueryApp(
        storage,
        SymbolRegistry.shipped(),
        hub=LiveHub(),
        status=lambda: {"healthy": True},
        metrics=lambda: b"",
    )

    async def handle(request: Request) -> Response:  # as Service._run_query wires it
        reply = await app.handle(request.method, request.path, request.query)
        return Response(reply.status, (("content-type", reply.content_type),), reply.body)

    socket = Path(tempfile.mkdtemp(prefix="read_bench_")) / "bench.sock"
    listener = await open_unix_listener(socket)
    period = "1 year" if days == 365 else f"{days} days"
    window = {"symbol": "BTC/USD", "start": START.isoformat(), "end": end.isoformat()}
    trade_window = {
        "symbol": "BTC/USD",
        "start": TRADES_START.isoformat(),
        "end": TRADES_END.isoformat(),
    }
    day = START + timedelta(days=days // 2)
    day_window = window | {"start": day.isoformat(), "end": (day + timedelta(days=1)).isoformat()}
    floors = {
        "1h": await trio.to_thread.run_sync(candle_copy, dsn, sid, 60, START, end),
        "1m": await trio.to_thread.run_sync(candle_copy, dsn, sid, 1, START, end),
        "day": await trio.to_thread.run_sync(
            candle_copy, dsn, sid, 1, day, day + timedelta(days=1)
        ),
        "trades": await trio.to_thread.run_sync(trade_copy, dsn, sid),
    }
    csv, arrow = {"format": "csv"}, {"format": "arrow"}
    f64 = {"format": "arrow", "decimals": "float"}
    command = [
        *(sys.executable, "-m", "histdata.cli", "candles", "BTC/USD", "-i", "1m"),
        *("--start", day_window["start"], "--end", day_window["end"], "--socket", str(socket)),
    ]
    hours, minutes = window | {"interval": "1h"}, window | {"interval": "1m"}
    tw = trade_window
    n_1m, n_1h = len(candles), days * 24

    def api(path: str, params: dict[str, str]) -> list[str]:
        return curl(socket, path, params)

    def pandas(decimals: str) -> list[str]:
        return client(socket, "candles", "pandas", decimals, minutes)

    # (label, rows, read command, its floor, timed by the client itself)
    fl = floors
    plan: list[tuple[str, int, list[str], list[str], bool]] = [
        (f"{period} as 1h, CSV", n_1h, api("/v1/candles", hours | csv), fl["1h"], False),
        (f"{period} as 1h, Arrow", n_1h, api("/v1/candles", hours | arrow), fl["1h"], False),
        (f"{period} as 1m, CSV", n_1m, api("/v1/candles", minutes | csv), fl["1m"], False),
        (f"{period} as 1m, Arrow", n_1m, api("/v1/candles", minutes | arrow), fl["1m"], False),
        (f"{period} as 1m, Arrow float", n_1m, api("/v1/candles", minutes | f64), fl["1m"], False),
        (f"{period} as 1m, pandas float", n_1m, pandas("float"), fl["1m"], True),
        (f"{period} as 1m, pandas exact", n_1m, pandas("exact"), fl["1m"], True),
        (f"{trades:,} trades, CSV", trades, api("/v1/trades", tw | csv), fl["trades"], False),
        (f"{trades:,} trades, Arrow", trades, api("/v1/trades", tw | arrow), fl["trades"], False),
        ("`histdata candles`, 1 day of 1m", 1440, command, fl["day"], False),
    ]  # fmt: skip
    rows = []
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_http, handle, [listener])
        for label, count, read, floor, by_client in plan:
            load = os.getloadavg()[0]
            t_read, t_floor, ratio, out = await side_by_side(repeat, read, floor, client=by_client)
            size = out.split()[-1].decode() if out and not by_client else ""
            rows.append(
                [
                    label,
                    f"{count:,}",
                    f"{t_floor * 1000:,.0f} ms",
                    f"{t_read * 1000:,.0f} ms",
                    f"{ratio:.2f}×",
                    f"{int(size):,}" if size.isdigit() else "",
                    f"{load:.1f}",
                ]
            )
            say(f"reads: {rows[-1]}")
        nursery.cancel_scope.cancel()
    await listener.aclose()
    socket.unlink(missing_ok=True)
    return rows


async def run(dsn: str, repeat: int, days: int, trades: int) -> list[list[str]]:
    """The whole bench in a scratch database."""
    with scratch_database(dsn, DB) as bench_dsn:
        async with open_storage(bench_dsn, pool_max=4) as storage:
            return await bench(storage, bench_dsn, repeat, days, trades)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--repeat", type=int, help="pairs of runs per read, medians (default 3)")
    parser.add_argument("--days", type=int, help="days of 1-minute candles (default 365)")
    parser.add_argument("--trades", type=int, help="trades to read back (default 1,000,000)")
    args = parser.parse_args()
    if not args.dsn:
        parser.error("--dsn (or HISTDATA_TEST_DSN) is required")
    repeat = args.repeat or (1 if args.quick else 3)
    days = args.days or (30 if args.quick else 365)
    trades = args.trades or (100_000 if args.quick else 1_000_000)
    where = machine(args.dsn)
    rows = trio.run(run, args.dsn, repeat, days, trades)
    command = shlex.join(
        [
            *(".venv/bin/python", "-m", "bench.read_bench", "--repeat", str(repeat)),
            *("--days", str(days), "--trades", str(trades)),
        ]
    )
    result = Result(
        name="reads",
        title="Reads",
        command=command,
        columns=["read", "rows", "floor: psql COPY", "read", "read / floor", "bytes", "load"],
        rows=rows,
        notes=[
            f"One symbol, one candle a minute for {days} days, rollups materialised, and"
            f" {trades:,} of its trades imported from a generated Kraken CSV (about 2.5 a"
            " second, many sharing one). Each read and its floor ran in turn,"
            f" {repeat} pairs, medians; the ratio is the median of the pairs' ratios; load:"
            " the 1-minute load average when the row started.",
            "Floor: psql running `COPY (the read path's SELECT) TO STDOUT (FORMAT csv)` over"
            " the whole range in one statement. API: curl over the Unix socket, whole body"
            " received; the service reads windows of 20,000 buckets (pages of about 50,000"
            " trades, cut by time), each one statement returning the window's CSV text, the"
            " next fetched while the"
            " current one is encoded and sent. Client:"
            ' `Client.candles(frame="pandas")` in its own process, the call alone timed.'
            " Command: the whole `histdata candles` process, start-up included.",
        ],
        summary={row[0]: f"{row[3]} ({row[4]} COPY)" for row in rows},
        machine=where,
        date=today(),
    )
    emit(result, as_json=args.json)


if __name__ == "__main__":
    main()
