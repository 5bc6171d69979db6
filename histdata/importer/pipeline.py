"""The import pipeline: stream a CSV, parse it in batches, and write each batch idempotently.

Reading and parsing run in a worker thread, one batch at a time, while the previous batch is
being written, so the database and the parser overlap. A batch (``batch_rows`` rows, 50,000 by
default) is the unit of memory and of commit: memory stays flat whatever the file size.

What goes where:

- Trades (3- and 7-column) go through :meth:`Storage.write_trades` (``source="csv"``) with
  their trades coverage in the same transaction, after
  :func:`~histdata.storage.history.drop_cross_source_duplicates` removed trades already
  stored from REST or live capture (an id-less row cannot dedupe against them by key).
- 1-minute OHLCVT candles go through :meth:`Storage.write_candles` (source CSV, no VWAP) with
  their candles coverage. Kraken's files omit minutes without trades, so each batch's
  coverage starts where the previous one ended: the omitted minutes read "observed, no
  trades", not "not observed".
- OHLCVT files of other intervals are **checked, not stored**: each candle is compared with
  the aggregate of our stored 1-minute candles where candle coverage spans its whole bucket,
  and mismatches are reported. histdata's base is the 1-minute candle and every coarser
  interval is a rollup of it; storing Kraken's coarse candles beside the rollups would give
  two answers for one question, and a coarse candle cannot be split into the minutes a
  1-minute query needs. Import the ``_1`` file (Kraken ships one per pair) or the trades.

**Interrupted imports.** Every row's key is a pure function of the file (trade id, or time
plus ``seq``, its ordinal among same-time rows of the file; candle time), and a batch commits
with its coverage or not at all. Re-running an interrupted import therefore converges to
exactly the result of one uninterrupted run; the committed batches count as "already
present". There is no per-file cursor: skipping work would still require parsing the skipped
lines to rebuild the ``seq`` counters, which is most of the cost.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import chain
from pathlib import Path
from typing import Any

import structlog
import trio

from histdata.errors import RejectedInput
from histdata.importer.rows import SeqCounter, max_time_ns, parse_ohlcvt, parse_trade3, parse_trade7
from histdata.importer.sniff import FileLayout, sniff_layout, split_name
from histdata.importer.sources import CountingReader, ImportSource, discover_sources
from histdata.model import NS_PER_S, Candle, Trade, ns_to_datetime
from histdata.storage.database import CoverageSpan, Storage
from histdata.storage.history import (
    CandleMismatch,
    compare_coarse_candles,
    drop_cross_source_duplicates,
)

__all__ = ["FileSummary", "ImportSummary", "import_paths", "import_source"]

_log = structlog.get_logger("histdata.importer")
_SNIFF_LINES = 3
Progress = Callable[[ImportSource, int], None]  # (source, bytes read so far in it)


@dataclass(frozen=True, slots=True)
class FileSummary:
    """The outcome of importing one CSV file or ZIP member.

    ``present`` counts rows that were already stored (re-imports, overlaps with REST/live
    trades: ``cross_source`` of them). For coarse OHLCVT files nothing is stored; ``checked``
    holds ``(matched, mismatched, unverifiable)`` and ``mismatches`` the first few.
    ``skipped`` is set (and nothing read) when the file could not be recognised.
    """

    label: str
    symbol: str | None = None
    layout: FileLayout | None = None
    interval_min: int | None = None
    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    present: int = 0
    cross_source: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    out_of_order: int = 0
    checked: tuple[int, int, int] | None = None
    mismatches: list[CandleMismatch] = field(default_factory=list)
    skipped: str = ""
    elapsed_s: float = 0.0

    @property
    def rejected_total(self) -> int:
        """Rows rejected for any reason."""
        return sum(self.rejected.values())


@dataclass(frozen=True, slots=True)
class ImportSummary:
    """Every file's summary plus totals."""

    files: list[FileSummary]

    @property
    def rows_read(self) -> int:
        """Data rows read over all files."""
        return sum(f.rows_read for f in self.files)

    @property
    def inserted(self) -> int:
        """Rows newly stored over all files."""
        return sum(f.inserted for f in self.files)

    @property
    def present(self) -> int:
        """Rows that were already stored, over all files."""
        return sum(f.present for f in self.files)

    @property
    def rejected(self) -> dict[str, int]:
        """Rejected rows by reason, over all files."""
        total: Counter[str] = Counter()
        for f in self.files:
            total.update(f.rejected)
        return dict(total)


@dataclass(slots=True)
class _Batch:
    rows: list[Trade] | list[Candle]
    bytes_read: int


