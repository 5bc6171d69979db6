"""The fast path for 1-minute OHLCVT files: validate a whole block of candle lines at once.

Kraken's ``<PAIR>_1.csv`` holds a row per minute with trades, 525,600 a year; building a
Candle with six Decimals per row in Python capped the import at 10–26k rows/s. Here a
block is split by Arrow (:func:`~histdata.importer.columnar.read_columns`) and checked
column by column, and the text of every number goes to ``COPY`` as it is in the file.

The column checks take a line as it is only when
:func:`~histdata.importer.rows.parse_ohlcvt` would take it unchanged: a whole-second time on
the interval's boundary between 2010 and now, plain unsigned decimals (prices above zero,
volume zero or more; at most 20 integer and 18 fraction digits), a trade count below 2³¹,
high and low bounding open and close, seven fields. The few other lines go through
``parse_ohlcvt`` one by one: they are rejected with its reasons or normalised and kept. A
block holding a blank line takes the row path. A minute repeated in the file needs no check
here: ``COPY`` refuses it, and the row write that follows keeps the last, as the row path
does.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from histdata.errors import RejectedInput
from histdata.importer.columnar import BlockRejection, lines_of_rows, patch_rows, read_columns
from histdata.importer.rows import parse_ohlcvt, too_long
from histdata.kraken.parse import MIN_TIME_NS
from histdata.model import NS_PER_S, Candle, CandleSource, ns_to_datetime

__all__ = ["CandleBlock", "read_ohlcvt_block"]

_COLUMNS = ("time", "open", "high", "low", "close", "volume", "trades")
_PLAIN = r"^[0-9]{1,20}(?:\.[0-9]{0,18})?$"
_WRITE = pa_csv.WriteOptions(include_header=False, quoting_style="none")


@dataclass(frozen=True, slots=True)
class CandleBlock:
    """A block of valid 1-minute candles; ``first_s`` and ``last_s`` are its earliest and
    latest times."""

    table: pa.Table  # seconds (int64), open … volume (the file's text), trades (int64)
    first_s: int
    last_s: int

    @property
    def rows(self) -> int:
        """The number of candles (one per line) in the block."""
        return int(self.table.num_rows)

    def encode_copy_csv(self, symbol_id: int) -> pa.Buffer:
        """The rows as :func:`~histdata.storage.candles.copy_new_candles` takes them:
        ``symbol_id,time,open,high,low,close,volume,trades,csv,true``, the time zone-less
        UTC."""
        n = self.table.num_rows
        columns = {
            "symbol_id": pa.nulls(n, pa.int16()).fill_null(symbol_id),
            "time": self.table["seconds"].cast(pa.timestamp("s")),
            **{name: self.table[name] for name in _COLUMNS[1:]},
            "source": pa.nulls(n, pa.string()).fill_null("csv"),
            "final": pa.nulls(n, pa.bool_()).fill_null(True),
        }
        sink = pa.BufferOutputStream()
        pa_csv.write_csv(pa.table(columns), sink, _WRITE)
        return sink.getvalue()

    def to_candles(self, symbol: str, offset: int = 0, length: int | None = None) -> list[Candle]:
        """Rows ``offset`` to ``offset + length`` as Candles (source CSV, no VWAP), for the
        row-by-row write path."""
        part = self.table.slice(offset, length)
        columns = [part[name].to_pylist() for name in ("seconds", *_COLUMNS[1:])]
        return [
            Candle(
                symbol,
                ns_to_datetime(seconds * NS_PER_S),
                Decimal(o),
                Decimal(h),
                Decimal(lo),
                Decimal(c),
                Decimal(v),
                None,
                int(n),
                1,
                CandleSource.CSV,
                True,
            )
            for seconds, o, h, lo, c, v, n in zip(*columns, strict=True)
        ]


def _fast_rows(columns: list[pa.Array], interval_min: int, max_ns: int, max_line: int) -> pa.Array:
    """True for the rows this path takes as they are: everything else is checked row by row."""
    time_text, o, h, lo, c, volume, count = columns
    ok = pc.and_kleene(pc.ascii_is_decimal(time_text), pc.less_equal(pc.utf8_length(time_text), 12))
    seconds = pc.if_else(ok, time_text, "0").cast(pa.int64())
    ok = pc.and_kleene(ok, pc.greater_equal(seconds, -(-MIN_TIME_NS // NS_PER_S)))
    ok = pc.and_kleene(ok, pc.less_equal(seconds, max_ns // NS_PER_S))
    step = interval_min * 60  # integer division of int64 arrays truncates
    on_boundary = pc.equal(pc.subtract(seconds, pc.multiply(pc.divide(seconds, step), step)), 0)
    ok = pc.and_kleene(ok, on_boundary)
    for number in (o, h, lo, c, volume):
        ok = pc.and_kleene(ok, pc.match_substring_regex(number, _PLAIN))
    ok = pc.and_kleene(ok, pc.ascii_is_decimal(count))
    ok = pc.and_kleene(ok, pc.less_equal(pc.utf8_length(count), 9))  # below 2**31 surely
    length = pc.add(_sum_lengths(columns), len(columns) - 1)
    ok = pc.and_kleene(ok, pc.less_equal(length, max_line))
    # Order and sign by float64, which rounds a decimal to the nearest double: monotone, so
    # a > b as floats means a > b exactly, and every plain number here that is not zero is
    # far above the smallest double. Equal floats prove equality only for equal texts;
    # other ties go to the exact check. Rows failing so far compare placeholders.
    prices = (o, h, lo, c) if _all(ok) else tuple(pc.if_else(ok, p, "1") for p in (o, h, lo, c))
    fo, fh, fl, fc = (price.cast(pa.float64()) for price in prices)
    for price in (fo, fh, fl, fc):
        ok = pc.and_kleene(ok, pc.greater(price, 0))
    for (high, high_text), (low, low_text) in (
        ((fh, prices[1]), (fo, prices[0])),
        ((fh, prices[1]), (fc, prices[3])),
        ((fh, prices[1]), (fl, prices[2])),
        ((fo, prices[0]), (fl, prices[2])),
        ((fc, prices[3]), (fl, prices[2])),
    ):
        above = pc.or_kleene(
            pc.greater(high, low),
            pc.and_kleene(pc.equal(high, low), pc.equal(high_text, low_text)),
        )
        ok = pc.and_kleene(ok, above)
    return ok


def _all(mask: pa.Array) -> bool:
    return bool(pc.all(mask).as_py())


def _sum_lengths(columns: list[pa.Array]) -> pa.Array:
    """The byte length of each row's fields, summed."""
    total = pc.binary_length(columns[0])
    for column in columns[1:]:
        total = pc.add(total, pc.binary_length(column))
    return total


