"""``histdata gaps SYMBOL [--interval 1m] [--start T] [--end T] [--repair]``.

``--since``/``--until`` are accepted for ``--start``/``--end``, as in ``histdata backfill``.

Lists, for the trades and the 1-minute candle streams, the holes in ``[start, end)`` as ranges:
"not observed" (nobody was listening: repairable), "unrecoverable" (marked: Kraken can no
longer serve it) and, at ``--interval`` granularity, the observed ranges with no trades. For
trades it also lists every break in Kraken's trade ids ("trade ids a..b missing between T1 and
T2"), whatever coverage says (see :mod:`histdata.storage.continuity`). With ``--repair`` the
holes are first repaired from Kraken's REST API (trades, then candles from REST OHLC or derived
from trades), and the report shows what is left.

Without ``--end`` the report stops a minute ago: a running service records coverage a second
or two behind the feed, so a report up to the present second would always end in a hole.

Exit status: 0 when no hole remains, 3 when some do (so scripts can alert on it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta

import trio

from histdata.actors.heartbeat import collector_ident
from histdata.commands.common import interval_arg, open_command_storage, setup, time_arg
from histdata.config import Config
from histdata.kraken import RateLimiter, open_kraken_rest
from histdata.model import Stream
from histdata.repair import RepairResult, repair_symbol
from histdata.storage.candles import CandleMismatch, candle_mismatches
from histdata.storage.continuity import IdHole, id_holes
from histdata.storage.coverage import CoverageReport, coverage_report
from histdata.storage.fleet import hold_lease, host_budget
from histdata.timeutil import format_interval, format_time, utc_now

__all__ = ["configure", "main", "render_report"]

_STREAMS: tuple[Stream, ...] = ("trades", "candles")
_EXIT_HOLES = 3
# The default end lags now by this much: the live coverage of the last seconds is still on
# its way to the database (marked every second, written with the next batch).
_SETTLING = timedelta(minutes=1)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``gaps`` arguments."""
    parser.add_argument("symbol", metavar="SYMBOL", help="pair in any spelling")
    parser.add_argument(
        "--interval",
        "-i",
        default=1,
        type=interval_arg,
        help="granularity of 'observed, no trades' ranges (default 1m)",
    )
    # --since/--until as in `histdata backfill`, so the two commands take the same range.
    parser.add_argument(
        "--start",
        "--since",
        type=time_arg,
        help="ISO 8601 or Unix seconds (default: end minus [gapfill] lookback_days)",
    )
    parser.add_argument(
        "--end",
        "--until",
        type=time_arg,
        help="ISO 8601 or Unix seconds (default: a minute ago; the newest seconds are still"
        " being recorded)",
    )
    parser.add_argument(
        "--stream", choices=(*_STREAMS, "both"), default="both", help="(default: both)"
    )
    parser.add_argument(
        "--repair", action="store_true", help="repair the holes from Kraken's REST API first"
    )


def render_report(
    report: CoverageReport,
    breaks: Sequence[IdHole] = (),
    mismatches: Sequence[CandleMismatch] = (),
) -> str:
    """The text block for one stream's report (``breaks``: its trade-id holes;
    ``mismatches``: minutes whose derived candle disagrees with Kraken's)."""
    head = (
        f"{report.symbol} {report.stream} {format_time(report.start)} .. {format_time(report.end)}"
    )
    lines = [head]
    if not report.holes and not breaks:
        lines.append("  no gaps")
    lines.extend(f"  {hole.describe()}" for hole in breaks[:50])
    if len(breaks) > 50:
        lines.append(f"  … {len(breaks) - 50} more trade-id holes")
    for mismatch in mismatches[:20]:
        fields = ", ".join(f"{k} ours={a} kraken={b}" for k, (a, b) in mismatch.fields.items())
        lines.append(f"  candle mismatch {format_time(mismatch.time)}: {fields}")
    if len(mismatches) > 20:
        lines.append(f"  … {len(mismatches) - 20} more candle mismatches")
    for hole in report.holes:
        note = f" ({hole.reason})" if hole.reason else ""
        lines.append(f"  {format_time(hole.start)} .. {format_time(hole.end)}  {hole.kind}{note}")
    if report.empty:
        total = sum((r.end - r.start for r in report.empty), timedelta())
        lines.append(
            f"  observed, no trades: {len(report.empty)} ranges of"
            f" {format_interval(int(report.interval.total_seconds() // 60))} or more,"
            f" {total} in all"
        )
        lines.extend(
            f"    {format_time(r.start)} .. {format_time(r.end)}" for r in report.empty[:20]
        )
        if len(report.empty) > 20:
            lines.append(f"    … {len(report.empty) - 20} more")
    return "\n".join(lines)


