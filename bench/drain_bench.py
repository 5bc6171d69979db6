"""Recovery after a database outage under sustained load: how fast the journal drains.

Usage::

    .venv/bin/python -m bench.drain_bench [--dsn DSN] [--rate 3000] [--outage-s 30]
        [--symbols BTC/USD,ETH/USD] [--json]

``histdata run`` records the simulator at ``--rate`` trades/s (spread over the symbols, gap
filling off) into a scratch database; after a warm-up the database refuses connections for
``--outage-s`` (``ALLOW_CONNECTIONS false`` and its sessions terminated), so the live path
journals everything; then it accepts them again and trading goes on at the same rate. The
figures: trades journaled during the outage, the seconds until the journal is empty again,
the drain rate (journaled trades over that time, on top of the live trades still arriving),
and at the end, with trading paused, whether every emitted id was stored once.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.common import (
    Result,
    SimProcess,
    add_common_arguments,
    emit,
    machine,
    say,
    scratch_database,
    today,
)
from bench.drill_common import set_connections
from histdata.client import socket_transport
from histdata.storage.migrations import migrate

DB = "histdata_drain_bench"
ROOT = Path(__file__).resolve().parent.parent


def _status(socket: Path) -> dict[str, Any]:
    with httpx.Client(transport=socket_transport(str(socket)), timeout=5.0) as client:
        body: dict[str, Any] = client.get("http://localhost/healthz").json()
        return body


def _journal_trades(socket: Path) -> int:
    flusher = _status(socket)["flusher"]
    return int(flusher["trades_journaled"]) - int(flusher["trades_replayed"])


def _stored(dsn: str, truth: dict[str, int]) -> tuple[int, int]:
    """(lost, duplicated) against ids 1..N per symbol."""
    lost = dup = 0
    with psycopg.connect(dsn) as conn:
        for symbol, last in truth.items():
            row = conn.execute(
                "SELECT count(*), count(DISTINCT trade_id) FROM trades t JOIN symbols s"
                " ON s.id = t.symbol_id WHERE s.symbol = %s AND trade_id BETWEEN 1 AND %s",
                (symbol, last),
            ).fetchone()
            assert row is not None
            lost += last - int(row[1])
            dup += int(row[0]) - int(row[1])
    return lost, dup


def run(admin_dsn: str, rate: int, outage_s: float, symbols: list[str]) -> dict[str, Any]:
    """One measured outage and recovery; returns the figures."""
    with scratch_database(admin_dsn, DB) as dsn, tempfile.TemporaryDirectory() as tmp:
        migrate(dsn)
        work = Path(tmp)
        socket = work / "q.sock"
        with SimProcess(symbols, rate_per_symbol=rate / len(symbols)) as sim:
            env = {
                **os.environ,
                "HISTDATA_CONFIG": "/dev/null",
                "HISTDATA_DATABASE_URL": dsn,
                "HISTDATA_SERVICE_DATA_DIR": str(work / "var"),
                "HISTDATA_QUERY_SOCKET": str(socket),
                "HISTDATA_KRAKEN_WS_URL": sim.ws_url,
                "HISTDATA_KRAKEN_REST_URL": sim.rest_url,
                "HISTDATA_KRAKEN_SYMBOLS": ",".join(symbols),
                "HISTDATA_GAPFILL_ENABLED": "false",
                "HISTDATA_SERVICE_LOG_LEVEL": "warning",
            }
            with (work / "service.log").open("w") as log:
                service = subprocess.Popen(
                    [sys.executable, "-m", "histdata.cli", "run"],
                    env=env,
                    stdout=log,
                    stderr=log,
                    cwd=ROOT,
                )
            try:
                sim.wait_subscribed(len(symbols))
                sim.resume()
                time.sleep(10.0)
                set_connections(admin_dsn, dsn, False)
                time.sleep(outage_s)
                backlog = _journal_trades(socket)
                set_connections(admin_dsn, dsn, True)
                back = time.monotonic()
                while _journal_trades(socket) > 0:
                    if time.monotonic() - back > 600:
                        raise RuntimeError("the journal did not drain within 10 minutes")
                    time.sleep(0.2)
                drain_s = time.monotonic() - back
                time.sleep(5.0)
                truth = {s: int(n) for s, n in sim.pause()["trades"].items()}
                deadline = time.monotonic() + 60
                while _stored(dsn, truth)[0] and time.monotonic() < deadline:
                    time.sleep(0.5)
                lost, dup = _stored(dsn, truth)
            finally:
                service.send_signal(signal.SIGTERM)
                service.wait(timeout=60)
    return {
        "rate": rate,
        "outage_s": outage_s,
        "journaled": backlog,
        "drain_s": round(drain_s, 1),
        "drain_rate": round(backlog / drain_s) if drain_s else None,
        "lost": lost,
        "duplicated": dup,
    }


def main() -> None:
    """Run the bench; print a markdown block (or JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--rate", type=int, default=3000)
    parser.add_argument("--outage-s", type=float, default=30.0)
    parser.add_argument("--symbols", default="BTC/USD,ETH/USD")
    args = parser.parse_args()
    symbols = args.symbols.split(",")
    if args.quick:
        args.outage_s = min(args.outage_s, 5.0)
    say(f"drain: {args.rate} trades/s over {len(symbols)} symbols, {args.outage_s:.0f} s outage")
    figures = run(args.dsn, args.rate, args.outage_s, symbols)
    command = (
        f"python -m bench.drain_bench --rate {args.rate} --outage-s {args.outage_s:g}"
        f" --symbols {args.symbols}"
    )
    rows = [
        [
            f"{figures['rate']:,}",
            f"{figures['outage_s']:.0f} s",
            f"{figures['journaled']:,}",
            f"{figures['drain_s']} s",
            f"{figures['drain_rate']:,}/s" if figures["drain_rate"] else "-",
            f"{figures['lost']} / {figures['duplicated']}",
        ]
    ]
    emit(
        Result(
            name="drain",
            title="Journal drain after a database outage under sustained load",
            command=command,
            machine=machine(args.dsn),
            date=today(),
            columns=["trades/s", "outage", "journaled", "drain time", "drain rate", "lost / dup"],
            rows=rows,
            notes=[
                "Drain rate: trades replayed from the journal per second while live trades"
                " kept arriving at the same rate and went straight to the database.",
            ],
            summary={
                f"journal drain after {figures['outage_s']:.0f} s outage at"
                f" {figures['rate']:,}/s": f"{figures['drain_rate']:,} trades/s"
                f" ({figures['drain_s']} s)",
                "lost / duplicated after the outage": (
                    f"{figures['lost']} / {figures['duplicated']}"
                ),
            },
        ),
        as_json=args.json,
    )


if __name__ == "__main__":
    main()