def _check_rows(
    columns: list[pa.Array], rows: list[int], interval_min: int, max_ns: int, max_line: int
) -> tuple[dict[int, tuple[str, ...]], dict[int, RejectedInput]] | None:
    """Run ``parse_ohlcvt`` on the table rows ``rows``: the valid ones normalised to plain
    text, and the rejections; None when a row may be a blank line (only the row path can
    tell its reason from that of ``,,,,,,``)."""
    index = pa.array(rows, pa.int64())
    texts = [column.take(index).to_pylist() for column in columns]
    valid: dict[int, tuple[str, ...]] = {}
    rejected: dict[int, RejectedInput] = {}
    for row, fields in zip(rows, zip(*texts, strict=True), strict=True):
        if not any(fields):
            return None
        length = sum(len(field.encode()) for field in fields) + len(fields) - 1
        try:
            if length > max_line:
                raise too_long(length, max_line)
            candle = parse_ohlcvt(list(fields), "", interval_min, max_ns)
        except RejectedInput as exc:
            rejected[row] = exc
            continue
        values = (candle.open, candle.high, candle.low, candle.close, candle.volume)
        valid[row] = (
            str(int(candle.time.timestamp())),
            *(format(value, "f") for value in values),
            str(candle.trades),
        )
    return valid, rejected


def read_ohlcvt_block(
    data: bytes, interval_min: int, max_ns: int, max_line: int
) -> tuple[CandleBlock | None, list[BlockRejection]] | None:
    """Parse a block of whole OHLCVT lines.

    Returns ``(block, rejections)`` (``block`` None when no line was kept; rejections carry
    no neighbouring times), or None when the block must take the row path (see the module
    docstring).
    """
    read = read_columns(data, _COLUMNS)
    if read is None:
        return None
    columns, wrong_count = read
    n = len(columns[0])
    fast = _fast_rows(columns, interval_min, max_ns, max_line) if n else pa.array([], pa.bool_())
    odd = pc.indices_nonzero(pc.invert(fast)).to_pylist() if n else []
    checked = _check_rows(columns, odd, interval_min, max_ns, max_line) if odd else ({}, {})
    if checked is None:
        return None
    valid, rejected = checked
    errors: dict[int, RejectedInput] = {}
    for number, text in wrong_count:
        fields = text.split(",")
        try:
            if len(text.encode()) > max_line:
                raise too_long(len(text.encode()), max_line)
            parse_ohlcvt(fields, "", interval_min, max_ns)
        except RejectedInput as exc:
            errors[number - 1] = exc
        else:  # Arrow skipped a line the row parser takes: let the row path decide
            return None
    line_of = lines_of_rows(n, sorted(errors))
    errors.update((line_of[row], exc) for row, exc in rejected.items())
    rejections = [BlockRejection(line, errors[line], None, None) for line in sorted(errors)]
    patched = patch_rows(columns, valid, set(rejected))
    if not len(patched[0]):
        return None, rejections
    seconds = patched[0].cast(pa.int64())
    low, high = (int(v.as_py()) for v in pc.min_max(seconds).values())
    table = pa.table(
        {
            "seconds": seconds,
            **{name: patched[i] for i, name in enumerate(_COLUMNS) if 0 < i < 6},
            "trades": patched[6].cast(pa.int64()),
        }
    )
    return CandleBlock(table, low, high), rejections
