"""The disk journal: where live batches wait while the database is unreachable.

Files live in ``data_dir/journal`` as numbered segments (``000000000001.jnl``…), each starting
with a magic header. A record is one :class:`~histdata.actors.buffer.Batch`, framed so that a
reader can find the next record after damage::

    sync b"\\xffHJR" | u32 length | u32 index | u32 trades_before | u32 candles_before
    | u32 trades | u32 candles | u32 crc32(header so far) | u32 crc32(payload) | payload (JSON)

``index`` numbers the records of a segment from 0 and ``trades_before``/``candles_before`` sum
the items of the records before it, so the first intact record after a damaged stretch says
exactly how many records, trades and candles the damage cost. The sync bytes open with 0xFF,
which never occurs in UTF-8, so they never appear inside a payload; a false match elsewhere
must also pass the header checksum. Segments written before this framing (magic ``HDJ1``:
``u32 length | u32 crc32 | payload``) are still read; damage in one of them ends its read,
since nothing there marks where the next record starts.

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
- **A failing disk leaves no debris.** When a write or a segment's creation fails (a full
  disk, any ``OSError``) the batch is dropped and counted like a full journal, the partial
  record is cut off again, and a segment that would hold nothing is removed, so no empty or
  half-written segment stays behind. ``failing`` is true from such a drop (or one because
  the journal is full) until an append succeeds again or a replay empties the journal; it
  is what the service's health reads to say "dropping".
- **Damage costs only the damaged records.** A record with a bad checksum, or cut short at
  the end of a segment by a crash, is skipped and the read goes on at the next record that
  checks out. What was lost is counted in ``lost_records``/``lost_trades``/``lost_candles``
  (and ``torn_records`` for a cut-off tail); a damaged stretch reaching the end of a segment,
  or any damage in an old-format segment, leaves no count to read and is counted in
  ``lost_unknown_records``. A segment that had damage is moved to ``journal/damaged/`` after
  its intact records were written, for inspection, and counted in ``corrupt_segments``.
- **Damage never becomes coverage.** A lost record held trades whose time a later coverage
  span claims, so after damage the rest of that replay is written without its coverage spans
  (counted in ``withheld_spans``): that time reads "not observed" and the gap filler repairs it.
- **Replay truncates only what has committed.** :meth:`Journal.replay` hands batches to the
  writer and removes a segment only after every batch read from it was written. A crash in
  between replays the segment again; storage writes are idempotent, so nothing doubles.
"""

from __future__ import annotations

import contextlib
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

from histdata.actors.buffer import Batch, CoverageMark, LiveItem, merge_batches
from histdata.model import (
    Candle,
    CandleSource,
    CoverageSpan,
    Side,
    Trade,
    datetime_to_ns,
    ns_to_datetime,
)

__all__ = ["Journal", "JournalSpill", "JournalStatistics", "decode_batch", "encode_batch"]

_log = structlog.get_logger("histdata.actors.journal", actor="journal")

_MAGIC = b"HDJ2\n"
_MAGIC_V1 = b"HDJ1\n"  # segments written before the resynchronising framing
_SYNC = b"\xffHJR"
_HEAD = struct.Struct("<4sIIIIII")  # sync, length, index, trades/candles before, trades, candles
_CRCS = struct.Struct("<II")  # crc32 of the header fields, crc32 of the payload
_HEADER_SIZE = _HEAD.size + _CRCS.size
_HEADER_V1 = struct.Struct("<II")  # length, crc32(length bytes + payload)
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


@dataclass(frozen=True, slots=True)
class _Position:
    """Where a record sits in its segment: its number and the items of the records before it."""

    index: int = 0
    trades: int = 0
    candles: int = 0


@dataclass(frozen=True, slots=True)
class _Head:
    """The checked header of one record."""

    length: int
    at: _Position
    trades: int
    candles: int
    payload_crc: int

    @property
    def after(self) -> _Position:
        """The position of the record that follows this one."""
        return _Position(
            self.at.index + 1, self.at.trades + self.trades, self.at.candles + self.candles
        )


