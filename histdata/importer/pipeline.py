"""The import pipeline: stream a CSV, parse it in batches, and write each batch idempotently.

Reading and parsing run in a worker thread, one batch at a time, while the previous batch is
being written, so the database and the parser overlap. A batch (``batch_rows`` rows, 50,000 by
default; for 3-column trades a block of ``block_bytes``) is the unit of memory and of commit:
memory stays flat whatever the file size.

What goes where:

- 3-column trades are read in blocks of whole seconds (:mod:`~histdata.importer.columnar`).
  A block whose lines are valid (its few bad ones rejected in place) and in time order,
  and whose seconds hold no stored trade of the pair with a Kraken id, is copied in as text
  (:func:`~histdata.storage.trades.copy_new_trades`): straight into ``trades`` when its
  seconds are empty, through a staging table and ``ON CONFLICT`` when they hold id-less
  trades (a re-import).
  Any other block (an overlap with REST/live trades, an out-of-order line) takes the
  general path below, in ``batch_rows`` pieces, with identical results.
- Trades (3- and 7-column) go through :func:`~histdata.storage.trades.write_trades`
  (``source="csv"``) with their trades coverage in the same transaction, after
  :func:`~histdata.storage.trades.drop_cross_source_duplicates` removed trades already
  stored from REST or live capture (an id-less row cannot dedupe against them by key).
- After each trades write, the whole minutes no later row can reach are derived into
  1-minute candles (:func:`~histdata.storage.candles.derive_candles`, on another
  connection while the next batch is written); a file's span is rounded out to whole
  minutes at its edges (see :func:`import_source`), and minutes where a rejected row may
  have been are left underived. :func:`import_paths` then brings the rollups up to date.
- 1-minute OHLCVT candles are read in blocks too
  (:mod:`~histdata.importer.candle_blocks`) and copied straight into ``candles_1m`` when
  their minutes hold no candle yet (:func:`~histdata.storage.candles.copy_new_candles`),
  else upserted through :func:`~histdata.storage.candles.write_candles` (source CSV, no
  VWAP), with their candles coverage. Kraken's files omit minutes without trades, so each batch's
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
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import structlog
import trio

from histdata.errors import RejectedInput
from histdata.importer.candle_blocks import CandleBlock
from histdata.importer.columnar import (
    TradeBlock,
)
from histdata.importer.readers import Batch, BlockReader, CandleBlockReader, RowParser, open_reader
from histdata.importer.sniff import FileLayout
from histdata.importer.sources import (
    ImportSource,
    discover_sources,
)
from histdata.model import NS_PER_S, Candle, CoverageSpan, Trade, ns_to_datetime
from histdata.storage.candles import (
    CandleMismatch,
    compare_coarse_candles,
    copy_new_candles,
    derive_candles,
    write_candles,
)
from histdata.storage.coverage import Range, add_coverage, ceil_to, floor_to, intersect, subtract
from histdata.storage.database import Storage
from histdata.storage.rollups import rollup_pass
from histdata.storage.symbol_table import register_symbol
from histdata.storage.trades import copy_new_trades, drop_cross_source_duplicates, write_trades

__all__ = ["FileSummary", "ImportSummary", "import_paths", "import_source"]

_log = structlog.get_logger("histdata.importer")
_TRADES = (FileLayout.TRADES3, FileLayout.TRADES7)
_MINUTE = timedelta(minutes=1)
_SECOND = timedelta(seconds=1)
Progress = Callable[[ImportSource, int], None]  # (source, bytes read so far in it)


@dataclass(frozen=True, slots=True)
class FileSummary:
    """The outcome of importing one CSV file or ZIP member.

    ``present`` counts rows that were already stored (re-imports, overlaps with REST/live
    trades: ``cross_source`` of them). For coarse OHLCVT files nothing is stored; ``checked``
    holds ``(matched, mismatched, unverifiable)`` and ``mismatches`` the first few. For trade
    files, ``derived`` counts the 1-minute candles derived from the file's span,
    ``candle_holes`` lists the minutes of the span that could not be derived (trades coverage
    not whole there), and ``candle_mismatches`` the derived minutes that disagree with a
    Kraken candle already stored.
    ``skipped`` is set (and nothing read) when the file could not be recognised or was
    refused unread (a ZIP bomb); ``error`` when reading it failed part-way (a damaged ZIP
    member: the rows before are stored and counted).
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
    derived: int = 0
    candle_holes: list[Range] = field(default_factory=list)
    candle_mismatches: int = 0
    error: str = ""
    skipped: str = ""
    elapsed_s: float = 0.0

    @property
    def rejected_total(self) -> int:
        """Rows rejected for any reason."""
        return sum(self.rejected.values())


