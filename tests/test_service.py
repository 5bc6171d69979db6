"""End-to-end tests of ``histdata run``: the simulator, the whole tree and a real database.

Outages are real: the test database stops accepting connections and its sessions are
terminated (``ALTER DATABASE … ALLOW_CONNECTIONS false`` + ``pg_terminate_backend``), or the
trades table is locked so writes stall. Nothing is mocked.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from stored import count_trades  # type: ignore[import-not-found]

# pytest puts tests/ on sys.path (no package): the outage helper lives with the flusher tests.
from test_flusher import Outage  # type: ignore[import-not-found]
from waiting import until  # type: ignore[import-not-found]

from histdata.actors.buffer import Batch
from histdata.actors.journal import Journal
from histdata.config import (
    Config,
    DatabaseConfig,
    GapfillConfig,
    KrakenConfig,
    LiveConfig,
    QueryConfig,
    ServiceConfig,
)
from histdata.service import Service
from histdata.sim import SimConfig, open_simulator
from histdata.storage import Storage, open_storage
from histdata.storage.coverage import covered
from histdata.storage.trades import read_trades

FAR = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
SYMBOL = "BTC/USD"


def make_config(tmp_path: Path, sim: Any, **live: Any) -> Config:
    return Config(
        service=ServiceConfig(data_dir=str(tmp_path / "var"), shutdown_timeout_s=8.0),
        database=DatabaseConfig(pool_max=4, connect_timeout_s=1.0, statement_timeout_s=30.0),
        kraken=KrakenConfig(
            rest_url=sim.rest_url, ws_url=sim.ws_url, symbols=(SYMBOL,), ws_stale_after_s=3.0
        ),
        live=replace(LiveConfig(batch_size=500, batch_age_s=0.1, flush_retry_s=0.2), **live),
        # The live path alone: a REST repair would refill what these tests count as missing.
        gapfill=GapfillConfig(enabled=False),
        query=QueryConfig(socket=str(tmp_path / "var" / "q.sock")),
    )


@asynccontextmanager
async def simulator(rate: float) -> AsyncIterator[Any]:
    config = SimConfig(seed=3, symbols=(SYMBOL,), trade_rate_per_s=rate, history_s=30.0)
    async with open_simulator(config) as sim:
        yield sim


@asynccontextmanager
async def running(config: Config, conninfo: str) -> AsyncIterator[Service]:
    service = Service(config, conninfo)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(service.run, handle_signals=False))
        yield service
        service.shutdown()


async def stored_ids(storage: Storage) -> list[int]:
    return [t.trade_id for t in await read_trades(storage, SYMBOL, *FAR) if t.trade_id is not None]


def truth_between(sim: Any, low: int, high: int) -> set[int]:
    return {t.trade_id for t in sim.market.trades(SYMBOL) if low <= t.trade_id <= high}


async def settle(sim: Any, conninfo: str, timeout_s: float = 30.0) -> int:
    """Pause the simulator and wait until its last emitted trade is stored; returns its id."""
    sim.pause_trading()
    last = sim.market.trades(SYMBOL)[-1].trade_id
    async with open_storage(conninfo, pool_max=1, apply_migrations=False) as storage:
        with trio.fail_after(timeout_s):
            while True:
                if max(await stored_ids(storage), default=0) >= last:
                    return int(last)
                await trio.sleep(0.1)


async def check_complete(sim: Any, conninfo: str, *, through: int) -> list[int]:
    """Every trade id the simulator emitted from the first stored one up to ``through`` (its
    last, after :func:`settle`) is stored exactly once."""
    async with open_storage(conninfo, pool_max=1) as storage:
        ids = await stored_ids(storage)
    assert ids
    assert len(ids) == len(set(ids)), "duplicate trades stored"
    missing = truth_between(sim, min(ids), through) - set(ids)
    assert not missing, f"{len(missing)} trades missing, e.g. {sorted(missing)[:5]}"
    assert max(ids) == through
    return ids


async def assert_coverage_honest(sim: Any, conninfo: str, accounted: set[int], through: int) -> int:
    """No trade the simulator emitted up to ``through`` that is neither stored nor journaled
    (``accounted``) lies inside a range coverage calls observed; returns how many are missing."""
    async with open_storage(conninfo, pool_max=1) as storage:
        observed = await covered(storage, SYMBOL, "trades", *FAR)
    missing = [
        t
        for t in sim.market.trades(SYMBOL)
        if min(accounted) <= t.trade_id <= through and t.trade_id not in accounted
    ]
    lying = [t for t in missing if any(a <= t.time < b for a, b in observed)]
    assert not lying, (
        f"{len(lying)} of {len(missing)} missing trades lie inside observed coverage,"
        f" e.g. id {lying[0].trade_id} at {lying[0].time}"
    )
    return len(missing)


async def run_with_outage(
    tmp_path: Path, database_url: str, pg_admin_dsn: str, *, seconds: float, outage_s: float
) -> None:
    outage = Outage(pg_admin_dsn, database_url)
    async with simulator(2000.0) as sim:
        config = make_config(tmp_path, sim)
        async with running(config, database_url) as service:
            await until(lambda: service.flusher.statistics().trades_inserted > 1000)
            await trio.sleep((seconds - outage_s) / 2)
            await outage.start()
            try:
                await trio.sleep(outage_s)
                assert service.flusher.statistics().trades_journaled > 0
                assert not service.flusher.statistics().database_up
            finally:
                await outage.end()
            await trio.sleep((seconds - outage_s) / 2)
            await until(lambda: service.journal.empty and service.flusher.statistics().database_up)
            last = await settle(sim, database_url)
            assert service.loss() == 0
        ids = await check_complete(sim, database_url, through=last)
    assert len(ids) > seconds * 1000


class TestNothingLost:
    async def test_database_outage_short(
        self, tmp_path: Path, database_url: str, pg_admin_dsn: str
    ) -> None:
        """8 s at 2,000 trades/s with the database unreachable for 3 s: every trade stored once."""
        await run_with_outage(tmp_path, database_url, pg_admin_dsn, seconds=8.0, outage_s=3.0)

    @pytest.mark.slow
    async def test_database_outage_long(
        self, tmp_path: Path, database_url: str, pg_admin_dsn: str
    ) -> None:
        """60 s at 2,000 trades/s with the database stopped for 20 s: every trade stored once."""
        await run_with_outage(tmp_path, database_url, pg_admin_dsn, seconds=60.0, outage_s=20.0)


class TestFaults:
    async def test_websocket_closes(self, tmp_path: Path, database_url: str) -> None:
        """Closes by the server are survived, counted, and each is followed by a resubscription."""
        async with (
            simulator(200.0) as sim,
            running(make_config(tmp_path, sim), database_url) as service,
        ):
            for n, code in enumerate((1006, 1001, 1011), start=1):
                await until(sessions_are(service, n))
                await trio.sleep(0.3)
                sim.faults.close_ws(code)
            await until(lambda: service.feed.statistics().sessions == 4)
            await until(lambda: service.flusher.statistics().trades_inserted > 0)
            stats = service.feed.statistics()
            assert stats.closes == {"close_1006": 1, "close_1001": 1, "close_1011": 1}
            assert stats.catch_ups_requested == 3
            live = service.live.statistics()
            assert all(child.restarts == 0 for child in live.children)
            assert service.healthy()

    async def test_malformed_frames(self, tmp_path: Path, database_url: str) -> None:
        """Malformed frames are counted by reason; good trades of the same stream are stored."""
        async with simulator(500.0) as sim:
            sim.faults.malformed_ratio = 0.2
            async with running(make_config(tmp_path, sim), database_url) as service:
                await until(lambda: sum(service.feed.statistics().rejections.values()) >= 5)
                await until(lambda: service.flusher.statistics().trades_inserted > 200)
                assert service.feed.statistics().sessions == 1
                snapshot = service.status()
                assert snapshot["drops"]["rejected input"] >= 5
        async with open_storage(database_url, pool_max=1) as storage:
            stored = await read_trades(storage, SYMBOL, *FAR)
        assert stored
        assert set(stored) <= set(sim.market.trades(SYMBOL))

    async def test_drop_oldest_counts_exactly(self, tmp_path: Path, database_url: str) -> None:
        """Under drop_oldest overload, the dropped counter equals the trades that went missing,
        their time is never covered, and the service says it is dropping."""
        async with simulator(2000.0) as sim:
            config = make_config(tmp_path, sim, overflow="drop_oldest", buffer_capacity=300)
            async with running(config, database_url) as service:
                await until(lambda: service.flusher.statistics().trades_inserted > 500)
                # Stall every write: the flusher blocks, the buffer backs up, the channel drops.
                await trio.to_thread.run_sync(lock_trades, database_url, 2.0)
                await until(lambda: service.trades.statistics().depth == 0)
                await trio.sleep(1.0)
                reasons = service.health_reasons()
                assert any("live path is dropping" in r for r in reasons), reasons
            dropped = service.trades.statistics().dropped
            assert dropped > 0
            assert service.buffer.statistics().marks_discarded > 0
        async with open_storage(database_url, pool_max=1) as storage:
            ids = await stored_ids(storage)
        missing = truth_between(sim, min(ids), max(ids)) - set(ids)
        assert len(missing) == dropped
        # The dropped trades' time is a hole: coverage never claims it.
        assert await assert_coverage_honest(sim, database_url, set(ids), max(ids)) == dropped

    async def test_stalled_database_gets_backpressure_not_spill(
        self, tmp_path: Path, database_url: str
    ) -> None:
        """With a small buffer under spill, a database that is up but stalled holds the feed
        back instead of being spilled around; nothing is journaled and nothing is lost."""
        async with simulator(2000.0) as sim:
            config = make_config(tmp_path, sim, overflow="spill", buffer_capacity=300)
            async with running(config, database_url) as service:
                await until(lambda: service.flusher.statistics().trades_inserted > 500)
                await trio.to_thread.run_sync(lock_trades, database_url, 2.0)
                last = await settle(sim, database_url)
                assert service.trades.statistics().peak == 300  # it was full meanwhile
                assert service.trades.statistics().spilled == 0
                assert service.flusher.statistics().trades_journaled == 0
                assert service.loss() == 0
        await check_complete(sim, database_url, through=last)


class TestWithoutDatabase:
    async def test_starts_records_and_catches_up_when_the_database_returns(
        self, tmp_path: Path, database_url: str, pg_admin_dsn: str
    ) -> None:
        """Started while the database is down: it journals, says why it is unhealthy, then
        migrates, replays and stores every trade once the database returns."""
        outage = Outage(pg_admin_dsn, database_url)
        async with simulator(1000.0) as sim:
            await outage.start()
            try:
                async with running(make_config(tmp_path, sim), database_url) as service:
                    await until(lambda: service.flusher.statistics().trades_journaled > 1000)
                    reasons = service.health_reasons()
                    assert any("database is unreachable" in r for r in reasons), reasons
                    assert service.alive()
                    await outage.end()
                    await until(lambda: service.storage_actor.storage is not None, timeout_s=60)
                    await until(lambda: service.journal.empty, timeout_s=60)
                    last = await settle(sim, database_url)
                    assert service.health_reasons() == []
            finally:
                await outage.end()
        await check_complete(sim, database_url, through=last)


class TestSystemd:
    async def test_ready_watchdog_through_an_outage_and_stopping(
        self,
        tmp_path: Path,
        database_url: str,
        pg_admin_dsn: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """READY=1 once up; WATCHDOG=1 keeps coming while a database outage is journaled (the
        service is unhealthy, not stuck); STOPPING=1 at a graceful stop."""
        address = str(tmp_path / "notify.sock")
        receiver = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
        await receiver.bind(address)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        monkeypatch.setenv("WATCHDOG_USEC", "300000")
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        got: list[str] = []

        async def collect() -> None:
            while True:
                got.append((await receiver.recv(4096)).decode())

        outage = Outage(pg_admin_dsn, database_url)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            async with simulator(200.0) as sim:
                async with running(make_config(tmp_path, sim), database_url) as service:
                    await until(lambda: "READY=1" in got)
                    await outage.start()
                    try:
                        await until(lambda: not service.flusher.statistics().database_up)
                        before = got.count("WATCHDOG=1")
                        await trio.sleep(1.0)
                        assert got.count("WATCHDOG=1") >= before + 2
                        assert not service.healthy()
                    finally:
                        await outage.end()
                await until(lambda: "STOPPING=1" in got)
            nursery.cancel_scope.cancel()
        receiver.close()


def sessions_are(service: Service, n: int) -> Callable[[], bool]:
    return lambda: service.feed.statistics().sessions == n and service.feed.statistics().connected


def log_file(path: Path) -> Any:
    return path.open("wb")


def lock_trades(conninfo: str, seconds: float) -> None:
    with psycopg.connect(conninfo) as conn:
        conn.execute("LOCK TABLE trades IN ACCESS EXCLUSIVE MODE")
        time.sleep(seconds)


def collector_env(sim: Any, tmp_path: Path, database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a ``histdata run`` subprocess recording the simulator's SYMBOL."""
    return {
        **os.environ,
        "HISTDATA_CONFIG": "/dev/null",
        "HISTDATA_DATABASE_URL": database_url,
        "HISTDATA_SERVICE_DATA_DIR": str(tmp_path / "var"),
        "HISTDATA_SERVICE_SHUTDOWN_TIMEOUT_S": "5",
        "HISTDATA_QUERY_SOCKET": str(tmp_path / "var" / "q.sock"),
        "HISTDATA_KRAKEN_WS_URL": sim.ws_url,
        "HISTDATA_KRAKEN_REST_URL": sim.rest_url,
        "HISTDATA_KRAKEN_SYMBOLS": SYMBOL,
        "HISTDATA_LIVE_BATCH_AGE_S": "0.1",
        "HISTDATA_GAPFILL_ENABLED": "false",
        **extra,
    }


