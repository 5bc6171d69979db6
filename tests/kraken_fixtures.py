"""The real Kraken payloads of ``tests/fixtures/kraken/`` (sources in its README), for tests.

Shared by the parser tests and the conformance test, so both run over the same files.
"""

from __future__ import annotations

from pathlib import Path

from histdata.symbols import SHIPPED_PAIRS, SymbolInfo, SymbolRegistry

__all__ = ["FIXTURES", "REGISTRY", "fixture_names", "read_fixture"]

FIXTURES = Path(__file__).parent / "fixtures" / "kraken"

# The shipped pairs plus the ones only Kraken's documentation examples trade.
REGISTRY = SymbolRegistry(
    [
        *SHIPPED_PAIRS,
        SymbolInfo("MATIC/USD", "MATICUSD", "MATICUSD", "MATIC/USD", 4, 8),
        SymbolInfo("ALGO/USD", "ALGOUSD", "ALGOUSD", "ALGO/USD", 5, 8),
    ]
)


def fixture_names(prefix: str) -> list[str]:
    """The fixture file names starting with ``prefix`` (``rest_trades``, ``ws_``), sorted."""
    names = sorted(path.name for path in FIXTURES.glob(f"{prefix}*.json"))
    assert names, f"no fixture matches {prefix}*.json in {FIXTURES}"
    return names


def read_fixture(name: str) -> bytes:
    """The bytes of one fixture, exactly as stored."""
    return (FIXTURES / name).read_bytes()
