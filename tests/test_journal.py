"""Tests for histdata.actors.journal: exact records, bounds, torn tails, ordered replay."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from histdata.actors.buffer import Batch, CoverageMark
from histdata.actors.journal import Journal, decode_batch, encode_batch
from histdata.model import Candle, CandleSource, Side, Trade
from histdata.storage import CoverageSpan, Storage

T0 = 1_700_000_000_123_456_789


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
            await storage.write_trades(b.trades, source="live")

        await Journal(tmp_path, max_bytes=1_000_000).replay(write)
        segment.write_bytes(saved)  # as if the process died before deleting the segment
        await Journal(tmp_path, max_bytes=1_000_000).replay(write)
        start = datetime(2023, 1, 1, tzinfo=UTC)
        end = datetime(2025, 1, 1, tzinfo=UTC)
        assert await storage.count_trades("BTC/USD", start, end) == 20


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


class TestSpill:
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
