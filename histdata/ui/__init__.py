"""The coverage map: a page for a browser, served by ``[ui] listen`` (off by default).

How the layers stack:

- ``mapdata``: the map itself, per stream a timeline of ranges (observed, observed-empty,
  hole, unrecoverable, trade-id hole), read from the storage's coverage reports.
- ``server``: the loopback TCP listener, a supervised child, serving the page's files from
  ``static/``, ``/api/map`` from ``mapdata``, and the candles and symbols of the query API.
- ``static/``: the page (``index.html``, ``app.js``, ``style.css``) and TradingView's
  lightweight-charts, vendored as its built standalone file (see ``static/VENDORED.md``),
  so users need no build step and no network.
"""

from __future__ import annotations

from histdata.ui.mapdata import CoverageMap, MapKind, MapRange, StreamMap, coverage_map
from histdata.ui.server import UIApp, run

__all__ = ["CoverageMap", "MapKind", "MapRange", "StreamMap", "UIApp", "coverage_map", "run"]
