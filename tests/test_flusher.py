"""Tests for histdata.actors.flusher against a real database, including a real outage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import psycopg.conninfo
import trio
from psycopg import sql
from stored import count_trades, stored_candles  # type: ignore[import-not-found]
from waiting import until  # type: ignore[import-not-found]

from histdata.actors.buffer import Batch
from histdata.actors.flusher import Flusher
from histdata.actors.journal import Journal
from histdata.model import Candle, CoverageSpan, Trade
from histdata.storage import Storage, open_storage
from histdata.storage.coverage import gaps
from histdata.storage.trades import read_trades
from histdata.supervisor import Channel, ChildSpec, Overflow, Supervisor

T0 = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
FAR = (datetime(2020, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC))


def trades(start: int, n: int, symbol: str = "BTC/USD") -> tuple[Trade, ...]:
    base = int(T0.timestamp()) * 1_000_000_000
    return tuple(
        Trade(symbol, base + i * 1_000_000, Decimal("65000.1"), Decimal("0.001"), trade_id=i)
        for i in range(start, start + n)
    )


def _set_connections(admin_dsn: str, url: str, allow: bool) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    assert isinstance(name, str)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.SQL("true" if allow else "false")
            )
        )
        if not allow:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )


class Outage:
    """Takes a real database offline (no new connections, existing ones killed) and back."""

    def __init__(self, admin_dsn: str, url: str) -> None:
        self.admin_dsn = admin_dsn
        self.url = url

    async def start(self) -> None:
        await trio.to_thread.run_sync(_set_connections, self.admin_dsn, self.url, False)

    async def end(self) -> None:
        await trio.to_thread.run_sync(_set_connections, self.admin_dsn, self.url, True)


@asynccontextmanager
async def running_flusher(
    storage: Storage,
    directory: Path,
    *,
    writers: int = 1,
    queued: tuple[Batch, ...] = (),
) -> AsyncIterator[tuple[Flusher, Channel[Batch], Supervisor]]:
    """A supervised flusher; ``queued`` batches are in its channel before it starts."""
    batches: Channel[Batch] = Channel("batches", 4, Overflow.BLOCK, weight=len)
    for batch in queued:
        batches.send_nowait(batch)
    flusher = Flusher(
        batches,
        lambda: storage,
        Journal(directory, max_bytes=50_000_000),
        retry_s=0.2,
        writers=writers,
    )
    supervisor = Supervisor("test", [ChildSpec("flusher", flusher.run, shutdown_timeout_s=10)])
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        yield flusher, batches, supervisor
        supervisor.shutdown()


class TestDirect:
    async def test_writes_trades_candles_and_coverage(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """A batch's trades, candles and coverage are all stored."""
        candle = Candle(
            "BTC/USD",
            T0,
            *(Decimal("1.5"),) * 5,
            vwap=Decimal("1.5"),
            trades=3,
            final=False,
        )
        cover = (("BTC/USD", CoverageSpan("trades", "live", T0, T0 + timedelta(minutes=1))),)
        async with running_flusher(storage, tmp_path) as (flusher, batches, _):
            await batches.send(Batch(trades(0, 100), (candle,), cover))
            await until(lambda: flusher.statistics().batches_written == 1)
        assert await count_trades(storage, "BTC/USD", *FAR) == 100
        (stored,) = await stored_candles(storage, "BTC/USD", *FAR)
        assert stored.final is False
        assert stored.trades == 3
        assert await gaps(storage, "BTC/USD", "trades", T0, T0 + timedelta(minutes=1)) == []


