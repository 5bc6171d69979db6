"""Read benchmark: one year of 1-minute candles for one symbol, socket API vs direct SQL.

Usage::

    .venv/bin/python bench/read_bench.py --dsn "host=127.0.0.1 user=postgres dbname=postgres"

Creates a scratch database ``histdata_bench_read`` (dropped afterwards), writes 525,600
1-minute candles, runs the rollup, and then measures, side by side in one run (best of
``--repeat``):

- **sql**: the exact statement the read path runs (one window over the whole year), executed
  with psycopg and fetched in full — the floor any API over PostgreSQL sits on;
- **api**: ``GET /v1/candles`` for the same range as JSON and Arrow, whole body received.
  Through the Unix socket when ``histdata.httpserver`` is available; otherwise the body is
  produced in-process by the same handler (the table says which).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import httpx
import psycopg
import psycopg.conninfo
import trio

from histdata.actors.hub import LiveHub
from histdata.actors.query import QueryApp
from histdata.model import Candle, CandleSource
from histdata.storage import Storage, open_storage
from histdata.storage.reads import _query, base_interval
from histdata.storage.rollups import BUCKET_ORIGIN, rollup_pass
from histdata.symbols import SymbolRegistry

START = datetime(2023, 1, 1, tzinfo=UTC)
END = datetime(2024, 1, 1, tzinfo=UTC)
DB = "histdata_bench_read"


def year_of_candles() -> list[Candle]:
    rng = random.Random(1)
    price = Decimal("20000.0")
    out = []
    for minute in range(int((END - START).total_seconds() // 60)):
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


def sql_read(dsn: str, sid: int, minutes: int) -> int:
    b = base_interval(minutes)
    params = {
        "sid": sid,
        "s": START,
        "e": END,
        "b": timedelta(minutes=b),
        "b_min": b,
        "n": timedelta(minutes=minutes),
        "origin": BUCKET_ORIGIN,
    }
    with psycopg.connect(dsn) as conn:
        conn.execute("SET jit = off")  # as the read path does (storage/reads.py)
        return len(conn.execute(_query(minutes, b), params).fetchall())


async def best(repeat: int, fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        result = await fn()
        times.append(time.perf_counter() - began)
    return min(times), result


async def run(dsn: str, repeat: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)'.encode())
        conn.execute(f'CREATE DATABASE "{DB}"'.encode())
    bench_dsn = psycopg.conninfo.make_conninfo(dsn, dbname=DB)
    try:
        async with open_storage(bench_dsn, pool_max=4) as storage:
            await bench(storage, bench_dsn, repeat)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)'.encode())


async def bench(storage: Storage, dsn: str, repeat: int) -> None:
    candles = year_of_candles()
    began = time.perf_counter()
    for i in range(0, len(candles), 50_000):
        await storage.write_candles(candles[i : i + 50_000])
    print(f"wrote {len(candles):,} candles in {time.perf_counter() - began:.1f} s")
    began = time.perf_counter()
    while (await rollup_pass(storage, limit=1000)).claimed:
        pass
    print(f"rollup of the year in {time.perf_counter() - began:.1f} s")
    sid = await storage.run(lambda conn: conn.execute("SELECT id FROM symbols").fetchone()[0])
    await storage.run(lambda conn: conn.execute("ANALYZE"))

    app = QueryApp(
        storage,
        SymbolRegistry.shipped(),
        hub=LiveHub(),
        status=lambda: {"healthy": True},
        metrics=lambda: b"",
    )
    via = "in-process handler (histdata.httpserver not available)"
    socket_get: Callable[[str, str], Awaitable[int]] | None = None
    async with trio.open_nursery() as nursery:
        try:
            from histdata.actors.query import run_query_server  # type: ignore[attr-defined]
        except ImportError:
            run_query_server = None
        if run_query_server is not None:
            path = os.path.join(tempfile.mkdtemp(), "bench.sock")
            await nursery.start(
                lambda task_status: run_query_server(
                    storage,
                    SymbolRegistry.shipped(),
                    socket_path=path,
                    stream_queue=100,
                    hub=LiveHub(),
                    status=lambda: {"healthy": True},
                    metrics=lambda: b"",
                    task_status=task_status,
                )
            )
            via = "Unix socket, httpx client"

            async def socket_get(interval: str, fmt: str) -> int:
                def fetch() -> int:
                    with httpx.Client(transport=httpx.HTTPTransport(uds=path)) as http:
                        r = http.get(
                            "http://histdata/v1/candles",
                            params={
                                "symbol": "BTC/USD",
                                "interval": interval,
                                "start": "2023-01-01",
                                "end": "2024-01-01",
                                "format": fmt,
                            },
                        )
                        return len(r.content)

                return await trio.to_thread.run_sync(fetch)

        async def in_process(interval: str, fmt: str) -> int:
            reply = await app.handle(
                "GET",
                "/v1/candles",
                {
                    "symbol": ["BTC/USD"],
                    "interval": [interval],
                    "start": ["2023-01-01"],
                    "end": ["2024-01-01"],
                    "format": [fmt],
                },
            )
            assert reply.status == 200, reply
            if isinstance(reply.body, bytes):
                return len(reply.body)
            return sum([len(part) async for part in reply.body])

        get = socket_get or in_process
        print(f"\nAPI path: {via}; best of {repeat}\n")
        print("| read | rows | direct SQL | API JSON | API Arrow | JSON bytes | Arrow bytes |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, minutes in (("1h", 60), ("1m", 1)):
            t_sql, rows = await best(
                repeat, partial(trio.to_thread.run_sync, sql_read, dsn, sid, minutes)
            )
            t_json, n_json = await best(repeat, partial(get, label, "json"))
            t_arrow, n_arrow = await best(repeat, partial(get, label, "arrow"))
            print(
                f"| 1 year as {label} | {rows:,} | {t_sql * 1000:,.0f} ms | {t_json * 1000:,.0f} ms"
                f" | {t_arrow * 1000:,.0f} ms | {n_json:,} | {n_arrow:,} |"
            )
        nursery.cancel_scope.cancel()
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs"
    print(f"\nmachine: {machine}, Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("HISTDATA_TEST_DSN", ""))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    trio.run(run, args.dsn, args.repeat)


if __name__ == "__main__":
    main()
