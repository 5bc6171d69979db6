"""Collectors coordinating through one database (storage/fleet.py and its users).

Several writers are several real connection pools on one real database, running at once.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import psycopg.conninfo
import pytest
import structlog
import trio

# pytest puts tests/ on sys.path (no package): the polling helper lives with the service tests.
from waiting import until  # type: ignore[import-not-found]

from histdata.actors.maintenance import MaintenanceActor
from histdata.config import (
    Config,
    DatabaseConfig,
    GapfillConfig,
    KrakenConfig,
    LiveConfig,
    MaintenanceConfig,
    QueryConfig,
    ServiceConfig,
)
from histdata.kraken.ratelimit import RateLimiter
from histdata.model import Side, Trade, datetime_to_ns
from histdata.service import Service
from histdata.sim import SimConfig, open_simulator
from histdata.storage import Storage, open_storage
from histdata.storage.cursors import get_cursor, set_cursor
from histdata.storage.fleet import (
    beat,
    collectors,
    hold_lease,
    reserve_rest_slot,
    trades_after,
    try_lease,
)
from histdata.storage.symbol_table import register_symbol
from histdata.storage.trades import read_trades, write_trades

SYMBOL = "BTC/USD"
T0 = datetime(2024, 3, 1, tzinfo=UTC)


@asynccontextmanager
async def writer(conninfo: str) -> AsyncIterator[Storage]:
    """Another process's storage: its own pool on the same database."""
    async with open_storage(conninfo, pool_max=2, apply_migrations=False) as storage:
        yield storage


def trades(first_id: int, count: int, *, shift_ns: int = 0) -> list[Trade]:
    base = datetime_to_ns(T0)
    return [
        Trade(
            symbol=SYMBOL,
            time_ns=base + i * 1_000_000 + shift_ns,
            price=Decimal("100.5"),
            volume=Decimal("0.1"),
            side=Side.BUY,
            trade_id=first_id + i,
        )
        for i in range(count)
    ]


class TestCrossSourceWrites:
    async def test_same_ids_from_rest_and_live_at_once_are_stored_once(
        self, database_url: str
    ) -> None:
        """Two writers storing the same trade ids as rest and live, 1 µs apart, at the same
        moment, store each id once (the probe and insert are serialised per symbol)."""
        async with writer(database_url) as a, writer(database_url) as b:
            for round_ in range(20):
                first = 1 + round_ * 200
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(partial(write_trades, a, trades(first, 200), source="rest"))
                    nursery.start_soon(
                        partial(write_trades, b, trades(first, 200, shift_ns=1000), source="live")
                    )
            stored = await read_trades(a, SYMBOL, T0, T0 + timedelta(days=1))
        ids = [t.trade_id for t in stored]
        assert len(ids) == 4000
        assert len(set(ids)) == len(ids)


class TestCursors:
    async def test_a_cursor_never_moves_back(self, storage: Storage) -> None:
        """Of two backfills of one symbol, the slower cannot move the cursor back."""
        await set_cursor(storage, "backfill:BTC/USD", "1700000000000000000")
        await set_cursor(storage, "backfill:BTC/USD", "1600000000000000000")
        assert await get_cursor(storage, "backfill:BTC/USD") == "1700000000000000000"
        await set_cursor(storage, "backfill:BTC/USD", "1800000000000000000")
        assert await get_cursor(storage, "backfill:BTC/USD") == "1800000000000000000"


class TestLeases:
    async def test_one_holder_until_it_releases_or_expires(self, database_url: str) -> None:
        """A lease held by one collector is refused to another until released or expired."""
        async with writer(database_url) as a, writer(database_url) as b:
            async with hold_lease(a, "repair:BTC/USD", "a", ttl_s=30) as mine:
                assert mine.owned
                theirs = await try_lease(b, "repair:BTC/USD", "b", ttl_s=30)
                assert (theirs.owned, theirs.holder) == (False, "a")
            assert (await try_lease(b, "repair:BTC/USD", "b", ttl_s=0.2)).owned
            assert not (await try_lease(a, "repair:BTC/USD", "a", ttl_s=30)).owned
            await trio.sleep(0.3)
            assert (await try_lease(a, "repair:BTC/USD", "a", ttl_s=30)).owned

    async def test_a_held_lease_is_renewed_while_its_work_runs(self, database_url: str) -> None:
        """Work that outlasts the lease time keeps its lease (renewed every third of it)."""
        async with (
            writer(database_url) as a,
            writer(database_url) as b,
            hold_lease(a, "backfill:BTC/USD", "a", ttl_s=0.6) as mine,
        ):
            assert mine.owned
            await trio.sleep(1.5)
            assert not (await try_lease(b, "backfill:BTC/USD", "b", ttl_s=1)).owned

    async def test_errors_of_the_work_pass_through_unwrapped(self, storage: Storage) -> None:
        """The block's own error reaches the caller as itself, not in an exception group."""
        with pytest.raises(KeyError):
            async with hold_lease(storage, "repair:BTC/USD", "a"):
                raise KeyError("x")
        assert (await try_lease(storage, "repair:BTC/USD", "b", ttl_s=1)).owned


