"""Parse and validate single CSV rows into the one Trade and Candle types.

Each parser takes the already-split fields of one line and either returns a model object or
raises :class:`~histdata.errors.RejectedInput` naming the reason, so the caller counts the row
and keeps going. Numbers are built from their text with :class:`~decimal.Decimal`, never
through a float.

Id-less trades are told apart by ``seq``, their ordinal among the file's rows with the same
timestamp (:class:`SeqCounter`): a re-import produces the same keys and adds nothing, and
trades that share a second are all kept.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from decimal import Decimal

from histdata.errors import RejectedInput
from histdata.kraken.parse import MAX_FUTURE_NS, MIN_TIME_NS, parse_unix_seconds_ns
from histdata.model import NS_PER_S, Candle, CandleSource, Side, Trade, ns_to_datetime

__all__ = [
    "SeqCounter",
    "check_trade3",
    "max_time_ns",
    "parse_ohlcvt",
    "parse_trade3",
    "parse_trade7",
    "too_long",
]

_NUMBER = re.compile(r"\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")
# Exponent notation can write numbers PostgreSQL's numeric cannot hold (1e999999), which
# would fail the whole batch's write; no price or volume is anywhere near these bounds.
_MAX_ADJUSTED_EXPONENT = 1000
_SIDES = {"b": Side.BUY, "s": Side.SELL}
_ORD_TYPES = {"m": "market", "l": "limit", "": None}


def _decimal(text: str, name: str, reason: str, *, allow_zero: bool = False) -> Decimal:
    if _NUMBER.fullmatch(text) is None:
        raise RejectedInput(reason, f"{name} {text!r} is not a decimal number")
    value = Decimal(text)
    if abs(value.adjusted()) > _MAX_ADJUSTED_EXPONENT and value != 0:
        raise RejectedInput(reason, f"{name} {text!r} is out of range")
    if value < 0 or (value == 0 and not allow_zero):
        raise RejectedInput(reason, f"{name} {text!r} must be {'>= 0' if allow_zero else '> 0'}")
    return value


def _time_ns(text: str, max_ns: int) -> int:
    # Fast path: the complete archives hold whole seconds.
    if text.isascii() and text.isdigit():
        time_ns = int(text) * NS_PER_S
    else:
        time_ns = parse_unix_seconds_ns(text)
    if time_ns < MIN_TIME_NS or time_ns > max_ns:
        raise RejectedInput("bad_time", f"time {text!r} is before 2010 or in the future")
    return time_ns


def too_long(length: int, max_line: int) -> RejectedInput:
    """The rejection of a line of ``length`` bytes over the ``[import] max_line_bytes`` limit."""
    return RejectedInput(
        "line_too_long",
        f"line of {length:,} bytes is longer than [import] max_line_bytes = {max_line:,}",
    )


def max_time_ns(now_ns: int) -> int:
    """The latest acceptable time for a row read at ``now_ns`` (clock skew allowed)."""
    return now_ns + MAX_FUTURE_NS


class SeqCounter:
    """Assigns each id-less trade its ordinal among the file's trades with the same time.

    Kraken's files are time-ordered, so one running count is enough; a row whose time goes
    backwards is counted in :attr:`backwards` and still numbered correctly from the counts of
    the last ``window`` distinct times. A row older than that window would risk a ``seq``
    that collides with an earlier row (a silent loss), so it is rejected as ``out_of_order``.
    """

    def __init__(self, *, window: int = 65_536) -> None:
        self._window = window
        # Oldest first; an OrderedDict pops its oldest entry in O(1) where a dict rescans.
        self._counts: OrderedDict[int, int] = OrderedDict()
        self._current = -1
        self._current_n = 0
        self._floor = -1  # newest time forgotten from the window
        self._newest = -1  # newest time ever numbered
        self.backwards = 0

    def next(self, time_ns: int) -> int:
        """The ``seq`` for the next row at ``time_ns``.

        Raises:
            RejectedInput: ``out_of_order`` when ``time_ns`` lies before the window.
        """
        if time_ns == self._current:
            n = self._current_n
            self._current_n = n + 1
            return n
        if time_ns < self._current:
            self.backwards += 1
        if self._current >= 0:
            self._counts[self._current] = self._current_n
        seen = self._counts.get(time_ns)
        if seen is not None:
            n = seen
        else:
            if time_ns <= self._floor:
                raise RejectedInput(
                    "out_of_order", "time goes back further than the ordering window"
                )
            n = 0
            self._counts[time_ns] = 0
            self._newest = max(self._newest, time_ns)
            while len(self._counts) > self._window:
                oldest, _ = self._counts.popitem(last=False)
                self._floor = max(self._floor, oldest)
        self._current, self._current_n = time_ns, n + 1
        return n

    def first_seq(self, time_ns: int) -> int | None:
        """The ``seq`` :meth:`next` would give ``time_ns`` if a run of rows can start there.

        None unless ``time_ns`` is, or lies after, the newest time seen so far: only then
        does a time-ordered run of rows from ``time_ns`` on get its ``seq`` values by
        counting alone (see :meth:`skip_runs`).
        """
        if time_ns > self._newest:
            return 0
        if time_ns == self._current == self._newest:
            return self._current_n
        return None

    def skip_runs(self, times: Sequence[int], counts: Sequence[int]) -> None:
        """Account for ``counts[i]`` rows at each of the increasing ``times``, numbered elsewhere.

        The state afterwards is exactly that of calling :meth:`next` once per row; the first
        time must be one :meth:`first_seq` accepted.
        """
        if len(times) != len(counts):
            raise ValueError("times and counts differ in length")
        first = 0
        if times and times[0] == self._current:
            self._current_n += counts[0]
            first = 1
        if first == len(times):
            return
        # What next() does one row at a time, in bulk: every new time is appended with its
        # count (later times are never already held) and the oldest beyond the window go.
        held = self._counts
        if self._current >= 0:
            held[self._current] = self._current_n
        excess = len(held) + len(times) - first - self._window
        if excess > 0:
            dropped_held = list(held)[: min(excess, len(held))]
            dropped_new = excess - len(dropped_held)
            self._floor = max(
                self._floor,
                *dropped_held,
                times[first + dropped_new - 1] if dropped_new else -1,
            )
            if dropped_held:
                held = self._counts = OrderedDict(list(held.items())[len(dropped_held) :])
            first += dropped_new
        held.update(zip(times[first:], counts[first:], strict=True))
        self._current, self._current_n = times[-1], counts[-1]
        self._newest = max(self._newest, self._current)


def check_trade3(fields: Sequence[str], max_ns: int) -> tuple[int, Decimal, Decimal]:
    """Validate a ``time,price,volume`` row: (time in ns, price, volume); no ``seq`` yet.

    Raises:
        RejectedInput: ``bad_columns``, ``bad_time``, ``bad_price``, ``bad_volume``.
    """
    if len(fields) != 3:
        raise RejectedInput("bad_columns", f"expected 3 fields, got {len(fields)}")
    time_ns = _time_ns(fields[0], max_ns)
    price = _decimal(fields[1], "price", "bad_price")
    volume = _decimal(fields[2], "volume", "bad_volume")
    return time_ns, price, volume


def parse_trade3(fields: list[str], symbol: str, seqs: SeqCounter, max_ns: int) -> Trade:
    """A ``time,price,volume`` row (whole or fractional Unix seconds).

    Raises:
        RejectedInput: ``bad_columns``, ``bad_time``, ``bad_price``, ``bad_volume``,
            ``out_of_order``.
    """
    time_ns, price, volume = check_trade3(fields, max_ns)
    return Trade(symbol, time_ns, price, volume, seq=seqs.next(time_ns))


def parse_trade7(fields: list[str], symbol: str, seqs: SeqCounter, max_ns: int) -> Trade:
    """A quarterly ``price,volume,time,side,ordertype,misc,trade_id`` row.

    A missing or zero trade id (Kraken's old ``trade_id = 0`` runs) identifies nothing, so
    such rows are numbered by ``seq`` like the id-less files.

    Raises:
        RejectedInput: ``bad_columns``, ``bad_time``, ``bad_price``, ``bad_volume``,
            ``bad_side``, ``bad_trade_id``, ``out_of_order``.
    """
    if len(fields) != 7:
        raise RejectedInput("bad_columns", f"expected 7 fields, got {len(fields)}")
    price = _decimal(fields[0], "price", "bad_price")
    volume = _decimal(fields[1], "volume", "bad_volume")
    time_ns = _time_ns(fields[2], max_ns)
    side = _SIDES.get(fields[3].lower())
    if side is None:
        raise RejectedInput("bad_side", f"side {fields[3]!r} is not b or s")
    ord_key = fields[4].lower()
    if ord_key not in _ORD_TYPES:
        raise RejectedInput("bad_side", f"order type {fields[4]!r} is not m or l")
    raw_id = fields[6].strip()
    if raw_id and not (raw_id.isascii() and raw_id.isdigit()):
        raise RejectedInput("bad_trade_id", f"trade id {raw_id!r} is not a whole number")
    trade_id = int(raw_id) if raw_id else 0
    if trade_id >= 2**63:
        raise RejectedInput("bad_trade_id", f"trade id {raw_id!r} is out of range")
    if trade_id:
        return Trade(symbol, time_ns, price, volume, side, _ORD_TYPES[ord_key], trade_id, 0)
    return Trade(
        symbol, time_ns, price, volume, side, _ORD_TYPES[ord_key], None, seqs.next(time_ns)
    )


def parse_ohlcvt(fields: list[str], symbol: str, interval_min: int, max_ns: int) -> Candle:
    """A ``time,open,high,low,close,volume,trades`` row; ``time`` is the interval's open.

    Raises:
        RejectedInput: ``bad_columns``, ``bad_time`` (also when not aligned to the
            interval), ``bad_price``, ``bad_volume``, ``bad_count``, ``bad_ohlc`` (high
            below open/close/low, or low above open/close).
    """
    if len(fields) != 7:
        raise RejectedInput("bad_columns", f"expected 7 fields, got {len(fields)}")
    text = fields[0]
    if not (text.isascii() and text.isdigit()):
        raise RejectedInput("bad_time", f"candle time {text!r} is not whole Unix seconds")
    time_ns = _time_ns(text, max_ns)
    if int(text) % (interval_min * 60):
        raise RejectedInput("bad_time", f"candle time {text} is not on a {interval_min}m boundary")
    o = _decimal(fields[1], "open", "bad_price")
    h = _decimal(fields[2], "high", "bad_price")
    lo = _decimal(fields[3], "low", "bad_price")
    c = _decimal(fields[4], "close", "bad_price")
    volume = _decimal(fields[5], "volume", "bad_volume", allow_zero=True)
    count_text = fields[6]
    if not (count_text.isascii() and count_text.isdigit()) or int(count_text) >= 2**31:
        raise RejectedInput("bad_count", f"trade count {count_text!r} is not a whole number")
    if h < max(o, c, lo) or lo > min(o, c):
        raise RejectedInput("bad_ohlc", f"high {h} / low {lo} do not bound open {o} / close {c}")
    return Candle(
        symbol,
        ns_to_datetime(time_ns),
        o,
        h,
        lo,
        c,
        volume,
        None,
        int(count_text),
        interval_min,
        CandleSource.CSV,
        True,
    )
