"""The symbol registry: every Kraken spelling resolves to one canonical symbol."""

from __future__ import annotations

import pytest

from histdata.errors import UnknownSymbol
from histdata.symbols import SymbolInfo, SymbolRegistry, derive_pair


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
        assert "ETH/USD" not in registry  # AssetPairs is the authority: no shipped pairs

    def test_status_is_kept(self) -> None:
        """An entry's status is carried into the registry; one without status is online."""
        entry = {"altname": "XBTUSD", "wsname": "XBT/USD", "pair_decimals": 1, "lot_decimals": 8}
        registry = SymbolRegistry.from_asset_pairs(
            {
                "XXBTZUSD": entry,
                "ADAEUR": {
                    **entry,
                    "altname": "ADAEUR",
                    "wsname": "ADA/EUR",
                    "status": "cancel_only",
                },
            }
        )
        assert registry.resolve("BTC/USD").status == "online"
        assert registry.resolve("ADA/EUR").status == "cancel_only"


class TestDerive:
    @pytest.mark.parametrize(
        ("name", "symbol"),
        [
            ("XBTUSD", "BTC/USD"),
            ("XXBTZUSD", "BTC/USD"),
            ("BCHEUR", "BCH/EUR"),
            ("XDGUSD", "DOGE/USD"),
            ("USDTUSD", "USDT/USD"),
            ("ETHXBT", "ETH/BTC"),
            ("XETHXXBT", "ETH/BTC"),
            ("XBTUSDT", "BTC/USDT"),
            ("USDCUSDT", "USDC/USDT"),
            ("XBTPYUSD", "BTC/PYUSD"),
            ("XTZUSD", "XTZ/USD"),
            ("ZEURZUSD", "EUR/USD"),
            ("DOTETH", "DOT/ETH"),
            ("avax/usd", "AVAX/USD"),
        ],
    )
    def test_names_from_kraken_rules(self, name: str, symbol: str) -> None:
        """A pair name splits at the longest listed quote, legacy ids lose X/Z, XBT/XDG map."""
        info = derive_pair(name)
        assert info is not None
        assert info.symbol == symbol
        assert info.provisional
        assert info.status == "unverified"

    def test_no_quote_no_pair(self) -> None:
        """A name that ends in no listed quote currency is not derived."""
        assert derive_pair("FOOBAR") is None


class TestForFileName:
    def test_known_name_is_not_provisional(self) -> None:
        """A spelling the registry knows resolves to its stored entry."""
        info = SymbolRegistry.shipped().for_file_name("XBTUSD")
        assert (info.symbol, info.provisional) == ("BTC/USD", False)

    def test_unknown_name_is_added_provisionally(self) -> None:
        """BCHEUR becomes a provisional BCH/EUR that the registry then resolves."""
        registry = SymbolRegistry.shipped()
        info = registry.for_file_name("BCHEUR")
        assert (info.symbol, info.altname, info.provisional) == ("BCH/EUR", "BCHEUR", True)
        assert registry.resolve("bch/eur") is info

    def test_other_spelling_of_known_pair(self) -> None:
        """A legacy key of a known pair maps onto that pair instead of a second one."""
        registry = SymbolRegistry.shipped()
        assert registry.for_file_name("XXBTZEUR").symbol == "BTC/EUR"
        assert registry.for_file_name("XXBTZEUR").provisional is False

    def test_underivable_name_offers_nearest(self) -> None:
        """A name with no listed quote raises one line with the nearest known names."""
        with pytest.raises(UnknownSymbol, match=r"'XBTUDS'.*nearest known: .*BTC/USD"):
            SymbolRegistry.shipped().for_file_name("XBTUDS")


class TestExpand:
    def registry(self) -> SymbolRegistry:
        return SymbolRegistry(
            [
                *SymbolRegistry.shipped(),
                SymbolInfo("AVAX/USD", "AVAXUSD", "AVAXUSD", "AVAX/USD", 2, 8),
                SymbolInfo("OLD/USD", "OLDUSD", "OLDUSD", "OLD/USD", 2, 8, status="delisted"),
                SymbolInfo("HALT/USD", "HALTUSD", "HALTUSD", "HALT/USD", 2, 8, "cancel_only"),
            ]
        )

    def test_star_is_every_online_pair(self) -> None:
        """'*' selects every online pair and no delisted or halted one."""
        chosen = self.registry().expand(["*"])
        assert len(chosen) == 13
        assert "AVAX/USD" in chosen
        assert "OLD/USD" not in chosen
        assert "HALT/USD" not in chosen

    def test_quote_pattern(self) -> None:
        """'*/USD' (any case) selects the online USD pairs only."""
        chosen = self.registry().expand(["*/usd"])
        assert set(chosen) == {
            *("AVAX/USD", "BTC/USD", "DOGE/USD", "ETH/USD", "LTC/USD", "SOL/USD", "XRP/USD"),
        }

    def test_plain_entries_keep_order_and_any_status(self) -> None:
        """Plain names resolve in the order given, once each, whatever their status."""
        assert self.registry().expand(["OLDUSD", "XBTUSD", "BTC/USD", "*/EUR"]) == (
            "OLD/USD",
            "BTC/USD",
            "ADA/EUR",
            "BTC/EUR",
            "ETH/EUR",
            "XRP/EUR",
        )

    def test_unknown_plain_entry(self) -> None:
        """A plain entry the registry does not know raises with the nearest names."""
        with pytest.raises(UnknownSymbol, match="nearest known: AVAX/USD"):
            self.registry().expand(["AVAX/USDD"])


class TestReplace:
    def test_alias_resolves_to_current_name(self) -> None:
        """An alias of a corrected name resolves to the entry under its new name."""
        info = SymbolInfo("NEW/USD", "NEWUSD", "NEWUSD", "NEW/USD", 2, 8, aliases=("OLD/USD",))
        registry = SymbolRegistry([info])
        assert registry.canonical("OLD/USD") == "NEW/USD"
        assert not registry.is_canonical("OLD/USD")