class TestMaintenanceOwner:
    async def test_only_the_owner_runs_rounds_and_a_differing_collector_warns(
        self, database_url: str
    ) -> None:
        """Of two collectors only one runs maintenance; the other counts skipped rounds and
        warns once that its retention differs from the owner's."""
        async with writer(database_url) as a, writer(database_url) as b:
            owner = MaintenanceActor(
                lambda: a, MaintenanceConfig(trades_retention_days=30), holder="a"
            )
            other = MaintenanceActor(
                lambda: b, MaintenanceConfig(trades_retention_days=7), holder="b"
            )
            with structlog.testing.capture_logs() as logs:
                for _ in range(3):
                    await owner.round()
                    await other.round()
        assert (owner.statistics().rounds, owner.statistics().skipped) == (3, 0)
        assert (other.statistics().rounds, other.statistics().skipped) == (0, 3)
        assert other.statistics().owner == "a"
        warned = [e for e in logs if "differ" in e["event"]]
        assert len(warned) == 1


class TestRestBudget:
    async def test_two_processes_share_one_rate(self, database_url: str) -> None:
        """Two limiters drawing from one host's budget send at the host's rate together,
        not each at its own."""
        rate, burst, sent = 10.0, 2, 12

        async def run(storage: Storage, times: list[float]) -> None:
            limiter = RateLimiter(
                rate_per_s=rate,
                burst=burst,
                shared=lambda: reserve_rest_slot(storage, "host-x", rate_per_s=rate, burst=burst),
            )
            for _ in range(sent):
                await limiter.wait()
                times.append(time.monotonic())

        a_times: list[float] = []
        b_times: list[float] = []
        async with writer(database_url) as a, writer(database_url) as b:
            began = time.monotonic()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, a, a_times)
                nursery.start_soon(run, b, b_times)
        # 24 requests at 10/s with 2 in the bucket: at least 2.2 s; each alone needs 1 s.
        assert max(a_times + b_times) - began >= (2 * sent - burst) / rate - 0.05


