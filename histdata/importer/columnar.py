"""The fast path for 3-column trade files: validate and number a whole block of lines at once.

Kraken's ``time,price,volume`` files are tens of millions of rows; building a Trade, two
Decimals and a datetime per row in Python caps an import far below what PostgreSQL's ``COPY``
takes. Here a block of lines is parsed by Arrow's CSV reader and checked column by column, so
the text of every price and volume goes to the database exactly as it is in the file.

The check is conservative: a block is accepted only if every line would pass
:func:`~histdata.importer.rows.parse_trade3` unchanged (whole-second times between 2010 and
now, plain unsigned decimal numbers above zero, three fields) and the times never go back,
so that ``seq`` is a plain count. Anything else (a bad line, a fractional time, a row out of
order) makes :func:`read_trade3_block` return None and the caller parses that block row by
row, which rejects and reports exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from histdata.importer.rows import SeqCounter
from histdata.kraken.parse import MIN_TIME_NS
from histdata.model import NS_PER_S, Trade

__all__ = ["TradeBlock", "read_trade3_block", "second_boundary"]

# Unsigned plain decimals only: the row parser also takes exponents and non-ASCII digits,
# which are rare enough to leave to it.
_PLAIN_DECIMAL = r"^[0-9]+(\.[0-9]*)?$"
_ZERO = r"^[0.]*$"
_READ = pa_csv.ReadOptions(column_names=["time", "price", "volume"], block_size=1 << 22)
# No quoting (the row parser does not unquote), and blank lines are rows, so they fail.
_PARSE = pa_csv.ParseOptions(quote_char=False, ignore_empty_lines=False)
_CONVERT = pa_csv.ConvertOptions(
    column_types={"time": pa.string(), "price": pa.string(), "volume": pa.string()},
    strings_can_be_null=False,
    quoted_strings_can_be_null=False,
)
_WRITE = pa_csv.WriteOptions(include_header=False, quoting_style="none")


@dataclass(frozen=True, slots=True)
class TradeBlock:
    """A block of valid, time-ordered 3-column trades with their ``seq`` numbers.

    ``first_s`` and ``last_s`` are the first and last whole seconds in the block.
    """

    table: pa.Table  # seconds (int64), price, volume (the file's text), seq (int32)
    first_s: int
    last_s: int

    @property
    def rows(self) -> int:
        """The number of trades (one per line) in the block."""
        return int(self.table.num_rows)

    def encode_copy_csv(self, symbol_id: int) -> pa.Buffer:
        """The rows as :meth:`Storage.copy_new_trades` takes them.

        ``symbol_id,time,price,volume,seq,source`` with the time as a zone-less UTC
        timestamp; price and volume are the file's own text.
        """
        n = self.table.num_rows
        table = pa.table(
            {
                "symbol_id": pa.nulls(n, pa.int16()).fill_null(symbol_id),
                "time": self.table["seconds"].cast(pa.timestamp("s")),
                "price": self.table["price"],
                "volume": self.table["volume"],
                "seq": self.table["seq"],
                "source": pa.nulls(n, pa.string()).fill_null("c"),
            }
        )
        sink = pa.BufferOutputStream()
        pa_csv.write_csv(table, sink, _WRITE)
        return sink.getvalue()

    def to_trades(self, symbol: str, offset: int = 0, length: int | None = None) -> list[Trade]:
        """Rows ``offset`` to ``offset + length`` as Trades, for the row-by-row write path."""
        part = self.table.slice(offset, length)
        columns = [part[name].to_pylist() for name in ("seconds", "price", "volume", "seq")]
        return [
            Trade(symbol, seconds * NS_PER_S, Decimal(price), Decimal(volume), seq=seq)
            for seconds, price, volume, seq in zip(*columns, strict=True)
        ]


def _all(mask: pa.ChunkedArray | pa.Array) -> bool:
    return bool(pc.all(mask).as_py())


def read_trade3_block(data: bytes, seqs: SeqCounter, max_ns: int) -> TradeBlock | None:
    """Parse a block of whole ``time,price,volume`` lines and number them from ``seqs``.

    Returns None, leaving ``seqs`` untouched, when any line is not a plain valid row or the
    block's times are not in order after what ``seqs`` has seen.
    """
    try:
        table = pa_csv.read_csv(pa.py_buffer(data), _READ, _PARSE, _CONVERT)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    n = table.num_rows
    if n == 0:
        return None
    time_text, price, volume = table["time"], table["price"], table["volume"]
    if not (
        _all(pc.ascii_is_decimal(time_text))
        and _all(pc.less_equal(pc.utf8_length(time_text), 12))
        and _all(pc.match_substring_regex(price, _PLAIN_DECIMAL))
        and _all(pc.match_substring_regex(volume, _PLAIN_DECIMAL))
        and not pc.any(pc.match_substring_regex(price, _ZERO)).as_py()
        and not pc.any(pc.match_substring_regex(volume, _ZERO)).as_py()
    ):
        return None
    seconds = time_text.cast(pa.int64()).combine_chunks()
    low, high = (int(v.as_py()) for v in pc.min_max(seconds).values())
    if low * NS_PER_S < MIN_TIME_NS or high * NS_PER_S > max_ns:
        return None
    first = int(seconds[0].as_py())
    start_seq = seqs.first_seq(first * NS_PER_S)
    if start_seq is None:
        return None
    earlier, later = seconds.slice(0, n - 1), seconds.slice(1)
    if not _all(pc.greater_equal(later, earlier)):
        return None
    # seq = position - position of the first row with the same time, plus the carried count
    new_time = pa.concat_arrays([pa.array([True]), pc.not_equal(later, earlier)])
    position = pc.subtract(pc.cumulative_sum(pa.nulls(n, pa.int32()).fill_null(1)), 1)
    run_start = pc.cumulative_max(pc.if_else(new_time, position, 0))
    seq = pc.subtract(position, run_start)
    run_starts = pc.indices_nonzero(new_time)
    run_times = pc.multiply(seconds.take(run_starts), NS_PER_S).to_pylist()
    run_counts = pc.subtract(
        pa.concat_arrays([run_starts.slice(1), pa.array([n], pa.uint64())]), run_starts
    ).to_pylist()
    if start_seq:
        seq = pc.add(seq, pc.if_else(pc.equal(seconds, first), start_seq, 0))
    seqs.skip_runs(run_times, run_counts)
    block = pa.table(
        {"seconds": seconds, "price": price, "volume": volume, "seq": seq.cast(pa.int32())}
    )
    return TradeBlock(block, low, high)


def second_boundary(data: bytes) -> int:
    """Where to end a block of whole lines so the last second is not split across blocks.

    Returns the offset after the last line whose time differs from the final line's time,
    or ``len(data)`` when every line has the same time text (a block must end somewhere).
    Two blocks that share no second let each be copied into an empty time range.
    """
    end = len(data)
    last_start = data.rfind(b"\n", 0, end - 1) + 1
    prefix = data[last_start : data.find(b",", last_start, end) + 1]
    if not prefix:
        return end
    position = last_start
    while position > 0:
        start = data.rfind(b"\n", 0, position - 1) + 1
        if not data.startswith(prefix, start):
            return position
        position = start
    return end
