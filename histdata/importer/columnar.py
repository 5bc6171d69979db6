"""The fast path for 3-column trade files: validate and number a whole block of lines at once.

Kraken's ``time,price,volume`` files are tens of millions of rows; building a Trade, two
Decimals and a datetime per row in Python caps an import far below what PostgreSQL's ``COPY``
takes. Here a block of lines is parsed by Arrow's CSV reader and checked column by column, so
the text of every price and volume goes to the database exactly as it is in the file.

The column checks take a line as it is only when
:func:`~histdata.importer.rows.parse_trade3` would take it unchanged (whole-second times
between 2010 and now, unsigned ASCII decimal numbers above zero, plain or with a short
exponent, three fields). The few other lines — bad ones, or valid ones in a rare form — go
one by one through the row parser's own checks, so a handful of them never sends a whole
block to the row path: they are rejected with the same reasons, or normalised and kept.
The block's kept times must never go back, so that ``seq`` is a plain count; a block with a
row out of order, a fractional time or a blank line makes :func:`read_trade3_block` return
None, and the caller parses that block row by row, which rejects and reports the same.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from histdata.errors import RejectedInput
from histdata.importer.rows import SeqCounter, check_trade3, too_long
from histdata.kraken.parse import MIN_TIME_NS
from histdata.model import NS_PER_S, Trade

__all__ = [
    "BlockRejection",
    "TradeBlock",
    "lines_of_rows",
    "patch_rows",
    "read_columns",
    "read_trade3_block",
    "second_boundary",
]

# Unsigned plain decimals: the row parser also takes exponents and non-ASCII digits, which
# are rare; read_trade3_block checks only those rows one by one.
# What the row parser takes, in ASCII, with a bounded length and exponent so that every
# number taken here is within the row parser's range too (rows._MAX_ADJUSTED_EXPONENT).
# PostgreSQL reads exponent notation to the same value and scale as Decimal does.
_NUMBER = r"^(?:[0-9]{1,40}(?:\.[0-9]{0,40})?)(?:[eE][-+]?[0-9]{1,2})?$"
_ZERO = r"^[0.]*(?:[eE].*)?$"
_TRADE_COLUMNS = ("time", "price", "volume")
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
        """The rows as :func:`~histdata.storage.trades.copy_new_trades` takes them.

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


@dataclass(frozen=True, slots=True)
class BlockRejection:
    """A line of a block that the row parser rejected, with the times of its neighbours.

    ``line`` is the line's 0-based position in the block; ``before_s`` and ``after_s`` are
    the whole seconds of the nearest kept rows before and after it in the block (None at the
    block's edge), between which the rejected trade's own time lies in a time-ordered file.
    """

    line: int
    error: RejectedInput
    before_s: int | None
    after_s: int | None