async def start_collector(nursery: trio.Nursery, env: dict[str, str], log: Path) -> trio.Process:
    with log.open("ab") as out:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                [sys.executable, "-m", "histdata.cli", "run"],
                env=env,
                check=False,
                stderr=out,
            )
        )
    return process


async def wait_stored(conninfo: str, count: int) -> None:
    async with open_storage(conninfo, pool_max=1, apply_migrations=False) as storage:
        with trio.fail_after(30):
            while True:
                if await count_trades(storage, SYMBOL, *FAR) >= count:
                    return
                await trio.sleep(0.2)


async def stored_and_journaled(conninfo: str, journal: Path) -> set[int]:
    """Trade ids in the database or still waiting in the journal (replayed at the next start)."""
    async with open_storage(conninfo, pool_max=1) as storage:
        ids = set(await stored_ids(storage))
    journaled: list[int] = []

    async def collect(batch: Batch) -> None:
        journaled.extend(t.trade_id for t in batch.trades if t.trade_id is not None)

    await Journal(journal, max_bytes=1 << 30).replay(collect)
    return ids | set(journaled)


class TestStops:
    async def test_sigterm_under_load(self, tmp_path: Path, database_url: str) -> None:
        """SIGTERM during load: exit within the deadline; database plus journal hold every trade
        up to the stop, and no trade missing after it lies inside observed coverage."""
        async with simulator(2000.0) as sim:
            env = collector_env(sim, tmp_path, database_url)
            async with trio.open_nursery() as nursery:
                process = await start_collector(nursery, env, tmp_path / "run.log")
                await wait_stored(database_url, 2000)
                signalled = trio.current_time()
                process.send_signal(signal.SIGTERM)
                with trio.fail_after(15):
                    await process.wait()
                elapsed = trio.current_time() - signalled
            sim.pause_trading()
            assert process.returncode == 0, "see run.log"
            assert elapsed < 5.0 + 2.0
            accounted = await stored_and_journaled(database_url, tmp_path / "var" / "journal")
            assert not truth_between(sim, min(accounted), max(accounted)) - accounted
            last = sim.market.trades(SYMBOL)[-1].trade_id
            assert await assert_coverage_honest(sim, database_url, accounted, last) > 0

    async def test_stop_meets_its_deadline_while_a_write_is_stalled(
        self, tmp_path: Path, database_url: str
    ) -> None:
        """A graceful stop while the trades table is locked ends within the shutdown deadline;
        the batch the stalled write held is journaled, so database plus journal hold every
        trade received."""
        async with simulator(2000.0) as sim:
            config = make_config(tmp_path, sim)
            deadline = config.service.shutdown_timeout_s
            service = Service(config, database_url)
            stopped = trio.Event()

            async def run_service(*, task_status: trio.TaskStatus[None]) -> None:
                await service.run(handle_signals=False, task_status=task_status)
                stopped.set()

            async with trio.open_nursery() as nursery:
                await nursery.start(run_service)
                await until(lambda: service.flusher.statistics().trades_inserted > 1000)
                nursery.start_soon(
                    partial(trio.to_thread.run_sync, lock_trades, database_url, 20.0)
                )
                await until(lambda: service.flusher.statistics().batches_written > 0)
                await trio.sleep(1.0)  # a write is now waiting on the lock
                began = trio.current_time()
                service.shutdown()
                with trio.fail_after(deadline + 4.0):
                    await stopped.wait()
                elapsed = trio.current_time() - began
                nursery.cancel_scope.cancel()  # the lock holder
            assert elapsed < deadline + 4.0
            assert service.flusher.statistics().trades_journaled > 0
            accounted = await stored_and_journaled(database_url, tmp_path / "var" / "journal")
            first, last = min(accounted), max(accounted)
            assert not truth_between(sim, first, last) - accounted

    async def test_sigkill_under_load_then_repair(self, tmp_path: Path, database_url: str) -> None:
        """SIGKILL at 2,000 trades/s: no lost trade lies inside observed coverage; restarted
        with the gap filler, every id from the first to the simulator's last is stored once."""
        async with simulator(2000.0) as sim:
            env = collector_env(sim, tmp_path, database_url)
            async with trio.open_nursery() as nursery:
                process = await start_collector(nursery, env, tmp_path / "run.log")
                await wait_stored(database_url, 4000)
                await trio.sleep(0.5)
                process.kill()
                await process.wait()
            accounted = await stored_and_journaled(database_url, tmp_path / "var" / "journal")
            at_kill = sim.market.trades(SYMBOL)[-1].trade_id
            assert await assert_coverage_honest(sim, database_url, accounted, at_kill) > 0
            # The simulator serves REST without Kraken's limit: repair at 50 pages/s, not 1.
            repair = {
                "HISTDATA_GAPFILL_ENABLED": "true",
                "HISTDATA_GAPFILL_INTERVAL_S": "2",
                "HISTDATA_KRAKEN_REST_RATE_PER_S": "50",
                "HISTDATA_KRAKEN_REST_BURST": "50",
            }
            env = collector_env(sim, tmp_path, database_url, **repair)
            async with trio.open_nursery() as nursery:
                process = await start_collector(nursery, env, tmp_path / "run.log")
                await trio.sleep(3.0)
                last = await settle(sim, database_url, timeout_s=60)
                first = min(accounted)
                async with open_storage(database_url, pool_max=1) as storage:
                    with trio.fail_after(60):
                        while True:
                            ids = await stored_ids(storage)
                            if not truth_between(sim, first, last) - set(ids):
                                break
                            await trio.sleep(0.5)
                process.send_signal(signal.SIGTERM)
                await process.wait()
            ids = await check_complete(sim, database_url, through=last)
            assert min(ids) <= first  # the repair also fetched the history before the first run
