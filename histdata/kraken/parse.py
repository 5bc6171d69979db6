"""Exact parsing and validation of everything Kraken sends: pure functions, no I/O.

Kraken's numbers must arrive in storage digit for digit, so nothing here ever goes through a
binary float:

- :func:`loads_exact` decodes JSON with every non-integer number as a :class:`~decimal.Decimal`
  built from its text (REST trade times are JSON numbers, the shortest text of a binary
  double, 3 to 7 decimals), or, with ``number_text``, as that text itself: WS v2 prices and
  quantities are JSON numbers, and a live trade keeps them as text checked by
  :func:`parse_number_text` for the database to convert. A REST trade time is
  stored as printed: that is all the precision Kraken gives, within 0.24 µs of the real
  time, which only the ``last`` cursor carries exactly (docs/kraken.md, "Times").
- Trade times become integer nanoseconds by decimal arithmetic; RFC 3339 fractions of up to 9
  digits are read as digits, never through :class:`~datetime.datetime`'s microseconds.
- The REST trades cursor ``last`` (19 digits of nanoseconds) stays a ``str``.

Row parsers keep the good rows of a frame or page and turn each bad row into a
:class:`~histdata.errors.RejectedInput`; only input that is unusable as a whole (not JSON, not
the documented shape) raises. :func:`check_envelope` turns Kraken's HTTP-200 error bodies into
the error hierarchy: rate limits, transient service trouble, and requests that Kraken refuses.
"""

from __future__ import annotations

import calendar
import dataclasses
import functools
import json
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from histdata.errors import HistdataError, KrakenError, RateLimited, RejectedInput
from histdata.model import (
    NS_PER_S,
    Candle,
    CandleSource,
    LiveTrade,
    Side,
    Trade,
    ns_to_datetime,
)
from histdata.symbols import SymbolRegistry

__all__ = [
    "MAX_FUTURE_NS",
    "MIN_TIME_NS",
    "OHLC_INTERVALS",
    "KrakenRateLimited",
    "KrakenRequestError",
    "check_envelope",
    "classify_errors",
    "loads_exact",
    "parse_asset_pairs",
    "parse_number_text",
    "parse_rest_ohlc",
    "parse_rest_trades",
    "parse_rfc3339_ns",
    "parse_unix_seconds_ns",
    "parse_ws_candles",
    "parse_ws_trades",
]

# Kraken spot opened in 2013; anything before 2010 is a unit mix-up (ms, µs) or garbage.
MIN_TIME_NS = 1_262_304_000 * NS_PER_S  # 2010-01-01T00:00:00Z
# Clocks drift, but a trade stamped more than a day ahead is a parsing or unit error.
MAX_FUTURE_NS = 86_400 * NS_PER_S
# The intervals Kraken's REST OHLC endpoint and WS v2 ohlc channel accept, in minutes.
OHLC_INTERVALS: frozenset[int] = frozenset({1, 5, 15, 30, 60, 240, 1440, 10080, 21600})

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,  # \d would take any script's digits, and int() would read them
)
_UNIX_SECONDS = re.compile(r"\d{1,12}(?:\.\d{1,9})?", re.ASCII)
_DECIMAL_TEXT = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# What Kraken's WS v2 prints for a price or a quantity: a JSON number in plain notation. No
# sign, exponent or leading zero; ASCII digits only (``\d`` would take any script's digits,
# which Decimal reads and PostgreSQL refuses). 20 digits either side is far beyond any pair's
# precision and keeps a hostile number from becoming a 10,000-digit numeric.
_NUMBER_TEXT = re.compile(r"(?:0|[1-9][0-9]{0,19})(?:\.[0-9]{1,20})?")
# A JSON number with an exponent (``1e-05``, ``7.0E-7``): valid and exact, only rarer. It is
# rewritten in plain notation off the hot path; the plain text must then pass _NUMBER_TEXT.
_EXPONENT_TEXT = re.compile(r"(?:0|[1-9][0-9]{0,19})(?:\.[0-9]{1,20})?[eE][-+]?[0-9]{1,2}")
_DIGITS = re.compile(r"\d{1,20}", re.ASCII)
_WS_SIDES = {"buy": Side.BUY, "sell": Side.SELL}
_WS_ORD_TYPES = frozenset({"market", "limit"})
_REST_SIDES = {"b": Side.BUY, "s": Side.SELL}
_REST_ORD_TYPES = {"m": "market", "l": "limit"}

