"""The simulated listing: which pairs exist, and their ``AssetPairs`` and ``Assets`` entries.

Named pairs come from the symbol registry; ``--pairs N`` adds N generated ones beside them,
so a client can be tried against hundreds of markets. Generated pairs look like Kraken's
newer listings: unprefixed asset codes (``QOVA``), pair key = altname (``QOVAUSD``),
``wsname`` with a slash (``QOVA/USD``), quoted in USD, EUR or USDT, with price decimals that
fit their price level.

Entries carry every field that real clients read (ccxt reads ``altname``, ``wsname``,
``base``, ``quote``, ``pair_decimals``, ``lot_decimals``, ``fees``, ``fees_maker``,
``leverage_buy``, ``ordermin``, ``costmin`` and ``status``; its ``Assets`` parser needs
``altname`` and ``decimals``), with the types and formats of the real answers in
``tests/fixtures/kraken/``: decimals as integers, minima and tick size as decimal strings,
fee tiers as ``[volume, percent]`` number pairs.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterable, Sequence
from decimal import Decimal

from histdata.symbols import SymbolInfo

__all__ = [
    "asset_entry",
    "asset_id",
    "asset_pair_entry",
    "assets_of",
    "base_price",
    "generate_pairs",
]

# Legacy asset ids (X for crypto, Z for fiat) of AssetPairs' base/quote and Assets' keys;
# assets listed since about 2017 are unprefixed (USDT, SOL, ADA).
_LEGACY_IDS = {
    "XBT": "XXBT",
    "ETH": "XETH",
    "XDG": "XXDG",
    "XRP": "XXRP",
    "LTC": "XLTC",
    "XLM": "XXLM",
    "ETC": "XETC",
    "XMR": "XXMR",
    "ZEC": "XZEC",
    "USD": "ZUSD",
    "EUR": "ZEUR",
    "GBP": "ZGBP",
    "CAD": "ZCAD",
    "JPY": "ZJPY",
}
_FIAT = frozenset({"USD", "EUR", "GBP", "CAD", "JPY", "AUD", "CHF"})
# Kraken's published tiers (30-day volume in USD, percent), the same for most spot pairs.
_TAKER_FEES = (
    (0, 0.26),
    (50000, 0.24),
    (100000, 0.22),
    (250000, 0.2),
    (500000, 0.18),
    (1000000, 0.16),
    (2500000, 0.14),
    (5000000, 0.12),
    (10000000, 0.1),
)
_MAKER_FEES = (
    (0, 0.16),
    (50000, 0.14),
    (100000, 0.12),
    (250000, 0.1),
    (500000, 0.08),
    (1000000, 0.06),
    (2500000, 0.04),
    (5000000, 0.02),
    (10000000, 0.0),  # printed 0.0, as in the 2025 capture (the docs example has 0)
)
# Rough 2026 price levels (v2 base names), so prices and minimum orders look like real ones.
_PRICE_LEVELS: dict[str, float] = {
    "BTC": 65_000,
    "ETH": 3_000,
    "SOL": 150,
    "LTC": 80,
    "XRP": 1,
    "DOGE": 0.15,
    "ADA": 0.5,
}
_GENERATED_QUOTES = ("USD", "EUR", "USDT")
_COLLATERAL = frozenset({"XBT", "ETH"})


def asset_id(code: str) -> str:
    """The asset id Kraken keys an asset by (``XBT`` → ``XXBT``, ``USD`` → ``ZUSD``, ``SOL``)."""
    return _LEGACY_IDS.get(code, code)


def base_price(info: SymbolInfo) -> float:
    """A plausible price of ``info``'s base asset in its quote.

    Known assets get their rough market level; any other follows its price decimals, as
    Kraken sets them (1 decimal near 65 000, 2 near 6 500, … 7 near 0.065).
    """
    known = _PRICE_LEVELS.get(info.base)
    return known if known is not None else 6.5 * 10.0 ** (5 - info.price_decimals)


def generate_pairs(n: int, *, seed: int, taken: Iterable[SymbolInfo] = ()) -> list[SymbolInfo]:
    """``n`` made-up pairs with distinct names that none of ``taken`` uses.

    The same ``seed`` gives the same pairs, and asking for more only adds pairs at the end.
    Price decimals run from 1 to 7 and lot decimals from 2 to 8, as across Kraken's listing.

    Raises:
        ValueError: ``n`` is negative.
    """
    if n < 0:
        raise ValueError(f"the number of generated pairs must be >= 0, got {n}")
    rng = random.Random(seed * 7919)
    used = {code for info in taken for code in info.wsname.split("/") + info.symbol.split("/")}
    used |= set(_LEGACY_IDS) | set(_LEGACY_IDS.values()) | _FIAT | {"USDT", "USDC"}
    out: list[SymbolInfo] = []
    while len(out) < n:
        code = "".join(rng.choices(string.ascii_uppercase, k=rng.choice((3, 4, 4, 5))))
        # Kraken's X/Z prefixes mark legacy ids; a generated code must not look like one.
        if code in used or code[0] in "XZ":
            continue
        used.add(code)
        quote = _GENERATED_QUOTES[len(out) % len(_GENERATED_QUOTES)]
        price_decimals = rng.randint(1, 7)
        volume_decimals = 8 if rng.random() < 0.8 else rng.randint(2, 7)
        altname = f"{code}{quote}"
        out.append(
            SymbolInfo(
                symbol=f"{code}/{quote}",
                rest_key=altname,
                altname=altname,
                wsname=f"{code}/{quote}",
                price_decimals=price_decimals,
                volume_decimals=volume_decimals,
            )
        )
    return out


def asset_pair_entry(info: SymbolInfo) -> dict[str, object]:
    """``info`` as the value of its key in an ``AssetPairs`` result."""
    base, quote = info.wsname.split("/")
    tick = Decimal(1).scaleb(-info.price_decimals)
    # The smallest order is worth about 5 quote units, in whole lots of the pair.
    ordermin = _significant(Decimal(str(5 / base_price(info))), info.volume_decimals)
    leverage = [2, 3, 4, 5] if quote in _FIAT and base_price(info) >= 1 else []
    return {
        "altname": info.altname,
        "wsname": info.wsname,
        "aclass_base": "currency",
        "base": asset_id(base),
        "aclass_quote": "currency",
        "quote": asset_id(quote),
        "lot": "unit",
        "cost_decimals": min(info.price_decimals + 4, 10),
        "pair_decimals": info.price_decimals,
        "lot_decimals": info.volume_decimals,
        "lot_multiplier": 1,
        "leverage_buy": leverage,
        "leverage_sell": leverage,
        "fees": [list(tier) for tier in _TAKER_FEES],
        "fees_maker": [list(tier) for tier in _MAKER_FEES],
        "fee_volume_currency": "ZUSD",
        "margin_call": 80,
        "margin_stop": 40,
        "ordermin": f"{ordermin:f}",
        "costmin": "0.5",
        "tick_size": f"{tick:f}",
        "status": "online",
        "long_position_limit": 250 if leverage else 0,
        "short_position_limit": 200 if leverage else 0,
    }


def _significant(value: Decimal, decimals: int) -> Decimal:
    """``value`` with one significant digit, but no finer than ``decimals`` places."""
    exponent = max(value.adjusted(), -decimals)
    return value.quantize(Decimal(1).scaleb(exponent)).max(Decimal(1).scaleb(-decimals))


def asset_entry(code: str) -> dict[str, object]:
    """The ``Assets`` entry of the asset spelled ``code`` in a wsname (``XBT``, ``USD``)."""
    fiat = code in _FIAT
    legacy = asset_id(code) != code
    entry: dict[str, object] = {
        "aclass": "currency",
        "altname": code,
        "decimals": 4 if fiat else (10 if legacy else 8),
        "display_decimals": 2 if fiat else 5,
    }
    if fiat or code in _COLLATERAL:  # only assets that count as margin collateral have it
        entry["collateral_value"] = 1
    entry["status"] = "enabled"
    return entry


def assets_of(infos: Sequence[SymbolInfo]) -> dict[str, dict[str, object]]:
    """Every asset traded in ``infos``, keyed by asset id, as an ``Assets`` result."""
    codes = sorted({code for info in infos for code in info.wsname.split("/")})
    return {asset_id(code): asset_entry(code) for code in codes}