@dataclass(frozen=True, slots=True)
class ImportSummary:
    """Every file's summary plus totals; ``rollup_s`` is the time the rollups to 1w took
    after the files (0 when the service's rollup actor was mid-pass and does them)."""

    files: list[FileSummary]
    rollup_s: float = 0.0

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


def _merged(ranges: list[Range]) -> list[Range]:
    """Sorted ranges with the overlapping and touching ones merged."""
    out: list[Range] = []
    for low, high in ranges:
        if out and low <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return out


async def import_source(
    storage: Storage,
    source: ImportSource,
    *,
    batch_rows: int = 50_000,
    block_bytes: int = 8 << 20,
    symbols: Iterable[str] | None = None,
    on_progress: Progress | None = None,
    max_examples: int = 5,
    strict_span: bool = False,
    candles: bool = True,
    max_line_bytes: int = 1 << 20,
) -> FileSummary:
    """Import one CSV (loose or a ZIP member) and return its summary.

    A batch is ``batch_rows`` rows, except in 3-column trade files, which are read in blocks
    of about ``block_bytes`` bytes (8 MiB is about 270,000 rows) ending at a change of second.

    A line longer than ``max_line_bytes`` (``[import] max_line_bytes``) is rejected as
    ``line_too_long`` with its line number and never held whole, whatever its length.

    A file whose name or content is not a Kraken layout is skipped (``skipped`` says why)
    rather than failing the whole import; so is a file whose pair is not in ``symbols``
    (any spelling) when given.

    A trades file's span is rounded out to whole minutes at its edges (Kraken cuts its files
    at a pair's listing and at quarter boundaries, so no trade of those minutes lies outside
    the file), unless ``strict_span``, which keeps the exact first-to-last-trade span and so
    leaves its first and last minutes underived. The 1-minute candles of the span are
    derived as the blocks are written (see :func:`derive_candles`); with ``candles`` False
    only the trades and their coverage are stored (derive later with :func:`derive_candles`).

    Raises:
        DatabaseUnavailable: the database went away (committed batches stay committed; a
            re-run completes the file exactly).
        OSError, zipfile.BadZipFile: the file cannot be read.
    """
    started = time.monotonic()
    with ExitStack() as stack:
        try:
            reader = await trio.to_thread.run_sync(
                lambda: open_reader(
                    source,
                    stack,
                    storage,
                    batch_rows=batch_rows,
                    block_bytes=block_bytes,
                    max_examples=max_examples,
                    max_line=max_line_bytes,
                )
            )
        except RejectedInput as exc:
            return FileSummary(source.label, skipped=f"{exc.reason}: {exc.detail}")
        parser = reader.parser
        if symbols is not None and parser.symbol not in {
            storage.registry.canonical(s) for s in symbols
        }:
            return FileSummary(source.label, symbol=parser.symbol, skipped="symbol not selected")
        if isinstance(reader, BlockReader | CandleBlockReader):
            reader.symbol_id = await register_symbol(storage, parser.symbol)
        writer = _Writer(
            storage, parser, batch_rows=batch_rows, strict_span=strict_span, candles=candles
        )
        send, receive = trio.open_memory_channel[Batch](1)

        async def produce() -> None:
            async with send:
                while (batch := await trio.to_thread.run_sync(reader.next_batch)) is not None:
                    await send.send(batch)

        error = ""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce)
                writer.nursery = nursery
                async with receive:
                    async for batch in receive:
                        await writer.write(batch)
                        if on_progress is not None:
                            on_progress(source, batch.bytes_read)
        except* (zipfile.BadZipFile, EOFError) as group:
            # A member whose data do not match its header: zipfile stops at the declared
            # size and fails the CRC (or the stream ends early). What was read before is
            # valid, committed, and counted; the rest of the member is refused.
            error = f"damaged ZIP member, read stopped: {group.exceptions[0]}"
        parser.end()
        await writer.finish()
    if on_progress is not None:
        on_progress(source, source.size)
    summary = FileSummary(
        source.label,
        symbol=parser.symbol,
        layout=parser.layout,
        interval_min=parser.interval,
        rows_read=parser.rows_read,
        inserted=writer.inserted,
        updated=writer.updated,
        present=writer.present,
        cross_source=writer.cross_source,
        rejected=dict(parser.rejected),
        examples=parser.examples,
        out_of_order=parser.seqs.backwards,
        checked=writer.checked
        if parser.layout is FileLayout.OHLCVT and parser.interval != 1
        else None,
        mismatches=writer.mismatches[:max_examples],
        derived=writer.derived,
        error=error,
        candle_holes=writer.candle_holes,
        candle_mismatches=writer.candle_mismatches,
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

    def __init__(
        self,
        storage: Storage,
        parser: RowParser,
        *,
        batch_rows: int,
        strict_span: bool,
        candles: bool,
    ) -> None:
        self.storage = storage
        self.parser = parser
        self.batch_rows = batch_rows
        self.strict_span = strict_span
        self.candles = candles
        self.inserted = self.updated = self.present = self.cross_source = 0
        self.matched = self.unverifiable = 0
        self.mismatches: list[CandleMismatch] = []
        self.derived = self.candle_mismatches = 0
        self.candle_holes: list[Range] = []
        self._covered_to: datetime | None = None
        self._derived_to: datetime | None = None  # minutes before it are derived
        # A block's minutes are derived while the next block is written (another pool
        # connection): one derivation at a time, in order.
        self.nursery: trio.Nursery | None = None
        self._derived = trio.Event()
        self._derived.set()

    @property
    def checked(self) -> tuple[int, int, int]:
        return self.matched, len(self.mismatches), self.unverifiable

    def _span(self, low: datetime, high: datetime) -> tuple[datetime, datetime]:
        if self._covered_to is None and not self.strict_span and self.parser.layout in _TRADES:
            low = floor_to(low, _MINUTE)  # the file's first minute is whole (see import_source)
        start = low if self._covered_to is None else min(low, self._covered_to)
        end = high if self._covered_to is None else max(high, self._covered_to)
        self._covered_to = end
        return start, end

    async def _derive(self, low: datetime, end: datetime) -> None:
        """Derive the minutes from ``low`` (or where derivation stopped, if earlier) to
        ``end``; a row that went back in time re-derives its minute."""
        if not self.candles:
            return
        start = floor_to(low, _MINUTE)
        if self._derived_to is not None:
            start = min(start, self._derived_to)
        if end <= start:
            return
        # Minutes where a rejected row may have been: their candle would be silently short.
        suspect = sorted(
            (
                floor_to(ns_to_datetime(a), _MINUTE),
                min(end, floor_to(ns_to_datetime(b), _MINUTE) + _MINUTE),
            )
            for a, b in list(self.parser.suspects)
        )
        holes = [*self.candle_holes, *intersect(_merged(suspect), [(start, end)])]
        for low_d, high_d in subtract([(start, end)], _merged(suspect)):
            done = await derive_candles(self.storage, self.parser.symbol, low_d, high_d)
            self.derived += done.inserted
            self.candle_mismatches += len(done.mismatches)
            holes.extend(done.not_derived)
        self.candle_holes = _merged(sorted(holes))
        self._derived_to = max(end, self._derived_to or end)

    async def _written(self, low: datetime) -> None:
        """After a trades write: derive every minute that no later row can still reach (the
        minute of the last second written may get more rows from the next batch), in the
        background once the previous block's derivation is done."""
        assert self._covered_to is not None
        assert self.nursery is not None
        end = floor_to(self._covered_to - _SECOND, _MINUTE)
        await self._derived.wait()
        done = self._derived = trio.Event()

        async def derive() -> None:
            await self._derive(low, end)
            done.set()

        self.nursery.start_soon(derive)

    async def finish(self) -> None:
        """Close the file's span: round its end out to a whole minute (unless strict) and
        derive the minutes left."""
        await self._derived.wait()
        if self.parser.layout not in _TRADES or self._covered_to is None:
            return
        end = self._covered_to
        if not self.strict_span:
            end = ceil_to(end, _MINUTE)
            await add_coverage(
                self.storage,
                self.parser.symbol,
                CoverageSpan("trades", "csv", self._covered_to, end),
            )
        await self._derive(end, end)

    async def write(self, batch: Batch) -> None:
        rows = batch.rows
        symbol = self.parser.symbol
        if isinstance(rows, TradeBlock):
            await self._write_block(rows, batch.copy_csv)
            return
        if isinstance(rows, CandleBlock):
            await self._write_candle_block(rows, batch.copy_csv)
            return
        if not rows:
            return
        if self.parser.layout is not FileLayout.OHLCVT:
            trades: list[Trade] = rows  # type: ignore[assignment]
            low_s = min(t.time_ns for t in trades) // NS_PER_S
            high_s = max(t.time_ns for t in trades) // NS_PER_S + 1
            await self._write_trades(trades, low_s, high_s)
            return
        candles: list[Candle] = rows  # type: ignore[assignment]
        interval = self.parser.interval or 1
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
        written = await write_candles(
            self.storage, candles, coverage=[(symbol, CoverageSpan("candles", "csv", start, end))]
        )
        self.inserted += written.inserted
        self.updated += written.updated
        self.present += written.unchanged

    async def _write_candle_block(self, block: CandleBlock, copy_csv: memoryview | None) -> None:
        """COPY the block in when its minutes hold no candle (see :func:`copy_new_candles`),
        else upsert it as rows, ``batch_rows`` at a time."""
        symbol = self.parser.symbol
        low = ns_to_datetime(block.first_s * NS_PER_S)
        high = ns_to_datetime(block.last_s * NS_PER_S) + _MINUTE
        start, end = self._span(low, high)
        coverage = [(symbol, CoverageSpan("candles", "csv", start, end))]
        assert copy_csv is not None
        copied = await copy_new_candles(
            self.storage, symbol, low, high, copy_csv, block.rows, coverage=coverage
        )
        if copied is not None:
            self.inserted += copied.inserted
            return
        for offset in range(0, block.rows, self.batch_rows):
            candles = await trio.to_thread.run_sync(
                block.to_candles, symbol, offset, self.batch_rows
            )
            last = offset + self.batch_rows >= block.rows
            written = await write_candles(self.storage, candles, coverage=coverage if last else ())
            self.inserted += written.inserted
            self.updated += written.updated
            self.present += written.unchanged

    async def _write_block(self, block: TradeBlock, copy_csv: memoryview | None) -> None:
        """COPY the block in when its seconds hold no stored trade with a Kraken id (see
        :func:`~histdata.storage.trades.copy_new_trades`), else write it as rows with the
        cross-source check."""
        low_s, high_s = block.first_s, block.last_s + 1
        low, high = ns_to_datetime(low_s * NS_PER_S), ns_to_datetime(high_s * NS_PER_S)
        if copy_csv is not None:
            covered = self._covered_to
            start, end = self._span(low, high)
            result = await copy_new_trades(
                self.storage,
                self.parser.symbol,
                low,
                high,
                copy_csv,
                block.rows,
                coverage=[(self.parser.symbol, CoverageSpan("trades", "csv", start, end))],
            )
            if result is not None:
                self.inserted += result.inserted
                self.present += result.present
                await self._written(low)
                return
            self._covered_to = covered  # nothing was written: the span is claimed again
        # As rows, in batches of batch_rows: a block's Trades would take ~1 KB of memory each.
        for offset in range(0, block.rows, self.batch_rows):
            trades = await trio.to_thread.run_sync(
                block.to_trades, self.parser.symbol, offset, self.batch_rows
            )
            await self._write_trades(
                trades, trades[0].time_ns // NS_PER_S, trades[-1].time_ns // NS_PER_S + 1
            )

    async def _write_trades(self, trades: list[Trade], low_s: int, high_s: int) -> None:
        """The general path: drop cross-source duplicates, then an idempotent write."""
        symbol = self.parser.symbol
        start, end = self._span(ns_to_datetime(low_s * NS_PER_S), ns_to_datetime(high_s * NS_PER_S))
        kept, dropped = await drop_cross_source_duplicates(self.storage, trades)
        result = await write_trades(
            self.storage,
            kept,
            source="csv",
            coverage=[(symbol, CoverageSpan("trades", "csv", start, end))],
        )
        self.inserted += result.inserted
        self.present += result.present + dropped
        self.cross_source += dropped
        await self._written(ns_to_datetime(low_s * NS_PER_S))


async def import_paths(
    storage: Storage,
    paths: Iterable[Path],
    *,
    batch_rows: int = 50_000,
    block_bytes: int = 8 << 20,
    symbols: Iterable[str] | None = None,
    on_source: Callable[[ImportSource], None] | None = None,
    on_progress: Progress | None = None,
    strict_span: bool = False,
    candles: bool = True,
    max_line_bytes: int = 1 << 20,
) -> ImportSummary:
    """Import every CSV found under ``paths`` (files, ZIPs, folders), one file at a time,
    then bring the rollups (5m … 1w) up to date, so every timeframe reads at once.

    The rollups are left to the service's rollup actor when it is mid-pass.

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
                storage,
                source,
                batch_rows=batch_rows,
                block_bytes=block_bytes,
                symbols=selected,
                on_progress=on_progress,
                strict_span=strict_span,
                candles=candles,
                max_line_bytes=max_line_bytes,
            )
        )
    started = time.monotonic()
    while (await rollup_pass(storage)).claimed:
        pass
    return ImportSummary(summaries, time.monotonic() - started)