def _render_repair(result: RepairResult) -> str:
    text = (
        f"repaired {result.symbol}: {result.trade_holes} trade holes, {result.trades_inserted}"
        f" trades inserted; {result.id_holes} trade-id holes fetched again"
        f" ({result.id_holes_left} still missing); {result.mismatches_refetched} mismatched"
        f" minutes fetched again; {result.candle_holes} candle holes,"
        f" {result.rest_candles} REST"
        f" candles, {result.derived_candles} derived from trades, {result.compared} compared"
    )
    for mismatch in result.mismatches[:10]:
        fields = ", ".join(f"{k} ours={a} kraken={b}" for k, (a, b) in mismatch.fields.items())
        text += f"\n  candle mismatch {format_time(mismatch.time)}: {fields}"
    for low, high in result.unrecoverable:
        text += f"\n  marked unrecoverable: {format_time(low)} .. {format_time(high)}"
    return text


async def _run(
    config: Config, args: argparse.Namespace, start: datetime, end: datetime
) -> tuple[list[str], bool]:
    interval = timedelta(minutes=args.interval)
    streams = _STREAMS if args.stream == "both" else (args.stream,)
    out: list[str] = []
    async with open_command_storage(config, create=args.repair) as storage:
        if args.repair:
            limiter = RateLimiter(
                rate_per_s=config.kraken.rest_rate_per_s,
                burst=config.kraken.rest_burst,
                shared=host_budget(
                    lambda: storage,
                    rate_per_s=config.kraken.rest_rate_per_s,
                    burst=config.kraken.rest_burst,
                ),
            )
            async with open_kraken_rest(
                config.kraken.rest_url,
                storage.registry,
                limiter,
                timeout_s=config.kraken.request_timeout_s,
            ) as rest:
                # A collector repairing the symbol right now holds its lease: not twice.
                symbol = storage.registry.canonical(args.symbol)
                async with hold_lease(storage, f"repair:{symbol}", collector_ident()) as lease:
                    if lease.owned:
                        result = await repair_symbol(storage, rest, symbol, start, end)
                        out.append(_render_repair(result))
                    else:
                        out.append(f"{symbol} is being repaired by {lease.holder}: not repeated")
        holes = False
        for stream in streams:
            report = await coverage_report(
                storage, args.symbol, stream, start, end, interval=interval
            )
            breaks = await id_holes(storage, args.symbol, start, end) if stream == "trades" else []
            disagree = (
                await candle_mismatches(storage, args.symbol, start, end)
                if stream == "candles"
                else []
            )
            holes = holes or bool(report.holes) or bool(breaks)
            out.append(render_report(report, breaks, disagree))
    return out, holes


def main(args: argparse.Namespace) -> int:
    """Print the report (after a repair with ``--repair``); returns the exit status.

    Raises:
        UnknownSymbol: the pair is not known.
        KrakenError: the repair could not reach Kraken (what it stored before stays).
        DatabaseUnavailable: the database refused the connection.
    """
    config = setup(args)
    end = args.end or utc_now() - _SETTLING
    start = args.start or end - timedelta(days=config.gapfill.lookback_days)
    if start >= end:
        print(
            f"histdata gaps: the range {format_time(start)} .. {format_time(end)} is empty;"
            " --start must be earlier than --end (default: a minute ago)",
            file=sys.stderr,
        )
        return 2
    out, holes = trio.run(_run, config, args, start, end)
    print("\n".join(out))
    return _EXIT_HOLES if holes else 0
