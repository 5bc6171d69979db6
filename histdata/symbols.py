"""The symbol registry: the one map between every spelling Kraken uses for a pair.

Kraken names one market four ways (see docs/kraken notes, §4 of the reference):

=================  ============  ============  ==========
form               BTC/USD       ETH/BTC       DOGE/USD
=================  ============  ============  ==========
WS v2 (canonical)  ``BTC/USD``   ``ETH/BTC``   ``DOGE/USD``
WS v1 ``wsname``   ``XBT/USD``   ``ETH/XBT``   ``XDG/USD``
altname (CSV)      ``XBTUSD``    ``ETHXBT``    ``XDGUSD``
REST pair key      ``XXBTZUSD``  ``XETHXXBT``  ``XDGUSD``
=================  ============  ============  ==========

histdata stores the v2 name. The registry is built from REST ``AssetPairs`` when Kraken is
reachable and from the table shipped here otherwise; nothing else in the code base maps pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from histdata.errors import UnknownSymbol

__all__ = ["SHIPPED_PAIRS", "SymbolInfo", "SymbolRegistry", "v2_asset"]

# Kraken's legacy asset codes that WS v2 spells differently; every other code is kept as is.
_V2_ASSET = {"XBT": "BTC", "XDG": "DOGE"}


def v2_asset(code: str) -> str:
    """Return the WS v2 spelling of a v1 asset code (``XBT`` → ``BTC``, ``XDG`` → ``DOGE``)."""
    return _V2_ASSET.get(code, code)


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    """One market under all its names, with its price and volume precision."""

    symbol: str  # WS v2, canonical: BTC/USD
    rest_key: str  # AssetPairs key: XXBTZUSD
    altname: str  # XBTUSD, also the CSV file name
    wsname: str  # WS v1: XBT/USD
    price_decimals: int
    volume_decimals: int

    @property
    def base(self) -> str:
        """The base asset in v2 spelling (``BTC``)."""
        return self.symbol.split("/")[0]

    @property
    def quote(self) -> str:
        """The quote asset in v2 spelling (``USD``)."""
        return self.symbol.split("/")[1]


def _info(rest_key: str, altname: str, wsname: str, price_dec: int, vol_dec: int) -> SymbolInfo:
    base, quote = wsname.split("/")
    return SymbolInfo(
        symbol=f"{v2_asset(base)}/{v2_asset(quote)}",
        rest_key=rest_key,
        altname=altname,
        wsname=wsname,
        price_decimals=price_dec,
        volume_decimals=vol_dec,
    )


# Used when AssetPairs cannot be fetched (offline start, tests, the simulator). Values are
# copied from AssetPairs captures; a live AssetPairs answer overrides them.
SHIPPED_PAIRS: tuple[SymbolInfo, ...] = (
    _info("XXBTZUSD", "XBTUSD", "XBT/USD", 1, 8),
    _info("XXBTZEUR", "XBTEUR", "XBT/EUR", 1, 8),
    _info("XBTUSDT", "XBTUSDT", "XBT/USDT", 1, 8),
    _info("XETHZUSD", "ETHUSD", "ETH/USD", 2, 8),
    _info("XETHZEUR", "ETHEUR", "ETH/EUR", 2, 8),
    _info("XETHXXBT", "ETHXBT", "ETH/XBT", 6, 8),
    _info("XDGUSD", "XDGUSD", "XDG/USD", 7, 8),
    _info("XXRPZUSD", "XRPUSD", "XRP/USD", 5, 8),
    _info("XXRPZEUR", "XRPEUR", "XRP/EUR", 5, 8),
    _info("XLTCZUSD", "LTCUSD", "LTC/USD", 2, 8),
    _info("SOLUSD", "SOLUSD", "SOL/USD", 2, 8),
    _info("ADAEUR", "ADAEUR", "ADA/EUR", 6, 8),
)


def _squash(spelling: str) -> str:
    """Normalise a spelling for lookup: upper case, no separators (``btc-usd`` → ``BTCUSD``)."""
    return "".join(ch for ch in spelling.strip().upper() if ch not in "/-_ ")


class SymbolRegistry:
    """Resolves any Kraken spelling of a pair to its :class:`SymbolInfo`.

    Accepted spellings, case-insensitive and with ``/``, ``-`` or ``_`` as optional
    separators: the v2 name (``BTC/USD``), the v1 wsname (``XBT/USD``), the altname
    (``XBTUSD``) and the REST key (``XXBTZUSD``).
    """

    def __init__(self, infos: Iterable[SymbolInfo]) -> None:
        self._by_symbol: dict[str, SymbolInfo] = {}
        self._by_spelling: dict[str, SymbolInfo] = {}
        for info in infos:
            self._by_symbol[info.symbol] = info
            for spelling in (info.symbol, info.wsname, info.altname, info.rest_key):
                self._by_spelling[_squash(spelling)] = info

    @classmethod
    def shipped(cls) -> SymbolRegistry:
        """The registry of the shipped table, for when AssetPairs is unreachable."""
        return cls(SHIPPED_PAIRS)

    @classmethod
    def from_asset_pairs(cls, result: Mapping[str, Any]) -> SymbolRegistry:
        """Build a registry from the ``result`` object of REST ``AssetPairs``.

        Dark-pool entries (keys containing ``.d``) and entries without a ``wsname`` have no
        WebSocket market and are skipped, as are entries missing a required field. The
        shipped pairs are kept underneath, so a partial answer never loses a known symbol.
        """
        infos = list(SHIPPED_PAIRS)
        for key, entry in result.items():
            if (
                ".d" in key
                or not isinstance(entry, Mapping)
                or "/" not in str(entry.get("wsname", ""))
            ):
                continue
            try:
                infos.append(
                    _info(
                        key,
                        str(entry["altname"]),
                        str(entry["wsname"]),
                        int(entry["pair_decimals"]),
                        int(entry["lot_decimals"]),
                    )
                )
            except (KeyError, TypeError, ValueError):
                continue
        return cls(infos)

    def resolve(self, spelling: str) -> SymbolInfo:
        """Return the market that ``spelling`` names.

        Raises:
            UnknownSymbol: no registered pair has that spelling.
        """
        info = self._by_spelling.get(_squash(spelling))
        if info is None:
            raise UnknownSymbol(
                f"unknown symbol {spelling!r}; known: {', '.join(sorted(self._by_symbol))}"
            )
        return info

    def is_canonical(self, name: str) -> bool:
        """True when ``name`` is exactly a registered v2 name (``BTC/USD``, not ``btc/usd``)."""
        return name in self._by_symbol

    def canonical(self, spelling: str) -> str:
        """Return the canonical v2 name for ``spelling`` (raises :class:`UnknownSymbol`)."""
        return self.resolve(spelling).symbol

    def __contains__(self, spelling: object) -> bool:
        return isinstance(spelling, str) and _squash(spelling) in self._by_spelling

    def __iter__(self) -> Iterator[SymbolInfo]:
        return iter(sorted(self._by_symbol.values(), key=lambda info: info.symbol))

    def __len__(self) -> int:
        return len(self._by_symbol)
