"""``histdata import PATH…``: import Kraken CSV or ZIP history files.

Each CSV (loose, inside a ZIP, or under a folder) is recognised by its name and first lines
and streamed in batches. On a terminal a progress bar follows the bytes read; at the end a
summary lists, per file, the rows read, inserted, already present and rejected (by reason,
with the first few line numbers), and for trade files the 1-minute candles derived from them
(the rollups up to 1w are brought up to date before the command returns). The exit status
is 0 when every file was imported (rows may have been rejected: they are reported; files
of pairs not chosen by ``--symbol`` are left out), 1 when a file could not be recognised,
was refused (a ZIP bomb) or failed part-way (a damaged ZIP member), or no file was found.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from histdata.commands.common import open_command_storage, setup, without_pandas
from histdata.importer import FileLayout, FileSummary, ImportSource, ImportSummary, import_paths
from histdata.timeutil import format_time

__all__ = ["configure", "main", "render_summary"]


_LAYOUT_NAMES = {
    FileLayout.TRADES3: "time,price,volume",
    FileLayout.TRADES7: "quarterly, with ids and sides",
}


def _existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text}")
    return path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``import`` arguments."""
    parser.add_argument(
        "paths", nargs="+", type=_existing_path, metavar="PATH", help="CSV, ZIP or folder"
    )
    parser.add_argument(
        "--symbol",
        action="append",
        dest="symbols",
        metavar="SYMBOL",
        help="import only this pair (any spelling; repeatable)",
    )
    parser.add_argument(
        "--batch-rows",
        type=_positive_int,
        default=50_000,
        help="rows per committed batch (default 50000)",
    )
    parser.add_argument(
        "--strict-span",
        action="store_true",
        help="keep a trades file's exact first-to-last-trade span instead of rounding it out"
        " to whole minutes (its first and last minutes then get no candle)",
    )
    parser.add_argument(
        "--no-candles",
        action="store_true",
        help="store trades only; derive their candles later with `histdata gaps --repair`",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    """Run the import; returns the exit status."""
    without_pandas()
    config = setup(args)
    console = Console(stderr=True)
    show_bar = console.is_terminal and not args.no_progress

    async def run() -> ImportSummary:
        async with open_command_storage(config) as storage:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
                disable=not show_bar,
                transient=False,
            ) as progress:
                tasks: dict[ImportSource, TaskID] = {}

                def on_source(source: ImportSource) -> None:
                    tasks[source] = progress.add_task(source.name, total=source.size)

                def on_progress(source: ImportSource, done: int) -> None:
                    progress.update(tasks[source], completed=done)

                return await import_paths(
                    storage,
                    args.paths,
                    batch_rows=args.batch_rows,
                    symbols=args.symbols,
                    on_source=on_source,
                    on_progress=on_progress,
                    strict_span=args.strict_span,
                    candles=not args.no_candles,
                    max_line_bytes=config.import_.max_line_bytes,
                )

    summary = trio.run(run)
    if not summary.files:
        names = ", ".join(str(path) for path in args.paths)
        print(f"histdata import: no CSV or ZIP files found in {names}", file=sys.stderr)
        return 1
    print(render_summary(summary), file=sys.stdout)
    # A file left out by --symbol carries its pair; one that could not be read has none.
    unreadable = [f for f in summary.files if (f.skipped and f.symbol is None) or f.error]
    return 1 if unreadable else 0


def _describe(f: FileSummary) -> str:
    if f.layout is FileLayout.OHLCVT:
        return f"{f.symbol} {f.interval_min}m candles"
    layout = _LAYOUT_NAMES.get(f.layout, str(f.layout)) if f.layout else "unknown layout"
    return f"{f.symbol} trades ({layout})"


def render_summary(summary: ImportSummary) -> str:
    """The human summary printed after an import (one block per file, then totals)."""
    out: list[str] = []
    for f in summary.files:
        if f.skipped:
            out.append(f"{f.label}: skipped ({f.skipped})")
            continue
        out.append(f"{f.label}: {_describe(f)}, {f.elapsed_s:.1f} s")
        if f.error:
            out.append(f"  error: {f.error}")
        if f.checked is not None:
            matched, mismatched, unverifiable = f.checked
            out.append(
                f"  checked against stored 1m candles (not stored): {matched} match,"
                f" {mismatched} differ, {unverifiable} not verifiable (no 1m coverage)"
            )
            out.extend(
                f"    {format_time(m.time)}: "
                + ", ".join(f"{k} ours={a} kraken={b}" for k, (a, b) in m.fields.items())
                for m in f.mismatches
            )
        else:
            line = f"  read {f.rows_read}, inserted {f.inserted}, already present {f.present}"
            if f.updated:
                line += f", updated {f.updated}"
            if f.cross_source:
                line += f" ({f.cross_source} already stored from REST/live)"
            out.append(line + f", rejected {f.rejected_total}")
            if f.layout is not FileLayout.OHLCVT:
                line = f"  1m candles derived {f.derived} (rollups to 1w follow)"
                if f.candle_mismatches:
                    line += f", {f.candle_mismatches} differ from Kraken's stored candles"
                out.append(line)
                out.extend(
                    f"  no candle, trades not wholly observed: {format_time(a)}..{format_time(b)}"
                    for a, b in f.candle_holes[:5]
                )
        if f.out_of_order:
            out.append(f"  {f.out_of_order} rows went back in time (kept, numbered correctly)")
        for reason, count in sorted(f.rejected.items()):
            out.append(f"  rejected {reason}: {count}")
            out.extend(f"    {example}" for example in f.examples.get(reason, []))
    if summary.rollup_s:
        out.append(f"rollups 5m…1w brought up to date in {summary.rollup_s:.1f} s")
    rejected = sum(summary.rejected.values())
    files = f"{len(summary.files)} file{'' if len(summary.files) == 1 else 's'}"
    out.append(
        f"total: {files}, read {summary.rows_read}, inserted {summary.inserted},"
        f" already present {summary.present}, rejected {rejected}"
    )
    return "\n".join(out)
