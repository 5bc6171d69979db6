"""Readers of one CSV: recognise it, then read it batch by batch in a worker thread.

:func:`open_reader` sniffs a source and returns the reader for its layout: 3-column trades
and 1-minute OHLCVT in blocks read column-wise where they can
(:mod:`~histdata.importer.columnar`, :mod:`~histdata.importer.candle_blocks`), the rest row
by row. Every reader counts lines, rejections (with the first few line numbers) and, for
trades, where a rejected row may have been, in its :class:`RowParser`; no line is held
whole beyond ``max_line``.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import IO, Any

from histdata.errors import RejectedInput
from histdata.importer.candle_blocks import CandleBlock, read_ohlcvt_block
from histdata.importer.columnar import (
    BlockRejection,
    TradeBlock,
    read_trade3_block,
    second_boundary,
)
from histdata.importer.rows import (
    SeqCounter,
    max_time_ns,
    parse_ohlcvt,
    parse_trade3,
    parse_trade7,
    too_long,
)
from histdata.importer.sniff import FileLayout, sniff_layout, split_name
from histdata.importer.sources import (
    CountingReader,
    ImportSource,
    LongLine,
    bounded_lines,
    decode_lines,
    line_blocks,
)
from histdata.model import NS_PER_S, Candle, Trade
from histdata.storage.database import Storage

__all__ = [
    "Batch",
    "BlockReader",
    "CandleBlockReader",
    "Reader",
    "RowParser",
    "open_reader",
]

_SNIFF_LINES = 3
# Parsing a candle block takes about as long as copying it, so smaller blocks than the
# trades' let the two overlap better; the cost of a block is one probe of its minutes.
_CANDLE_BLOCK_BYTES = 2 << 20


@dataclass(slots=True)
class Batch:
    rows: list[Trade] | list[Candle] | TradeBlock | CandleBlock
    bytes_read: int
    copy_csv: memoryview | None = None  # a block encoded for COPY


class RowParser:
    """Parses lines one at a time with the row parsers, counting and sampling rejections."""

    def __init__(
        self,
        symbol: str,
        layout: FileLayout,
        interval: int | None,
        *,
        max_examples: int,
        max_line: int,
    ) -> None:
        self.symbol = symbol
        self.layout = layout
        self.interval = interval
        self.max_examples = max_examples
        self.max_line = max_line
        self.max_ns = max_time_ns(time.time_ns())
        self.seqs = SeqCounter()
        self.line_no = 0
        self.rows_read = 0
        self.rejected: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        # Where rejected trade rows may have been: (first, last) ns between the kept rows
        # around them; the minutes there get no candle (see _Writer).
        self.suspects: list[tuple[int, int]] = []
        self._last_kept_ns: int | None = None
        self._pending_since: int | None = None  # a rejection not yet followed by a kept row
        self._pending = False

    def kept(self, first_ns: int, last_ns: int) -> None:
        """Note kept trade rows from ``first_ns`` to ``last_ns``, in file order."""
        if self._pending:
            self.suspects.append(
                (first_ns if self._pending_since is None else self._pending_since, first_ns)
            )
            self._pending = False
        self._last_kept_ns = last_ns

    def rejected_between(self, before_ns: int | None, after_ns: int | None) -> None:
        """Note a rejected trade row between kept rows (None: the neighbour is not known yet)."""
        before = self._last_kept_ns if before_ns is None else before_ns
        if after_ns is None:
            if not self._pending:
                self._pending, self._pending_since = True, before
            return
        self.suspects.append((after_ns if before is None else before, after_ns))

    def end(self) -> None:
        """At the end of the file: a trailing rejection may lie anywhere after the last row."""
        if self._pending and self._pending_since is not None:
            self.suspects.append((self._pending_since, self.max_ns))
            self._pending = False

    def parse_lines(self, lines: Iterable[str | LongLine], rows: list[Any], limit: int) -> None:
        """Append the good rows of ``lines`` to ``rows``; stop once ``rows`` holds ``limit``."""
        symbol, seqs, max_ns = self.symbol, self.seqs, self.max_ns
        parse: Callable[[list[str]], Trade | Candle]
        if self.layout is FileLayout.TRADES3:
            parse = lambda f: parse_trade3(f, symbol, seqs, max_ns)  # noqa: E731
        elif self.layout is FileLayout.TRADES7:
            parse = lambda f: parse_trade7(f, symbol, seqs, max_ns)  # noqa: E731
        else:
            interval = self.interval or 1
            parse = lambda f: parse_ohlcvt(f, symbol, interval, max_ns)  # noqa: E731
        append = rows.append
        trades = self.layout is not FileLayout.OHLCVT
        max_line = self.max_line
        for line in lines:
            self.line_no += 1
            self.rows_read += 1
            try:
                if isinstance(line, LongLine) or len(line) > max_line:
                    raise too_long(
                        line.length if isinstance(line, LongLine) else len(line), max_line
                    )
                text = line.rstrip("\r\n")
                if not text:
                    raise RejectedInput("blank_line", "empty line")
                row = parse(text.split(","))
            except RejectedInput as exc:
                self._reject(exc)
                if trades:
                    self.rejected_between(None, None)
                continue
            append(row)
            if trades:
                time_ns = row.time_ns  # type: ignore[union-attr]
                self.kept(time_ns, time_ns)
            if len(rows) >= limit:
                break

    def reject_in_block(self, rejections: list[BlockRejection], lines: int) -> None:
        """Count the rejections of a block of ``lines`` lines read column-wise."""
        base = self.line_no
        for rejection in rejections:
            self.line_no = base + rejection.line + 1
            self._reject(rejection.error)
            if self.layout is not FileLayout.OHLCVT:
                self.rejected_between(
                    None if rejection.before_s is None else rejection.before_s * NS_PER_S,
                    None if rejection.after_s is None else rejection.after_s * NS_PER_S,
                )
        self.line_no = base + lines
        self.rows_read += lines

    def _reject(self, exc: RejectedInput) -> None:
        self.rejected[exc.reason] += 1
        examples = self.examples.setdefault(exc.reason, [])
        if len(examples) < self.max_examples:
            examples.append(f"line {self.line_no}: {exc.detail}")


class Reader:
    """Reads one source in batches of parsed rows; runs in worker threads, one call at a time."""

    def __init__(
        self,
        parser: RowParser,
        lines: Iterator[str | LongLine],
        counter: CountingReader,
        *,
        batch_rows: int,
    ) -> None:
        self.parser = parser
        self._lines = lines
        self._counter = counter
        self._batch_rows = batch_rows

    def next_batch(self) -> Batch | None:
        """Parse up to ``batch_rows`` good rows; None at the end of the file."""
        rows: list[Any] = []
        self.parser.parse_lines(self._lines, rows, self._batch_rows)
        if not rows:  # parse_lines only stops early on a full batch: this is the end
            return None
        return Batch(rows, self._counter.count)


class BlockReader:
    """Reads a 3-column trades file in blocks of whole seconds, column-wise where it can.

    A block that :func:`read_trade3_block` accepts is encoded for ``COPY`` right here, in
    the worker thread; any other block is parsed row by row, so its bad lines are rejected
    and reported exactly as by :class:`Reader`.
    """

    def __init__(
        self, parser: RowParser, stream: IO[bytes], counter: CountingReader, *, block_bytes: int
    ) -> None:
        self.parser = parser
        self.symbol_id: int | None = None  # set before the first next_batch
        self._blocks = line_blocks(stream, block_bytes, second_boundary, max_line=parser.max_line)
        self._counter = counter

    def next_batch(self) -> Batch | None:
        """Read the next block with any good rows; None at the end of the file."""
        parser = self.parser
        assert self.symbol_id is not None
        for data in self._blocks:
            if isinstance(data, LongLine):
                parser.parse_lines([data], [], 1)
                continue
            found = read_trade3_block(data, parser.seqs, parser.max_ns, parser.max_line)
            if found is not None:
                block, rejections = found
                parser.reject_in_block(
                    rejections, len(rejections) + (block.rows if block is not None else 0)
                )
                if block is None:
                    continue
                parser.kept(block.first_s * NS_PER_S, block.last_s * NS_PER_S)
                return Batch(
                    block, self._counter.count, memoryview(block.encode_copy_csv(self.symbol_id))
                )
            rows: list[Any] = []
            parser.parse_lines(decode_lines(io.BytesIO(data)), rows, len(data) + 1)
            if rows:
                return Batch(rows, self._counter.count)
        return None


class CandleBlockReader:
    """Reads a 1-minute OHLCVT file in blocks, column-wise where it can (as BlockReader)."""

    def __init__(
        self, parser: RowParser, stream: IO[bytes], counter: CountingReader, *, block_bytes: int
    ) -> None:
        self.parser = parser
        self.symbol_id: int | None = None  # set before the first next_batch
        self._blocks = line_blocks(stream, block_bytes, max_line=parser.max_line)
        self._counter = counter

    def next_batch(self) -> Batch | None:
        """Read the next block with any good rows; None at the end of the file."""
        parser = self.parser
        assert self.symbol_id is not None
        for data in self._blocks:
            if isinstance(data, LongLine):
                parser.parse_lines([data], [], 1)
                continue
            found = read_ohlcvt_block(data, 1, parser.max_ns, parser.max_line)
            if found is not None:
                block, rejections = found
                parser.reject_in_block(
                    rejections, len(rejections) + (block.rows if block is not None else 0)
                )
                if block is None:
                    continue
                return Batch(
                    block, self._counter.count, memoryview(block.encode_copy_csv(self.symbol_id))
                )
            rows: list[Any] = []
            parser.parse_lines(decode_lines(io.BytesIO(data)), rows, len(data) + 1)
            if rows:
                return Batch(rows, self._counter.count)
        return None


def open_reader(
    source: ImportSource,
    stack: ExitStack,
    storage: Storage,
    *,
    batch_rows: int,
    block_bytes: int,
    max_examples: int,
    max_line: int,
) -> Reader | BlockReader | CandleBlockReader:
    """Recognise ``source`` and open it for batch reads (raises RejectedInput if unknown)."""
    name = split_name(source.name, storage.registry)
    with source.open_text() as (text, _):
        lines = bounded_lines(text, max_line)
        head = [line for _, line in zip(range(_SNIFF_LINES), lines, strict=False)]
    texts = [line if isinstance(line, str) else "" for line in head]
    layout = sniff_layout(texts, name, where=source.label)
    parser = RowParser(
        name.symbol, layout, name.interval_min, max_examples=max_examples, max_line=max_line
    )
    counter = stack.enter_context(source.open_binary())
    stream = io.BufferedReader(counter, buffer_size=1 << 20)
    if texts and texts[0] and not texts[0][:1].isdigit():
        stream.readline()  # a header row (the quarterly trades form has one); it is short
        parser.line_no = 1
    if layout is FileLayout.TRADES3:
        return BlockReader(parser, stream, counter, block_bytes=block_bytes)
    if layout is FileLayout.OHLCVT and name.interval_min == 1:
        candle_bytes = min(block_bytes, _CANDLE_BLOCK_BYTES)
        return CandleBlockReader(parser, stream, counter, block_bytes=candle_bytes)
    return Reader(
        parser, bounded_lines(decode_lines(stream), max_line), counter, batch_rows=batch_rows
    )
