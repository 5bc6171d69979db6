"""Tests for histdata.actors.journal: exact records, bounds, damage, full disks, ordered replay."""

from __future__ import annotations

import subprocess
import sys
import zlib
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
import trio
from stored import count_trades  # type: ignore[import-not-found]

from histdata.actors.buffer import Batch, CoverageMark
from histdata.actors.journal import Journal, decode_batch, encode_batch
from histdata.model import Candle, CandleSource, CoverageSpan, Side, Trade
from histdata.storage import Storage
from histdata.storage.trades import write_trades

T0 = 1_700_000_000_123_456_789
SYNC = b"\xffHJR"  # the bytes that open every record (module docs)
HEADER = 36  # sync, six u32 fields, two crc32s


def trade(i: int, symbol: str = "BTC/USD") -> Trade:
    return Trade(
        symbol=symbol,
        time_ns=T0 + i * 1_000_000,
        price=Decimal("37123.40000001"),
        volume=Decimal("1E-8"),
        side=Side.SELL if i % 2 else Side.BUY,
        ord_type="limit",
        trade_id=1000 + i,
    )


def batch(start: int, n: int) -> Batch:
    return Batch(trades=tuple(trade(i) for i in range(start, start + n)))


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jnl"))


def record_starts(data: bytes) -> list[int]:
    starts, at = [], data.find(SYNC)
    while at >= 0:
        starts.append(at)
        at = data.find(SYNC, at + 1)
    return starts


async def big_segment(directory: Path, records: int) -> tuple[Path, list[int]]:
    """One sealed segment of ``records`` batches of 1..7 trades; returns it and the sizes."""
    journal = Journal(directory, max_bytes=200_000_000, segment_bytes=100_000_000)
    sizes, next_id = [], 0
    for k in range(records):
        n = k % 7 + 1
        journal.append_nowait(batch(next_id, n))
        sizes.append(n)
        next_id += n
    await journal.aclose()
    (segment,) = segments(directory)
    return segment, sizes


async def replay_all(journal: Journal) -> list[Batch]:
    out: list[Batch] = []

    async def write(b: Batch) -> None:
        out.append(b)

    await journal.replay(write, group_trades=1)
    return out


class TestEncoding:
    def test_round_trip_is_exact(self) -> None:
        """Decimals, nanosecond times, ids, candles and coverage survive the journal unchanged."""
        start = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
        original = Batch(
            trades=(trade(1), Trade("ETH/USD", T0, Decimal("0.10"), Decimal("3.000"))),
            candles=(
                Candle(
                    "BTC/USD",
                    start,
                    Decimal("1.0"),
                    Decimal("2.00"),
                    Decimal("0.5"),
                    Decimal("1.5"),
                    Decimal("10.12345678"),
                    None,
                    7,
                    source=CandleSource.LIVE,
                    final=False,
                ),
            ),
            coverage=(("BTC/USD", CoverageSpan("trades", "live", start, start.replace(minute=5))),),
        )
        decoded = decode_batch(encode_batch(original))
        assert decoded == original
        assert str(decoded.trades[1].price) == "0.10"

    def test_garbage_is_a_value_error(self) -> None:
        """A payload that is not a batch raises ValueError rather than something obscure."""
        with pytest.raises(ValueError, match="not a journal batch"):
            decode_batch(b'{"t": [[1]]}')