class TestHeartbeats:
    async def test_status_fleet_lists_collectors_and_unrecorded_symbols(
        self, storage: Storage, database_url: str, tmp_path: Path
    ) -> None:
        """``status --fleet`` shows each collector's row and the symbols nobody records."""
        await register_symbol(storage, "BTC/USD")
        await register_symbol(storage, "ETH/USD")
        now = datetime.now(UTC)
        await beat(
            storage,
            "h1:1:1",
            host="h1",
            pid=1,
            version="0.1.0",
            symbols=["BTC/USD"],
            started_at=now,
            last_write=now,
        )
        assert [c.symbols for c in await collectors(storage)] == [("BTC/USD",)]
        config = tmp_path / "c.toml"
        config.write_text(f"[database]\nurl = {json.dumps(_url(database_url))}\n")
        with trio.fail_after(60):
            done = await trio.run_process(
                [sys.executable, "-m", "histdata.cli", "-c", str(config), "status", "--fleet"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        out = done.stdout.decode()
        assert done.returncode == 3, done.stderr
        assert "h1 pid 1 histdata 0.1.0 live" in out
        assert "symbols nobody records: 1: ETH/USD" in out


class TestStream:
    async def test_trades_after_reads_new_rows_by_key(self, storage: Storage) -> None:
        """Rows after a trade's key come back in trade order, and none before it."""
        await write_trades(storage, trades(1, 10), source="live")
        first = await trades_after(storage, SYMBOL, None, 4)
        rest = await trades_after(
            storage, SYMBOL, (first[-1].time, first[-1].trade_id, first[-1].seq), 100
        )
        assert [t.trade_id for t in first + rest] == list(range(1, 11))


def _url(conninfo: str) -> str:
    """A postgresql:// URL for conninfo's host, port, user and database."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    host = str(params.get("host", ""))
    user, port = params.get("user", ""), params.get("port", 5432)
    if host.startswith("/"):
        return f"postgresql:///{params['dbname']}?host={host}&port={port}&user={user}"
    return f"postgresql://{user}@{host}:{port}/{params['dbname']}"


class TestTwoCollectors:
    async def test_overlapping_collectors_store_once_repair_once_and_share_the_rest_limit(
        self, database_url: str, tmp_path: Path
    ) -> None:
        """Two services recording overlapping symbols into one database against the simulator
        store every emitted trade once, repair each symbol in one of them only, and together
        never exceed the simulator's REST limit (which refuses above 1 request/s): each
        repairs its own symbol at once, which at each one's own 1/s would be 2/s."""
        sim_config = SimConfig(
            seed=5,
            symbols=SYMBOLS,
            trade_rate_per_s=20.0,
            history_s=400.0,
            rest_rate_per_s=1.0,
            rest_burst=6,
        )
        async with open_simulator(sim_config) as sim:
            configs = [
                collector_config(tmp_path / "a", sim, ("BTC/USD", "ETH/USD")),
                collector_config(tmp_path / "b", sim, ("BTC/USD", "SOL/USD")),
            ]
            services = [Service(config, database_url) for config in configs]
            async with trio.open_nursery() as nursery:
                for service in services:
                    await nursery.start(partial(service.run, handle_signals=False))
                await until(lambda: all(repaired_or_left(s) for s in services), timeout_s=90)
                sim.pause_trading()
                last = {
                    symbol: int(sim.market.trades(symbol)[-1].trade_id or 0) for symbol in SYMBOLS
                }
                async with writer(database_url) as storage:
                    await stored_through(storage, last)
                    stored = {symbol: await ids_of(storage, symbol) for symbol in SYMBOLS}
                    fleet = await collectors(storage)
                gapfillers = [s.gapfiller.statistics() for s in services if s.gapfiller]
                for service in services:
                    service.shutdown()
        for symbol in SYMBOLS:
            ids = stored[symbol]
            assert len(ids) == len(set(ids)), f"{symbol}: duplicates stored"
            truth = {
                t.trade_id
                for t in sim.market.trades(symbol)
                if t.trade_id is not None and t.trade_id <= last[symbol]
            }
            assert set(ids) == truth, f"{symbol}: {len(truth - set(ids))} missing"
        assert sim.statistics().rest.throttled == 0
        assert sum(g.skipped for g in gapfillers) > 0  # the other collector held the lease
        assert sorted(c.symbols for c in fleet) == [("BTC/USD", "ETH/USD"), ("BTC/USD", "SOL/USD")]


SYMBOLS = ("BTC/USD", "ETH/USD", "SOL/USD")


def repaired_or_left(service: Service) -> bool:
    """Every symbol of ``service`` had a repair pass: done here, or left to the lease holder."""
    if service.gapfiller is None:
        return False
    stats = service.gapfiller.statistics()
    return stats.repairs + stats.skipped >= len(service.feed.symbols)


async def stored_through(storage: Storage, last: dict[str, int]) -> None:
    """Wait until every symbol's last emitted trade is stored."""
    with trio.fail_after(30):
        while True:
            newest = {symbol: max(await ids_of(storage, symbol), default=0) for symbol in last}
            if all(newest[symbol] >= last[symbol] for symbol in last):
                return
            await trio.sleep(0.2)


async def ids_of(storage: Storage, symbol: str) -> list[int]:
    far = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    stored = await read_trades(storage, symbol, *far)
    return [t.trade_id for t in stored if t.trade_id is not None]


def collector_config(data: Path, sim: Any, symbols: tuple[str, ...]) -> Config:
    return Config(
        service=ServiceConfig(data_dir=str(data), shutdown_timeout_s=8.0),
        database=DatabaseConfig(pool_max=4, connect_timeout_s=2.0, statement_timeout_s=30.0),
        kraken=KrakenConfig(
            rest_url=sim.rest_url,
            ws_url=sim.ws_url,
            symbols=symbols,
            # Kraken's rate with less burst than it allows: the headroom absorbs the jitter
            # between when the shared budget grants a slot and when the request arrives.
            rest_rate_per_s=1.0,
            rest_burst=3,
        ),
        live=LiveConfig(batch_size=500, batch_age_s=0.1, flush_retry_s=0.2),
        gapfill=GapfillConfig(enabled=True, interval_s=3.0, lookback_days=0.01),
        query=QueryConfig(socket=str(data / "q.sock")),
    )
