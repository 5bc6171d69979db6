"""The symbol registry: the one map between every spelling Kraken uses for a pair.

Kraken names one market four ways (see "Pair spellings" in docs/kraken.md):

=================  ============  ============  ==========
form               BTC/USD       ETH/BTC       DOGE/USD
=================  ============  ============  ==========
WS v2 (canonical)  ``BTC/USD``   ``ETH/BTC``   ``DOGE/USD``
WS v1 ``wsname``   ``XBT/USD``   ``ETH/XBT``   ``XDG/USD``
altname (CSV)      ``XBTUSD``    ``ETHXBT``    ``XDGUSD``
REST pair key      ``XXBTZUSD``  ``XETHXXBT``  ``XDGUSD``
=================  ============  ============  ==========

histdata stores the v2 name. The registry is loaded from the ``symbols`` table, where every
AssetPairs answer is stored (see :mod:`histdata.storage.symbol_table`); it falls back to the
table shipped here only while that table is empty. AssetPairs is the authority: a name it
does not list can be *derived* from a CSV file name by Kraken's naming rules
(:meth:`SymbolRegistry.for_file_name`), but such a symbol is marked provisional and corrected
by the next refresh that lists it. Nothing else in the code base maps pairs.
"""

from __future__ import annotations

import difflib
import fnmatch
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from histdata.errors import UnknownSymbol

__all__ = [
    "LEGACY_ASSET_IDS",
    "QUOTE_ASSETS",
    "SHIPPED_PAIRS",
    "SymbolInfo",
    "SymbolRegistry",
    "derive_pair",
    "v2_asset",
]

# Kraken's legacy asset codes that WS v2 spells differently; every other code is kept as is.
_V2_ASSET = {"XBT": "BTC", "XDG": "DOGE"}

# Kraken's 4-character legacy asset ids (docs/kraken.md): an X (crypto) or Z (fiat) before the
# 3-letter code. Only these lose their prefix: a newer 4-letter code that happens to start
# with X or Z is a code of its own.
LEGACY_ASSET_IDS = frozenset(
    {
        *("XXBT", "XETH", "XLTC", "XXRP", "XXDG", "XXLM", "XETC", "XMLN", "XREP", "XZEC"),
        *("XXMR", "XICN", "XNMC", "XXVN", "ZUSD", "ZEUR", "ZGBP", "ZJPY", "ZCAD", "ZAUD"),
        "ZCHF",
    }
)

# The quote currencies Kraken lists pairs in, as they appear in altnames and file names. A
# file name is split at the longest of these it ends with; TUSD is deliberately absent, since
# it would read USDTUSD as USD/TUSD (Kraken's USDT/USD).
QUOTE_ASSETS = (
    *("USD", "EUR", "GBP", "CAD", "JPY", "CHF", "AUD", "AED"),
    *("USDT", "USDC", "DAI", "PYUSD", "XBT", "ETH", "DOT"),
)

# What a derived pair's precision is until AssetPairs tells (Kraken's finest in use).
_DERIVED_PRICE_DECIMALS = 10
_DERIVED_VOLUME_DECIMALS = 8
_NEAREST = 5  # how many close names an unknown-symbol error offers


def v2_asset(code: str) -> str:
    """Return the WS v2 spelling of a v1 asset code (``XBT`` → ``BTC``, ``XDG`` → ``DOGE``)."""
    return _V2_ASSET.get(code, code)


def _v1_asset(code: str) -> str:
    """A legacy asset id without its prefix (``XXBT`` → ``XBT``); other codes unchanged."""
    return code[1:] if code in LEGACY_ASSET_IDS else code


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    """One market under all its names, with its precision and its standing at Kraken.

    ``status`` is AssetPairs' (``online``, ``cancel_only``, ``post_only``, ``limit_only``,
    ``reduce_only``), ``delisted`` for a pair a refresh no longer lists, ``unverified`` for a
    pair derived from a file name. ``provisional`` marks names derived by Kraken's naming
    rules rather than read from AssetPairs; ``aliases`` are earlier spellings still resolved.
    """

    symbol: str  # WS v2, canonical: BTC/USD
    rest_key: str  # AssetPairs key: XXBTZUSD
    altname: str  # XBTUSD, also the CSV file name
    wsname: str  # WS v1: XBT/USD
    price_decimals: int
    volume_decimals: int
    status: str = "online"
    provisional: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def base(self) -> str:
        """The base asset in v2 spelling (``BTC``)."""
        return self.symbol.split("/")[0]

    @property
    def quote(self) -> str:
        """The quote asset in v2 spelling (``USD``)."""
        return self.symbol.split("/")[1]

    @property
    def spellings(self) -> tuple[str, ...]:
        """Every name this market answers to: v2, wsname, altname, REST key, aliases."""
        return (self.symbol, self.wsname, self.altname, self.rest_key, *self.aliases)


