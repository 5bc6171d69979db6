"""One Kraken WebSocket v2 session: connect, subscribe, keep alive, and parse what arrives.

This is the connection-level layer. It does not reconnect: the feed actor that supervises it
opens a new session after any :class:`~histdata.errors.TransientError` (Kraken does not
restore subscriptions, so every session subscribes afresh and gets fresh snapshots).

What a session does, and why:

- Symbols in any spelling are converted to v2 names (``BTC/USD``, never ``XBT/USD``): v2
  acknowledges v1 names with a per-symbol failure and then stays silent for them.
- ``trade`` is subscribed with ``snapshot: true`` sent explicitly (the docs disagree on the
  default) and ``ohlc`` with ``interval: 1``, one request per channel for all symbols.
- Kraken acknowledges each symbol separately; the session waits for every ack, and failed
  ones land in :attr:`KrakenWs.failed_subscriptions`, are logged, and, when nothing at all
  could be subscribed, raise :class:`SubscriptionFailed`. Heartbeats keep flowing for a
  failed symbol, so this is the only place the failure is visible.
- An application-level ``ping`` goes out every ``ping_interval_s``; a session that receives
  no message at all for ``stale_after_s`` raises :class:`StaleConnection` (Kraken can go
  silent without closing). A close from the server raises :class:`ConnectionClosed` with
  its code (1001 proxy restart, 1006 abnormal, 1011 keepalive timeout, 1013 unavailable).
- Frames become typed events; a frame that is not JSON or not understood becomes a
  :class:`RejectedFrame`, and bad rows inside a good frame ride along as rejections, so bad
  input is counted and never takes good rows down with it.

Pings and staleness are handled inside :meth:`KrakenWs.events` rather than by background
tasks, so errors reach the caller as themselves, never wrapped in an exception group.
"""

from __future__ import annotations

import itertools
import json
import ssl
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog
import trio
import trio_websocket

from histdata.errors import KrakenError, RejectedInput
from histdata.kraken.parse import KrakenRequestError, loads_exact, parse_ws_candles, parse_ws_trades
from histdata.kraken.rest import USER_AGENT
from histdata.model import Candle, LiveTrade, Trade
from histdata.symbols import SymbolRegistry

__all__ = [
    "CandlesEvent",
    "ConnectionClosed",
    "Event",
    "HeartbeatEvent",
    "KrakenWs",
    "RejectedFrame",
    "StaleConnection",
    "StatusEvent",
    "SubscriptionFailed",
    "TradesEvent",
    "WsStatistics",
    "open_kraken_ws",
]

_log = structlog.get_logger("histdata.kraken.ws")
_TRADE, _OHLC = "trade", "ohlc"
# Kraken's frames are small, but a snapshot or a burst after a stall can pass trio_websocket's
# 1 MiB default, and a 1009 close then costs a reconnect and a REST catch-up.
_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class StaleConnection(KrakenError):
    """No message of any kind arrived for ``stale_after_s``: the connection is silently dead."""


class ConnectionClosed(KrakenError):
    """The WebSocket closed (by the server or the network); ``code`` and ``reason`` say how.

    Unlike ``trio_websocket.ConnectionClosed`` this is a :class:`TransientError`, so the
    supervisor's restart policy treats it as "reconnect after a backoff".
    """

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"Kraken WebSocket closed: code {code} {reason or ''}".rstrip())
        self.code = code
        self.reason = reason


class SubscriptionFailed(KrakenRequestError):
    """Kraken acknowledged no subscription at all; ``failures`` maps symbol → Kraken's error.

    Not transient: resubscribing the same symbols gets the same answer (usually a v1 name or
    a delisted pair); the configuration must change.
    """

    def __init__(self, failures: Mapping[str, str]) -> None:
        detail = "; ".join(f"{symbol}: {error}" for symbol, error in sorted(failures.items()))
        super().__init__(f"no Kraken WebSocket subscription succeeded: {detail}")
        self.failures = dict(failures)


@dataclass(frozen=True, slots=True)
class TradesEvent:
    """Trades from one ``trade`` frame; ``snapshot`` marks the replay sent on subscribe."""

    trades: tuple[Trade | LiveTrade, ...]
    rejections: tuple[RejectedInput, ...]
    snapshot: bool


@dataclass(frozen=True, slots=True)
class CandlesEvent:
    """Live 1-minute candle updates from one ``ohlc`` frame (all with ``final=False``)."""

    candles: tuple[Candle, ...]
    rejections: tuple[RejectedInput, ...]
    snapshot: bool