def _frame(payload: bytes, at: _Position, trades: int, candles: int) -> bytes:
    head = _HEAD.pack(_SYNC, len(payload), at.index, at.trades, at.candles, trades, candles)
    return head + _CRCS.pack(zlib.crc32(head), zlib.crc32(payload)) + payload


def _parse_head(data: bytes, offset: int) -> _Head | None:
    """The header at ``offset`` if it is whole, starts with the sync bytes and checks out."""
    if offset + _HEADER_SIZE > len(data) or not data.startswith(_SYNC, offset):
        return None
    _, length, index, trades_before, candles_before, trades, candles = _HEAD.unpack_from(
        data, offset
    )
    head_crc, payload_crc = _CRCS.unpack_from(data, offset + _HEAD.size)
    if zlib.crc32(data[offset : offset + _HEAD.size]) != head_crc or length > _MAX_RECORD:
        return None
    return _Head(
        length, _Position(index, trades_before, candles_before), trades, candles, payload_crc
    )


@dataclass(slots=True)
class _Loss:
    """What one segment's damage cost (see the module docs for the counters' meaning)."""

    records: int = 0
    trades: int = 0
    candles: int = 0
    unknown_records: int = 0
    torn: int = 0
    stretches: int = 0  # unreadable runs of bytes (a record's header did not check out)

    def between(self, expected: _Position, found: _Position) -> None:
        """Count the records a damaged stretch hid, from the next intact record's position."""
        if (
            found.index < expected.index
            or found.trades < expected.trades
            or found.candles < expected.candles
        ):
            # Not a position this segment can have produced (a false sync match that passed
            # the header checksum): the damage is real, its size unknown.
            self.records += 1
            self.unknown_records += 1
            return
        self.records += found.index - expected.index
        self.trades += found.trades - expected.trades
        self.candles += found.candles - expected.candles


@dataclass(frozen=True, slots=True)
class _SegmentRead:
    """The intact batches of one segment, in order, and what its damage cost.

    ``clean`` is how many batches precede the first damage (all of them when there is none).
    """

    batches: list[Batch]
    clean: int
    loss: _Loss

    @property
    def damaged(self) -> bool:
        """True when any part of the segment could not be read."""
        return self.loss.records > 0 or self.loss.stretches > 0


def _read_segment(path: Path) -> _SegmentRead:
    """Every intact record of one segment, in order (runs in a worker thread)."""
    data = path.read_bytes()
    if data.startswith(_MAGIC):
        return _read_records(data)
    if data.startswith(_MAGIC_V1):
        return _read_records_v1(data)
    loss = _Loss()
    if not (_MAGIC.startswith(data) or _MAGIC_V1.startswith(data)):
        # Not a segment cut short at its creation (which holds no record): something foreign.
        loss.records = loss.unknown_records = loss.stretches = 1
    return _SegmentRead([], 0, loss)


def _read_records(data: bytes) -> _SegmentRead:
    """Records of a current-format segment, resynchronising on the sync bytes after damage."""
    batches: list[Batch] = []
    loss = _Loss()
    clean: int | None = None
    expected = _Position()
    offset = len(_MAGIC)
    size = len(data)
    damaged_at: int | None = None  # start of an unreadable stretch not yet accounted for
    while offset < size:
        head = _parse_head(data, offset)
        if head is None:
            if damaged_at is None:
                damaged_at = offset
                loss.stretches += 1
                clean = len(batches) if clean is None else clean
            found = data.find(_SYNC, offset + 1)
            offset = size if found < 0 else found
            continue
        if damaged_at is not None:
            loss.between(expected, head.at)
            damaged_at = None
        start = offset + _HEADER_SIZE
        end = start + head.length
        payload = data[start:end]
        batch = None
        if end <= size and zlib.crc32(payload) == head.payload_crc:
            try:
                batch = decode_batch(payload)
            except ValueError:
                batch = None
        if batch is None:
            clean = len(batches) if clean is None else clean
            loss.records += 1
            loss.trades += head.trades
            loss.candles += head.candles
            if end >= size:
                loss.torn += 1
        else:
            batches.append(batch)
        expected = head.after
        offset = min(end, size)
    if damaged_at is not None:
        # Damage reaching the end: no intact record after it says what it held.
        loss.records += 1
        loss.unknown_records += 1
        loss.torn += int(damaged_at + _HEADER_SIZE > size)  # a header cut off: a crash
    return _SegmentRead(batches, len(batches) if clean is None else clean, loss)