def _info(
    rest_key: str,
    altname: str,
    wsname: str,
    price_dec: int,
    vol_dec: int,
    status: str = "online",
) -> SymbolInfo:
    base, quote = wsname.split("/")
    return SymbolInfo(
        symbol=f"{v2_asset(base)}/{v2_asset(quote)}",
        rest_key=rest_key,
        altname=altname,
        wsname=wsname,
        price_decimals=price_dec,
        volume_decimals=vol_dec,
        status=status,
    )


# Used while the symbols table is empty and AssetPairs cannot be fetched (an offline first
# start, tests). Values are copied from AssetPairs captures; the first stored AssetPairs
# answer replaces them.
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


def derive_pair(name: str) -> SymbolInfo | None:
    """Derive a market from a Kraken pair name by Kraken's naming rules, or None if none fits.

    The offline fallback for a name AssetPairs has not listed (a file of Kraken's history
    archive): ``BASE/QUOTE`` is split at the slash; otherwise the name is split at the
    longest quote currency of :data:`QUOTE_ASSETS` it ends with, or at a legacy quote id
    (``ZUSD``, ``XXBT``…) when the rest is a legacy id too (``XXBTZUSD``), so ``XTZUSD`` stays
    XTZ/USD. Legacy ids lose their prefix and XBT/XDG become BTC/DOGE: ``XBTUSD`` and
    ``XXBTZUSD`` → BTC/USD, ``XDGUSD`` → DOGE/USD, ``ETHXBT`` → ETH/BTC. The result is
    ``provisional`` with status ``unverified``; its REST key and altname are ``name``.
    """
    text = name.strip().upper()
    if "/" in text:
        base, _, quote = text.partition("/")
        if not base or not quote or "/" in quote:
            return None
    else:
        text = _squash(text)
        split = _split_legacy(text) or _split_quote(text)
        if split is None:
            return None
        base, quote = split
    base, quote = _v1_asset(base), _v1_asset(quote)
    squashed = _squash(text)
    return SymbolInfo(
        symbol=f"{v2_asset(base)}/{v2_asset(quote)}",
        rest_key=squashed,
        altname=squashed,
        wsname=f"{base}/{quote}",
        price_decimals=_DERIVED_PRICE_DECIMALS,
        volume_decimals=_DERIVED_VOLUME_DECIMALS,
        status="unverified",
        provisional=True,
    )


def _split_legacy(text: str) -> tuple[str, str] | None:
    """``XXBTZUSD`` → (``XXBT``, ``ZUSD``): two legacy ids concatenated, as Kraken keys them."""
    if len(text) == 8 and text[:4] in LEGACY_ASSET_IDS and text[4:] in LEGACY_ASSET_IDS:
        return text[:4], text[4:]
    return None


def _split_quote(text: str) -> tuple[str, str] | None:
    for quote in sorted(QUOTE_ASSETS, key=len, reverse=True):
        if text.endswith(quote) and len(text) > len(quote):
            return text[: -len(quote)], quote
    return None