@dataclass(frozen=True, slots=True)
class HeartbeatEvent:
    """Kraken's once-a-second sign of life on an otherwise idle, subscribed connection."""


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """The engine status (``online``, ``maintenance``, ``cancel_only``, ``post_only``)."""

    system: str
    version: str | None = None
    connection_id: int | None = None


@dataclass(frozen=True, slots=True)
class RejectedFrame:
    """A frame that was not JSON, or not a message this client understands."""

    rejection: RejectedInput


Event = TradesEvent | CandlesEvent | HeartbeatEvent | StatusEvent | RejectedFrame


@dataclass(frozen=True, slots=True)
class WsStatistics:
    """A snapshot of a :class:`KrakenWs` session's counters."""

    frames: int  # messages received, of any kind
    trades: int
    candles: int
    rejected_rows: int  # bad rows inside otherwise good frames
    rejected_frames: int
    heartbeats: int
    pings_sent: int
    pongs: int
    subscribed: int  # (channel, symbol) pairs acknowledged
    failed: int  # symbols with a failed subscription


class KrakenWs:
    """A subscribed Kraken WebSocket v2 session; obtain one from :func:`open_kraken_ws`.

    ``symbols`` are the v2 names subscribed; ``failed_subscriptions`` maps a v2 symbol to
    Kraken's error text for every failed acknowledgement (prefixed by the channel).
    """

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        symbols: Iterable[str],
        registry: SymbolRegistry,
        *,
        ohlc_interval: int,
        stale_after_s: float,
        ping_interval_s: float,
    ) -> None:
        self.symbols = tuple(symbols)
        self.registry = registry
        self.ohlc_interval = ohlc_interval
        self.stale_after_s = stale_after_s
        self.ping_interval_s = ping_interval_s
        self.failed_subscriptions: dict[str, str] = {}
        self.subscribed: set[tuple[str, str]] = set()
        self.system_status: str | None = None
        self._ws = ws
        self._req_ids = itertools.count(1)
        self._pending: dict[int, tuple[str, set[str]]] = {}  # req_id → (channel, symbols)
        self._buffered: deque[Event] = deque()
        now = trio.current_time()
        self._last_message_at = now
        self._next_ping_at = now + ping_interval_s
        self._frames = 0
        self._trades = 0
        self._candles = 0
        self._rejected_rows = 0
        self._rejected_frames = 0
        self._heartbeats = 0
        self._pings = 0
        self._pongs = 0

    def statistics(self) -> WsStatistics:
        """Return the current counters (see :class:`WsStatistics`)."""
        return WsStatistics(
            frames=self._frames,
            trades=self._trades,
            candles=self._candles,
            rejected_rows=self._rejected_rows,
            rejected_frames=self._rejected_frames,
            heartbeats=self._heartbeats,
            pings_sent=self._pings,
            pongs=self._pongs,
            subscribed=len(self.subscribed),
            failed=len(self.failed_subscriptions),
        )

    # --------------------------------------------------------------------- subscribing

    async def _subscribe(self) -> None:
        """Subscribe both channels and wait for every per-symbol acknowledgement.

        Data frames that arrive before the last ack are kept for :meth:`events`.

        Raises:
            SubscriptionFailed: no (channel, symbol) was acknowledged.
            StaleConnection, ConnectionClosed: the connection died meanwhile.
        """
        await self._request(_TRADE, {"snapshot": True})
        await self._request(_OHLC, {"interval": self.ohlc_interval, "snapshot": True})
        while any(symbols for _, symbols in self._pending.values()):
            event = self._handle(await self._receive())
            if event is not None:
                self._buffered.append(event)
        self._pending.clear()
        if self.failed_subscriptions:
            _log.warning("kraken_ws_subscription_failed", failures=self.failed_subscriptions)
        if not self.subscribed:
            raise SubscriptionFailed(self.failed_subscriptions)

    async def _request(self, channel: str, params: dict[str, Any]) -> None:
        req_id = next(self._req_ids)
        self._pending[req_id] = (channel, set(self.symbols))
        message = {
            "method": "subscribe",
            "params": {"channel": channel, "symbol": list(self.symbols), **params},
            "req_id": req_id,
        }
        await self._send(message)

    def _on_ack(self, frame: Mapping[str, Any]) -> None:
        req_id = frame.get("req_id")
        pending = self._pending.get(req_id) if isinstance(req_id, int) else None
        result = frame.get("result")
        result = result if isinstance(result, Mapping) else {}
        channel = result.get("channel", pending[0] if pending else None)
        symbol = result.get("symbol", frame.get("symbol"))
        if frame.get("success") is True:
            if isinstance(channel, str) and isinstance(symbol, str):
                self.subscribed.add((channel, symbol))
                self._settle(req_id, channel, symbol)
            return
        error = str(frame.get("error", "subscription failed"))
        if isinstance(symbol, str):
            failed = [symbol]
        elif pending is not None:
            failed = sorted(pending[1])  # an error for the whole request (malformed…)
        else:
            failed = []
        for name in failed:
            text = f"{channel}: {error}" if channel else error
            previous = self.failed_subscriptions.get(name)
            self.failed_subscriptions[name] = f"{previous}; {text}" if previous else text
            self._settle(req_id, channel, name)
        if not self._pending:  # a failure after the handshake: nobody else will say it
            _log.warning("kraken_ws_subscription_failed", symbols=failed, error=error)

    def _settle(self, req_id: object, channel: object, symbol: str) -> None:
        """Mark (channel, symbol) as acknowledged, matching by req_id, else by channel/symbol."""
        if isinstance(req_id, int) and req_id in self._pending:
            self._pending[req_id][1].discard(symbol)
            return
        for pending_channel, symbols in self._pending.values():
            if symbol in symbols and channel in (None, pending_channel):
                symbols.discard(symbol)
                return

    # ------------------------------------------------------------------------ transport

    async def _send(self, message: Mapping[str, Any]) -> None:
        try:
            await self._ws.send_message(json.dumps(message, separators=(",", ":")))
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from exc

    async def _receive(self) -> str | bytes:
        """The next message, sending pings when due.

        Raises:
            StaleConnection: nothing arrived for ``stale_after_s``.
            ConnectionClosed: the WebSocket closed.
        """
        while True:
            now = trio.current_time()
            if now >= self._next_ping_at:
                self._next_ping_at = now + self.ping_interval_s
                self._pings += 1
                await self._send({"method": "ping", "req_id": next(self._req_ids)})
            stale_at = self._last_message_at + self.stale_after_s
            with trio.move_on_at(min(stale_at, self._next_ping_at)):
                try:
                    message = await self._ws.get_message()
                except trio_websocket.ConnectionClosed as exc:
                    raise _closed(exc) from exc
                self._last_message_at = trio.current_time()
                self._frames += 1
                return message
            if trio.current_time() >= stale_at:
                raise StaleConnection(f"no Kraken WebSocket message for {self.stale_after_s:g} s")

    # -------------------------------------------------------------------------- parsing

    async def events(self) -> AsyncGenerator[Event, None]:
        """Yield events until the connection fails.

        Raises:
            StaleConnection: nothing arrived for ``stale_after_s``.
            ConnectionClosed: the WebSocket closed; ``code`` and ``reason`` say how.
        """
        while True:
            while self._buffered:
                yield self._buffered.popleft()
            event = self._handle(await self._receive())
            if event is not None:
                yield event

    def _handle(self, message: str | bytes) -> Event | None:
        """Turn one message into an event; None for protocol traffic (acks, pongs)."""
        where = f"ws frame {self._frames}"
        try:
            frame = loads_exact(message, where=where, number_text=True)
            if not isinstance(frame, dict):
                raise RejectedInput(
                    "bad_frame", f"frame is not an object: {str(frame)[:120]}", where=where
                )
            if "channel" in frame:
                return self._on_channel(frame, where)
            method = frame.get("method")
            if method == "pong":
                self._pongs += 1
                return None
            if method in ("subscribe", "error"):
                self._on_ack(frame)
                return None
            if method == "unsubscribe":
                return None
            raise RejectedInput(
                "unknown_frame", f"unexpected frame {str(frame)[:160]}", where=where
            )
        except RejectedInput as rejection:
            self._rejected_frames += 1
            return RejectedFrame(rejection)

    def _on_channel(self, frame: Mapping[str, Any], where: str) -> Event:
        channel = frame["channel"]
        if channel == "heartbeat":
            self._heartbeats += 1
            return HeartbeatEvent()
        snapshot = frame.get("type") == "snapshot"
        if channel == _TRADE:
            trades, rejections = parse_ws_trades(frame.get("data"), self.registry, where=where)
            self._trades += len(trades)
            self._rejected_rows += len(rejections)
            return TradesEvent(tuple(trades), tuple(rejections), snapshot)
        if channel == _OHLC:
            candles, rejections = parse_ws_candles(frame.get("data"), self.registry, where=where)
            self._candles += len(candles)
            self._rejected_rows += len(rejections)
            return CandlesEvent(tuple(candles), tuple(rejections), snapshot)
        if channel == "status":
            return self._on_status(frame, where)
        raise RejectedInput("unknown_channel", f"unexpected channel {channel!r}", where=where)

    def _on_status(self, frame: Mapping[str, Any], where: str) -> StatusEvent:
        data = frame.get("data")
        entry = data[0] if isinstance(data, list) and data else None
        if not isinstance(entry, Mapping) or not isinstance(entry.get("system"), str):
            raise RejectedInput(
                "bad_frame", f"status frame without system: {str(frame)[:160]}", where=where
            )
        version = entry.get("version")
        connection_id = entry.get("connection_id")
        self.system_status = entry["system"]
        return StatusEvent(
            system=entry["system"],
            version=version if isinstance(version, str) else None,
            connection_id=connection_id
            if isinstance(connection_id, int) and not isinstance(connection_id, bool)
            else None,
        )


