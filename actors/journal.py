"""The disk journal: where live batches wait while the database is unreachable.

Files live in ``data_dir/journal`` as numbered segments (``000000000001.jnl``…), each starting
with a magic header. A record is one :class:`~histdata.actors.buffer.Batch`::

    u32 length | u32 crc32(length bytes + payload) | payload (JSON)

Trades are serialised exactly: prices and volumes as decimal text, times as integer
nanoseconds, trade ids as integers; candles and coverage spans likewise. Nothing is rounded
on the way through the journal.

Guarantees, and why they hold:

- **Append-only, in order.** Records are appended to the newest segment; replay reads the
  segments oldest first. A segment grows to ``segment_bytes`` and then a new one begins.
- **Durable.** :meth:`Journal.append` returns after ``fsync``. :meth:`Journal.append_nowait`
  (the spill path of the ``live.trades`` channel, called for single trades) writes to the
  page cache at once, which survives a process kill, and is fsynced by the next
  :meth:`Journal.sync` (the flusher calls it at least every ``sync_interval_s``): a power cut
  can lose at most that window, a crash of histdata nothing.
- **Bounded.** The segments never exceed ``max_bytes`` in total. A record that does not fit is
  dropped, counted in ``dropped_records``/``dropped_trades`` and logged as an error — never
  silently, never unbounded.
- **Torn writes are detected.** A record cut short by a crash (or with a bad checksum) at the
  end of a segment is skipped and counted in ``torn_records``; damage in the middle of a
  segment (the length cannot be trusted after it) ends the read of that segment and is
  counted in ``corrupt_segments``.
- **Replay truncates only what has committed.** :meth:`Journal.replay` hands batches to the
  writer and deletes a segment only after every batch read from it was written. A crash in
  between replays the segment again; storage writes are idempotent, so nothing doubles.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import structlog
import trio

from histdata.actors.buffer import Batch, CoverageMark, LiveItem
from histdata.model import Candle, CandleSource, Side, Trade, datetime_to_ns, ns_to_datetime
from histdata.storage import CoverageSpan

__all__ = ["Journal", "JournalSpill", "JournalStatistics", "decode_batch", "encode_batch"]

_log = structlog.get_logger("histdata.actors.journal", actor="journal")

_MAGIC = b"HDJ1\n"
_HEADER = struct.Struct("<II")
_SUFFIX = ".jnl"
# A record is one batch of at most a few thousand trades (~200 bytes each); anything claiming
# to be larger than this is a corrupt length field, not a record.
_MAX_RECORD = 64 * 1024 * 1024
_DROP_LOG_EVERY_S = 5.0


# -- encoding ----------------------------------------------------------------------------------


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def encode_batch(batch: Batch) -> bytes:
    """Serialise ``batch`` exactly (decimals as text, times as integer nanoseconds)."""
    payload = {
        "t": [
            [
                t.symbol,
                t.time_ns,
                str(t.price),
                str(t.volume),
                t.side.value if t.side else None,
                t.ord_type,
                t.trade_id,
                t.seq,
            ]
            for t in batch.trades
        ],
        "c": [
            [
                c.symbol,
                datetime_to_ns(c.time),
                str(c.open),
                str(c.high),
                str(c.low),
                str(c.close),
                str(c.volume),
                _dec(c.vwap),
                c.trades,
                c.interval_min,
                c.source.value,
                c.final,
            ]
            for c in batch.candles
        ],
        "v": [
            [symbol, s.stream, s.source, datetime_to_ns(s.start), datetime_to_ns(s.end)]
            for symbol, s in batch.coverage
        ],
    }
    return orjson.dumps(payload)


def decode_batch(payload: bytes) -> Batch:
    """Inverse of :func:`encode_batch`.

    Raises:
        ValueError: the payload is not a batch this version wrote.
    """
    try:
        raw: dict[str, list[list[Any]]] = orjson.loads(payload)
        trades = tuple(
            Trade(
                symbol=symbol,
                time_ns=int(time_ns),
                price=Decimal(price),
                volume=Decimal(volume),
                side=Side(side) if side else None,
                ord_type=ord_type,
                trade_id=trade_id,
                seq=int(seq),
            )
            for symbol, time_ns, price, volume, side, ord_type, trade_id, seq in raw["t"]
        )
        candles = tuple(
            Candle(
                symbol=symbol,
                time=ns_to_datetime(int(at)),
                open=Decimal(o),
                high=Decimal(h),
                low=Decimal(lo),
                close=Decimal(c),
                volume=Decimal(v),
                vwap=None if vwap is None else Decimal(vwap),
                trades=int(n),
                interval_min=int(interval),
                source=CandleSource(source),
                final=bool(final),
            )
            for symbol, at, o, h, lo, c, v, vwap, n, interval, source, final in raw["c"]
        )
        coverage = tuple(
            (symbol, CoverageSpan(stream, source, ns_to_datetime(start), ns_to_datetime(end)))
            for symbol, stream, source, start, end in raw["v"]
        )
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise ValueError(f"not a journal batch: {exc!r}") from exc
    return Batch(trades, candles, coverage)


def _frame(payload: bytes) -> bytes:
    length = len(payload).to_bytes(4, "little")
    return _HEADER.pack(len(payload), zlib.crc32(payload, zlib.crc32(length))) + payload


@dataclass(frozen=True, slots=True)
class _SegmentRead:
    batches: list[Batch]
    torn: int
    corrupt: bool


def _read_segment(path: Path) -> _SegmentRead:
    """Every intact record of one segment, in order (runs in a worker thread)."""
    data = path.read_bytes()
    batches: list[Batch] = []
    if not data.startswith(_MAGIC):
        # A crash can leave a segment shorter than its magic; anything else is foreign.
        return _SegmentRead([], 1 if len(data) < len(_MAGIC) and data else 0, len(data) >= 5)
    offset = len(_MAGIC)
    size = len(data)
    while offset < size:
        if offset + _HEADER.size > size:
            return _SegmentRead(batches, 1, False)  # torn header at the tail
        length, crc = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        if length > _MAX_RECORD:
            return _SegmentRead(batches, 0, True)
        if end > size:
            return _SegmentRead(batches, 1, False)  # torn payload at the tail
        payload = data[offset + _HEADER.size : end]
        if zlib.crc32(payload, zlib.crc32(length.to_bytes(4, "little"))) != crc:
            if end == size:
                return _SegmentRead(batches, 1, False)
            return _SegmentRead(batches, 0, True)
        try:
            batches.append(decode_batch(payload))
        except ValueError:
            return _SegmentRead(batches, 0, True)
        offset = end
    return _SegmentRead(batches, 0, False)


# -- the journal -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JournalStatistics:
    """Counters and size of the journal."""

    segments: int
    bytes: int
    max_bytes: int
    appended_records: int
    appended_trades: int
    replayed_records: int
    replayed_trades: int
    dropped_records: int
    dropped_trades: int
    dropped_candles: int
    torn_records: int
    corrupt_segments: int


class Journal:
    """An append-only, checksummed, size-bounded journal of batches in ``directory``.

    Segments left by a previous run are picked up and replayed first. All methods run on
    the trio thread except the fsync and the segment reads, which go to worker threads.

    Raises ``OSError`` from the constructor if the directory cannot be created or listed.
    """

    def __init__(
        self, directory: Path, *, max_bytes: int, segment_bytes: int = 8 * 1024 * 1024
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = min(segment_bytes, max(max_bytes // 4, 4096))
        directory.mkdir(parents=True, exist_ok=True)
        self._sealed: list[Path] = sorted(directory.glob(f"*{_SUFFIX}"))
        self._sizes: dict[Path, int] = {p: p.stat().st_size for p in self._sealed}
        self._next_seq = max((int(p.stem) for p in self._sealed), default=0) + 1
        self._fd: int | None = None
        self._active: Path | None = None
        self._unsynced: list[int] = []  # fds written since the last fsync (closed after it)
        self._dirty = False
        self._appended_records = 0
        self._appended_trades = 0
        self._replayed_records = 0
        self._replayed_trades = 0
        self._dropped_records = 0
        self._dropped_trades = 0
        self._dropped_candles = 0
        self._torn = 0
        self._corrupt = 0
        self._last_drop_log = -_DROP_LOG_EVERY_S
        if self._sealed:
            _log.info(
                "journal found from an earlier run; it will be replayed",
                segments=len(self._sealed),
                bytes=self.bytes,
            )

    # -- state ------------------------------------------------------------------------------

    @property
    def bytes(self) -> int:
        """Bytes on disk across all segments."""
        return sum(self._sizes.values())

    @property
    def empty(self) -> bool:
        """True when there is nothing to replay."""
        return self.bytes == 0 or all(size <= len(_MAGIC) for size in self._sizes.values())

    @property
    def dropped(self) -> int:
        """Items (trades and candles) dropped because the journal was full."""
        return self._dropped_trades + self._dropped_candles

    def statistics(self) -> JournalStatistics:
        """A snapshot of the journal's counters and size."""
        return JournalStatistics(
            segments=len(self._sizes),
            bytes=self.bytes,
            max_bytes=self.max_bytes,
            appended_records=self._appended_records,
            appended_trades=self._appended_trades,
            replayed_records=self._replayed_records,
            replayed_trades=self._replayed_trades,
            dropped_records=self._dropped_records,
            dropped_trades=self._dropped_trades,
            dropped_candles=self._dropped_candles,
            torn_records=self._torn,
            corrupt_segments=self._corrupt,
        )

    # -- appending --------------------------------------------------------------------------

    def append_nowait(self, batch: Batch) -> bool:
        """Append ``batch`` without waiting for fsync (see the module docs).

        Returns False, counting and logging the loss, when the journal is full or the write
        fails (a disk error): the batch was then not kept.
        """
        record = _frame(encode_batch(batch))
        if self.bytes + len(record) + len(_MAGIC) > self.max_bytes:
            self._drop(batch, "journal full")
            return False
        try:
            fd = self._writable(len(record))
            written = os.write(fd, record)
            if written != len(record):
                raise OSError(f"short write: {written} of {len(record)} bytes")
        except OSError as exc:
            # Whatever reached the file is a torn record at the end of this segment; a
            # fresh segment keeps the damage there, where replay detects and skips it.
            self._seal_active()
            self._dirty = True
            self._drop(batch, f"journal write failed: {exc}")
            return False
        assert self._active is not None
        self._sizes[self._active] += len(record)
        self._dirty = True
        self._appended_records += 1
        self._appended_trades += len(batch.trades)
        return True

    async def append(self, batch: Batch) -> bool:
        """Append ``batch`` and fsync; returns False (counted, logged) if it was not kept.

        Raises ``OSError`` when the fsync fails.
        """
        kept = self.append_nowait(batch)
        await self.sync()
        return kept

    async def sync(self) -> None:
        """Fsync everything appended so far (no-op when nothing is pending)."""
        if not self._dirty:
            return
        self._dirty = False
        closing, self._unsynced = self._unsynced, []
        fds = list(closing)
        if self._fd is not None:
            fds.append(os.dup(self._fd))  # a rotation may close the original meanwhile
            closing.append(fds[-1])
        dir_fd = os.open(self.directory, os.O_RDONLY)
        closing.append(dir_fd)
        fds.append(dir_fd)  # new segment names must survive a power cut too

        def fsync_all() -> None:
            try:
                for fd in fds:
                    os.fsync(fd)
            finally:
                for fd in closing:
                    os.close(fd)

        await trio.to_thread.run_sync(fsync_all)

    def _writable(self, record_len: int) -> int:
        """The fd of the active segment, rotating when the record would not fit."""
        if (
            self._fd is not None
            and self._active is not None
            and self._sizes[self._active] + record_len > self.segment_bytes
            and self._sizes[self._active] > len(_MAGIC)
        ):
            self._seal_active()
        if self._fd is None:
            path = self.directory / f"{self._next_seq:012d}{_SUFFIX}"
            self._next_seq += 1
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            os.write(fd, _MAGIC)
            self._fd, self._active = fd, path
            self._sizes[path] = len(_MAGIC)
            self._dirty = True
        return self._fd

    def _seal_active(self) -> None:
        if self._fd is None or self._active is None:
            return
        self._unsynced.append(self._fd)
        self._sealed.append(self._active)
        self._fd, self._active = None, None

    def _drop(self, batch: Batch, why: str) -> None:
        self._dropped_records += 1
        self._dropped_trades += len(batch.trades)
        self._dropped_candles += len(batch.candles)
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_EVERY_S:
            self._last_drop_log = now
            _log.error(
                "JOURNAL DROPPING LIVE DATA (raise [live] journal_max_mb, free the disk or"
                " restore the database)",
                reason=why,
                max_bytes=self.max_bytes,
                dropped_records=self._dropped_records,
                dropped_trades=self._dropped_trades,
                dropped_candles=self._dropped_candles,
            )

    # -- replaying --------------------------------------------------------------------------

    async def replay(
        self, write: Callable[[Batch], Awaitable[None]], *, group_trades: int = 5000
    ) -> int:
        """Write every journaled batch through ``write``, oldest first; return trades replayed.

        Consecutive batches are merged into writes of about ``group_trades`` trades. A
        segment is deleted once all its batches were written; records appended meanwhile are
        replayed too (the active segment is sealed when replay reaches it), so this returns
        with the journal empty. Raises whatever ``write`` raises (typically
        :class:`~histdata.errors.DatabaseUnavailable`), leaving the unwritten segments —
        including the one being replayed — in place for the next attempt.
        """
        replayed = 0
        while True:
            if not self._sealed:
                if self._active is None or self._sizes[self._active] <= len(_MAGIC):
                    self._discard_empty_active()
                    return replayed
                self._seal_active()
            await self.sync()  # never replay (and then delete) what is not yet durable
            path = self._sealed[0]
            read = await trio.to_thread.run_sync(_read_segment, path)
            if read.torn:
                self._torn += read.torn
                _log.warning("journal: skipped a torn record at a segment's end", segment=path.name)
            if read.corrupt:
                self._corrupt += 1
                _log.error(
                    "journal: corrupt segment; records after the damage are lost",
                    segment=path.name,
                    recovered=len(read.batches),
                )
            for group in _groups(read.batches, group_trades):
                await write(group)
                replayed += len(group.trades)
                self._replayed_trades += len(group.trades)
            self._replayed_records += len(read.batches)
            self._sealed.pop(0)
            self._sizes.pop(path, None)
            await trio.to_thread.run_sync(path.unlink)

    def _discard_empty_active(self) -> None:
        """Remove an active segment that holds nothing but its header."""
        if self._fd is None or self._active is None:
            return
        path, fd = self._active, self._fd
        self._fd, self._active = None, None
        self._sizes.pop(path, None)
        if self._dirty:
            self._unsynced.append(fd)  # closed by the next sync
        else:
            os.close(fd)
        path.unlink(missing_ok=True)

    async def aclose(self) -> None:
        """Fsync and close the files; segments with records stay for the next start."""
        self._dirty = True
        if self._active is not None and self._sizes[self._active] <= len(_MAGIC):
            self._discard_empty_active()
        self._seal_active()
        await self.sync()

    def spill_sink(self, loss: Callable[[], int]) -> JournalSpill:
        """A :class:`~histdata.supervisor.SpillSink` for the ``live.trades`` channel."""
        return JournalSpill(self, loss)


