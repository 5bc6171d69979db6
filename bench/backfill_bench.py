"""Backfill: ``histdata backfill`` against a simulator that enforces Kraken's REST limit.

Usage::

    .venv/bin/python -m bench.backfill_bench [--dsn DSN] [--history-s 3600] [--rate 25]
        [--json] [--quick]

The simulator (:class:`bench.common.SimProcess`, its own process) holds ``--history-s``
seconds of ``--rate`` trades/s of BTC/USD and makes no new ones, and throttles
``/public/Trades`` as Kraken's public limit does: a token bucket of 1 request/s with a burst
of 20, where a refused call still costs a token. ``histdata backfill BTC/USD --since
<first trade>`` then runs as its own process with the default configuration, so its client
limiter is the shipped ``[kraken] rest_rate_per_s`` / ``rest_burst``, into a fresh scratch
database (migrated beforehand, so the time is the backfill's, plus the process start).

Reported: pages and requests (counted by the simulator), wall time, requests/s achieved
against the 1/s allowed, rate-limit errors the client received, trades stored per second,
and whether every trade of the history is stored exactly once. The baseline is the limit
itself: the fastest any client can page the same history is its burst at once, then one
request a second.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

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
from histdata.config import KrakenConfig
from histdata.storage import migrate

DB = "histdata_bench_backfill"
ROOT = Path(__file__).resolve().parent.parent
SYMBOL = "BTC/USD"
LIMIT_PER_S = 1.0  # Kraken's public REST allowance, as the simulator enforces it
LIMIT_BURST = 20


def run(admin_dsn: str, *, history_s: float, rate: float) -> dict[str, float]:
    """One backfill of the whole simulated history; the figures by name."""
    with scratch_database(admin_dsn, DB) as dsn:
        migrate(dsn)
        with SimProcess(
            [SYMBOL],
            rate_per_symbol=rate,
            history_s=history_s,
            rest_limit=LIMIT_PER_S,
            rest_burst=LIMIT_BURST,
        ) as sim:
            before = sim.stats()
            truth = int(before["trades"][SYMBOL])
            since_s = int(before["first_ns"][SYMBOL]) // 10**9
            env = {
                **os.environ,
                "HISTDATA_CONFIG": "/dev/null",
                "HISTDATA_DATABASE_URL": dsn,
                "HISTDATA_KRAKEN_REST_URL": sim.rest_url,
                "HISTDATA_SERVICE_LOG_LEVEL": "warning",
            }
            command = [sys.executable, "-m", "histdata.cli", "backfill", SYMBOL]
            command += ["--since", str(since_s), "--no-progress"]
            began = time.monotonic()
            done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
            seconds = time.monotonic() - began
            if done.returncode != 0:
                raise RuntimeError(f"histdata backfill exited {done.returncode}:\n{done.stderr}")
            after = sim.stats()
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT count(*), count(DISTINCT trade_id) FROM trades").fetchone()
        assert row is not None
    pages = re.search(r"(\d+) pages", done.stdout)
    requests = after["rest"]["requests"]
    return {
        "history": truth,
        "pages": float(pages.group(1)) if pages else float("nan"),
        "trades_requests": float(requests.get("Trades", 0)),
        "requests": float(sum(requests.values())),
        "throttled": float(after["rest"]["throttled"]),
        "seconds": seconds,
        "rows": float(row[0]),
        "ids": float(row[1]),
    }


def result(figures: dict[str, float], args: argparse.Namespace, where: str) -> Result:
    """The table and notes."""
    kraken = KrakenConfig()
    requests = figures["requests"]
    seconds = figures["seconds"]
    floor_s = max(0.0, requests - LIMIT_BURST) / LIMIT_PER_S
    own_floor_s = max(0.0, requests - kraken.rest_burst) / kraken.rest_rate_per_s
    lost = figures["history"] - figures["ids"]
    duplicated = figures["rows"] - figures["ids"]
    row = [
        f"{figures['history']:,.0f}",
        f"{figures['pages']:,.0f}",
        f"{requests:,.0f} ({figures['trades_requests']:,.0f} Trades)",
        f"{seconds:.1f} s",
        f"{floor_s:.1f} s / {own_floor_s:.1f} s",
        f"{requests / seconds:.2f}",
        f"{figures['throttled']:,.0f}",
        f"{figures['ids'] / seconds:,.0f}",
        f"{lost:,.0f} / {duplicated:,.0f}",
    ]
    command = shlex.join(
        [
            ".venv/bin/python",
            "-m",
            "bench.backfill_bench",
            "--history-s",
            f"{args.history_s:g}",
            "--rate",
            f"{args.rate:g}",
        ]
    )
    notes = [
        f"History: {args.history_s:g} s of {args.rate:g} trades/s of {SYMBOL} "
        f"({figures['history']:,.0f} trades; Kraken pages hold up to 1,000). The simulator "
        f"allows {LIMIT_PER_S:g} request/s with a burst of {LIMIT_BURST}; histdata's client "
        f"limiter is the default ({kraken.rest_rate_per_s:g} request/s, burst "
        f"{kraken.rest_burst}).",
        '"At the limit" is the floor any client could reach on the same history: the '
        "simulator's burst at once, then one request a second; \"at histdata's limiter\" the "
        "same with the client's own smaller burst. The wall time includes starting the "
        "`histdata` process (about a second).",
        "Rate-limit errors are the `EGeneral:Too many requests` replies the simulator sent.",
    ]
    return Result(
        name="backfill",
        title="Backfill",
        command=command,
        columns=[
            "trades in history",
            "pages",
            "requests",
            "wall time",
            "at the limit / at histdata's limiter",
            "requests/s",
            "rate-limit errors",
            "trades stored/s",
            "lost / duplicated",
        ],
        rows=[row],
        notes=notes,
        summary={
            "backfill requests/s (limit 1/s)": f"{requests / seconds:.2f}",
            "backfill rate-limit errors": f"{figures['throttled']:,.0f}",
            "backfill trades stored/s": f"{figures['ids'] / seconds:,.0f}",
        },
        machine=where,
        date=today(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--history-s", type=float, help="seconds of history to backfill")
    parser.add_argument("--rate", type=float, default=25.0, help="trades/s in the history")
    args = parser.parse_args()
    if not args.dsn:
        parser.error("--dsn (or HISTDATA_TEST_DSN) is required")
    if args.history_s is None:
        args.history_s = 600.0 if args.quick else 3600.0
    where = machine(args.dsn)
    say(f"backfill: {args.history_s:g} s of history at {args.rate:g} trades/s …")
    figures = run(args.dsn, history_s=args.history_s, rate=args.rate)
    say(f"backfill: {figures}")
    emit(result(figures, args, where), as_json=args.json)


if __name__ == "__main__":
    main()