class TestReplay:
    async def test_replays_in_order_across_segments(self, tmp_path: Path) -> None:
        """Batches come back oldest first, across several segments, and the files are removed."""
        journal = Journal(tmp_path, max_bytes=10_000_000, segment_bytes=4096)
        for k in range(50):
            assert await journal.append(batch(k * 10, 10))
        assert journal.statistics().segments > 1
        replayed = await replay_all(journal)
        ids = [t.trade_id for b in replayed for t in b.trades]
        assert ids == [1000 + i for i in range(500)]
        assert journal.empty
        assert segments(tmp_path) == []

    async def test_survives_restart(self, tmp_path: Path) -> None:
        """A journal left by an earlier process is found and replayed by the next one."""
        first = Journal(tmp_path, max_bytes=1_000_000)
        await first.append(batch(0, 3))
        await first.aclose()
        second = Journal(tmp_path, max_bytes=1_000_000)
        assert not second.empty
        assert [t.trade_id for b in await replay_all(second) for t in b.trades] == [
            1000,
            1001,
            1002,
        ]

    async def test_failed_write_keeps_segment(self, tmp_path: Path) -> None:
        """A segment is deleted only after its batches were written; a failure leaves it."""
        journal = Journal(tmp_path, max_bytes=1_000_000)
        await journal.append(batch(0, 5))

        async def failing(_b: Batch) -> None:
            raise ConnectionError("database gone")

        with pytest.raises(ConnectionError):
            await journal.replay(failing)
        assert not journal.empty
        assert len(await replay_all(journal)) == 1

    async def test_torn_tail_is_skipped_and_counted(self, tmp_path: Path) -> None:
        """A record cut short by a crash is skipped with a count; the records before it replay."""
        journal = Journal(tmp_path, max_bytes=1_000_000)
        await journal.append(batch(0, 2))
        await journal.append(batch(2, 2))
        await journal.aclose()
        (segment,) = segments(tmp_path)
        data = segment.read_bytes()
        segment.write_bytes(data[:-7])
        reopened = Journal(tmp_path, max_bytes=1_000_000)
        replayed = await replay_all(reopened)
        assert [t.trade_id for b in replayed for t in b.trades] == [1000, 1001]
        assert reopened.statistics().torn_records == 1

    async def test_flipped_byte_fails_the_checksum(self, tmp_path: Path) -> None:
        """A corrupted last record fails its CRC and is skipped, not decoded into wrong data."""
        journal = Journal(tmp_path, max_bytes=1_000_000)
        await journal.append(batch(0, 2))
        await journal.aclose()
        (segment,) = segments(tmp_path)
        data = bytearray(segment.read_bytes())
        data[-3] ^= 0x01
        segment.write_bytes(bytes(data))
        reopened = Journal(tmp_path, max_bytes=1_000_000)
        assert await replay_all(reopened) == []
        assert reopened.statistics().torn_records == 1

    async def test_replay_into_storage_is_idempotent(
        self, tmp_path: Path, storage: Storage
    ) -> None:
        """Replaying the same journal twice (a crash before truncation) stores each trade once."""
        journal = Journal(tmp_path, max_bytes=1_000_000)
        await journal.append(batch(0, 20))
        await journal.aclose()
        (segment,) = segments(tmp_path)
        saved = segment.read_bytes()

        async def write(b: Batch) -> None:
            await write_trades(storage, b.trades, source="live")

        await Journal(tmp_path, max_bytes=1_000_000).replay(write)
        segment.write_bytes(saved)  # as if the process died before deleting the segment
        await Journal(tmp_path, max_bytes=1_000_000).replay(write)
        start = datetime(2023, 1, 1, tzinfo=UTC)
        end = datetime(2025, 1, 1, tzinfo=UTC)
        assert await count_trades(storage, "BTC/USD", start, end) == 20