class SymbolRegistry:
    """Resolves any Kraken spelling of a pair to its :class:`SymbolInfo`.

    Accepted spellings, case-insensitive and with ``/``, ``-`` or ``_`` as optional
    separators: the v2 name (``BTC/USD``), the v1 wsname (``XBT/USD``), the altname
    (``XBTUSD``), the REST key (``XXBTZUSD``) and any earlier alias.

    One registry object is shared by everything in a process (storage, the feeds, the REST
    client, the query path); :meth:`replace` swaps its contents in place after a refresh, so
    every holder sees the new pairs. Each change builds new maps and swaps them in whole, so
    a reader in another thread (the importer's) never sees a half-built map.
    """

    def __init__(self, infos: Iterable[SymbolInfo]) -> None:
        self._by_symbol: dict[str, SymbolInfo] = {}
        self._by_spelling: dict[str, SymbolInfo] = {}
        # Serialises changes: for_file_name's read-modify-write runs in import threads.
        self._changing = threading.Lock()
        self.replace(infos)

    @classmethod
    def shipped(cls) -> SymbolRegistry:
        """The registry of the shipped table, for when nothing better is known."""
        return cls(SHIPPED_PAIRS)

    @classmethod
    def from_asset_pairs(cls, result: Mapping[str, Any]) -> SymbolRegistry:
        """Build a registry from the ``result`` object of REST ``AssetPairs``: exactly the
        pairs it lists, with their status (``online`` when the entry has none).

        Dark-pool entries (keys containing ``.d``) and entries without a ``wsname`` have no
        WebSocket market and are skipped, as are entries missing a required field.
        """
        infos = []
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
                        str(entry.get("status") or "online"),
                    )
                )
            except (KeyError, TypeError, ValueError):
                continue
        return cls(infos)

    def replace(self, infos: Iterable[SymbolInfo]) -> None:
        """Make the registry know exactly ``infos`` (the same v2 name twice: the last wins)."""
        with self._changing:
            self._replace(infos)

    def _replace(self, infos: Iterable[SymbolInfo]) -> None:
        by_symbol: dict[str, SymbolInfo] = {}
        for info in infos:
            by_symbol[info.symbol] = info
        by_spelling: dict[str, SymbolInfo] = {}
        # Aliases first and v2 names last, so a current name always beats an old alias.
        for info in by_symbol.values():
            for spelling in reversed(info.spellings):
                by_spelling.setdefault(_squash(spelling), info)
        for info in by_symbol.values():
            for spelling in (info.symbol, info.wsname, info.altname, info.rest_key):
                by_spelling[_squash(spelling)] = info
        self._by_symbol, self._by_spelling = by_symbol, by_spelling

    def resolve(self, spelling: str) -> SymbolInfo:
        """Return the market that ``spelling`` names.

        Raises:
            UnknownSymbol: no registered pair has that spelling; the one-line message offers
                the nearest known names.
        """
        # An exact v2 name first: two pairs may squash alike (ABC/DUSD and ABCD/USD).
        info = self._by_symbol.get(spelling.strip().upper()) or self._by_spelling.get(
            _squash(spelling)
        )
        if info is None:
            raise UnknownSymbol(f"unknown symbol {spelling!r}; {self.nearest(spelling)}")
        return info

    def nearest(self, spelling: str) -> str:
        """``nearest known: A, B`` for the registered v2 names closest to ``spelling``."""
        wanted = _squash(spelling)
        close = difflib.get_close_matches(wanted, list(self._by_spelling), n=3 * _NEAREST)
        names = list(dict.fromkeys(self._by_spelling[c].symbol for c in close))[:_NEAREST]
        if not names:
            return f"no known symbol is close ({len(self._by_symbol)} known)"
        return f"nearest known: {', '.join(names)}"

    def for_file_name(self, name: str) -> SymbolInfo:
        """The market a history file's pair name (``XBTUSD``, ``BCHEUR``) stands for.

        A known spelling resolves as usual. An unknown one is derived by Kraken's naming
        rules (:func:`derive_pair`) and added to this registry as provisional, so the first
        write of its rows registers it (``provisional`` in the ``symbols`` table) and the
        next AssetPairs refresh confirms or corrects it, keeping its rows.

        Raises:
            UnknownSymbol: no quote currency Kraken lists ends the name (message with the
                nearest known names).
        """
        info = self._by_spelling.get(_squash(name))
        if info is not None:
            return info
        derived = derive_pair(name)
        if derived is None:
            raise UnknownSymbol(
                f"unknown pair {name!r}: no quote currency Kraken lists ends it;"
                f" {self.nearest(name)}"
            )
        with self._changing:
            known = self._by_symbol.get(derived.symbol)
            if known is not None:  # another spelling of a known pair (XXBTZUSD for BTC/USD)
                return known
            self._replace([*self._by_symbol.values(), derived])
        return derived

    def expand(self, patterns: Iterable[str]) -> tuple[str, ...]:
        """The v2 names that the ``[kraken] symbols`` entries select, in order, once each.

        A plain entry is any spelling of one pair (whatever its status); an entry with a
        wildcard (``*``, ``?``, ``[``) is an fnmatch pattern on the v2 name (``"*"``,
        ``"*/USD"``, case-insensitive) selecting every matching pair whose status is
        ``online``.

        Raises:
            UnknownSymbol: a plain entry names no known pair.
        """
        chosen: dict[str, None] = {}
        for pattern in patterns:
            if any(ch in pattern for ch in "*?["):
                wanted = pattern.strip().upper()
                for info in self:
                    if info.status == "online" and fnmatch.fnmatchcase(info.symbol, wanted):
                        chosen[info.symbol] = None
            else:
                chosen[self.canonical(pattern)] = None
        return tuple(chosen)

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