_RATE_LIMIT_ERRORS = ("EGeneral:Too many requests", "EAPI:Rate limit exceeded")
_THROTTLED_PREFIX = "EService:Throttled"
_TRANSIENT_PREFIXES = (
    "EService:Unavailable",
    "EService:Busy",
    "EService:Internal error",
    "EService:Deadline elapsed",
    "EService:Market in cancel_only mode",
    "EService:Market in post_only mode",
    "EGeneral:Internal error",
)
_REQUEST_PREFIXES = ("EQuery:", "EGeneral:Invalid arguments", "EGeneral:Permission denied", "EAPI:")


class KrakenRequestError(HistdataError):
    """Kraken refused the request itself (``EQuery:Unknown asset pair``, ``EGeneral:Invalid ...``).

    Sending the same request again cannot succeed, so it is not a :class:`TransientError`;
    but it concerns one request (usually one symbol), so it is not a :class:`FatalError`
    either: a caller catches it per symbol, reports it, and carries on with the others.
    ``errors`` holds Kraken's error strings verbatim.
    """

    def __init__(self, message: str, *, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.errors = tuple(errors)


class KrakenRateLimited(RateLimited):
    """Kraken throttled the request; ``retry_after_s`` is Kraken's own hint when it gave one.

    Raised for ``EGeneral:Too many requests``, ``EAPI:Rate limit exceeded`` (no hint) and
    ``EService:Throttled:<unix time>`` (hint: seconds until that time), and by the REST client
    for an HTTP 429 from the edge. The shared rate limiter reads the hint for its cool-down.
    """

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, errors: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.errors = tuple(errors)


# --------------------------------------------------------------------------------- JSON


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; the stdlib would accept them as floats.
    raise ValueError(f"non-finite number {name}")


def loads_exact(
    data: str | bytes | bytearray, *, where: str = "", number_text: bool = False
) -> Any:
    """Decode JSON with every non-integer number as an exact :class:`Decimal`.

    With ``number_text`` such a number is its JSON text instead (a ``str``, as the scanner
    matched it), for a caller that validates it with :func:`parse_number_text` and hands it
    on unconverted. Integers stay ``int`` (exact at any size: WS ``connection_id`` exceeds
    2^63). The stdlib decoder is used on purpose: it hands each number's text to
    ``parse_float`` from its C scanner, which measured about 4x faster than ``orjson``
    followed by a Python walk converting floats back (and orjson's floats cannot be exact).

    Raises:
        RejectedInput: ``bad_json`` when ``data`` is not valid UTF-8 JSON or holds NaN/Infinity.
    """
    try:
        return json.loads(
            data, parse_float=str if number_text else Decimal, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        snippet = (
            data[:120] if isinstance(data, str) else bytes(data[:120]).decode("utf-8", "replace")
        )
        raise RejectedInput("bad_json", f"{exc}; body starts {snippet!r}", where=where) from exc


# -------------------------------------------------------------------------------- times


def parse_rfc3339_ns(text: object, *, where: str = "") -> int:
    """Parse an RFC 3339 timestamp (``2023-09-25T07:48:36.925533Z``) to exact Unix nanoseconds.

    Fractions of 1 to 9 digits are kept exactly (µs and ns precision both occur on Kraken's
    wire); a numeric offset is applied. Leap seconds (``:60``) are rejected.

    Raises:
        RejectedInput: ``bad_time`` for anything else.
    """
    if not isinstance(text, str):
        raise RejectedInput(
            "bad_time", f"timestamp must be an RFC 3339 string, got {text!r}", where=where
        )
    if len(text) > 21 and text[19] == "." and text[-1] == "Z":
        # Kraken's WS form, 2023-09-25T07:48:36.925533Z: the whole seconds come from the
        # first 19 characters, which the full parse below validated when they first
        # occurred (a live stream's trades share their second; the regex showed in profiles).
        seconds = _SECONDS_BY_PREFIX.get(text[:19])
        fraction = text[20:-1]
        if seconds is not None and len(fraction) <= 9 and fraction.isascii() and fraction.isdigit():
            return seconds * NS_PER_S + int(fraction.ljust(9, "0"))
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise RejectedInput("bad_time", f"not an RFC 3339 timestamp: {text!r}", where=where)
    try:
        seconds = _whole_seconds(match.group(1, 2, 3, 4, 5, 6))
    except ValueError as exc:
        raise RejectedInput(
            "bad_time", f"impossible date/time {text!r}: {exc}", where=where
        ) from exc
    if match.group(9) is not None:
        offset = int(match.group(10)) * 3600 + int(match.group(11)) * 60
        seconds += -offset if match.group(9) == "+" else offset
    if match.group(8) is not None and match.group(7) is not None:
        if len(_SECONDS_BY_PREFIX) >= _PREFIX_CACHE:
            _SECONDS_BY_PREFIX.clear()
        _SECONDS_BY_PREFIX[text[:19]] = seconds
    fraction = (match.group(7) or "").ljust(9, "0")
    return seconds * NS_PER_S + int(fraction or "0")


# Whole Unix seconds by the first 19 characters of a validated ``...T..:..:..[.f]Z`` stamp.
_SECONDS_BY_PREFIX: dict[str, int] = {}
_PREFIX_CACHE = 4096


@functools.lru_cache(maxsize=4096)
def _whole_seconds(fields: tuple[str, ...]) -> int:
    """Unix seconds of a UTC date and time given as text fields. Cached: a live stream's
    timestamps share their second, and building a datetime per trade showed in profiles.

    Raises:
        ValueError: an impossible date or time (February 30, hour 24, second 60).
    """
    year, month, day, hour, minute, second = (int(field) for field in fields)
    return calendar.timegm(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timetuple())


def parse_unix_seconds_ns(value: object, *, where: str = "") -> int:
    """Convert Unix seconds given exactly (``Decimal``, ``int`` or decimal text) to nanoseconds.

    REST trade times are JSON numbers such as ``1762795433.9717445``: they must have been
    decoded by :func:`loads_exact`, so that the printed digits, and not a second rounding
    of them, become the nanoseconds.

    Raises:
        RejectedInput: ``bad_time`` for a float (already rounded), a negative or non-finite
            value, or more than 9 decimals (below a nanosecond).
    """
    if isinstance(value, (bool, float)):
        raise RejectedInput(
            "bad_time",
            f"time {value!r} is a binary float and may be rounded; decode with loads_exact",
            where=where,
        )
    if isinstance(value, int):
        seconds = Decimal(value)
    elif isinstance(value, Decimal):
        seconds = value
    elif isinstance(value, str) and _UNIX_SECONDS.fullmatch(value):
        seconds = Decimal(value)
    else:
        raise RejectedInput("bad_time", f"time must be Unix seconds, got {value!r}", where=where)
    if not seconds.is_finite() or seconds < 0:
        raise RejectedInput("bad_time", f"time {value!r} is not a non-negative number", where=where)
    nanos = seconds.scaleb(9)
    if nanos != nanos.to_integral_value():
        raise RejectedInput("bad_time", f"time {value!r} is finer than a nanosecond", where=where)
    return int(nanos)


def _check_time_range(time_ns: int, now_ns: int, where: str) -> None:
    if time_ns < MIN_TIME_NS:
        raise RejectedInput("bad_time", f"time {time_ns} ns is before 2010", where=where)
    if time_ns > now_ns + MAX_FUTURE_NS:
        raise RejectedInput(
            "bad_time", f"time {time_ns} ns is more than a day in the future", where=where
        )


# ------------------------------------------------------------------------------- fields


def _field(row: Mapping[str, Any], name: str, where: str) -> Any:
    try:
        return row[name]
    except KeyError:
        raise RejectedInput("missing_field", f"row has no {name!r}", where=where) from None


def _decimal(
    value: object, name: str, reason: str, where: str, *, allow_zero: bool = False
) -> Decimal:
    """An exact, finite, positive (or non-negative) decimal from a JSON number or decimal text."""
    if isinstance(value, Decimal):
        number = value
    elif (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and _DECIMAL_TEXT.fullmatch(value)
    ):
        number = Decimal(value)
    else:
        # floats land here too: they were decoded lossily and cannot be trusted digit for digit
        raise RejectedInput(reason, f"{name} must be an exact decimal, got {value!r}", where=where)
    if not number.is_finite() or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise RejectedInput(
            reason, f"{name} must be finite and {bound}, got {value!r}", where=where
        )
    return number


def parse_number_text(
    value: object, name: str, *, reason: str, where: str = "", allow_zero: bool = False
) -> str:
    """Check a WS v2 price or quantity and return it as exact plain decimal text.

    Accepted: the text of a JSON number as Kraken prints it (``30243.4``, ``0.00012345``;
    see ``_NUMBER_TEXT``), that text as a JSON string, a JSON integer, or a ``Decimal``
    (rows decoded by :func:`loads_exact` without ``number_text``), each finite and > 0 (or
    >= 0 with ``allow_zero``). The result has the same digits, so storing it as ``numeric``
    keeps the value and its scale. A JSON number in exponent notation (``1e-05``) is exact
    too: it is rewritten in plain notation (``0.00001``) and then checked like the others.

    Raises:
        RejectedInput: ``reason`` for anything else: a float (already rounded), a sign, a
            leading zero, non-ASCII digits, a zero, more than 20 digits on either side of
            the point (in plain notation), or no number at all.
    """
    if type(value) is str:
        text = value
    elif type(value) is int:
        text = str(value)
    elif isinstance(value, Decimal):
        text = format(_decimal(value, name, reason, where, allow_zero=allow_zero), "f")
    else:
        raise RejectedInput(reason, f"{name} must be an exact decimal, got {value!r}", where=where)
    # One match on the common path (plain text): this runs twice per live trade.
    if _NUMBER_TEXT.fullmatch(text) is None:
        if _EXPONENT_TEXT.fullmatch(text) is not None:
            text = format(Decimal(text), "f")
        if _NUMBER_TEXT.fullmatch(text) is None:
            raise RejectedInput(
                reason, f"{name} must be a plain positive decimal, got {value!r}", where=where
            )
    if not allow_zero and not text.strip("0."):
        raise RejectedInput(reason, f"{name} must be > 0, got {value!r}", where=where)
    return text


def _count(value: object, name: str, reason: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RejectedInput(reason, f"{name} must be an integer >= 0, got {value!r}", where=where)
    return value


def _ws_symbol(value: object, registry: SymbolRegistry, where: str) -> str:
    if isinstance(value, str) and registry.is_canonical(value):
        return value  # the common case, one dict lookup
    if not isinstance(value, str) or value not in registry:
        raise RejectedInput("bad_symbol", f"unknown symbol {value!r}", where=where)
    canonical = registry.canonical(value)
    if canonical != value:
        # v2 only ever speaks canonical names; XBT/USD here means the frame is not v2
        raise RejectedInput(
            "bad_symbol", f"symbol {value!r} is not the v2 name {canonical!r}", where=where
        )
    return canonical


def _now_ns(now_ns: int | None) -> int:
    return time.time_ns() if now_ns is None else now_ns


def _rows(frame_data: object, where: str) -> Sequence[Any]:
    if not isinstance(frame_data, list):
        raise RejectedInput(
            "bad_frame",
            f"data must be a list of rows, got {type(frame_data).__name__}",
            where=where,
        )
    return frame_data


# ------------------------------------------------------------------------------ WS v2


def parse_ws_trades(
    frame_data: object, registry: SymbolRegistry, *, where: str, now_ns: int | None = None
) -> tuple[list[LiveTrade], list[RejectedInput]]:
    """Parse the ``data`` list of a WS v2 ``trade`` frame (snapshot or update).

    Each row needs a canonical v2 ``symbol``, ``price`` > 0 and ``qty`` > 0 as
    :func:`parse_number_text` accepts them (kept as that text), ``side``
    ``buy|sell``, ``ord_type`` ``market|limit``, an RFC 3339 ``timestamp`` between 2010 and a
    day from ``now_ns`` (default: the wall clock), and ``trade_id`` >= 0 when present. Good
    rows are returned in frame order; every bad row becomes one rejection, located
    ``"<where> row <i>"``.

    Raises:
        RejectedInput: ``bad_frame`` when ``frame_data`` is not a list.
    """
    now = _now_ns(now_ns)
    trades: list[LiveTrade] = []
    rejections: list[RejectedInput] = []
    for index, row in enumerate(_rows(frame_data, where)):
        try:
            trades.append(_ws_trade(row, registry, where, now))
        except RejectedInput as rejection:
            # Located here rather than per row up front: the string showed in profiles.
            row_where = f"{where} row {index}"
            rejections.append(RejectedInput(rejection.reason, rejection.detail, where=row_where))
    return trades, rejections


def _ws_trade(row: object, registry: SymbolRegistry, where: str, now_ns: int) -> LiveTrade:
    if type(row) is not dict and not isinstance(row, Mapping):  # the ABC check is the slow one
        raise RejectedInput("bad_row", f"trade row must be an object, got {row!r}", where=where)
    # One lookup each, and one handler for a missing field: this runs per trade.
    try:
        raw_symbol, raw_price, raw_qty = row["symbol"], row["price"], row["qty"]
        raw_side, ord_type, stamp = row["side"], row["ord_type"], row["timestamp"]
    except KeyError as exc:
        raise RejectedInput("missing_field", f"row has no {exc.args[0]!r}", where=where) from None
    symbol = _ws_symbol(raw_symbol, registry, where)
    price = parse_number_text(raw_price, "price", reason="bad_price", where=where)
    volume = parse_number_text(raw_qty, "qty", reason="bad_volume", where=where)
    side = _WS_SIDES.get(raw_side) if isinstance(raw_side, str) else None
    if side is None:
        raise RejectedInput("bad_side", f"side must be buy or sell, got {raw_side!r}", where=where)
    if not isinstance(ord_type, str) or ord_type not in _WS_ORD_TYPES:
        raise RejectedInput(
            "bad_ord_type", f"ord_type must be market or limit, got {ord_type!r}", where=where
        )
    trade_id = row.get("trade_id")
    if trade_id is not None:
        trade_id = _count(trade_id, "trade_id", "bad_trade_id", where)
    time_ns = parse_rfc3339_ns(stamp, where=where)
    _check_time_range(time_ns, now_ns, where)
    return LiveTrade(symbol, time_ns, price, volume, side, ord_type, trade_id)


def parse_ws_candles(
    frame_data: object, registry: SymbolRegistry, *, where: str, now_ns: int | None = None
) -> tuple[list[Candle], list[RejectedInput]]:
    """Parse the ``data`` list of a WS v2 ``ohlc`` frame into live, not-yet-final candles.

    The candle time is ``interval_begin``; the per-row ``timestamp`` is ignored because it is
    the interval END (documented as the start, deprecated, and a known source of one-interval
    shifts). Each row is checked: whole-minute ``interval_begin`` in range, ``interval`` one of
    Kraken's, prices > 0 with ``low <= open, close <= high``, ``volume``, ``vwap`` and
    ``trades`` >= 0. Candles come back with ``source=LIVE`` and ``final=False``: only the live
    path, which sees later candles arrive, can decide that one is complete.

    Raises:
        RejectedInput: ``bad_frame`` when ``frame_data`` is not a list.
    """
    now = _now_ns(now_ns)
    candles: list[Candle] = []
    rejections: list[RejectedInput] = []
    for index, row in enumerate(_rows(frame_data, where)):
        row_where = f"{where} row {index}"
        try:
            if not isinstance(row, Mapping):
                raise RejectedInput(
                    "bad_row", f"ohlc row must be an object, got {row!r}", where=row_where
                )
            symbol = _ws_symbol(_field(row, "symbol", row_where), registry, row_where)
            interval = _field(row, "interval", row_where)
            if type(interval) is not int or interval not in OHLC_INTERVALS:
                raise RejectedInput(
                    "bad_interval",
                    f"interval {interval!r} is not a Kraken interval",
                    where=row_where,
                )
            begin_ns = parse_rfc3339_ns(_field(row, "interval_begin", row_where), where=row_where)
            candles.append(
                _candle(
                    symbol,
                    begin_ns,
                    (
                        row.get(name, _MISSING)
                        for name in ("open", "high", "low", "close", "vwap", "volume", "trades")
                    ),
                    interval=interval,
                    source=CandleSource.LIVE,
                    final=False,
                    where=row_where,
                    now_ns=now,
                )
            )
        except RejectedInput as rejection:
            rejections.append(rejection)
    return candles, rejections


_MISSING = object()


def _candle(
    symbol: str,
    begin_ns: int,
    values: Any,
    *,
    interval: int,
    source: CandleSource,
    final: bool,
    where: str,
    now_ns: int,
) -> Candle:
    """Validate one candle from its fields: open, high, low, close, vwap, volume, trades."""
    names = ("open", "high", "low", "close", "vwap", "volume", "trades")
    raw = dict(zip(names, values, strict=True))
    for name, value in raw.items():
        if value is _MISSING:
            raise RejectedInput("missing_field", f"candle has no {name!r}", where=where)
    _check_time_range(begin_ns, now_ns, where)
    if begin_ns % (60 * NS_PER_S):
        raise RejectedInput(
            "bad_time", f"candle start {begin_ns} ns is not on a whole minute", where=where
        )
    open_, high, low, close = (
        _decimal(raw[name], name, "bad_price", where) for name in ("open", "high", "low", "close")
    )
    volume = _decimal(raw["volume"], "volume", "bad_volume", where, allow_zero=True)
    vwap = _decimal(raw["vwap"], "vwap", "bad_price", where, allow_zero=True)
    trades = _count(raw["trades"], "trades", "bad_count", where)
    if not (low <= open_ <= high and low <= close <= high):
        raise RejectedInput(
            "bad_candle", f"prices out of order: o={open_} h={high} l={low} c={close}", where=where
        )
    return Candle(
        symbol=symbol,
        time=ns_to_datetime(begin_ns),
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        # An interval without volume has no average price; Kraken's placeholder "0.000000"
        # would otherwise read as a price of zero.
        vwap=vwap if volume > 0 else None,
        trades=trades,
        interval_min=interval,
        source=source,
        final=final,
    )


# -------------------------------------------------------------------------------- REST


def _single_rows(
    result: object, registry: SymbolRegistry, symbol: str, where: str
) -> tuple[str, Sequence[Any]]:
    """The rows under the one key of ``result`` that is not ``last``, however Kraken spelled it."""
    if not isinstance(result, Mapping):
        raise RejectedInput(
            "bad_body", f"result must be an object, got {type(result).__name__}", where=where
        )
    canonical = registry.canonical(symbol)
    keys = [key for key in result if key != "last"]
    if len(keys) != 1:
        raise RejectedInput(
            "bad_body", f"expected one pair key besides 'last', got {keys!r}", where=where
        )
    key = keys[0]
    # Kraken answers under the REST key, the altname or the slash form; any is fine as long
    # as it does not name a different market.
    if key in registry and registry.canonical(key) != canonical:
        raise RejectedInput(
            "wrong_pair", f"asked for {canonical}, answer is keyed {key!r}", where=where
        )
    rows = result[key]
    if not isinstance(rows, list):
        raise RejectedInput("bad_body", f"rows under {key!r} must be a list", where=where)
    return canonical, rows


def parse_rest_trades(
    result: object, registry: SymbolRegistry, symbol: str, *, now_ns: int | None = None
) -> tuple[list[Trade], str | None, list[RejectedInput]]:
    """Parse the ``result`` of REST ``/public/Trades`` (decoded by :func:`loads_exact`).

    Rows are ``[price, volume, time, "b"|"s", "m"|"l", misc, trade_id]`` or the older 6-field
    form without ``trade_id``. ``time`` must be exact (``Decimal``) and becomes integer ns.
    Returns the good trades (oldest first, as sent), the ``last`` cursor as a digit string
    (``None`` when missing or malformed; the latter is also a rejection) and the rejections.
    Id-less rows sharing a time get ``seq`` 0, 1, 2… in page order.

    Raises:
        RejectedInput: ``bad_body`` / ``wrong_pair`` when the result is not one list of rows.
        UnknownSymbol: ``symbol`` is not in ``registry`` (a caller error, not bad input).
    """
    where = f"Trades {symbol}"
    now = _now_ns(now_ns)
    canonical, rows = _single_rows(result, registry, symbol, where)
    assert isinstance(result, Mapping)  # checked by _single_rows; narrows for mypy
    rejections: list[RejectedInput] = []
    last = _rest_trades_last(result.get("last"), where, rejections)
    trades: list[Trade] = []
    seq_time, seq = -1, 0
    for index, row in enumerate(rows):
        row_where = f"{where} row {index}"
        try:
            trade = _rest_trade(row, canonical, row_where, now)
        except RejectedInput as rejection:
            rejections.append(rejection)
            continue
        if trade.trade_id is None:
            seq = seq + 1 if trade.time_ns == seq_time else 0
            seq_time = trade.time_ns
            if seq:
                trade = dataclasses.replace(trade, seq=seq)
        trades.append(trade)
    return trades, last, rejections


def _rest_trades_last(value: object, where: str, rejections: list[RejectedInput]) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)  # exact: JSON integers decode to int
    rejections.append(
        RejectedInput("bad_cursor", f"last must be a digit string, got {value!r}", where=where)
    )
    return None


def _rest_trade(row: object, symbol: str, where: str, now_ns: int) -> Trade:
    if not isinstance(row, list) or len(row) not in (6, 7):
        raise RejectedInput(
            "bad_row", f"trade row must be a list of 6 or 7 fields, got {row!r}", where=where
        )
    price = _decimal(row[0], "price", "bad_price", where)
    volume = _decimal(row[1], "volume", "bad_volume", where)
    time_ns = parse_unix_seconds_ns(row[2], where=where)
    _check_time_range(time_ns, now_ns, where)
    side = _REST_SIDES.get(row[3]) if isinstance(row[3], str) else None
    if side is None:
        raise RejectedInput("bad_side", f"side must be b or s, got {row[3]!r}", where=where)
    ord_type = _REST_ORD_TYPES.get(row[4]) if isinstance(row[4], str) else None
    if ord_type is None:
        raise RejectedInput(
            "bad_ord_type", f"order type must be m or l, got {row[4]!r}", where=where
        )
    trade_id = _count(row[6], "trade_id", "bad_trade_id", where) if len(row) == 7 else None
    return Trade(
        symbol=symbol,
        time_ns=time_ns,
        price=price,
        volume=volume,
        side=side,
        ord_type=ord_type,
        trade_id=trade_id,
    )


def parse_rest_ohlc(
    result: object,
    registry: SymbolRegistry,
    symbol: str,
    *,
    interval: int = 1,
    now_ns: int | None = None,
) -> tuple[list[Candle], int | None, list[RejectedInput]]:
    """Parse the ``result`` of REST ``/public/OHLC``.

    Rows are ``[time, open, high, low, close, vwap, volume, count]`` with ``time`` the candle
    open in integer Unix seconds. The final row is Kraken's live, uncommitted interval and is
    returned with ``final=False``; the others are ``final=True``; all have ``source=REST``.
    Returns the good candles, ``last`` as an int (``None`` when missing or malformed; the
    latter is also a rejection) and the rejections.

    Raises:
        RejectedInput: ``bad_body`` / ``wrong_pair`` when the result is not one list of rows.
        UnknownSymbol: ``symbol`` is not in ``registry``.
    """
    where = f"OHLC {symbol}"
    now = _now_ns(now_ns)
    canonical, rows = _single_rows(result, registry, symbol, where)
    assert isinstance(result, Mapping)
    rejections: list[RejectedInput] = []
    raw_last = result.get("last")
    last: int | None = None
    if isinstance(raw_last, int) and not isinstance(raw_last, bool) and raw_last >= 0:
        last = raw_last
    elif isinstance(raw_last, str) and _DIGITS.fullmatch(raw_last):
        last = int(raw_last)
    elif raw_last is not None:
        rejections.append(
            RejectedInput("bad_cursor", f"last must be an integer, got {raw_last!r}", where=where)
        )
    candles: list[Candle] = []
    for index, row in enumerate(rows):
        row_where = f"{where} row {index}"
        try:
            if not isinstance(row, list) or len(row) != 8:
                raise RejectedInput(
                    "bad_row", f"ohlc row must be a list of 8 fields, got {row!r}", where=row_where
                )
            seconds = row[0]
            if isinstance(seconds, bool) or not isinstance(seconds, int):
                raise RejectedInput(
                    "bad_time",
                    f"candle time must be integer seconds, got {seconds!r}",
                    where=row_where,
                )
            candles.append(
                _candle(
                    canonical,
                    seconds * NS_PER_S,
                    iter(row[1:]),
                    interval=interval,
                    source=CandleSource.REST,
                    final=index != len(rows) - 1,
                    where=row_where,
                    now_ns=now,
                )
            )
        except RejectedInput as rejection:
            rejections.append(rejection)
    return candles, last, rejections


def parse_asset_pairs(result: object) -> SymbolRegistry:
    """Build the symbol registry from the ``result`` of REST ``/public/AssetPairs``.

    Dark-pool and wsname-less entries are skipped (see
    :meth:`SymbolRegistry.from_asset_pairs`); the registry holds exactly the listed pairs.

    Raises:
        RejectedInput: ``bad_body`` when ``result`` is not an object.
    """
    if not isinstance(result, Mapping):
        raise RejectedInput(
            "bad_body", f"AssetPairs result must be an object, got {type(result).__name__}"
        )
    return SymbolRegistry.from_asset_pairs(result)


# ---------------------------------------------------------------------------- envelope


def check_envelope(body: object, *, now_s: float | None = None) -> Any:
    """Return ``result`` from a Kraken REST body ``{"error": [...], "result": ...}``.

    Kraken reports errors in HTTP 200 bodies, so this is where they become exceptions.
    Warnings (strings starting with ``W``) are ignored. Errors are classified by their text:

    - ``EGeneral:Too many requests``, ``EAPI:Rate limit exceeded``, ``EService:Throttled:<t>``
      → :class:`KrakenRateLimited` (a :class:`RateLimited`; ``retry_after_s`` from ``<t>``,
      a Unix time, relative to ``now_s``, default the wall clock).
    - ``EService:Unavailable|Busy|Internal error|Deadline elapsed``, ``EGeneral:Internal
      error``, and any error not recognised → :class:`KrakenError` (transient: retry).
    - ``EQuery:*`` (``Unknown asset pair``…), ``EGeneral:Invalid arguments``, ``EGeneral:
      Permission denied``, ``EAPI:*`` → :class:`KrakenRequestError` (the request is wrong).

    Raises:
        KrakenRateLimited, KrakenError, KrakenRequestError: as above; also KrakenError when
            the body is not an envelope or a success lacks ``result``.
    """
    if not isinstance(body, Mapping) or not isinstance(body.get("error", []), list):
        raise KrakenError(f"malformed Kraken envelope: {str(body)[:200]}")
    errors = [str(item) for item in body.get("error", []) if not str(item).startswith("W")]
    if errors:
        raise classify_errors(errors, now_s=now_s)
    if "result" not in body:
        raise KrakenError(f"Kraken envelope has neither errors nor a result: {str(body)[:200]}")
    return body["result"]


def classify_errors(errors: Sequence[str], *, now_s: float | None = None) -> HistdataError:
    """Map Kraken error strings to the exception :func:`check_envelope` raises (see there)."""
    message = "Kraken error: " + "; ".join(errors)
    for error in errors:
        if error.startswith(_RATE_LIMIT_ERRORS):
            return KrakenRateLimited(message, errors=errors)
        if error.startswith(_THROTTLED_PREFIX):
            return KrakenRateLimited(
                message, retry_after_s=_throttled_for(error, now_s), errors=errors
            )
    for error in errors:
        if error.startswith(_TRANSIENT_PREFIXES):
            return KrakenError(message)
    for error in errors:
        if error.startswith(_REQUEST_PREFIXES):
            return KrakenRequestError(message, errors=errors)
    # An error we have never seen: retrying a bounded number of times is the safe guess.
    return KrakenError(message)


def _throttled_for(error: str, now_s: float | None) -> float | None:
    """Seconds to wait from ``EService:Throttled:<unix time>``; None without a usable time."""
    stamp = error[len(_THROTTLED_PREFIX) :].lstrip(": ").strip()
    try:
        exact = Decimal(stamp)
    except InvalidOperation:
        return None
    if not exact.is_finite() or exact < 0:
        return None
    until = float(exact)
    if until < MIN_TIME_NS / NS_PER_S:
        return until  # a small number reads as a duration, not a time
    now = time.time() if now_s is None else now_s
    return max(0.0, until - now)
