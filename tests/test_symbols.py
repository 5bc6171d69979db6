"""The symbol registry: every Kraken spelling resolves to one canonical symbol."""

from __future__ import annotations

import pytest

from histdata.errors import UnknownSymbol
from histdata.symbols import SymbolRegistry


class TestResolve:
    @pytest.mark.parametrize(
        "spelling", ["BTC/USD", "XBT/USD", "XBTUSD", "XXBTZUSD", "btc/usd", "BTC-USD", "btcusd"]
    )
    def test_bitcoin_spellings(self, spelling: str) -> None:
        """Every spelling of Bitcoin/USD resolves to BTC/USD."""
        assert SymbolRegistry.shipped().canonical(spelling) == "BTC/USD"

    @pytest.mark.parametrize("spelling", ["DOGE/USD", "XDG/USD", "XDGUSD"])
    def test_doge_spellings(self, spelling: str) -> None:
        """XDG spellings resolve to the v2 name DOGE/USD."""
        info = SymbolRegistry.shipped().resolve(spelling)
        assert (info.symbol, info.altname, info.rest_key) == ("DOGE/USD", "XDGUSD", "XDGUSD")

    def test_cross_pair_quote_is_renamed(self) -> None:
        """ETH/XBT is stored as ETH/BTC, with both v1 and REST names kept."""
        info = SymbolRegistry.shipped().resolve("ETHXBT")
        assert (info.symbol, info.wsname, info.rest_key) == ("ETH/BTC", "ETH/XBT", "XETHXXBT")

    def test_unknown_symbol_names_the_input(self) -> None:
        """An unknown spelling raises UnknownSymbol quoting what was asked."""
        with pytest.raises(UnknownSymbol, match="'FOO/BAR'"):
            SymbolRegistry.shipped().resolve("FOO/BAR")


class TestAssetPairs:
    def test_built_from_asset_pairs_skipping_dark_pools(self) -> None:
        """AssetPairs entries become symbols; .d entries and ones without wsname are skipped."""
        result = {
            "XXBTZUSD": {
                "altname": "XBTUSD",
                "wsname": "XBT/USD",
                "pair_decimals": 1,
                "lot_decimals": 8,
            },
            "PEPEUSD": {
                "altname": "PEPEUSD",
                "wsname": "PEPE/USD",
                "pair_decimals": 9,
                "lot_decimals": 2,
            },
            "XXBTZGBP.d": {"altname": "XBTGBP.d", "pair_decimals": 1, "lot_decimals": 8},
            "BROKEN": {"altname": "BROKEN", "wsname": "BRO/KEN"},
        }
        registry = SymbolRegistry.from_asset_pairs(result)
        assert registry.resolve("PEPEUSD").price_decimals == 9
        assert "XBTGBP.d" not in registry
        assert "BRO/KEN" not in registry
        assert "ETH/USD" in registry  # shipped pairs stay underneath
