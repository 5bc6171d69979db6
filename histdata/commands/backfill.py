"""``histdata backfill SYMBOL --since T [--until T]``: trade history from REST, resumable.

Pages are committed with their cursor, so running the same command again after a kill (or a
Ctrl-C) resumes where it stopped. A progress bar on a terminal shows the time range done and
the ETA; otherwise a log line per page does.
"""

from __future__ import annotations

import argparse
from datetime import datetime

import trio
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from histdata.backfill import FetchProgress, FetchResult, backfill_trades
from histdata.commands.common import open_command_storage, setup
from histdata.config import Config
from histdata.kraken import RateLimiter, open_kraken_rest
from histdata.model import datetime_to_ns, ns_to_datetime
from histdata.timeutil import format_time, parse_time

__all__ = ["configure", "main"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``backfill`` arguments."""
    parser.add_argument("symbol", help="pair in any spelling (BTC/USD, XBTUSD, XXBTZUSD)")
    parser.add_argument("--since", required=True, type=parse_time, help="ISO 8601 or Unix s")
    parser.add_argument("--until", type=parse_time, help="ISO 8601 or Unix s (default: now)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


async def _run(
    config: Config, symbol: str, since: datetime, until: datetime | None, show_bar: bool
) -> FetchResult:
    console = Console(stderr=True)
    limiter = RateLimiter(rate_per_s=config.kraken.rest_rate_per_s, burst=config.kraken.rest_burst)
    async with (
        open_command_storage(config) as storage,
        open_kraken_rest(
            config.kraken.rest_url,
            storage.registry,
            limiter,
            timeout_s=config.kraken.request_timeout_s,
        ) as rest,
    ):
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[position]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not show_bar,
        ) as progress:
            task = progress.add_task(symbol, total=1.0, position="")

            def on_page(p: FetchProgress) -> None:
                progress.update(
                    task,
                    completed=p.fraction,
                    position=f"{format_time(ns_to_datetime(p.position_ns))} {p.inserted} new",
                )

            return await backfill_trades(
                storage,
                rest,
                symbol,
                since_ns=datetime_to_ns(since),
                until_ns=datetime_to_ns(until) if until is not None else None,
                on_page=on_page,
            )


def main(args: argparse.Namespace) -> int:
    """Run the backfill; returns the exit status."""
    config = setup(args)
    show_bar = Console(stderr=True).is_terminal and not args.no_progress
    result = trio.run(_run, config, args.symbol, args.since, args.until, show_bar)
    resumed = (
        f" (resumed from {format_time(ns_to_datetime(int(result.resumed_from)))})"
        if result.resumed_from
        else ""
    )
    print(
        f"{result.symbol}: {result.pages} pages, {result.inserted} trades inserted,"
        f" {result.present} already present{resumed}; trades now covered to"
        f" {format_time(ns_to_datetime(result.end_ns))}"
    )
    return 0