class TestDamage:
    @pytest.mark.parametrize(
        ("where", "at"),
        [("payload", HEADER + 20), ("length field", 5), ("sync bytes", 1), ("header crc", 29)],
    )
    async def test_one_flipped_byte_loses_only_its_record(
        self, tmp_path: Path, where: str, at: int
    ) -> None:
        """A flipped byte mid-segment costs exactly its record, counted with its trades."""
        segment, sizes = await big_segment(tmp_path, 3000)
        data = bytearray(segment.read_bytes())
        starts = record_starts(bytes(data))
        assert len(starts) == 3000
        victim = 1500
        data[starts[victim] + at] ^= 0x40
        segment.write_bytes(bytes(data))
        reopened = Journal(tmp_path, max_bytes=200_000_000)
        ids = [t.trade_id for b in await replay_all(reopened) for t in b.trades]
        first_lost = 1000 + sum(sizes[:victim])
        lost_ids = set(range(first_lost, first_lost + sizes[victim]))
        assert ids == [i for i in range(1000, 1000 + sum(sizes)) if i not in lost_ids], where
        stats = reopened.statistics()
        assert (stats.lost_records, stats.lost_trades) == (1, sizes[victim])
        assert stats.lost_unknown_records == 0
        assert stats.corrupt_segments == 1
        assert reopened.dropped == sizes[victim]

    async def test_damaged_segment_is_moved_aside(self, tmp_path: Path) -> None:
        """A segment that had damage is kept under damaged/ after its good records replayed."""
        segment, _ = await big_segment(tmp_path, 10)
        data = bytearray(segment.read_bytes())
        data[record_starts(bytes(data))[4] + HEADER + 3] ^= 0x01
        segment.write_bytes(bytes(data))
        reopened = Journal(tmp_path, max_bytes=1_000_000)
        await replay_all(reopened)
        assert segments(tmp_path) == []
        (kept,) = sorted((tmp_path / "damaged").glob("*.jnl"))
        assert kept.read_bytes() == bytes(data)
        assert kept.name.startswith(segment.stem)
        assert reopened.empty

    async def test_damage_to_the_end_is_an_unknown_record(self, tmp_path: Path) -> None:
        """Damage from a record's header to the segment's end is one lost record of unknown size."""
        segment, sizes = await big_segment(tmp_path, 10)
        data = bytearray(segment.read_bytes())
        last = record_starts(bytes(data))[-1]
        data[last + 8] ^= 0xFF
        segment.write_bytes(bytes(data))
        reopened = Journal(tmp_path, max_bytes=1_000_000)
        replayed = await replay_all(reopened)
        assert sum(len(b.trades) for b in replayed) == sum(sizes[:-1])
        stats = reopened.statistics()
        assert (stats.lost_records, stats.lost_unknown_records, stats.lost_trades) == (1, 1, 0)

    async def test_coverage_after_damage_is_withheld(self, tmp_path: Path) -> None:
        """Coverage journaled after a lost record is not replayed, so its time stays a hole."""
        at = datetime(2024, 1, 1, tzinfo=UTC)
        span = (("BTC/USD", CoverageSpan("trades", "live", at, at.replace(second=1))),)
        journal = Journal(tmp_path, max_bytes=1_000_000)
        journal.append_nowait(Batch(coverage=span))
        journal.append_nowait(batch(0, 3))
        journal.append_nowait(batch(3, 3))
        journal.append_nowait(Batch(coverage=span))
        await journal.aclose()
        (segment,) = segments(tmp_path)
        data = bytearray(segment.read_bytes())
        data[record_starts(bytes(data))[1] + HEADER + 2] ^= 0x01
        segment.write_bytes(bytes(data))
        reopened = Journal(tmp_path, max_bytes=1_000_000)
        replayed = await replay_all(reopened)
        assert sum(len(b.coverage) for b in replayed) == 1  # the span before the damage
        assert [t.trade_id for b in replayed for t in b.trades] == [1003, 1004, 1005]
        assert reopened.statistics().withheld_spans == 1

    async def test_old_format_segment_still_replays(self, tmp_path: Path) -> None:
        """A segment in the framing before sync markers (magic HDJ1) replays unchanged."""
        records = b""
        for k in range(3):
            payload = encode_batch(batch(k * 2, 2))
            length = len(payload).to_bytes(4, "little")
            crc = zlib.crc32(payload, zlib.crc32(length))
            records += length + crc.to_bytes(4, "little") + payload
        (tmp_path / "000000000007.jnl").write_bytes(b"HDJ1\n" + records)
        journal = Journal(tmp_path, max_bytes=1_000_000)
        ids = [t.trade_id for b in await replay_all(journal) for t in b.trades]
        assert ids == list(range(1000, 1006))
        assert journal.statistics().lost_records == 0
        assert segments(tmp_path) == []


# Runs in a child process: RLIMIT_FSIZE makes the kernel refuse writes past a file size, which
# is what a full disk does to the journal, without touching the test process's own files.
_FULL_DISK = """
import json, resource, signal, sys
from pathlib import Path
import trio
from histdata.actors.buffer import Batch
from histdata.actors.journal import Journal
from histdata.model import Trade
from decimal import Decimal

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
directory, limit = Path(sys.argv[1]), int(sys.argv[2])
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

def batch(i):
    t = Trade("BTC/USD", 1_700_000_000_000_000_000 + i, Decimal("1.5"), Decimal("2"), trade_id=i)
    return Batch(trades=(t,) * 5)

async def main():
    journal = Journal(directory, max_bytes=10_000_000)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    kept = [journal.append_nowait(batch(i)) for i in range(40)]
    failing = journal.statistics()
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    recovered = journal.append_nowait(batch(99))
    await journal.aclose()
    print(json.dumps({"kept": kept, "failing": failing.failing, "error": failing.last_error,
                      "dropped_trades": failing.dropped_trades, "recovered": recovered,
                      "failing_after": journal.failing,
                      "sizes": sorted(p.stat().st_size for p in directory.glob("*.jnl"))}))

trio.run(main)
"""