def _groups(batches: Iterable[Batch], group_trades: int) -> Iterable[Batch]:
    """Merge consecutive batches into writes of about ``group_trades`` trades, in order."""
    trades: list[Trade] = []
    candles: dict[tuple[str, object], Candle] = {}
    coverage: list[tuple[str, CoverageSpan]] = []
    for batch in batches:
        trades.extend(batch.trades)
        for candle in batch.candles:
            candles.pop((candle.symbol, candle.time), None)  # keep the latest, in order
            candles[(candle.symbol, candle.time)] = candle
        coverage.extend(batch.coverage)
        if len(trades) >= group_trades or len(candles) >= group_trades:
            yield Batch(tuple(trades), tuple(candles.values()), tuple(coverage))
            trades, candles, coverage = [], {}, []
    if trades or candles or coverage:
        yield Batch(tuple(trades), tuple(candles.values()), tuple(coverage))


class JournalSpill:
    """Spill sink of the ``live.trades`` channel: one trade (or mark) per journal record.

    A coverage mark is journaled only when nothing was lost on the live path since the mark
    before it (``loss()`` unchanged), like the buffer's rule.
    """

    def __init__(self, journal: Journal, loss: Callable[[], int]) -> None:
        self._journal = journal
        self._loss = loss

    async def spill(self, item: LiveItem) -> None:
        """Append ``item`` to the journal (page cache now, fsync with the next sync).

        A write failure is counted by the journal as a drop, like a full journal.
        """
        await trio.lowlevel.checkpoint()
        if isinstance(item, CoverageMark):
            if self._loss() == item.loss_before:
                self._journal.append_nowait(Batch(coverage=item.spans))
            return
        self._journal.append_nowait(Batch(trades=(item,)))