class _Reader:
    """Reads one source in batches; runs in worker threads, one call at a time."""

    def __init__(
        self,
        source: ImportSource,
        symbol: str,
        layout: FileLayout,
        interval: int | None,
        lines: Iterator[str],
        counter: CountingReader,
        *,
        batch_rows: int,
        max_examples: int,
        first_line_no: int,
    ) -> None:
        self.source = source
        self.symbol = symbol
        self.layout = layout
        self.interval = interval
        self._lines = lines
        self._counter = counter
        self._batch_rows = batch_rows
        self._max_examples = max_examples
        self._line_no = first_line_no
        self._max_ns = max_time_ns(time.time_ns())
        self.seqs = SeqCounter()
        self.rows_read = 0
        self.rejected: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def next_batch(self) -> _Batch | None:
        """Parse up to ``batch_rows`` good rows; None at the end of the file."""
        rows: list[Any] = []
        symbol, seqs, max_ns = self.symbol, self.seqs, self._max_ns
        parse: Callable[[list[str]], Trade | Candle]
        if self.layout is FileLayout.TRADES3:
            parse = lambda f: parse_trade3(f, symbol, seqs, max_ns)  # noqa: E731
        elif self.layout is FileLayout.TRADES7:
            parse = lambda f: parse_trade7(f, symbol, seqs, max_ns)  # noqa: E731
        else:
            interval = self.interval or 1
            parse = lambda f: parse_ohlcvt(f, symbol, interval, max_ns)  # noqa: E731
        append = rows.append
        for line in self._lines:
            self._line_no += 1
            self.rows_read += 1
            text = line.rstrip("\r\n")
            try:
                if not text:
                    raise RejectedInput("blank_line", "empty line")
                append(parse(text.split(",")))
            except RejectedInput as exc:
                self._reject(exc)
                continue
            if len(rows) >= self._batch_rows:
                break
        if not rows:  # the loop only stops early on a full batch: this is the end
            return None
        return _Batch(rows, self._counter.count)

    def _reject(self, exc: RejectedInput) -> None:
        self.rejected[exc.reason] += 1
        examples = self.examples.setdefault(exc.reason, [])
        if len(examples) < self._max_examples:
            examples.append(f"line {self._line_no}: {exc.detail}")


def _open_reader(
    source: ImportSource, stack: ExitStack, storage: Storage, *, batch_rows: int, max_examples: int
) -> _Reader:
    """Recognise ``source`` and open it for batch reads (raises RejectedInput if unknown)."""
    name = split_name(source.name, storage.registry)
    text, counter = stack.enter_context(source.open_text())
    head = [line for _, line in zip(range(_SNIFF_LINES), text, strict=False)]
    layout = sniff_layout(head, name, where=source.label)
    first_line_no = 0
    if head and not head[0][:1].isdigit():
        head, first_line_no = head[1:], 1  # a header row (the quarterly trades form has one)
    return _Reader(
        source,
        name.symbol,
        layout,
        name.interval_min,
        chain(head, text),
        counter,
        batch_rows=batch_rows,
        max_examples=max_examples,
        first_line_no=first_line_no,
    )


async def import_source(
    storage: Storage,
    source: ImportSource,
    *,
    batch_rows: int = 50_000,
    symbols: Iterable[str] | None = None,
    on_progress: Progress | None = None,
    max_examples: int = 5,
) -> FileSummary:
    """Import one CSV (loose or a ZIP member) and return its summary.

    A file whose name or content is not a Kraken layout is skipped (``skipped`` says why)
    rather than failing the whole import; so is a file whose pair is not in ``symbols``
    (any spelling) when given.

    Raises:
        DatabaseUnavailable: the database went away (committed batches stay committed; a
            re-run completes the file exactly).
        OSError, zipfile.BadZipFile: the file cannot be read.
    """
    started = time.monotonic()
    with ExitStack() as stack:
        try:
            reader = await trio.to_thread.run_sync(
                lambda: _open_reader(
                    source, stack, storage, batch_rows=batch_rows, max_examples=max_examples
                )
            )
        except RejectedInput as exc:
            return FileSummary(source.label, skipped=f"{exc.reason}: {exc.detail}")
        if symbols is not None and reader.symbol not in {
            storage.registry.canonical(s) for s in symbols
        }:
            return FileSummary(source.label, symbol=reader.symbol, skipped="symbol not selected")
        writer = _Writer(storage, reader)
        send, receive = trio.open_memory_channel[_Batch](1)

        async def produce() -> None:
            async with send:
                while (batch := await trio.to_thread.run_sync(reader.next_batch)) is not None:
                    await send.send(batch)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            async with receive:
                async for batch in receive:
                    await writer.write(batch.rows)
                    if on_progress is not None:
                        on_progress(source, batch.bytes_read)
    if on_progress is not None:
        on_progress(source, source.size)
    summary = FileSummary(
        source.label,
        symbol=reader.symbol,
        layout=reader.layout,
        interval_min=reader.interval,
        rows_read=reader.rows_read,
        inserted=writer.inserted,
        updated=writer.updated,
        present=writer.present,
        cross_source=writer.cross_source,
        rejected=dict(reader.rejected),
        examples=reader.examples,
        out_of_order=reader.seqs.backwards,
        checked=writer.checked
        if reader.layout is FileLayout.OHLCVT and reader.interval != 1
        else None,
        mismatches=writer.mismatches[:max_examples],
        elapsed_s=time.monotonic() - started,
    )
    _log.info(
        "import_file_done",
        file=source.label,
        symbol=summary.symbol,
        layout=str(summary.layout),
        read=summary.rows_read,
        inserted=summary.inserted,
        present=summary.present,
        rejected=summary.rejected,
        elapsed_s=round(summary.elapsed_s, 3),
    )
    return summary


