"""Storage: the only code in histdata that speaks SQL.

Layers: ``migrations`` applies the versioned files in ``sql/``; ``conninfo`` turns
configuration into a libpq connection string (``embedded`` starts a private server when no
URL is configured); ``database`` is :class:`Storage`, the connection pool with its
transaction runner (:meth:`Storage.run`), statistics and symbol-id cache. Every other module
is one topic, as functions that take the Storage: ``trades``, ``candles``, ``coverage``,
``cursors``, ``symbol_table``, ``reads``, ``rollups``, ``maintenance``, ``continuity``,
``inventory``, ``fleet``. The types they exchange with the rest of histdata (spans, write
results) are in :mod:`histdata.model`; storage imports them, never the reverse.
"""

from __future__ import annotations

from histdata.storage.conninfo import build_conninfo, describe
from histdata.storage.database import Storage, StorageStatistics, open_storage
from histdata.storage.migrations import MigrationResult, SchemaError, migrate

__all__ = [
    "MigrationResult",
    "SchemaError",
    "Storage",
    "StorageStatistics",
    "build_conninfo",
    "describe",
    "migrate",
    "open_storage",
]
