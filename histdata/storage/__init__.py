"""Storage: the only code in histdata that speaks SQL.

Layers: ``migrations`` applies the versioned files in ``sql/``; ``conninfo`` turns
configuration into a libpq connection string (``embedded`` starts a private server when no
URL is configured); ``database`` is the async Storage API over a sync connection pool;
``symbol_table`` stores AssetPairs answers and loads the registry from them; the other
modules (``history``, ``reads``, ``inventory`` …) query through :meth:`Storage.run`.
"""

from __future__ import annotations

from histdata.storage.conninfo import build_conninfo, describe
from histdata.storage.database import (
    CandleWriteResult,
    CoverageSpan,
    Storage,
    StorageStatistics,
    Stream,
    TradeSource,
    WriteResult,
    open_storage,
)
from histdata.storage.migrations import MigrationResult, SchemaError, migrate

__all__ = [
    "CandleWriteResult",
    "CoverageSpan",
    "MigrationResult",
    "SchemaError",
    "Storage",
    "StorageStatistics",
    "Stream",
    "TradeSource",
    "WriteResult",
    "build_conninfo",
    "describe",
    "migrate",
    "open_storage",
]
