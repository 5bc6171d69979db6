"""Bulk import of Kraken's downloadable history: OHLCVT and trade CSVs, loose or in ZIPs.

How the layers stack (each module only imports the ones above it):

- ``sniff``: pair and interval from a file name, layout from its first lines.
- ``rows``: validation of single rows into Trades and Candles; ``seq`` for id-less trades.
- ``sources``: finding CSVs (loose, in ZIPs, under folders) and streaming them.
- ``columnar``: whole blocks of 3-column trade lines checked and numbered at once, for COPY.
- ``candle_blocks``: whole blocks of 1-minute OHLCVT lines checked at once, for COPY.
- ``readers``: one source recognised and read batch by batch, rejections counted.
- ``pipeline``: batches through the Storage API, coverage, cross-source dedupe, summaries.
"""

from __future__ import annotations

from histdata.importer.pipeline import FileSummary, ImportSummary, import_paths, import_source
from histdata.importer.rows import SeqCounter
from histdata.importer.sniff import FileLayout, NameInfo, sniff_layout, split_name
from histdata.importer.sources import ImportSource, discover_sources

__all__ = [
    "FileLayout",
    "FileSummary",
    "ImportSource",
    "ImportSummary",
    "NameInfo",
    "SeqCounter",
    "discover_sources",
    "import_paths",
    "import_source",
    "sniff_layout",
    "split_name",
]