def _read_records_v1(data: bytes) -> _SegmentRead:
    """Records of an old-format segment; damage ends the read (no marker to resume at)."""
    batches: list[Batch] = []
    offset = len(_MAGIC_V1)
    size = len(data)
    torn = False
    while offset < size:
        if offset + _HEADER_V1.size > size:
            torn = True
            break
        length, crc = _HEADER_V1.unpack_from(data, offset)
        end = offset + _HEADER_V1.size + length
        if length > _MAX_RECORD:
            break
        if end > size:
            torn = True
            break
        payload = data[offset + _HEADER_V1.size : end]
        if zlib.crc32(payload, zlib.crc32(length.to_bytes(4, "little"))) != crc:
            torn = end == size
            break
        try:
            batches.append(decode_batch(payload))
        except ValueError:
            break
        offset = end
    loss = _Loss()
    if offset < size:
        loss.records = loss.unknown_records = loss.stretches = 1
        loss.torn = int(torn)
    return _SegmentRead(batches, len(batches), loss)


# -- the journal -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JournalStatistics:
    """Counters, size and state of the journal (the module docs say what each counts).

    ``failing`` is true from a drop until an append succeeds or a replay empties the journal
    (nothing is being dropped then); ``last_drop_at`` is the Unix time of the latest drop and
    ``last_error`` its reason.
    """

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
    lost_records: int
    lost_trades: int
    lost_candles: int
    lost_unknown_records: int
    withheld_spans: int
    torn_records: int
    corrupt_segments: int
    failing: bool
    last_drop_at: float | None
    last_error: str | None