def _check_rows(
    columns: tuple[pa.Array, pa.Array, pa.Array], rows: list[int], max_ns: int, max_line: int
) -> tuple[dict[int, tuple[str, ...]], dict[int, RejectedInput]] | None:
    """Run the row parser's checks on the table rows ``rows``.

    Returns the valid ones normalised to (seconds, plain price, plain volume) text and the
    rejections; None when a row is valid but cannot take this path (a fractional time) or
    may be a blank line, whose reason only the row path can tell from ``,,``.
    """
    index = pa.array(rows, pa.int64())
    texts = [column.take(index).to_pylist() for column in columns]
    valid: dict[int, tuple[str, ...]] = {}
    rejected: dict[int, RejectedInput] = {}
    for row, fields in zip(rows, zip(*texts, strict=True), strict=True):
        if not any(fields):
            return None
        length = sum(len(field.encode()) for field in fields) + 2
        try:
            if length > max_line:
                raise too_long(length, max_line)
            time_ns, price, volume = check_trade3(fields, max_ns)
        except RejectedInput as exc:
            rejected[row] = exc
            continue
        if time_ns % NS_PER_S:
            return None
        # Plain notation keeps the value and its scale exactly as Decimal read them.
        valid[row] = (str(time_ns // NS_PER_S), format(price, "f"), format(volume, "f"))
    return valid, rejected


def _fast_rows(
    columns: tuple[pa.Array, pa.Array, pa.Array], max_ns: int, max_line: int
) -> pa.Array:
    """True for the rows this path takes as they are: everything else is checked row by row."""
    time_text, price, volume = columns
    length = pc.add(
        pc.add(pc.binary_length(time_text), pc.binary_length(price)),
        pc.add(pc.binary_length(volume), 2),
    )
    plain_time = pc.and_kleene(
        pc.ascii_is_decimal(time_text), pc.less_equal(pc.utf8_length(time_text), 12)
    )
    seconds = pc.if_else(plain_time, time_text, "0").cast(pa.int64())
    in_range = pc.and_kleene(
        pc.greater_equal(seconds, -(-MIN_TIME_NS // NS_PER_S)),
        pc.less_equal(seconds, max_ns // NS_PER_S),
    )
    numbers = pc.and_kleene(
        pc.and_kleene(
            pc.match_substring_regex(price, _NUMBER), pc.match_substring_regex(volume, _NUMBER)
        ),
        pc.invert(
            pc.or_kleene(
                pc.match_substring_regex(price, _ZERO), pc.match_substring_regex(volume, _ZERO)
            )
        ),
    )
    return pc.and_kleene(
        pc.and_kleene(plain_time, in_range),
        pc.and_kleene(numbers, pc.less_equal(length, max_line)),
    )


def read_trade3_block(
    data: bytes, seqs: SeqCounter, max_ns: int, max_line: int = 1 << 20
) -> tuple[TradeBlock | None, list[BlockRejection]] | None:
    """Parse a block of whole ``time,price,volume`` lines and number them from ``seqs``.

    Lines the column checks do not take as they are (bad lines; valid ones in a rare form,
    such as non-ASCII digits or very long numbers) are few: only they go through the row
    parser's checks (:func:`check_trade3`), so the rest of the block stays on this path;
    valid ones are normalised to plain decimals, bad ones returned as rejections, exactly as
    the row path rejects them. Returns ``(block, rejections)`` (``block`` None when no line
    was kept), or None, leaving ``seqs`` untouched, when the block must take the row path
    after all: a fractional time, a blank line, or kept rows out of time order.
    """
    read = read_columns(data, _TRADE_COLUMNS)
    if read is None:
        return None
    columns_list, wrong_count = read
    time_text, price, volume = columns_list
    columns = (time_text, price, volume)
    n = len(time_text)
    odd = (
        pc.indices_nonzero(pc.invert(_fast_rows(columns, max_ns, max_line))).to_pylist()
        if n
        else []
    )
    checked = _check_rows(columns, odd, max_ns, max_line) if odd else ({}, {})
    if checked is None:
        return None
    valid, rejected = checked
    errors: dict[int, RejectedInput] = {}  # by 0-based line of the block
    for number, text in wrong_count:
        try:
            if len(text.encode()) > max_line:
                raise too_long(len(text.encode()), max_line)
            check_trade3(text.split(","), max_ns)
        except RejectedInput as exc:
            errors[number - 1] = exc
        else:  # Arrow skipped a line the row parser takes: let the row path decide
            return None
    line_of = lines_of_rows(n, sorted(errors))
    errors.update((line_of[row], exc) for row, exc in rejected.items())
    patched = patch_rows(list(columns), valid, set(rejected))
    kept_lines = (
        [line for row, line in enumerate(line_of) if row not in rejected] if rejected else line_of
    )
    seconds = patched[0].cast(pa.int64())
    columns = (patched[0], patched[1], patched[2])
    block = None
    if len(seconds):
        block = _number(seconds, columns[1], columns[2], seqs)
        if block is None:
            return None
    return block, _rejections(errors, kept_lines, seconds)


def read_columns(
    data: bytes, names: Sequence[str]
) -> tuple[list[pa.Array], list[tuple[int, str]]] | None:
    """Split a block of lines into text columns, the way the row parsers split a line.

    Returns the columns and the lines with another number of fields, as (1-based line of
    the block, text), which are not in the columns; None when Arrow cannot split the block
    the row parsers' way (then the block takes the row path).
    """
    wrong_count: list[tuple[int, str]] = []

    def on_invalid(row: pa_csv.InvalidRow) -> str:
        wrong_count.append((row.number, row.text))
        return "skip"

    try:
        table = pa_csv.read_csv(
            pa.py_buffer(data),
            # One thread: only then does the handler above get the lines' numbers.
            pa_csv.ReadOptions(column_names=list(names), block_size=1 << 22, use_threads=False),
            # No quoting (the row parsers do not unquote); blank lines are rows, and fail.
            pa_csv.ParseOptions(
                quote_char=False, ignore_empty_lines=False, invalid_row_handler=on_invalid
            ),
            pa_csv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if any(number is None for number, _ in wrong_count):
        return None
    return [table[name].combine_chunks() for name in names], wrong_count


def patch_rows(
    columns: list[pa.Array], valid: dict[int, tuple[str, ...]], rejected: set[int]
) -> list[pa.Array]:
    """``columns`` with the rows in ``valid`` replaced by their normalised texts and the
    rows in ``rejected`` removed."""
    n = len(columns[0])
    if valid:
        rows = sorted(valid)
        mask = pc.is_in(pa.array(range(n), pa.int64()), value_set=pa.array(rows, pa.int64()))
        columns = [
            pc.replace_with_mask(column, mask, pa.array([valid[r][i] for r in rows], pa.string()))
            for i, column in enumerate(columns)
        ]
    if rejected:
        keep = pa.array([row not in rejected for row in range(n)])
        columns = [column.filter(keep) for column in columns]
    return columns


def lines_of_rows(n: int, skipped_lines: list[int]) -> list[int]:
    """The 0-based block line of each of ``n`` table rows, given the lines Arrow skipped."""
    if not skipped_lines:
        return list(range(n))
    skipped = set(skipped_lines)
    return [line for line in range(n + len(skipped)) if line not in skipped]


def _rejections(
    errors: dict[int, RejectedInput], kept_lines: list[int], seconds: pa.Array
) -> list[BlockRejection]:
    out = []
    for line in sorted(errors):
        after = bisect.bisect_left(kept_lines, line)
        out.append(
            BlockRejection(
                line,
                errors[line],
                int(seconds[after - 1].as_py()) if after > 0 else None,
                int(seconds[after].as_py()) if after < len(kept_lines) else None,
            )
        )
    return out


def _number(
    seconds: pa.Array, price: pa.Array, volume: pa.Array, seqs: SeqCounter
) -> TradeBlock | None:
    """Number time-ordered rows from ``seqs``; None (``seqs`` untouched) if out of order."""
    n = len(seconds)
    low, high = (int(v.as_py()) for v in pc.min_max(seconds).values())
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
