"""``histdata backfill SYMBOL --since T [--until T]``: trade history from REST, resumable.

Pages are committed with their cursor, so running the same command again after a kill (or a
Ctrl-C) resumes where it stopped. A range already recorded from its start (by an earlier
backfill, the live feed or an import) is not fetched again: the backfill starts where that
recorded stretch ends. A progress bar on a terminal shows the time range done and the ETA;
otherwise a log line per page does.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import datetime

import trio
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from histdata.commands.common import open_command_storage, setup, symbol_argument, time_arg
from histdata.config import Config
from histdata.fetch import (
    FetchProgress,
    FetchResult,
    backfill_cursor_name,
    derive_backfilled,
    fetch_trades,
)
from histdata.kraken import RateLimiter, open_kraken_rest
from histdata.model import datetime_to_ns, ns_to_datetime
from histdata.storage import Storage
from histdata.storage.coverage import covered
from histdata.storage.cursors import get_cursor
from histdata.storage.fleet import host_budget
from histdata.timeutil import format_time, utc_now

__all__ = ["configure", "main"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``backfill`` arguments."""
    symbol_argument(parser)
    parser.add_argument(
        "--since", required=True, type=time_arg, help="ISO 8601 (2024-01-01) or Unix seconds"
    )
    parser.add_argument("--until", type=time_arg, help="ISO 8601 or Unix seconds (default: now)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


async def _recorded_until(
    storage: Storage, symbol: str, since: datetime, until: datetime | None
) -> datetime:
    """Where the trades recorded without a hole from ``since`` end (``since`` if none are)."""
    end = until or utc_now()
    for low, high in await covered(storage, symbol, "trades", since, end):
        if low <= since < high:
            return min(high, end)
    return since


@dataclass(frozen=True, slots=True)
class _Outcome:
    symbol: str
    skipped_to: datetime | None  # the start was already recorded up to here
    result: FetchResult | None  # None: the whole range was already recorded


async def _run(
    config: Config, symbol: str, since: datetime, until: datetime | None, show_bar: bool
) -> _Outcome:
    console = Console(stderr=True)
    kraken = config.kraken
    async with open_command_storage(config) as storage:
        # Kraken limits per IP: this host's collectors and this command share one budget.
        budget = host_budget(
            lambda: storage, rate_per_s=kraken.rest_rate_per_s, burst=kraken.rest_burst
        )
        limiter = RateLimiter(
            rate_per_s=kraken.rest_rate_per_s, burst=kraken.rest_burst, shared=budget
        )
        symbol = storage.registry.canonical(symbol)
        since_ns = datetime_to_ns(since)
        until_ns = datetime_to_ns(until) if until is not None else None
        # The cursor is named by the range the user asked for, so a rerun of the same command
        # finds it; an interrupted run's cursor is where its pages stopped.
        cursor_name = backfill_cursor_name(symbol, since_ns, until_ns)
        skipped_to = None
        if await get_cursor(storage, cursor_name) is None:
            start = await _recorded_until(storage, symbol, since, until)
            if until is not None and start >= until:
                return _Outcome(symbol, start, None)
            if start > since:
                skipped_to = start
        first_ns = datetime_to_ns(skipped_to) if skipped_to is not None else since_ns
        async with open_kraken_rest(
            config.kraken.rest_url,
            storage.registry,
            limiter,
            timeout_s=config.kraken.request_timeout_s,
        ) as rest:
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

                result = await fetch_trades(
                    storage,
                    rest,
                    symbol,
                    since_ns=first_ns,
                    until_ns=until_ns,
                    cursor_name=cursor_name,
                    on_page=on_page,
                )
            await derive_backfilled(storage, symbol, first_ns, until_ns)
    return _Outcome(symbol, skipped_to, result)


def main(args: argparse.Namespace) -> int:
    """Run the backfill; returns the exit status (2 for a range that is empty or in the future).

    Raises:
        UnknownSymbol: the pair is not known.
        KrakenError: REST kept failing; committed pages stay and a rerun resumes.
        DatabaseUnavailable: the database refused the connection.
    """
    config = setup(args)
    now = utc_now()
    if args.since >= now:
        print(
            f"histdata backfill: --since {format_time(args.since)} is in the future",
            file=sys.stderr,
        )
        return 2
    if args.until is not None and args.until <= args.since:
        print("histdata backfill: --until must be later than --since", file=sys.stderr)
        return 2
    show_bar = Console(stderr=True).is_terminal and not args.no_progress
    try:
        outcome = trio.run(_run, config, args.symbol, args.since, args.until, show_bar)
    except KeyboardInterrupt:
        print(
            "histdata backfill: interrupted; the pages stored so far are kept, and running the"
            " same command again resumes after them",
            file=sys.stderr,
        )
        return 130
    if outcome.result is None:
        print(
            f"{outcome.symbol}: already recorded from {format_time(args.since)} to"
            f" {format_time(args.until)}; nothing to fetch"
        )
        return 0
    fetched = outcome.result
    notes: list[str] = []
    if fetched.resumed_from:
        notes.append(f"resumed from {format_time(ns_to_datetime(int(fetched.resumed_from)))}")
    if outcome.skipped_to is not None:
        notes.append(f"already recorded up to {format_time(outcome.skipped_to)}")
    noted = f" ({'; '.join(notes)})" if notes else ""
    print(
        f"{outcome.symbol}: {fetched.pages} pages, {fetched.inserted} trades inserted,"
        f" {fetched.present} already present{noted}; trades now recorded up to"
        f" {format_time(ns_to_datetime(fetched.end_ns))}"
    )
    return 0
