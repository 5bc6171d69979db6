"""The symbols table as the registry: AssetPairs stored, reloaded offline, provisional names
reconciled — on a real database, with AssetPairs from the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from stored import count_trades  # type: ignore[import-not-found]

from histdata.kraken.ratelimit import RateLimiter
from histdata.kraken.rest import open_kraken_rest
from histdata.model import Side, Trade, datetime_to_ns
from histdata.sim import SimConfig, open_simulator
from histdata.storage import Storage, open_storage
from histdata.storage.symbol_table import refresh_symbols, register_symbol
from histdata.storage.trades import write_trades
from histdata.symbols import SHIPPED_PAIRS, SymbolInfo, SymbolRegistry

# The simulator serves whatever registry it is given: Kraken's own pairs plus ones the
# shipped table does not know.
EXTRA = (
    SymbolInfo("AVAX/USD", "AVAXUSD", "AVAXUSD", "AVAX/USD", 2, 8),
    SymbolInfo("BCH/EUR", "BCHEUR", "BCHEUR", "BCH/EUR", 1, 8),
)
SIM_REGISTRY = SymbolRegistry([*SHIPPED_PAIRS, *EXTRA])
LISTED = ("BTC/USD", "ETH/USD", "AVAX/USD", "BCH/EUR")
T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
async def listed() -> AsyncIterator[SymbolRegistry]:
    """The registry built from the simulator's AssetPairs answer."""
    config = SimConfig(seed=1, symbols=LISTED, history_s=60.0, registry=SIM_REGISTRY)
    async with (
        open_simulator(config) as sim,
        open_kraken_rest(
            sim.rest_url, SIM_REGISTRY, RateLimiter(rate_per_s=100.0, burst=10), timeout_s=5.0
        ) as rest,
    ):
        yield await rest.asset_pairs()


def trades(symbol: str, n: int) -> list[Trade]:
    return [
        Trade(
            symbol=symbol,
            time_ns=datetime_to_ns(T0) + i * 1_000_000_000,
            price=Decimal("10.5"),
            volume=Decimal("1"),
            side=Side.BUY,
            trade_id=i + 1,
        )
        for i in range(n)
    ]


def row(database_url: str, symbol: str) -> tuple[Any, ...] | None:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT id, status, provisional, aliases, altname, last_seen IS NOT NULL"
            " FROM symbols WHERE symbol = %s",
            (symbol,),
        ).fetchone()


async def count(storage: Storage, symbol: str) -> int:
    return int(await count_trades(storage, symbol, T0, T0 + timedelta(days=1)))


class TestLoad:
    async def test_empty_table_is_the_shipped_pairs(self, database_url: str) -> None:
        """A database that never stored AssetPairs yields the shipped registry."""
        async with open_storage(database_url, pool_max=1) as storage:
            assert {i.symbol for i in storage.registry} == {i.symbol for i in SHIPPED_PAIRS}

    async def test_asset_pairs_stored_and_reloaded_offline(
        self, database_url: str, listed: SymbolRegistry
    ) -> None:
        """After a refresh, a later open (no Kraken) knows exactly what Kraken listed."""
        async with open_storage(database_url, pool_max=1) as storage:
            result = await refresh_symbols(storage, listed)
            assert (result.listed, result.added, result.delisted) == (4, 4, 0)
        async with open_storage(database_url, pool_max=1) as storage:
            registry = storage.registry
            assert {i.symbol for i in registry} == set(LISTED)
            assert registry.canonical("AVAXUSD") == "AVAX/USD"
            assert registry.resolve("XXBTZUSD").status == "online"
            assert "ADA/EUR" not in registry  # shipped but not listed: not known
        stored = row(database_url, "AVAX/USD")
        assert stored is not None
        assert stored[1:] == ("online", False, [], "AVAXUSD", True)

    async def test_unlisted_pair_is_delisted_and_kept(
        self, database_url: str, listed: SymbolRegistry
    ) -> None:
        """A stored pair the answer no longer lists becomes delisted; its rows stay readable."""
        async with open_storage(database_url, pool_max=1) as storage:
            await write_trades(storage, trades("XRP/EUR", 3), source="rest")
            result = await refresh_symbols(storage, listed)
            assert result.delisted == 1
            assert storage.registry.resolve("XRP/EUR").status == "delisted"
            assert storage.registry.expand(["*"]) == tuple(sorted(LISTED))
            assert await count(storage, "XRP/EUR") == 3