class Journal:
    """An append-only, checksummed, size-bounded journal of batches in ``directory``.

    Segments left by a previous run are picked up and replayed first. All methods run on
    the trio thread except the fsync and the segment reads, which go to worker threads.
    Damaged segments are moved to ``directory/damaged`` after replay.

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
        self._position = _Position()  # of the next record in the active segment
        self._unsynced: list[int] = []  # fds written since the last fsync (closed after it)
        self._dirty = False
        self._appended_records = 0
        self._appended_trades = 0
        self._replayed_records = 0
        self._replayed_trades = 0
        self._dropped_records = 0
        self._dropped_trades = 0
        self._dropped_candles = 0
        self._lost = _Loss()
        self._withheld_spans = 0
        self._corrupt = 0
        self._failing = False
        self._last_drop_at: float | None = None
        self._last_error: str | None = None
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
        """Every item (trade or candle) lost in the journal.

        That is the items dropped at append (journal full, disk error) and the items of
        damaged records found at replay, as far as their count is known (see
        ``lost_unknown_records`` in :meth:`statistics` for the rest).
        """
        return self._dropped_trades + self._dropped_candles + self._lost.trades + self._lost.candles

    @property
    def failing(self) -> bool:
        """True from a dropped append until an append succeeds or a replay empties the journal."""
        return self._failing

    def statistics(self) -> JournalStatistics:
        """A snapshot of the journal's counters, size and state."""
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
            lost_records=self._lost.records,
            lost_trades=self._lost.trades,
            lost_candles=self._lost.candles,
            lost_unknown_records=self._lost.unknown_records,
            withheld_spans=self._withheld_spans,
            torn_records=self._lost.torn,
            corrupt_segments=self._corrupt,
            failing=self._failing,
            last_drop_at=self._last_drop_at,
            last_error=self._last_error,
        )

    # -- appending --------------------------------------------------------------------------

    def append_nowait(self, batch: Batch) -> bool:
        """Append ``batch`` without waiting for fsync (see the module docs).

        Returns False, counting and logging the loss, when the journal is full or the disk
        fails (any ``OSError`` creating a segment or writing): the batch was then not kept,
        and no partial record or empty segment is left behind.
        """
        payload = encode_batch(batch)
        size = _HEADER_SIZE + len(payload)
        if self.bytes + size + len(_MAGIC) > self.max_bytes:
            self._drop(batch, "journal full")
            return False
        try:
            fd = self._writable(size)
        except OSError as exc:
            self._drop(batch, f"journal cannot create a segment: {exc}")
            return False
        assert self._active is not None
        record = _frame(payload, self._position, len(batch.trades), len(batch.candles))
        try:
            written = os.write(fd, record)
            if written != len(record):
                raise OSError(f"short write: {written} of {len(record)} bytes")
        except OSError as exc:
            self._cut_back()
            self._drop(batch, f"journal write failed: {exc}")
            return False
        self._sizes[self._active] += len(record)
        self._position = _Position(
            self._position.index + 1,
            self._position.trades + len(batch.trades),
            self._position.candles + len(batch.candles),
        )
        self._dirty = True
        self._failing = False
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
        """Fsync everything appended so far (no-op when nothing is pending).

        Raises ``OSError`` when the directory cannot be opened or an fsync fails; the files
        are closed either way.
        """
        if not self._dirty:
            return
        self._dirty = False
        closing, self._unsynced = self._unsynced, []
        try:
            # New segment names must survive a power cut too, hence the directory.
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
            closing.append(dir_fd)
            if self._fd is not None:
                closing.append(os.dup(self._fd))  # a rotation may close the original meanwhile
        except OSError:
            for fd in closing:
                os.close(fd)
            self._dirty = True  # the active segment still needs its fsync
            raise

        def fsync_all() -> None:
            try:
                for fd in closing:
                    os.fsync(fd)
            finally:
                for fd in closing:
                    os.close(fd)

        await trio.to_thread.run_sync(fsync_all)

    def _writable(self, record_len: int) -> int:
        """The fd of the active segment, rotating when the record would not fit.

        Raises ``OSError`` when a new segment cannot be created; nothing of it remains.
        """
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
            fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
            try:
                written = os.write(fd, _MAGIC)
                if written != len(_MAGIC):
                    raise OSError(f"short write: {written} of {len(_MAGIC)} bytes")
            except OSError:
                os.close(fd)
                with contextlib.suppress(OSError):
                    path.unlink()
                raise
            self._fd, self._active = fd, path
            self._position = _Position()
            self._sizes[path] = len(_MAGIC)
            self._dirty = True
        return self._fd

    def _cut_back(self) -> None:
        """Undo a failed write: cut the active segment back to its last whole record.

        A segment left with no record is removed. If the cut itself fails, the segment is
        sealed, so the partial record stays at its end, where replay counts it as torn.
        """
        if self._fd is None or self._active is None:
            return
        if self._sizes[self._active] <= len(_MAGIC):
            self._discard_empty_active()
            return
        try:
            os.ftruncate(self._fd, self._sizes[self._active])
        except OSError:
            self._seal_active()
        self._dirty = True

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
        self._failing = True
        self._last_drop_at = time.time()
        self._last_error = why
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
        segment is removed once all its batches were written (moved to ``damaged/`` if any
        of it could not be read); records appended meanwhile are replayed too (the active
        segment is sealed when replay reaches it), so this returns with the journal empty.
        After damage, the rest of the replay is written without coverage spans (module
        docs). Raises whatever ``write`` raises (typically
        :class:`~histdata.errors.DatabaseUnavailable`), leaving the unwritten segments —
        including the one being replayed — in place for the next attempt, and ``OSError``
        if a replayed segment cannot be removed or moved aside.
        """
        replayed = 0
        tainted = False  # damage seen: later coverage may claim the lost trades' time
        while True:
            if not self._sealed:
                if self._active is None or self._sizes[self._active] <= len(_MAGIC):
                    self._discard_empty_active()
                    self._failing = False  # empty and written back: nothing is being dropped
                    return replayed
                self._seal_active()
            await self.sync()  # never replay (and then delete) what is not yet durable
            path = self._sealed[0]
            read = await trio.to_thread.run_sync(_read_segment, path)
            batches = read.batches
            if tainted or read.damaged:
                keep = 0 if tainted else read.clean
                batches = batches[:keep] + [self._withhold(b) for b in batches[keep:]]
            for group in _groups(batches, group_trades):
                await write(group)
                replayed += len(group.trades)
                self._replayed_trades += len(group.trades)
            self._replayed_records += len(read.batches)
            if read.damaged:
                await trio.to_thread.run_sync(self._move_aside, path)
                self._count_damage(path, read)
                tainted = True
            else:
                await trio.to_thread.run_sync(path.unlink)
            self._sealed.pop(0)
            self._sizes.pop(path, None)

    def _withhold(self, batch: Batch) -> Batch:
        self._withheld_spans += len(batch.coverage)
        return Batch(batch.trades, batch.candles, ())

    def _move_aside(self, path: Path) -> None:
        """Move a damaged segment into ``damaged/`` under a name no earlier one has."""
        damaged = self.directory / "damaged"
        damaged.mkdir(exist_ok=True)
        # Segment numbers start again at 1 once the journal is empty: keep every copy.
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = damaged / f"{path.stem}-{stamp}{_SUFFIX}"
        n = 0
        while target.exists():
            n += 1
            target = damaged / f"{path.stem}-{stamp}-{n}{_SUFFIX}"
        os.rename(path, target)

    def _count_damage(self, path: Path, read: _SegmentRead) -> None:
        loss = read.loss
        self._corrupt += 1
        self._lost.records += loss.records
        self._lost.trades += loss.trades
        self._lost.candles += loss.candles
        self._lost.unknown_records += loss.unknown_records
        self._lost.torn += loss.torn
        self._lost.stretches += loss.stretches
        _log.error(
            "journal: damaged segment; its intact records were replayed, the damaged ones are"
            " lost and the segment moved to damaged/",
            segment=path.name,
            recovered_records=len(read.batches),
            lost_records=loss.records,
            lost_trades=loss.trades,
            lost_candles=loss.candles,
            records_of_unknown_size=loss.unknown_records,
            torn=loss.torn,
        )

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
        with contextlib.suppress(OSError):
            path.unlink()

    async def aclose(self) -> None:
        """Fsync and close the files; segments with records stay for the next start."""
        self._dirty = True
        if self._active is not None and self._sizes[self._active] <= len(_MAGIC):
            self._discard_empty_active()
        self._seal_active()
        await self.sync()

    def spill_sink(
        self, loss: Callable[[], int], *, database_up: Callable[[], bool] = lambda: False
    ) -> JournalSpill:
        """A :class:`~histdata.supervisor.SpillSink` for the ``live.trades`` channel that
        declines while ``database_up()`` (see :class:`JournalSpill`)."""
        return JournalSpill(self, loss, database_up)


def _groups(batches: Iterable[Batch], group_trades: int) -> Iterable[Batch]:
    """Merge consecutive batches into writes of about ``group_trades`` trades, in order."""
    group: list[Batch] = []
    trades = candles = 0
    for batch in batches:
        group.append(batch)
        trades += len(batch.trades)
        candles += len(batch.candles)
        if trades >= group_trades or candles >= group_trades:
            yield merge_batches(group)
            group, trades, candles = [], 0, 0
    if group:
        yield merge_batches(group)


class JournalSpill:
    """Spill sink of the ``live.trades`` channel: one trade (or mark) per journal record.

    It declines while ``database_up()``: a database that answers but is behind gets
    backpressure (the flusher then writes larger batches), since journaling trades it could
    still take only adds a second write path's work (measured: 20% more CPU, and slower).
    The journal is for a database that is away. A coverage mark is journaled only when
    nothing was lost on the live path since the mark before it (``loss()`` unchanged), like
    the buffer's rule.
    """

    def __init__(
        self, journal: Journal, loss: Callable[[], int], database_up: Callable[[], bool]
    ) -> None:
        self._journal = journal
        self._loss = loss
        self._database_up = database_up

    async def spill(self, item: LiveItem) -> bool:
        """Append ``item`` to the journal (page cache now, fsync with the next sync) and
        return True; return False, keeping nothing, while the database is up.

        A write failure is counted by the journal as a drop, like a full journal.
        """
        await trio.lowlevel.checkpoint()
        if self._database_up():
            return False
        if isinstance(item, CoverageMark):
            if self._loss() == item.loss_before:
                self._journal.append_nowait(Batch(coverage=item.spans))
            return True
        self._journal.append_nowait(Batch(trades=(item,)))
        return True
