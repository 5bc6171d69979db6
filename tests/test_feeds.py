"""The feed group and the pairs refresher: every pair recorded over several connections,
against the simulator's AssetPairs and WebSocket, into a real database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest
import trio
from stored import count_trades  # type: ignore[import-not-found]
from waiting import until  # type: ignore[import-not-found]

from histdata.actors.feeds import slice_symbols
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
from histdata.sim import SimConfig, Simulator, open_simulator
from histdata.storage import open_storage
from histdata.symbols import SHIPPED_PAIRS, SymbolInfo, SymbolRegistry

FAR = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
# Five pairs, two of them unknown to the shipped table: the service can only learn those
# from the simulator's AssetPairs.
EXTRA = (
    SymbolInfo("AVAX/USD", "AVAXUSD", "AVAXUSD", "AVAX/USD", 2, 8),
    SymbolInfo("BCH/EUR", "BCHEUR", "BCHEUR", "BCH/EUR", 1, 8),
)
PAIRS = ("BTC/USD", "ETH/USD", "AVAX/USD", "BCH/EUR", "XRP/EUR")
USD = ("AVAX/USD", "BTC/USD", "ETH/USD")


class TestSlices:
    def test_cut_in_order(self) -> None:
        """Five symbols at two per connection are three slices, in order."""
        assert slice_symbols(list("abcde"), 2) == [("a", "b"), ("c", "d"), ("e",)]

    def test_nothing_to_cut(self) -> None:
        """No symbols need no connection."""
        assert slice_symbols([], 200) == []

    def test_per_connection_must_be_positive(self) -> None:
        """A slice size below one is refused."""
        with pytest.raises(ValueError, match="per_connection"):
            slice_symbols(["a"], 0)


@asynccontextmanager
async def simulator() -> AsyncIterator[Simulator]:
    config = SimConfig(
        seed=5,
        symbols=PAIRS,
        trade_rate_per_s=20.0,
        history_s=30.0,
        registry=SymbolRegistry([*SHIPPED_PAIRS, *EXTRA]),
    )
    async with open_simulator(config) as sim:
        yield sim


def make_config(
    tmp_path: Path,
    sim: Simulator,
    symbols: tuple[str, ...],
    *,
    gapfill: bool = False,
    rest_url: str | None = None,
) -> Config:
    return Config(
        service=ServiceConfig(data_dir=str(tmp_path / "var"), shutdown_timeout_s=8.0),
        database=DatabaseConfig(pool_max=4, connect_timeout_s=1.0),
        kraken=KrakenConfig(
            rest_url=rest_url or sim.rest_url,
            ws_url=sim.ws_url,
            symbols=symbols,
            request_timeout_s=2.0,
            symbols_per_connection=2,
            rest_rate_per_s=50.0,
            ws_stale_after_s=3.0,
        ),
        live=LiveConfig(batch_size=200, batch_age_s=0.1, flush_retry_s=0.2),
        gapfill=GapfillConfig(enabled=gapfill),
        query=QueryConfig(socket=str(tmp_path / "var" / "q.sock")),
    )


@asynccontextmanager
async def running(config: Config, conninfo: str) -> AsyncIterator[Service]:
    service = Service(config, conninfo)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(service.run, handle_signals=False))
        yield service
        service.shutdown()


async def stored_symbols_with_trades(conninfo: str, symbols: tuple[str, ...]) -> set[str]:
    registry = SymbolRegistry([*SHIPPED_PAIRS, *EXTRA])
    async with open_storage(
        conninfo, registry=registry, pool_max=1, apply_migrations=False
    ) as storage:
        return {s for s in symbols if await count_trades(storage, s, *FAR) > 0}


async def wait_stored(conninfo: str, symbols: tuple[str, ...], timeout_s: float = 30.0) -> None:
    with trio.fail_after(timeout_s):
        while True:
            if await stored_symbols_with_trades(conninfo, symbols) == set(symbols):
                return
            await trio.sleep(0.2)


class TestEveryPair:
    async def test_star_over_several_connections(self, tmp_path: Path, database_url: str) -> None:
        """symbols = ["*"] at two per connection opens three connections and stores trades of
        all five pairs, two of which only AssetPairs knew."""
        async with simulator() as sim:
            config = make_config(tmp_path, sim, ("*",))
            async with running(config, database_url) as service:
                assert set(service.feed.symbols) == set(PAIRS)
                assert len(service.feed.feeds) == 3
                await until(lambda: service.feed.statistics().connected)
                await until(lambda: set(service.feed.statistics().trades_by_symbol) >= set(PAIRS))
                assert sim.statistics().ws.connections == 3
                assert service.feed.statistics().connections == 3
                await wait_stored(database_url, PAIRS)
        async with open_storage(database_url, pool_max=1) as storage:
            # Stored: a later command, offline, knows the pairs Kraken listed.
            assert storage.registry.canonical("AVAXUSD") == "AVAX/USD"

    async def test_pattern_then_refresh_picks_up_more(
        self, tmp_path: Path, database_url: str
    ) -> None:
        """'*/USD' records the three USD pairs on two connections; a refresh that selects
        more reconnects over three and records (and gap-fills) the new pairs too."""
        async with simulator() as sim:
            config = make_config(tmp_path, sim, ("*/USD",), gapfill=True)
            async with running(config, database_url) as service:
                assert service.feed.symbols == USD
                await until(lambda: service.feed.statistics().connected)
                await wait_stored(database_url, USD)
                assert sim.statistics().ws.connections == 2
                service.pairs.patterns = ("*/USD", "*/EUR")
                await service.pairs.refresh()
                assert len(service.feed.feeds) == 3
                await until(lambda: service.feed.statistics().connected)
                await wait_stored(database_url, PAIRS)
                await until(
                    lambda: (
                        service.gapfiller is not None
                        and set(service.gapfiller.symbols) == set(PAIRS)
                    )
                )
                stats = service.pairs.statistics()
                assert stats.subscribed == 5
                assert stats.refreshes >= 2

    async def test_kraken_unreachable_uses_the_stored_pairs(
        self, tmp_path: Path, database_url: str
    ) -> None:
        """A service started while AssetPairs cannot be fetched subscribes the pairs an
        earlier run stored, not just the shipped ones."""
        async with simulator() as sim:
            async with running(make_config(tmp_path, sim, ("*",)), database_url) as service:
                await until(lambda: service.pairs.statistics().refreshes == 1)
            offline = make_config(tmp_path, sim, ("*",), rest_url="http://127.0.0.1:9")
            async with running(offline, database_url) as service:
                assert set(service.feed.symbols) == set(PAIRS)
                assert service.pairs.statistics().failures == 1
                await until(lambda: service.feed.statistics().connected)
