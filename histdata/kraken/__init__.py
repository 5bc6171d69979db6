"""Kraken client layer: exact parsing, the shared REST rate limiter, REST and WebSocket v2.

How the layers stack (each only imports the ones above it):

- ``parse``: pure decoding and validation of everything Kraken sends (no I/O); the error
  envelope classification lives here.
- ``ratelimit``: the one token bucket every REST request in the process draws from.
- ``rest``: :class:`KrakenRest`, the REST client (retries, pagination, deduplication).
- ``ws``: the WebSocket v2 connection session (subscribe, acks, pings, staleness); the feed
  actor that reconnects and supervises it lives in ``histdata.actors``.
"""

from __future__ import annotations

from histdata.kraken.parse import (
    KrakenRateLimited,
    KrakenRequestError,
    check_envelope,
    loads_exact,
    parse_asset_pairs,
    parse_rest_ohlc,
    parse_rest_trades,
    parse_ws_candles,
    parse_ws_trades,
)
from histdata.kraken.ratelimit import LimiterStatistics, RateLimiter

__all__ = [
    "KrakenRateLimited",
    "KrakenRequestError",
    "LimiterStatistics",
    "RateLimiter",
    "check_envelope",
    "loads_exact",
    "parse_asset_pairs",
    "parse_rest_ohlc",
    "parse_rest_trades",
    "parse_ws_candles",
    "parse_ws_trades",
]