class TestBatching:
    async def test_queued_batches_are_written_as_one(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """Batches waiting behind the one taken are merged into the same write."""
        cover = (("BTC/USD", CoverageSpan("trades", "live", T0, T0 + timedelta(seconds=1))),)
        queued = (Batch(trades(0, 10)), Batch(trades(10, 10)), Batch(trades(20, 10), (), cover))
        async with running_flusher(storage, tmp_path, queued=queued) as (flusher, _, _):
            await until(lambda: flusher.statistics().trades_inserted == 30)
            assert flusher.statistics().batches_written == 1
        assert await count_trades(storage, "BTC/USD", *FAR) == 30
        assert await gaps(storage, "BTC/USD", "trades", T0, T0 + timedelta(seconds=1)) == []

    async def test_writers_split_a_batch_by_symbol(self, storage: Storage, tmp_path: Path) -> None:
        """With two writers each symbol's trades and coverage are stored, in parallel parts."""
        symbols = ("BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD")
        end = T0 + timedelta(seconds=1)
        batch = Batch(
            tuple(t for s in symbols for t in trades(0, 50, s)),
            (),
            tuple((s, CoverageSpan("trades", "live", T0, end)) for s in symbols),
        )
        async with running_flusher(storage, tmp_path, writers=2) as (flusher, batches, _):
            await batches.send(batch)
            await until(lambda: flusher.statistics().trades_inserted == 200)
            assert flusher.statistics().batches_written == 2
        for symbol in symbols:
            assert await count_trades(storage, symbol, *FAR) == 50
            assert await gaps(storage, symbol, "trades", T0, end) == []

    def test_split_balances_trades_and_keeps_a_symbol_whole(self, tmp_path: Path) -> None:
        """Parts hold about equal trades; each symbol's trades and coverage are in one part."""
        busy = {"BTC/USD": 300, "ETH/USD": 100, "SOL/USD": 100, "XRP/USD": 100}
        end = T0 + timedelta(seconds=1)
        batch = Batch(
            tuple(t for s, n in busy.items() for t in trades(0, n, s)),
            (),
            tuple((s, CoverageSpan("trades", "live", T0, end)) for s in busy),
        )
        flusher = Flusher(
            Channel("batches", 4, Overflow.BLOCK, weight=len),
            lambda: None,  # type: ignore[arg-type,return-value]  # never written here
            Journal(tmp_path, max_bytes=1_000_000),
            writers=2,
        )
        parts = flusher._split(batch)
        assert sorted(len(part.trades) for part in parts) == [300, 300]
        for part in parts:
            symbols = {t.symbol for t in part.trades}
            assert {s for s, _ in part.coverage} == symbols
            assert all(len([t for t in part.trades if t.symbol == s]) == busy[s] for s in symbols)
        even = Batch(tuple(t for s in busy for t in trades(0, 100, s)))
        assert [len(part.trades) for part in flusher._split(even)] == [200, 200]


class TestOutage:
    async def test_outage_journals_then_replays_everything_once(
        self, database_url: str, pg_admin_dsn: str, tmp_path: Path
    ) -> None:
        """During a real outage batches go to the journal; afterwards every trade is stored once."""
        outage = Outage(pg_admin_dsn, database_url)
        async with open_storage(database_url, pool_max=2, connect_timeout_s=0.5) as storage:
            async with running_flusher(storage, tmp_path) as (flusher, batches, _):
                await batches.send(Batch(trades(0, 50)))
                await until(lambda: flusher.statistics().trades_inserted == 50)
                await outage.start()
                try:
                    for k in range(1, 6):
                        await batches.send(Batch(trades(k * 50, 50)))
                    await until(lambda: flusher.statistics().trades_journaled == 250)
                    assert not flusher.statistics().database_up
                    assert flusher.journal.statistics().bytes > 0
                finally:
                    await outage.end()
                await until(lambda: flusher.journal.empty and flusher.statistics().database_up)
                await batches.send(Batch(trades(300, 50)))
                await until(
                    lambda: (
                        flusher.statistics().trades_inserted + flusher.statistics().trades_present
                        >= 350
                    )
                )
            assert await count_trades(storage, "BTC/USD", *FAR) == 350
            stored = await read_trades(storage, "BTC/USD", *FAR)
            assert [t.trade_id for t in stored] == list(range(350))

    async def test_stop_during_outage_leaves_journal_for_next_start(
        self, database_url: str, pg_admin_dsn: str, tmp_path: Path
    ) -> None:
        """Stopping while the database is down journals what is queued; a restart replays it."""
        outage = Outage(pg_admin_dsn, database_url)
        async with open_storage(database_url, pool_max=2, connect_timeout_s=0.5) as storage:
            await outage.start()
            try:
                async with running_flusher(storage, tmp_path) as (flusher, batches, supervisor):
                    await batches.send(Batch(trades(0, 40)))
                    await batches.send(Batch(trades(40, 40)))
                    supervisor.shutdown()
                assert Journal(tmp_path, max_bytes=50_000_000).statistics().bytes > 0
            finally:
                await outage.end()
            async with running_flusher(storage, tmp_path) as (flusher, _, _):
                await until(lambda: flusher.journal.empty)
            assert await count_trades(storage, "BTC/USD", *FAR) == 80


class TestDrain:
    async def test_new_batches_go_direct_while_the_backlog_replays(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """With the database up, a new batch is stored at once, not queued behind the journal."""
        journal = Journal(tmp_path, max_bytes=500_000_000)
        for k in range(100):
            assert await journal.append(Batch(trades(k * 2000, 2000)))
        await journal.aclose()
        async with running_flusher(storage, tmp_path) as (flusher, batches, _):
            await batches.send(Batch(trades(1_000_000, 10)))
            # trades(n, …) are n ms after T0: the new batch sits alone in its own window.
            window = (T0 + timedelta(seconds=999), T0 + timedelta(seconds=1001))
            with trio.fail_after(20):
                while True:
                    if await count_trades(storage, "BTC/USD", *window) == 10:
                        break
                    await trio.sleep(0.01)
            assert not flusher.journal.empty, "the new batch waited for the whole backlog"
            await until(lambda: flusher.journal.empty, timeout_s=60)
        assert await count_trades(storage, "BTC/USD", *FAR) == 200_010
