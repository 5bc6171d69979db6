"""Every pair at once: ``[kraken] symbols = ["*"]`` against a simulator serving 500 pairs.

Usage::

    .venv/bin/python -m bench.allpairs_bench [--dsn DSN] [--pairs 500] [--rates 20,200]
        [--duration-s 60] [--json] [--quick]

The simulator serves BTC/USD and ETH/USD at the step's rate each and ``--pairs - 2``
generated pairs beside them, the k-th at rate/(k+2): a few busy pairs and a long tail of
quiet ones, as on Kraken. The service learns them all from the simulator's AssetPairs and
records them over several WebSocket connections (``[kraken] symbols_per_connection``). Each
step runs as a live-bench step (:func:`bench.live_bench.run_step`): trading for
``--duration-s``, then paused; lost and duplicated trades against every pair's ids 1..N, the
p99 lag from the trade's time to its insert, the service's CPU and peak RSS, and the
connections it opened.
"""

from __future__ import annotations

import argparse
import os

from bench.common import Result, add_common_arguments, emit, machine, say, today
from bench.live_bench import run_step

NAMED = ["BTC/USD", "ETH/USD"]


def main() -> None:
    """Run the steps; print a markdown block (or the JSON line with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--pairs", type=int, default=500, help="pairs in all (named included)")
    parser.add_argument("--rates", default="20,200", help="trades/s of each named pair, per step")
    parser.add_argument("--duration-s", type=float, default=60.0)
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    duration = 15.0 if args.quick else args.duration_s
    rows = []
    summary: dict[str, str] = {}
    for rate in rates:
        say(f"all pairs: {args.pairs} pairs, named at {rate}/s, {duration:g} s")
        step = run_step(
            args.dsn,
            rate * len(NAMED),
            NAMED,
            duration_s=duration,
            drain_timeout_s=30.0,
            profile=None,
            logs=None,
            pairs=args.pairs - len(NAMED),
            record="*",
        )
        total = step.emitted / step.seconds
        p99 = "–" if step.p99_s is None else f"{step.p99_s * 1000:,.0f} ms"
        rows.append(
            [
                f"{args.pairs}",
                f"{total:,.0f}",
                f"{step.lost} / {step.duplicated}",
                p99,
                f"{step.service_cpu * 100:.0f}%",
                f"{step.peak_rss / 2**20:.0f} MiB",
                f"{step.sessions}",
            ]
        )
        summary[f"{args.pairs} pairs at {total:,.0f} trades/s: lost / p99 / CPU"] = (
            f"{step.lost} / {p99} / {step.service_cpu * 100:.0f}%"
        )
    emit(
        Result(
            name="allpairs",
            title='Every pair at once: symbols = ["*"] over several connections',
            command=f"python -m bench.allpairs_bench --pairs {args.pairs} --rates {args.rates}"
            f" --duration-s {duration:g}",
            columns=[
                "pairs",
                "trades/s (all pairs)",
                "lost / dup",
                "p99 lag",
                "service CPU",
                "service RSS",
                "connections",
            ],
            rows=rows,
            notes=[
                "CPU in % of one core over the trading window; the simulator and PostgreSQL"
                f" share the machine's {os.cpu_count()} cores.",
                f"Per-pair rates: the two named pairs at {args.rates.replace(',', ', then ')}"
                " trades/s each, the k-th generated pair at that rate/(k+2): a few busy pairs"
                " and a long quiet tail. `[kraken] symbols_per_connection` (200) sets the"
                " connections.",
                "Lost and duplicated are counted against every pair's ids 1..N at the"
                " simulator; p99 lag is insert time minus trade time over all pairs.",
            ],
            summary=summary,
            machine=machine(args.dsn),
            date=today(),
        ),
        as_json=args.json,
    )


if __name__ == "__main__":
    main()