class _Writer:
    """Writes a reader's batches and accumulates the counts; coverage runs contiguously."""

    def __init__(self, storage: Storage, reader: _Reader) -> None:
        self.storage = storage
        self.reader = reader
        self.inserted = self.updated = self.present = self.cross_source = 0
        self.matched = self.unverifiable = 0
        self.mismatches: list[CandleMismatch] = []
        self._covered_to: datetime | None = None

    @property
    def checked(self) -> tuple[int, int, int]:
        return self.matched, len(self.mismatches), self.unverifiable

    def _span(self, low: datetime, high: datetime) -> tuple[datetime, datetime]:
        start = low if self._covered_to is None else min(low, self._covered_to)
        end = high if self._covered_to is None else max(high, self._covered_to)
        self._covered_to = end
        return start, end

    async def write(self, rows: list[Trade] | list[Candle]) -> None:
        if not rows:
            return
        symbol = self.reader.symbol
        if self.reader.layout is not FileLayout.OHLCVT:
            trades: list[Trade] = rows  # type: ignore[assignment]
            low_s = min(t.time_ns for t in trades) // NS_PER_S
            high_s = max(t.time_ns for t in trades) // NS_PER_S + 1
            start, end = self._span(
                ns_to_datetime(low_s * NS_PER_S), ns_to_datetime(high_s * NS_PER_S)
            )
            kept, dropped = await drop_cross_source_duplicates(self.storage, trades)
            result = await self.storage.write_trades(
                kept, source="csv", coverage=[(symbol, CoverageSpan("trades", "csv", start, end))]
            )
            self.inserted += result.inserted
            self.present += result.present + dropped
            self.cross_source += dropped
            return
        candles: list[Candle] = rows  # type: ignore[assignment]
        interval = self.reader.interval or 1
        if interval != 1:
            matched, mismatches, unverifiable = await compare_coarse_candles(
                self.storage, symbol, interval, candles
            )
            self.matched += matched
            self.unverifiable += unverifiable
            self.mismatches.extend(mismatches)
            return
        start, end = self._span(
            min(c.time for c in candles), max(c.time for c in candles) + timedelta(minutes=1)
        )
        written = await self.storage.write_candles(
            candles, coverage=[(symbol, CoverageSpan("candles", "csv", start, end))]
        )
        self.inserted += written.inserted
        self.updated += written.updated
        self.present += written.unchanged


async def import_paths(
    storage: Storage,
    paths: Iterable[Path],
    *,
    batch_rows: int = 50_000,
    symbols: Iterable[str] | None = None,
    on_source: Callable[[ImportSource], None] | None = None,
    on_progress: Progress | None = None,
) -> ImportSummary:
    """Import every CSV found under ``paths`` (files, ZIPs, folders), one file at a time.

    Raises:
        FileNotFoundError: a path does not exist (before anything is imported).
        DatabaseUnavailable, OSError, zipfile.BadZipFile: as :func:`import_source`.
    """
    sources = await trio.to_thread.run_sync(lambda: list(discover_sources(paths)))
    selected = list(symbols) if symbols is not None else None
    summaries = []
    for source in sources:
        if on_source is not None:
            on_source(source)
        summaries.append(
            await import_source(
                storage, source, batch_rows=batch_rows, symbols=selected, on_progress=on_progress
            )
        )
    return ImportSummary(summaries)
