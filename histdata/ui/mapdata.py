"""The coverage map's data: per stream, the timeline of a symbol over a range, as ranges.

Each range has one kind, in the words the page shows:

- ``observed``: coverage says we were listening and the range holds trades (or candles);
- ``empty``: observed, but no trade (no candle) in any bucket of the map's resolution;
- ``hole``: not observed, a gap the gap filler will try to repair;
- ``unrecoverable``: not observed, and marked as a hole Kraken can no longer serve;
- ``id-hole`` (trades only): a break in Kraken's consecutive trade ids, drawn between the
  trades either side of it whatever coverage claims;
- ``mismatch`` (candles only): minutes where Kraken's candle and the one derived from our
  trades disagree, consecutive minutes merged.

``observed``, ``empty``, ``hole`` and ``unrecoverable`` tile the range without overlap;
``id-hole`` and ``mismatch`` ranges lie on top of them. Everything comes from the storage's
own reports (:func:`~histdata.storage.coverage.coverage_report`,
:func:`~histdata.storage.continuity.id_holes`,
:func:`~histdata.storage.candles.candle_mismatches`), read-only, so the map says exactly what
``histdata gaps`` and ``/v1/coverage`` say.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from histdata.model import Stream
from histdata.storage import Storage
from histdata.storage.candles import CandleMismatch, candle_mismatches
from histdata.storage.continuity import IdHole, id_holes
from histdata.storage.coverage import HoleKind, coverage_report, subtract
from histdata.timeutil import format_time

__all__ = ["STREAMS", "CoverageMap", "MapKind", "MapRange", "StreamMap", "coverage_map"]

MapKind = Literal["observed", "empty", "hole", "unrecoverable", "id-hole", "mismatch"]
STREAMS: tuple[Stream, ...] = ("trades", "candles")
_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class MapRange:
    """``[start, end)`` of one kind; ``detail`` says more for people (a reason, the ids)."""

    kind: MapKind
    start: datetime
    end: datetime
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        """``{"kind", "start", "end", "detail"}`` with ISO 8601 UTC times."""
        return {
            "kind": self.kind,
            "start": format_time(self.start),
            "end": format_time(self.end),
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class StreamMap:
    """The ranges of one stream, oldest first (``id-hole`` and ``mismatch`` ranges after the
    tiling ones)."""

    stream: Stream
    ranges: tuple[MapRange, ...]


@dataclass(frozen=True, slots=True)
class CoverageMap:
    """The map of ``symbol`` over ``[start, end)``; ``resolution`` is the bucket below which
    a quiet stretch is not told apart from its busy neighbours."""

    symbol: str
    start: datetime
    end: datetime
    resolution: timedelta
    streams: tuple[StreamMap, ...]

    def to_json(self) -> dict[str, Any]:
        """The JSON the page reads (``GET /api/map``)."""
        return {
            "symbol": self.symbol,
            "start": format_time(self.start),
            "end": format_time(self.end),
            "resolution_s": int(self.resolution.total_seconds()),
            "streams": {
                s.stream: {"ranges": [r.to_json() for r in s.ranges]} for s in self.streams
            },
        }


def resolution_for(start: datetime, end: datetime, *, max_buckets: int) -> timedelta:
    """The smallest whole number of minutes that cuts ``[start, end)`` into at most
    ``max_buckets`` buckets (one minute at least: candles are per minute)."""
    minutes = -(-(end - start) // (_MINUTE * max_buckets))
    return _MINUTE * max(1, minutes)


async def coverage_map(
    storage: Storage,
    symbol: str,
    start: datetime,
    end: datetime,
    *,
    max_buckets: int = 2000,
) -> CoverageMap:
    """Read the map of ``symbol`` over ``[start, end)`` at a resolution of at most
    ``max_buckets`` buckets, so a year costs the page no more ranges than an hour.

    A bucket with one trade in it counts as busy; ``empty`` ranges are runs of whole buckets
    with none. Holes are exact, at any resolution.

    Raises:
        UnknownSymbol: the registry does not know ``symbol``.
        DatabaseUnavailable: the database is down.
    """
    symbol = storage.registry.canonical(symbol)
    resolution = resolution_for(start, end, max_buckets=max_buckets)
    streams = []
    for stream in STREAMS:
        report = await coverage_report(storage, symbol, stream, start, end, interval=resolution)
        empty = [(r.start, r.end) for r in report.empty]
        ranges = [MapRange("observed", a, b) for a, b in subtract(report.covered, empty)]
        ranges += [MapRange("empty", a, b) for a, b in empty]
        ranges += [
            MapRange(
                "unrecoverable" if h.kind is HoleKind.UNRECOVERABLE else "hole",
                h.start,
                h.end,
                h.reason,
            )
            for h in report.holes
        ]
        ranges.sort(key=lambda r: r.start)
        if stream == "trades":
            ranges += _id_hole_ranges(await id_holes(storage, symbol, start, end), start, end)
        else:
            ranges += _mismatch_ranges(await candle_mismatches(storage, symbol, start, end))
        streams.append(StreamMap(stream, tuple(ranges)))
    return CoverageMap(symbol, start, end, resolution, tuple(streams))


def _id_hole_ranges(holes: Sequence[IdHole], start: datetime, end: datetime) -> list[MapRange]:
    """Trade-id breaks as ranges between the trades either side, clipped to the map (a
    break between two trades of the same instant is a range of no length, still drawn)."""
    out = []
    for hole in holes:
        low, high = max(hole.after, start), min(hole.before, end)
        if low <= high:
            out.append(MapRange("id-hole", low, high, hole.describe()))
    return out


def _mismatch_ranges(mismatches: Sequence[CandleMismatch]) -> list[MapRange]:
    """Mismatched minutes as ranges, consecutive minutes merged; the detail names the first
    minute's differing fields as ``field ours≠Kraken's``."""
    out: list[MapRange] = []
    for m in mismatches:
        if out and out[-1].end == m.time:
            out[-1] = MapRange("mismatch", out[-1].start, m.time + _MINUTE, out[-1].detail)
            continue
        detail = ", ".join(f"{name} {ours}≠{theirs}" for name, (ours, theirs) in m.fields.items())
        out.append(MapRange("mismatch", m.time, m.time + _MINUTE, detail))
    return out