def full_disk(directory: Path, limit: int) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(directory), str(limit)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    result: dict[str, object] = orjson.loads(done.stdout.splitlines()[-1])
    return result


class TestFullDisk:
    def test_segment_that_cannot_be_written_leaves_no_file(self, tmp_path: Path) -> None:
        """When not even a segment header fits, nothing is left on disk and every drop counts."""
        result = full_disk(tmp_path, 3)
        assert result["kept"] == [False] * 40
        assert result["dropped_trades"] == 200
        assert result["failing"] is True
        assert "segment" in str(result["error"])
        # Only the segment written after the limit was lifted exists.
        assert result["recovered"] is True
        assert result["failing_after"] is False
        assert len(result["sizes"]) == 1  # type: ignore[arg-type]

    async def test_write_failing_mid_segment_leaves_whole_records(self, tmp_path: Path) -> None:
        """A disk filling mid-segment drops the batch and leaves no partial record behind."""
        result = await trio.to_thread.run_sync(full_disk, tmp_path, 4000)
        kept = result["kept"]
        assert isinstance(kept, list)
        assert True in kept
        assert False in kept
        assert result["dropped_trades"] == 5 * kept.count(False)
        assert result["failing"] is True
        assert result["failing_after"] is False
        journal = Journal(tmp_path, max_bytes=10_000_000)
        replayed = await replay_all(journal)
        assert len(replayed) == kept.count(True) + 1
        stats = journal.statistics()
        assert (stats.lost_records, stats.torn_records, stats.corrupt_segments) == (0, 0, 0)


class TestBounds:
    async def test_full_journal_drops_and_counts(self, tmp_path: Path) -> None:
        """Past max_bytes a batch is dropped and counted; the journal never grows beyond it."""
        journal = Journal(tmp_path, max_bytes=8192, segment_bytes=4096)
        kept = dropped = 0
        for k in range(100):
            if await journal.append(batch(k * 5, 5)):
                kept += 5
            else:
                dropped += 5
        stats = journal.statistics()
        assert dropped > 0
        assert stats.dropped_trades == dropped
        assert stats.bytes <= 8192
        assert sum(len(b.trades) for b in await replay_all(journal)) == kept

    async def test_failing_while_dropping_and_clear_once_replayed(self, tmp_path: Path) -> None:
        """A full journal reports failing, with the time and reason, until replay empties it."""
        journal = Journal(tmp_path, max_bytes=8192, segment_bytes=4096)
        while journal.append_nowait(batch(0, 5)):
            pass
        stats = journal.statistics()
        assert journal.failing
        assert stats.failing
        assert stats.last_drop_at is not None
        assert stats.last_error == "journal full"
        await replay_all(journal)
        assert not journal.failing
        assert journal.statistics().last_error == "journal full"  # kept for the record


class TestSpill:
    async def test_spill_declines_while_the_database_is_up(self, tmp_path: Path) -> None:
        """A database that is up gets backpressure: the sink keeps nothing and says so."""
        journal = Journal(tmp_path, max_bytes=1_000_000)
        up = [True]
        sink = journal.spill_sink(lambda: 0, database_up=lambda: up[0])
        assert await sink.spill(trade(1)) is False
        assert journal.empty
        up[0] = False
        assert await sink.spill(trade(2)) is True
        assert [t.trade_id for b in await replay_all(journal) for t in b.trades] == [1002]

    async def test_spill_keeps_trades_and_valid_marks(self, tmp_path: Path) -> None:
        """The spill sink journals trades, and a mark only when nothing was lost before it."""
        journal = Journal(tmp_path, max_bytes=1_000_000)
        loss = [0]
        sink = journal.spill_sink(lambda: loss[0])
        at = datetime(2024, 1, 1, tzinfo=UTC)
        span = (("BTC/USD", CoverageSpan("trades", "live", at, at.replace(second=1))),)
        await sink.spill(trade(1))
        await sink.spill(CoverageMark(span, loss_before=0))
        loss[0] = 3
        await sink.spill(CoverageMark(span, loss_before=0))
        replayed = await replay_all(journal)
        assert [len(b.trades) for b in replayed] == [1, 0]
        assert sum(len(b.coverage) for b in replayed) == 1
