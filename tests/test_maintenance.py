"""Retention, compression gating and the read-only role on a real database."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
import trio
from waiting import until  # type: ignore[import-not-found]

from histdata.actors.maintenance import MaintenanceActor
from histdata.config import MaintenanceConfig
from histdata.model import Candle, CandleSource, CoverageSpan, Trade
from histdata.storage import Storage
from histdata.storage.candles import write_candles
from histdata.storage.coverage import gaps
from histdata.storage.migrations import ensure_reader_role
from histdata.storage.reads import ReadOptions, read_candles
from histdata.storage.retention import apply_retention
from histdata.storage.rollups import rollup_pass
from histdata.storage.trades import write_trades

NOW = datetime.now(UTC).replace(second=0, microsecond=0)


def candle(time: datetime) -> Candle:
    return Candle(
        symbol="BTC/USD",
        time=time,
        open=Decimal(1),
        high=Decimal(2),
        low=Decimal(1),
        close=Decimal(2),
        volume=Decimal("0.5"),
        vwap=Decimal("1.5"),
        trades=3,
        source=CandleSource.REST,
    )


def trade(time: datetime, n: int) -> Trade:
    ns = int(time.timestamp()) * 1_000_000_000
    return Trade(symbol="BTC/USD", time_ns=ns, price=Decimal(1), volume=Decimal(1), trade_id=n)


async def count(storage: Storage, table: str) -> int:
    queries = {
        "trades": "SELECT count(*) FROM trades",
        "candles_1m": "SELECT count(*) FROM candles_1m",
        "candles_rollup": "SELECT count(*) FROM candles_rollup",
    }
    row = await storage.run(lambda conn: conn.execute(queries[table]).fetchone())
    return int(row[0])


class TestRetention:
    async def test_old_rows_go_new_rows_stay(self, storage: Storage) -> None:
        """Rows older than the retention go in batches, younger rows and rollups of them stay,
        and the trimmed coverage reports the deleted range as a gap."""
        old = NOW - timedelta(days=40)
        await write_trades(
            storage,
            [trade(old + timedelta(seconds=i), i) for i in range(12_000)]
            + [trade(NOW - timedelta(days=1), 99_999)],
            source="rest",
            coverage=[
                ("BTC/USD", CoverageSpan("trades", "rest", old, NOW)),
            ],
        )
        await write_candles(storage, [candle(old), candle(NOW - timedelta(days=1))])
        while (await rollup_pass(storage)).claimed:
            pass
        results = await apply_retention(storage, {"trades": 30, "candles": 30})
        if storage.timescale:  # whole chunks are dropped: counted as chunks, not rows
            assert all(r.rows == 0 and r.chunks > 0 for r in results)
        else:
            assert [r.rows for r in results] == [12_000, 1 + 8]
        assert await count(storage, "trades") == 1
        assert await count(storage, "candles_1m") == 1
        assert await count(storage, "candles_rollup") == 8
        holes = await gaps(storage, "BTC/USD", "trades", old, NOW)
        assert holes[0][0] == old
        assert holes[0][1] == results[0].cutoff

    async def test_zero_days_keeps_everything(self, storage: Storage) -> None:
        """A retention of 0 days (the default) deletes nothing."""
        await write_candles(storage, [candle(NOW - timedelta(days=4000))])
        assert await apply_retention(storage, {"trades": 0, "candles": 0}) == []
        assert await count(storage, "candles_1m") == 1


class TestMaintenanceActor:
    async def test_compression_is_skipped_without_the_timescale_licence(
        self, storage: Storage
    ) -> None:
        """Without TimescaleDB's Timescale License, compression is reported unavailable and
        retention rounds still run."""
        if storage.timescale:
            pytest.skip("this server has TimescaleDB")
        actor = MaintenanceActor(lambda: storage, MaintenanceConfig(interval_s=3600))
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            await until(lambda: actor.statistics().rounds >= 1, timeout_s=20)
            nursery.cancel_scope.cancel()
        stats = actor.statistics()
        assert stats.compression == "unavailable"
        assert stats.rounds == 1


class TestReadonlyRole:
    async def test_reads_run_under_a_role_that_cannot_write(
        self, storage: Storage, database_url: str
    ) -> None:
        """The created role can read candles and is refused any write."""
        role = f"histdata_reader_t{os.getpid()}"
        try:
            assert await storage.run(ensure_reader_role, role)
            await write_candles(storage, [candle(NOW - timedelta(days=1))])
            options = ReadOptions(role=role)
            got = await read_candles(
                storage, "BTC/USD", 1, NOW - timedelta(days=2), NOW, options=options
            )
            assert len(got) == 1

            def write_as_role(conn: psycopg.Connection[object]) -> None:
                conn.execute(f'SET LOCAL ROLE "{role}"')
                conn.execute("DELETE FROM candles_1m")

            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await storage.run(write_as_role)
        finally:
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(f'DROP OWNED BY "{role}"'.encode())
                conn.execute(f'DROP ROLE IF EXISTS "{role}"'.encode())
