"""``histdata symbols [--refresh] [--json]``: what is stored, per symbol and stream.

One line per symbol and stream with data: first and last time, rows, the observed share of
that span (coverage), its holes, and the ranges marked unrecoverable (see
:mod:`histdata.storage.inventory`), then one line counting the known pairs with nothing
stored. Provisional symbols (names derived from a file name, not yet confirmed by Kraken)
and delisted ones are flagged.

``--refresh`` first fetches Kraken's AssetPairs into the ``symbols`` table (new pairs,
statuses, provisional names confirmed or corrected; see
:mod:`histdata.storage.symbol_table`) and says what changed; Kraken must be reachable, else
one line says why and the command exits 1 without listing.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

import trio

from histdata.commands.common import open_command_storage, setup
from histdata.config import Config
from histdata.errors import HistdataError, KrakenError
from histdata.kraken import RateLimiter, open_kraken_rest
from histdata.storage import Storage
from histdata.storage.inventory import StreamInventory, inventory
from histdata.storage.symbol_table import SymbolRefresh, refresh_symbols
from histdata.symbols import SymbolRegistry
from histdata.timeutil import format_time

__all__ = ["configure", "main", "render"]

# A person is waiting: one retry covers a hiccup, more would only delay the error.
_ATTEMPTS = 2
_HEADER = ("SYMBOL", "STREAM", "FIRST", "LAST", "ROWS", "COVERAGE", "HOLES", "UNRECOVERABLE")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``--refresh`` and ``--json``."""
    parser.add_argument(
        "--refresh",
        action="store_true",
        help="reload Kraken's AssetPairs into the symbols table first (needs Kraken)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    """Print the listing (after a refresh with ``--refresh``); returns the exit status.

    Raises:
        KrakenError: ``--refresh`` could not fetch AssetPairs (one line naming the URL).
        DatabaseUnavailable: the database refused the connection.
    """
    config = setup(args)
    out = trio.run(_run, config, args.refresh, args.json)
    print(out)
    return 0


async def _run(config: Config, refresh: bool, as_json: bool) -> str:
    async with open_command_storage(config, create=refresh) as storage:
        refreshed = await _refresh(config, storage) if refresh else None
        streams = await inventory(storage)
        registry = storage.registry
    if as_json:
        return json.dumps(_as_json(streams, registry, refreshed), indent=2)
    return render(streams, registry, refreshed)


async def _refresh(config: Config, storage: Storage) -> SymbolRefresh:
    kraken = config.kraken
    limiter = RateLimiter(rate_per_s=kraken.rest_rate_per_s, burst=kraken.rest_burst)
    try:
        # The caller's deadline: without it an unreachable Kraken is retried for minutes.
        with trio.fail_after(kraken.request_timeout_s):
            async with open_kraken_rest(
                kraken.rest_url,
                storage.registry,
                limiter,
                timeout_s=kraken.request_timeout_s,
                max_attempts=_ATTEMPTS,
            ) as rest:
                listed = await rest.asset_pairs()
    except (HistdataError, trio.TooSlowError) as exc:
        why = " ".join(str(exc).split()) or f"no answer within {kraken.request_timeout_s:g} s"
        raise KrakenError(f"cannot refresh AssetPairs from {kraken.rest_url}: {why}") from exc
    if not len(listed):
        raise KrakenError(f"cannot refresh AssetPairs from {kraken.rest_url}: it listed no pair")
    return await refresh_symbols(storage, listed)


def _coverage(item: StreamInventory) -> str:
    return f"{100 * item.coverage:.2f}%"


def _unrecoverable(item: StreamInventory) -> str:
    if not item.unrecoverable:
        return "0"
    return f"{item.unrecoverable} ({item.unrecoverable_length})"


def _flagged(item: StreamInventory) -> str:
    flags = ["provisional"] if item.provisional else []
    flags += [item.status] if item.status != "online" else []
    return f"{item.symbol} ({', '.join(flags)})" if flags else item.symbol


def _refresh_line(result: SymbolRefresh) -> str:
    line = (
        f"AssetPairs: {result.listed} pairs listed, {result.added} new, {result.delisted}"
        f" delisted, {result.confirmed} provisional confirmed"
    )
    renamed = ", ".join(f"{old} → {new}" for old, new in sorted(result.renamed.items()))
    conflicts = ", ".join(f"{old} ≠ {new}" for old, new in sorted(result.conflicts.items()))
    if renamed:
        line += f"; renamed {renamed}"
    if conflicts:
        line += f"; NOT renamed (the right name has rows of its own): {conflicts}"
    return line


def _empty_line(streams: list[StreamInventory], registry: SymbolRegistry) -> str:
    stored = {item.symbol for item in streams}
    idle = [info for info in registry if info.symbol not in stored]
    kinds = Counter("provisional" if i.provisional else i.status for i in idle)
    detail = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
    with_data = f"{len(stored)} symbol{'s' if len(stored) != 1 else ''} with data"
    return f"{with_data}; {len(idle)} more known pairs with nothing stored" + (
        f" ({detail})" if detail else ""
    )


def render(
    streams: list[StreamInventory],
    registry: SymbolRegistry,
    refreshed: SymbolRefresh | None = None,
) -> str:
    """The table: a header, a line per symbol and stream, then the known-but-empty count."""
    rows = [
        (
            _flagged(item),
            item.stream,
            format_time(item.first),
            format_time(item.last),
            str(item.rows),
            _coverage(item),
            str(item.holes),
            _unrecoverable(item),
        )
        for item in streams
    ]
    widths = [max(len(r[i]) for r in [_HEADER, *rows]) for i in range(len(_HEADER))]
    right = {4, 5, 6}  # numbers align right
    lines = [_refresh_line(refreshed)] if refreshed is not None else []
    for row in [_HEADER, *rows]:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    lines.append(_empty_line(streams, registry))
    return "\n".join(lines)


def _as_json(
    streams: list[StreamInventory], registry: SymbolRegistry, refreshed: SymbolRefresh | None
) -> dict[str, Any]:
    stored = {item.symbol for item in streams}
    return {
        "refresh": None
        if refreshed is None
        else {
            "listed": refreshed.listed,
            "added": refreshed.added,
            "delisted": refreshed.delisted,
            "confirmed": refreshed.confirmed,
            "renamed": refreshed.renamed,
            "conflicts": refreshed.conflicts,
            "refreshed_at": refreshed.refreshed_at,
        },
        "streams": [
            {
                "symbol": item.symbol,
                "status": item.status,
                "provisional": item.provisional,
                "stream": item.stream,
                "first": format_time(item.first),
                "last": format_time(item.last),
                "rows": item.rows,
                "coverage": round(item.coverage, 6),
                "holes": item.holes,
                "unrecoverable": item.unrecoverable,
                "unrecoverable_s": item.unrecoverable_length.total_seconds(),
            }
            for item in streams
        ],
        "known_without_data": [
            {"symbol": i.symbol, "status": i.status, "provisional": i.provisional}
            for i in registry
            if i.symbol not in stored
        ],
    }
