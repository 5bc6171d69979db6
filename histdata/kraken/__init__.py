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
from histdata.kraken.rest import (
    KrakenRest,
    OhlcPage,
    RestStatistics,
    TradesPage,
    open_kraken_rest,
)
from histdata.kraken.ws import (
    CandlesEvent,
    ConnectionClosed,
    Event,
    HeartbeatEvent,
    KrakenWs,
    RejectedFrame,
    StaleConnection,
    StatusEvent,
    SubscriptionFailed,
    TradesEvent,
    WsStatistics,
    open_kraken_ws,
)

__all__ = [
    "CandlesEvent",
    "ConnectionClosed",
    "Event",
    "HeartbeatEvent",
    "KrakenRateLimited",
    "KrakenRequestError",
    "KrakenRest",
    "KrakenWs",
    "LimiterStatistics",
    "OhlcPage",
    "RateLimiter",
    "RejectedFrame",
    "RestStatistics",
    "StaleConnection",
    "StatusEvent",
    "SubscriptionFailed",
    "TradesEvent",
    "TradesPage",
    "WsStatistics",
    "check_envelope",
    "loads_exact",
    "open_kraken_rest",
    "open_kraken_ws",
    "parse_asset_pairs",
    "parse_rest_ohlc",
    "parse_rest_trades",
    "parse_ws_candles",
    "parse_ws_trades",
]