class TestProvisional:
    async def test_file_name_registers_provisionally_then_confirmed(
        self, database_url: str, listed: SymbolRegistry
    ) -> None:
        """An offline BCHEUR file lands under a provisional BCH/EUR that the refresh confirms."""
        async with open_storage(database_url, pool_max=1) as storage:
            info = storage.registry.for_file_name("BCHEUR")
            await write_trades(storage, trades(info.symbol, 5), source="csv")
            before = row(database_url, "BCH/EUR")
            assert before is not None
            assert before[1:3] == ("unverified", True)
            result = await refresh_symbols(storage, listed)
            assert result.confirmed == 1
            assert result.renamed == {}
            after = row(database_url, "BCH/EUR")
            assert after is not None
            assert after[:3] == (before[0], "online", False)
            assert await count(storage, "BCH/EUR") == 5

    async def test_wrong_provisional_name_is_renamed_keeping_rows(self, database_url: str) -> None:
        """A name derived wrong (a quote histdata does not list) is corrected in place: same
        id, same rows, the old name an alias that still finds them."""
        async with open_storage(database_url, pool_max=1) as storage:
            derived = storage.registry.for_file_name("ABCDUSD")
            assert derived.symbol == "ABCD/USD"
            await write_trades(storage, trades(derived.symbol, 4), source="csv")
            before = row(database_url, "ABCD/USD")
            assert before is not None
            sid = before[0]
            kraken = SymbolRegistry(
                [SymbolInfo("ABC/DUSD", "ABCDUSD", "ABCDUSD", "ABC/DUSD", 3, 8)]
            )
            result = await refresh_symbols(storage, kraken)
            assert result.renamed == {"ABCD/USD": "ABC/DUSD"}
            renamed = row(database_url, "ABC/DUSD")
            assert renamed is not None
            assert renamed[:4] == (sid, "online", False, ["ABCD/USD"])
            assert row(database_url, "ABCD/USD") is None
            assert await count(storage, "ABC/DUSD") == 4
            assert storage.registry.canonical("ABCD/USD") == "ABC/DUSD"
            # A re-import of the same file maps onto the same id: nothing new is stored.
            again = await write_trades(
                storage, trades(storage.registry.for_file_name("ABCDUSD").symbol, 4), source="csv"
            )
            assert again.inserted == 0
        async with open_storage(database_url, pool_max=1) as other:
            # Another process that still derives the old name finds the row by its alias.
            stale = SymbolRegistry([derived])
            other.registry.replace(stale)
            assert await register_symbol(other, "ABCD/USD") == sid

    async def test_rename_onto_an_existing_name_is_a_conflict(self, database_url: str) -> None:
        """When the right name already has its own row, both stay as they are and it is said."""
        kraken = SymbolRegistry([SymbolInfo("ABC/DUSD", "ABCDUSD", "ABCDUSD", "ABC/DUSD", 3, 8)])
        async with open_storage(database_url, registry=SymbolRegistry([]), pool_max=1) as storage:
            storage.registry.replace(kraken)
            await write_trades(storage, trades("ABC/DUSD", 2), source="rest")
            storage.registry.replace([derived := SymbolRegistry([]).for_file_name("ABCDUSD")])
            await write_trades(storage, trades(derived.symbol, 3), source="csv")
            result = await refresh_symbols(storage, kraken)
            assert result.conflicts == {"ABCD/USD": "ABC/DUSD"}
            assert row(database_url, "ABCD/USD") is not None
            assert await count(storage, "ABC/DUSD") == 2
