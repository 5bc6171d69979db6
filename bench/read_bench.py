"""Read benchmark: a year of 1-minute candles and a million trades, socket API vs direct SQL.

Usage::

    .venv/bin/python -m bench.read_bench [--dsn DSN] [--repeat 3] [--days 365]
        [--trades 1000000] [--json] [--quick]

Creates a scratch database ``histdata_bench_read`` (dropped afterwards), writes 525,600
1-minute candles (``--quick``: 30 days) of one symbol and runs the rollup, imports 1,000,000
of its trades (``--quick``: 100,000) from a generated Kraken CSV, and then measures, side by
side in one run (best of ``--repeat``):

- **sql**: the exact statement the read path runs (for candles one window over the whole
  range; for trades the page statement without its limit), executed with psycopg on an open
  connection and fetched in full — the floor any API over PostgreSQL sits on;
- **api**: ``GET /v1/candles`` (as 1h and as 1m) and ``GET /v1/trades`` for the same range
  as JSON and Arrow, whole body received by an httpx client over the Unix socket, served by
  :class:`QueryApp` behind :func:`histdata.httpserver.serve_http` as the service wires it.
  The client runs in a thread of the same process, so it shares the server's GIL (as a
  client on a 2-core box would share its cores).
"""

from __future__ import annotations

import argparse
import random
import shlex
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio

from bench.common import Result, add_common_arguments, emit, machine, say, scratch_database, today
from bench.import_bench import generate
from histdata.actors.hub import LiveHub
from histdata.actors.query import QueryApp
from histdata.client import socket_transport
from histdata.httpserver import Request, Response, open_unix_listener, serve_http
from histdata.importer import import_paths
from histdata.model import Candle, CandleSource
from histdata.storage import Storage, open_storage
from histdata.storage.candles import write_candles
from histdata.storage.reads import _TRADE_PAGE, _query, base_interval
from histdata.storage.rollups import BUCKET_ORIGIN, rollup_pass
from histdata.storage.trades import KEY_ORDER_SCAN, TRADE_ORDER
from histdata.symbols import SymbolRegistry

START = datetime(2023, 1, 1, tzinfo=UTC)
DB = "histdata_bench_read"
# bench.import_bench.generate starts its trades at this second, about 2.5 a second after it.
TRADES_START = datetime.fromtimestamp(1_600_000_000, UTC)
TRADES_END = TRADES_START + timedelta(days=365)


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


def sql_read(conn: psycopg.Connection[Any], sid: int, minutes: int, end: datetime) -> int:
    """Rows of the read path's statement for ``[START, end)`` at ``minutes``, fetched in full
    on an open connection (the API's come from a pool, so neither side pays a connect)."""
    b = base_interval(minutes)
    params = {
        "sid": sid,
        "s": START,
        "e": end,
        "b": timedelta(minutes=b),
        "b_min": b,
        "n": timedelta(minutes=minutes),
        "origin": BUCKET_ORIGIN,
    }
    with conn.transaction():
        conn.execute("SET LOCAL jit = off")  # as the read path does (storage/reads.py)
        # Rollups are materialised here, so the read path finds no dirty range: its statement.
        return len(conn.execute(_query(minutes, b, False), params).fetchall())


async def best(repeat: int, fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    """The shortest of ``repeat`` runs of ``fn`` in seconds, and its result."""
    times, result = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        result = await fn()
        times.append(time.perf_counter() - began)
    return min(times), result


def fetch(socket: Path, path: str, params: dict[str, str]) -> int:
    """Bytes of the whole body of ``GET path`` over the Unix socket (blocking: a thread)."""
    with httpx.Client(transport=socket_transport(str(socket)), timeout=120.0) as http:
        reply = http.get(f"http://histdata{path}", params=params)
        reply.raise_for_status()
        return len(reply.content)


def sql_trades(conn: psycopg.Connection[Any], sid: int) -> int:
    """Rows of the trades read statement over all of ``[TRADES_START, TRADES_END)`` at once,
    fetched in full (the API pages the same statement by 50,000 rows)."""
    params = {"sid": sid, "s": TRADES_START, "e": TRADES_END, "n": None}
    with conn.transaction():
        conn.execute(KEY_ORDER_SCAN)
        return len(conn.execute((_TRADE_PAGE + TRADE_ORDER).encode(), params).fetchall())


async def write_trades(storage: Storage, count: int) -> None:
    """Import ``count`` generated trades (Kraken's 3-column CSV, as the import bench does)."""
    with tempfile.TemporaryDirectory(prefix="read_bench_") as scratch:
        path = Path(scratch) / "XBTUSD.csv"
        await trio.to_thread.run_sync(generate, path, count)
        summary = await import_paths(storage, [path])
    if summary.inserted != count:
        raise SystemExit(f"imported {summary.inserted:,} of {count:,} trades")


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
    await storage.run(lambda conn: conn.execute("ANALYZE"))
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
    rows = []
    conn = await trio.to_thread.run_sync(partial(psycopg.connect, dsn))
    window = {"symbol": "BTC/USD", "start": START.isoformat(), "end": end.isoformat()}
    trade_window = {
        "symbol": "BTC/USD",
        "start": TRADES_START.isoformat(),
        "end": TRADES_END.isoformat(),
    }
    reads: list[tuple[str, str, dict[str, str], Callable[[], int]]] = [
        (
            f"{period} as {label}",
            "/v1/candles",
            window | {"interval": label},
            partial(sql_read, conn, sid, minutes, end),
        )
        for label, minutes in (("1h", 60), ("1m", 1))
    ]
    reads.append((f"{trades:,} trades", "/v1/trades", trade_window, partial(sql_trades, conn, sid)))
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_http, handle, [listener])
        for label, path, params, direct in reads:
            t_sql, n = await best(repeat, partial(trio.to_thread.run_sync, direct))
            via_json = partial(fetch, socket, path, params | {"format": "json"})
            via_arrow = partial(fetch, socket, path, params | {"format": "arrow"})
            t_json, n_json = await best(repeat, partial(trio.to_thread.run_sync, via_json))
            t_arrow, n_arrow = await best(repeat, partial(trio.to_thread.run_sync, via_arrow))
            rows.append(
                [
                    label,
                    f"{n:,}",
                    f"{t_sql * 1000:,.0f} ms",
                    f"{t_json * 1000:,.0f} ms",
                    f"{t_arrow * 1000:,.0f} ms",
                    f"{n_json:,}",
                    f"{n_arrow:,}",
                ]
            )
            say(f"reads: {rows[-1]}")
        nursery.cancel_scope.cancel()
    conn.close()
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
    parser.add_argument("--repeat", type=int, help="runs per read, best kept (default 3)")
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
        columns=[
            "read",
            "rows",
            "direct SQL",
            "API JSON",
            "API Arrow",
            "JSON bytes",
            "Arrow bytes",
        ],
        rows=rows,
        notes=[
            f"One symbol, one candle a minute for {days} days, rollups materialised, and"
            f" {trades:,} of its trades imported from a generated Kraken CSV (about 2.5 a"
            f" second, many sharing one); best of {repeat}. API: the Unix socket and an httpx"
            " client (in a thread of the same process), whole body received.",
        ],
        summary={
            f"read {row[0]} (SQL / JSON / Arrow)": f"{row[2]} / {row[3]} / {row[4]}" for row in rows
        },
        machine=where,
        date=today(),
    )
    emit(result, as_json=args.json)


if __name__ == "__main__":
    main()
