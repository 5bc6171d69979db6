"""``histdata sim``: run the Kraken simulator in the foreground for demos and manual tests.

Prints where it listens and the two environment variables that point ``histdata run`` at
it, then a status line every ``--report-s`` seconds until interrupted.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import replace

import trio

from histdata.logs import configure_logging
from histdata.sim.faults import CLOSE_CODES
from histdata.sim.server import SimConfig, Simulator, open_simulator

__all__ = ["configure", "main"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags (ports, market, Kraken's rate limit, faults)."""
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: loopback)")
    parser.add_argument("--rest-port", type=int, default=8801, help="REST port (default 8801)")
    parser.add_argument("--ws-port", type=int, default=8802, help="WebSocket port (default 8802)")
    parser.add_argument(
        "--symbols",
        default="BTC/USD,ETH/USD",
        help="comma-separated pairs (default BTC/USD,ETH/USD)",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="also simulate this many generated pairs, listed in AssetPairs, the k-th at "
        "rate/(k+2) trades/s (default 0)",
    )
    parser.add_argument("--rate", type=float, default=5.0, help="trades/s per symbol (default 5)")
    parser.add_argument(
        "--history-s", type=float, default=3600.0, help="seconds of past trades (default 3600)"
    )
    parser.add_argument("--seed", type=int, default=1, help="market seed (default 1)")
    parser.add_argument(
        "--rest-limit",
        type=float,
        default=1.0,
        help="enforce Kraken's public REST limit in requests/s, 0 for none (default 1)",
    )
    faults = parser.add_argument_group("faults")
    faults.add_argument("--malformed-ratio", type=float, default=0.0, help="bad WS frames, 0..1")
    faults.add_argument(
        "--trades-since-exclusive",
        action="store_true",
        help="REST Trades since is exclusive (default inclusive: pages repeat their boundary)",
    )
    faults.add_argument(
        "--ohlc-since-exclusive",
        action="store_true",
        help="REST OHLC since is exclusive (default inclusive)",
    )
    faults.add_argument(
        "--no-ohlc-placeholders",
        action="store_true",
        help="leave empty intervals out of REST OHLC (default: zero-volume placeholder rows)",
    )
    faults.add_argument("--drop-last-ratio", type=float, default=0.0, help="omit Trades 'last'")
    faults.add_argument("--slow-s", type=float, default=0.0, help="delay every REST reply")
    faults.add_argument(
        "--close-every-s",
        type=float,
        default=0.0,
        help="close all WebSockets this often with 1001/1006/1011/1013 at random",
    )
    parser.add_argument("--report-s", type=float, default=10.0, help="status line period")
    parser.add_argument("--log-level", default="info")


def main(args: argparse.Namespace) -> int:
    """Run until interrupted; exit status 0 (2 for a bad flag value)."""
    configure_logging(args.log_level)
    for name in ("malformed_ratio", "drop_last_ratio"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            print(f"histdata sim: --{name.replace('_', '-')} must be within 0..1", file=sys.stderr)
            return 2
    try:
        config = config_from(args)
    except ValueError as exc:
        print(f"histdata sim: {exc}", file=sys.stderr)
        return 2
    trio.run(_serve, replace(config, own_process=True), args)
    return 0


def config_from(args: argparse.Namespace) -> SimConfig:
    """The :class:`SimConfig` the flags of :func:`configure` ask for.

    Raises:
        ValueError: a value SimConfig refuses.
    """
    return SimConfig(
        seed=args.seed,
        symbols=tuple(s.strip() for s in args.symbols.split(",") if s.strip()),
        pairs=args.pairs,
        trade_rate_per_s=args.rate,
        history_s=args.history_s,
        host=args.host,
        rest_port=args.rest_port,
        ws_port=args.ws_port,
        rest_rate_per_s=args.rest_limit or None,
    )


def apply_faults(sim: Simulator, args: argparse.Namespace) -> None:
    """Switch on the misbehaviour the flags of :func:`configure` ask for."""
    sim.faults.malformed_ratio = args.malformed_ratio
    sim.faults.boundary_duplicates = not args.trades_since_exclusive
    sim.faults.ohlc_since_exclusive = args.ohlc_since_exclusive
    sim.faults.ohlc_placeholders = not args.no_ohlc_placeholders
    sim.faults.drop_last_ratio = args.drop_last_ratio
    sim.faults.slow_s = args.slow_s


async def _serve(config: SimConfig, args: argparse.Namespace) -> None:
    async with open_simulator(config) as sim:
        apply_faults(sim, args)
        print(f"Kraken simulator: REST {sim.rest_url}  WebSocket {sim.ws_url}", flush=True)
        print(
            f"  HISTDATA_KRAKEN_REST_URL={sim.rest_url} HISTDATA_KRAKEN_WS_URL={sim.ws_url} "
            "histdata run",
            flush=True,
        )
        async with trio.open_nursery() as nursery:
            if args.close_every_s > 0:
                nursery.start_soon(_close_periodically, sim, args.close_every_s, config.seed)
            while True:
                await trio.sleep(args.report_s)
                _report(sim)


async def _close_periodically(sim: Simulator, every_s: float, seed: int) -> None:
    rng = random.Random(seed)
    while True:
        await trio.sleep(every_s)
        sim.faults.close_ws(rng.choice(CLOSE_CODES))


_REPORT_SYMBOLS = 5  # beyond this many pairs the status line gives a total and the busiest


def _report(sim: Simulator) -> None:
    stats = sim.statistics()
    busiest = sorted(stats.trades.items(), key=lambda item: -item[1])[:_REPORT_SYMBOLS]
    trades = ", ".join(f"{symbol} {n}" for symbol, n in busiest)
    if len(stats.trades) > _REPORT_SYMBOLS:
        trades = f"{sum(stats.trades.values())} in {len(stats.trades)} pairs, busiest {trades}"
    print(
        f"trades: {trades} | ws open {stats.ws.open} (served {stats.ws.connections}) | "
        f"rest requests {sum(stats.rest.requests.values())}, throttled {stats.rest.throttled}",
        flush=True,
    )
