"""Recognise a Kraken history file: its pair and interval from the name, its layout from its lines.

Kraken publishes three CSV layouts, none with a version marker (docs/kraken.md):

- OHLCVT, ``<ALTNAME>_<minutes>.csv``: ``time,open,high,low,close,volume,trades``, no header.
- Time and sales, ``<ALTNAME>.csv``: ``time,price,volume``, no header, no trade ids.
- The quarterly time-and-sales form seen in 2026: a header row, then
  ``price,volume,time,side,ordertype,misc,trade_id``.

The name decides the pair and whether an interval is present; the first data line decides the
layout, because the quarterly archives changed column layout without changing file names.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from histdata.errors import RejectedInput, UnknownSymbol
from histdata.symbols import SymbolRegistry

__all__ = ["FileLayout", "NameInfo", "sniff_layout", "split_name"]

_NAME = re.compile(r"(?P<alt>[A-Za-z0-9.]+?)(?:_(?P<minutes>\d+))?\.csv", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


class FileLayout(enum.StrEnum):
    """The column layout of one CSV file."""

    OHLCVT = "ohlcvt"  # time,open,high,low,close,volume,trades
    TRADES3 = "trades3"  # time,price,volume (no ids)
    TRADES7 = "trades7"  # price,volume,time,side,ordertype,misc,trade_id (header row)


@dataclass(frozen=True, slots=True)
class NameInfo:
    """What a file name says: the canonical symbol and, for OHLCVT files, the interval."""

    symbol: str
    interval_min: int | None


def split_name(name: str, registry: SymbolRegistry) -> NameInfo:
    """Read the pair and interval from a file or ZIP member name (folders ignored).

    ``XBTUSD_60.csv`` → (``BTC/USD``, 60); ``TimeAndSales_Combined/XBTUSD.csv`` → (``BTC/USD``,
    None). The altname goes through the symbol registry, so every spelling it knows works.

    Raises:
        RejectedInput: ``bad_name`` when the name is not ``<PAIR>[_<minutes>].csv``, or the
            pair is unknown to the registry.
    """
    base = PurePosixPath(name.replace("\\", "/")).name
    match = _NAME.fullmatch(base)
    if match is None:
        raise RejectedInput("bad_name", "expected <PAIR>.csv or <PAIR>_<minutes>.csv", where=name)
    minutes = int(match["minutes"]) if match["minutes"] is not None else None
    if minutes is not None and minutes < 1:
        raise RejectedInput("bad_name", f"interval {minutes} minutes is not positive", where=name)
    try:
        # Known pairs by any spelling; else a name derived by Kraken's naming rules, marked
        # provisional until AssetPairs confirms it (histdata.symbols).
        symbol = registry.for_file_name(match["alt"]).symbol
    except UnknownSymbol as exc:
        raise RejectedInput("bad_name", str(exc), where=name) from exc
    return NameInfo(symbol, minutes)


def _numeric(text: str) -> bool:
    return _NUMBER.fullmatch(text.strip()) is not None


def sniff_layout(first_lines: list[str], name: NameInfo, *, where: str = "") -> FileLayout:
    """Decide the layout from the first few lines of a file (a header line is allowed).

    Raises:
        RejectedInput: ``unknown_layout`` when no layout fits the first data line, or the name
            and the content disagree (an interval in the name but trade rows inside).
    """
    data = [line for line in first_lines if line.strip()]
    if data and not _numeric(data[0].split(",", 1)[0]):
        data = data[1:]  # a header row: only the quarterly trades form has one
    if not data:
        raise RejectedInput("unknown_layout", "no data line to sniff", where=where)
    fields = [field.strip() for field in data[0].split(",")]
    if len(fields) == 3 and all(_numeric(f) for f in fields):
        layout = FileLayout.TRADES3
    elif len(fields) == 7 and fields[3].lower() in ("b", "s") and _numeric(fields[2]):
        layout = FileLayout.TRADES7
    elif len(fields) == 7 and all(_numeric(f) for f in fields):
        layout = FileLayout.OHLCVT
    else:
        raise RejectedInput(
            "unknown_layout",
            f"{len(fields)} fields not in a known layout: {data[0][:80]!r}",
            where=where,
        )
    if (layout is FileLayout.OHLCVT) != (name.interval_min is not None):
        raise RejectedInput(
            "unknown_layout",
            f"name says {'OHLCVT' if name.interval_min else 'trades'}, content looks {layout}",
            where=where,
        )
    return layout
