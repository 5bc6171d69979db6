"""Parsing of the times and intervals users type, shared by the CLI, the socket API and config.

Times are ISO 8601 (``2024-01-01``, ``2024-01-01T12:00:00Z``; a time without a zone is UTC)
or Unix seconds (``1704067200``, ``1704067200.5``). Intervals are ``1m 5m 15m 30m 1h 4h 12h
1d 1w``, Kraken's minute numbers (``1 5 15 30 60 240 720 1440 10080``) or any whole number of
minutes written with a unit (``3m``, ``2h``, ``3d``).

Interval units are case-sensitive and lower-case. ``1M`` is a month in ccxt and freqtrade
and a minute in some other tools; rather than guess, every spelling with an upper-case unit
is refused with a message saying that minutes are ``m``. Months are not offered: they have
no fixed length, so they are not a whole number of minutes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from histdata.errors import BadParameter

__all__ = [
    "EARLIEST",
    "LATEST",
    "STORED_INTERVALS",
    "check_range",
    "format_interval",
    "format_time",
    "parse_interval",
    "parse_time",
    "utc_now",
]

# The intervals histdata materialises: 1m is stored, the rest are rollups of it.
STORED_INTERVALS: tuple[int, ...] = (1, 5, 15, 30, 60, 240, 720, 1440, 10080)

_UNIT_MINUTES = {"m": 1, "h": 60, "d": 1440, "w": 10080}
_INTERVAL_RE = re.compile(r"^\s*(\d+)\s*([mhdw]?)\s*$")
_UPPER_UNIT_RE = re.compile(r"^\s*\d+\s*[A-Z]\s*$")
_MAX_INTERVAL_MIN = 366 * 1440


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 time or Unix seconds into an aware UTC datetime.

    Raises:
        ValueError: ``text`` is neither, with the text quoted in the message.
    """
    raw = text.strip()
    if not raw:
        raise ValueError("empty time; use ISO 8601 (2024-01-01T12:00:00Z) or Unix seconds")
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        try:
            seconds = Decimal(raw)
        except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
            raise ValueError(f"bad time {text!r}") from exc
        whole = int(seconds)
        micros = int((seconds - whole) * 1_000_000)
        try:
            return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=whole, microseconds=micros)
        except OverflowError as exc:
            raise ValueError(f"time {text!r} is out of range") from exc
    try:
        value = datetime.fromisoformat(raw.replace("z", "Z"))
    except ValueError as exc:
        raise ValueError(
            f"bad time {text!r}; use ISO 8601 (2024-01-01T12:00:00Z) or Unix seconds"
        ) from exc
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def format_time(value: datetime) -> str:
    """Format an aware datetime as ISO 8601 UTC with a ``Z`` (microseconds only when non-zero)."""
    value = value.astimezone(UTC)
    spec = "%Y-%m-%dT%H:%M:%S.%fZ" if value.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return value.strftime(spec)


def parse_interval(text: str) -> int:
    """Parse an interval into whole minutes.

    A bare number is minutes (Kraken's convention: ``60`` is one hour). Units are lower-case
    (see the module docstring).

    Raises:
        ValueError: not a positive whole number of minutes, longer than a year, or written
            with an upper-case unit (``1M``, ``1H``).
    """
    if _UPPER_UNIT_RE.match(str(text)):
        raise ValueError(
            f"bad interval {text!r}: units are case-sensitive and lower-case; minutes are"
            " 'm' (1m), hours 'h', days 'd', weeks 'w'; months are not offered"
        )
    match = _INTERVAL_RE.match(str(text))
    if match is None:
        raise ValueError(f"bad interval {text!r}; use 1m 5m 15m 30m 1h 4h 12h 1d 1w or minutes")
    minutes = int(match.group(1)) * _UNIT_MINUTES[match.group(2) or "m"]
    if not 0 < minutes <= _MAX_INTERVAL_MIN:
        raise ValueError(f"bad interval {text!r}; must be between 1 minute and 366 days")
    return minutes


def format_interval(minutes: int) -> str:
    """Format minutes in the largest exact unit (``60`` → ``1h``, ``10080`` → ``1w``)."""
    for unit, size in (("w", 10080), ("d", 1440), ("h", 60)):
        if minutes % size == 0:
            return f"{minutes // size}{unit}"
    return f"{minutes}m"


# The times a read may name: Unix time, up to where the trades' int64 nanoseconds end, less
# room for the storage to round an edge up to a bucket (at most 366 days) without overflow.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2262, 1, 1, tzinfo=UTC)


def check_range(start: datetime, end: datetime) -> None:
    """Check a read range: both edges within ``[EARLIEST, LATEST]`` and ``start < end``.

    Raises:
        BadParameter: naming ``start`` or ``end``.
    """
    for name, value in (("start", start), ("end", end)):
        if not EARLIEST <= value <= LATEST:
            raise BadParameter(
                name, f"must be between {format_time(EARLIEST)} and {format_time(LATEST)}"
            )
    if end <= start:
        raise BadParameter("end", "must be after start")
