"""histdata: a complete, exact, queryable history of Kraken market data.

How the layers stack (each only imports the ones above it):

- ``histdata.errors``, ``histdata.model``, ``histdata.timeutil``, ``histdata.symbols``,
  ``histdata.config``: the vocabulary — errors, the domain types (Trade, Candle,
  CoverageSpan, Stream, TradeSource, WriteResult …), time parsing, the symbol registry,
  configuration.
- ``histdata.storage``: the only code that speaks SQL (pool, migrations, embedded server).
- ``histdata.supervisor``: OTP-style supervision and bounded channels on trio.
- ``histdata.kraken``: the REST and WebSocket v2 clients and the shared rate limiter;
  ``histdata.sim`` is the Kraken simulator they are tested against.
- ``histdata.actors``: the service's actors (feed, buffer, flusher, rollup, gapfiller,
  backfiller, maintenance, query).
- ``histdata.cli``: the ``histdata`` command; ``histdata.client``: the socket client.

docs/architecture.md is the map: the tree, each flow from source to row and from row to
socket with its hops, the invariants (what coverage may claim, the idempotency keys, the
journal's guarantees) and where to change what.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