def _closed(exc: trio_websocket.ConnectionClosed) -> ConnectionClosed:
    reason = exc.reason
    return ConnectionClosed(reason.code if reason else None, reason.reason if reason else None)


@asynccontextmanager
async def open_kraken_ws(
    url: str,
    symbols: Iterable[str],
    registry: SymbolRegistry,
    *,
    ohlc_interval: int = 1,
    stale_after_s: float = 10.0,
    ping_interval_s: float = 15.0,
) -> AsyncIterator[KrakenWs]:
    """Connect to Kraken WebSocket v2, subscribe ``trade`` and ``ohlc`` for ``symbols``.

    Returns once every subscription is acknowledged; the connection closes (code 1000) on exit.

    Raises:
        UnknownSymbol: a symbol is not in the registry (nothing is sent).
        ValueError: no symbols.
        SubscriptionFailed: Kraken acknowledged none of the subscriptions.
        KrakenError: the connection could not be established.
        StaleConnection, ConnectionClosed: the connection died during the handshake.
    """
    names = list(dict.fromkeys(registry.canonical(symbol) for symbol in symbols))
    if not names:
        raise ValueError("open_kraken_ws needs at least one symbol")
    try:
        async with AsyncExitStack() as stack:
            ws = await _connect(stack, url)
            conn = KrakenWs(
                ws,
                names,
                registry,
                ohlc_interval=ohlc_interval,
                stale_after_s=stale_after_s,
                ping_interval_s=ping_interval_s,
            )
            await conn._subscribe()
            yield conn
    except BaseExceptionGroup as group:
        # The nursery in _connect runs only trio_websocket's reader task, which does not raise,
        # so a group holds exactly the error of the session body: re-raise it as itself, so
        # callers catch ConnectionClosed, StaleConnection… directly.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def _connect(stack: AsyncExitStack, url: str) -> trio_websocket.WebSocketConnection:
    """Open the TCP (or TLS, with SNI) stream and the WebSocket over it, both closed by ``stack``.

    The stream is opened here rather than by ``trio_websocket.open_websocket_url`` because
    that one leaves the socket open after an abnormal closure (1006); a feed that
    reconnects all day must not leak a descriptor per dropped connection.

    Raises:
        KrakenError: the connection or the upgrade failed.
    """
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise KrakenError(f"Kraken WebSocket URL must be ws:// or wss://host/..., got {url!r}")
    host, port = parts.hostname, parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        stream: trio.abc.Stream
        if secure:
            stream = await trio.open_ssl_over_tcp_stream(
                host, port, ssl_context=ssl.create_default_context(), https_compatible=True
            )
        else:
            stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise KrakenError(f"cannot connect to Kraken WebSocket {url}: {exc!r}") from exc
    stack.push_async_callback(stream.aclose)
    nursery = await stack.enter_async_context(trio.open_nursery())
    try:
        ws = await trio_websocket.wrap_client_stream(
            nursery,
            stream,
            host,
            resource,
            extra_headers=[(b"User-Agent", USER_AGENT.encode())],
            max_message_size=_MAX_MESSAGE_BYTES,
        )
    except trio_websocket.ConnectionRejected as exc:
        raise KrakenError(
            f"Kraken WebSocket {url} rejected the upgrade: HTTP {exc.status_code}"
        ) from exc
    except (trio_websocket.HandshakeError, OSError, trio.BrokenResourceError) as exc:
        raise KrakenError(f"cannot connect to Kraken WebSocket {url}: {exc!r}") from exc
    stack.push_async_callback(ws.aclose)
    return ws
