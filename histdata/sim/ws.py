"""The simulator's WebSocket v2 server: ``status``, subscribe acks, ``trade``, ``ohlc``,
``heartbeat`` and ``ping``/``pong``, shaped as Kraken sends them (docs/kraken.md).

- On connect: one ``status`` frame with a ``connection_id`` above 2^63.
- ``subscribe`` gets one ack per symbol. Only upper-case v2 names of simulated pairs are
  accepted; ``XBT/USD``, lower case and unknown pairs get Kraken's
  ``Currency pair not supported …`` failure ack, after which nothing is sent for them while
  heartbeats keep flowing.
- ``trade``: a snapshot of the 50 most recent trades when asked, then one ``update`` frame
  per tick holding every new trade. Prices and quantities are JSON numbers.
- ``ohlc`` at any of Kraken's intervals (1, 5, 15, 30, 60, 240, 1440, 10080, 21600
  minutes; others are refused): a snapshot of the intervals with trades among the last 12,
  then on every tick with trades the whole cumulative candle of each touched interval,
  re-emitted with the same ``interval_begin`` (ns precision) and the deprecated per-row
  ``timestamp`` set to the interval END, as Kraken does.
- ``heartbeat`` once a second on a connection with a subscription. Kraken sends it only when
  idle; sending it always keeps a test of heartbeat handling independent of the trade rate.
- Subscriptions do not survive a reconnect; each connection starts empty.

Every connection has a bounded outbox: a client that cannot keep up is disconnected and
counted, as an exchange would, so a slow test client never stalls the market.
"""

from __future__ import annotations

import functools
import itertools
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import structlog
import trio
import trio_websocket

from histdata.model import NS_PER_S, Trade
from histdata.sim.faults import Faults
from histdata.sim.market import MINUTE_NS, Market, MinuteBar, SymbolMarket
from histdata.sim.rest import OHLC_INTERVALS

__all__ = ["WsHub", "WsStatistics"]

_log = structlog.get_logger("histdata.sim.ws")
_SNAPSHOT_TRADES = 50
_SNAPSHOT_INTERVALS = 12
_FRAME_TRADES = 500
_OUTBOX = 2048  # frames; a client this far behind is disconnected
_WARNINGS = ["timestamp is deprecated, use interval_begin"]
_MALFORMED_KINDS = (
    "not_json",
    "unknown_channel",
    "bad_price",
    "bad_qty",
    "bad_time",
    "bad_side",
    "bad_symbol",
)


@dataclass(frozen=True, slots=True)
class WsStatistics:
    """Connections served and what was sent to them."""

    connections: int
    open: int
    subscriptions: int  # (channel, symbol) pairs subscribed on open connections
    frames_sent: int
    malformed_sent: int
    closes_injected: int
    slow_clients_dropped: int
    subscribe_failures: int


@dataclass
class _Counters:
    connections: int = 0
    frames_sent: int = 0
    malformed_sent: int = 0
    closes_injected: int = 0
    slow_clients_dropped: int = 0
    subscribe_failures: int = 0


@dataclass(eq=False)
class _Connection:
    """One client: its subscriptions, its outbox and its fault state."""

    ws: trio_websocket.WebSocketConnection
    stream: trio.abc.Stream
    connection_id: int
    send: trio.MemorySendChannel[str]
    receive: trio.MemoryReceiveChannel[str]
    trades: set[str] = field(default_factory=set)
    ohlc: set[tuple[str, int]] = field(default_factory=set)  # (symbol, interval)
    silent_until: float = 0.0
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)

    def silent(self) -> bool:
        return time.monotonic() < self.silent_until


class WsHub:
    """Serves WebSocket v2 clients from one :class:`Market` and fans its trades out to them.

    Args:
        market: the ground truth.
        faults: injected misbehaviour (malformed frames; close and silence act through
            :meth:`close_all` and :meth:`silence_all`).
        rng: the random source for probabilistic faults.
    """

    def __init__(self, market: Market, faults: Faults, rng: random.Random) -> None:
        self._market = market
        self._faults = faults
        self._rng = rng
        self._connections: set[_Connection] = set()
        self._counters = _Counters()
        self._ids = itertools.count(2**63 + rng.randrange(2**62))

    def statistics(self) -> WsStatistics:
        """Counts since start."""
        c = self._counters
        return WsStatistics(
            c.connections,
            len(self._connections),
            sum(len(conn.trades) + len(conn.ohlc) for conn in self._connections),
            c.frames_sent,
            c.malformed_sent,
            c.closes_injected,
            c.slow_clients_dropped,
            c.subscribe_failures,
        )

    # ------------------------------------------------------------------ connections

    async def serve(self, stream: trio.abc.Stream) -> None:
        """Serve one TCP connection: the upgrade, then the session until either side ends it."""
        async with stream, trio.open_nursery() as nursery:
            request = await trio_websocket.wrap_server_stream(nursery, stream)
            if request.path.rstrip("/") not in ("/v2", ""):
                await request.reject(404, body=b"unknown WebSocket path; use /v2\n")
                return
            ws = await request.accept()
            send, receive = trio.open_memory_channel[str](_OUTBOX)
            conn = _Connection(ws, stream, next(self._ids), send, receive)
            self._counters.connections += 1
            self._connections.add(conn)
            try:
                with conn.cancel:
                    await self._session(conn)
            finally:
                self._connections.discard(conn)
                nursery.cancel_scope.cancel()

    async def _session(self, conn: _Connection) -> None:
        self._post(conn, _dumps(_status(conn.connection_id)))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, conn)
            nursery.start_soon(self._heartbeats, conn)
            try:
                while True:
                    message = await conn.ws.get_message()
                    self._on_message(conn, message)
            except trio_websocket.ConnectionClosed:
                pass
            nursery.cancel_scope.cancel()

    async def _writer(self, conn: _Connection) -> None:
        try:
            async for frame in conn.receive:
                if conn.silent():
                    continue  # a dead path: what is "sent" now never arrives
                await conn.ws.send_message(frame)
                self._counters.frames_sent += 1
        except trio_websocket.ConnectionClosed:
            conn.cancel.cancel()

    async def _heartbeats(self, conn: _Connection) -> None:
        while True:
            await trio.sleep(1.0)
            if conn.trades or conn.ohlc:
                self._post(conn, '{"channel":"heartbeat"}')

    def _post(self, conn: _Connection, frame: str) -> None:
        try:
            conn.send.send_nowait(frame)
        except trio.WouldBlock:
            self._counters.slow_clients_dropped += 1
            _log.warning("sim_ws_slow_client_dropped", connection_id=conn.connection_id)
            self._connections.discard(conn)
            conn.cancel.cancel()

    # ----------------------------------------------------------------------- requests

    def _on_message(self, conn: _Connection, message: str | bytes) -> None:
        time_in = _rfc3339_now()
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            self._post(conn, _dumps(_malformed(time_in)))
            return
        method = request.get("method")
        req_id = request.get("req_id")
        if method == "ping":
            reply: dict[str, Any] = {
                "method": "pong",
                "time_in": time_in,
                "time_out": _rfc3339_now(),
            }
            if req_id is not None:
                reply["req_id"] = req_id
            self._post(conn, _dumps(reply))
        elif method in ("subscribe", "unsubscribe") and isinstance(request.get("params"), dict):
            self._on_subscription(conn, method, request["params"], req_id, time_in)
        else:
            self._post(conn, _dumps(_malformed(time_in, req_id)))

    def _on_subscription(
        self, conn: _Connection, method: str, params: dict[str, Any], req_id: object, time_in: str
    ) -> None:
        channel = params.get("channel")
        symbols = params.get("symbol")
        if channel not in ("trade", "ohlc") or not isinstance(symbols, list) or not symbols:
            self._post(conn, _dumps(_malformed(time_in, req_id)))
            return
        interval = params.get("interval", 1) if channel == "ohlc" else None
        default_snapshot = channel == "ohlc"  # the newer docs: trade defaults to false
        snapshot = bool(params.get("snapshot", default_snapshot))
        for symbol in symbols:
            ack: dict[str, Any] = {"method": method, "time_in": time_in}
            # A trade subscription is keyed by its symbol, an ohlc one by symbol and interval.
            key: object = symbol if channel == "trade" else (symbol, interval)
            targets: set[Any] = conn.trades if channel == "trade" else conn.ohlc
            error = self._refusal(symbol, method, key in targets, interval)
            if error is not None:
                self._counters.subscribe_failures += 1
                ack.update(error=error, success=False, symbol=symbol)
            else:
                result: dict[str, Any] = {
                    "channel": channel,
                    "snapshot": snapshot,
                    "symbol": symbol,
                }
                if channel == "ohlc":
                    result.update(interval=interval, warnings=_WARNINGS)
                ack.update(result=result, success=True)
            ack["time_out"] = _rfc3339_now()
            if req_id is not None:
                ack["req_id"] = req_id
            self._post(conn, _dumps(ack))
            if error is not None:
                continue
            if method == "unsubscribe":
                targets.discard(key)
                continue
            targets.add(key)
            if snapshot:
                book = self._market.symbols[symbol]
                if channel == "trade":
                    recent = book.trades[-_SNAPSHOT_TRADES:]
                    self._post(conn, _trade_frame("snapshot", recent))
                else:
                    assert isinstance(interval, int)  # checked by _refusal
                    width = interval * MINUTE_NS
                    clock = self._market.clock_ns
                    since = clock - clock % width - (_SNAPSHOT_INTERVALS - 1) * width
                    bars = book.bars_between(since, clock + width, interval)
                    self._post(conn, _ohlc_frame("snapshot", book, bars, interval))

    def _refusal(
        self, symbol: object, method: str, subscribed: bool, interval: object
    ) -> str | None:
        """Kraken's error text for a subscription it refuses, else None."""
        if not isinstance(symbol, str) or symbol not in self._market.symbols:
            return f"Currency pair not supported {symbol}"
        if interval is not None and (isinstance(interval, bool) or interval not in OHLC_INTERVALS):
            return f"Unsupported interval {interval}"
        if method == "unsubscribe" and not subscribed:
            return "Subscription Not Found"
        return None

    # -------------------------------------------------------------------- broadcasting

    def publish(self, new: dict[str, list[Trade]]) -> None:
        """Send one tick's new trades, and the candles they touched, to every subscriber."""
        for symbol, trades in new.items():
            if not trades:
                continue
            book = self._market.symbols[symbol]
            # A late tick can hold thousands of trades; Kraken's frames hold a handful, and a
            # client bounds message size, so cut them into frames of at most _FRAME_TRADES.
            trade_frames = [
                _trade_frame("update", trades[i : i + _FRAME_TRADES])
                for i in range(0, len(trades), _FRAME_TRADES)
            ]
            ohlc_frames: dict[int, str] = {}
            for conn in list(self._connections):
                if symbol in conn.trades:
                    for frame in trade_frames:
                        self._post(conn, frame)
                    if self._rng.random() < self._faults.malformed_ratio:
                        self._post(conn, self._malformed_companion(trades))
                for interval in OHLC_INTERVALS:
                    if (symbol, interval) in conn.ohlc:
                        if interval not in ohlc_frames:  # built once per tick, for all
                            ohlc_frames[interval] = _ohlc_update(book, trades, interval)
                        self._post(conn, ohlc_frames[interval])

    def _malformed_companion(self, trades: Sequence[Trade]) -> str:
        """A bad frame to send next to a good one; real trades are never altered."""
        self._counters.malformed_sent += 1
        kind = self._rng.choice(_MALFORMED_KINDS)
        if kind == "not_json":
            return _trade_frame("update", trades)[: self._rng.randrange(5, 40)]
        if kind == "unknown_channel":
            return '{"channel":"tradez","type":"update","data":[]}'
        row = dict(_trade_dict(trades[0]))
        if kind == "bad_price":
            row["price"] = self._rng.choice([-1, 0, "12.5", None])
        elif kind == "bad_qty":
            row["qty"] = self._rng.choice([0, -0.5, "lots"])
        elif kind == "bad_time":
            row["timestamp"] = self._rng.choice(["yesterday", "2099-01-01T00:00:00Z", 17])
        elif kind == "bad_side":
            row["side"] = "hold"
        else:
            row["symbol"] = "btc/usd"
        good = ",".join(_trade_json(t) for t in trades)
        return f'{{"channel":"trade","type":"update","data":[{good},{_dumps(row)}]}}'

    # ------------------------------------------------------------------------- faults

    def close_all(self, code: int, nursery: trio.Nursery) -> None:
        """Close every open connection with ``code``; 1006 drops the TCP link unannounced."""
        for conn in list(self._connections):
            self._counters.closes_injected += 1
            self._connections.discard(conn)
            nursery.start_soon(self._close, conn, code)

    async def _close(self, conn: _Connection, code: int) -> None:
        if code == 1006:
            await conn.stream.aclose()
        else:
            reason = {1001: "CloudFlare WebSocket proxy restarting", 1011: "keepalive ping timeout"}
            await conn.ws.aclose(code, reason.get(code, "Market data unavailable"))
        conn.cancel.cancel()

    def silence_all(self, seconds: float) -> None:
        """Make every open connection silent for ``seconds`` (no close, nothing delivered)."""
        until = time.monotonic() + seconds
        for conn in self._connections:
            conn.silent_until = until


# --------------------------------------------------------------------------- encoding


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _rfc3339_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _rfc3339(time_ns: int, *, nanos: bool = False) -> str:
    seconds, fraction = divmod(time_ns, NS_PER_S)
    stamp = _second_stamp(seconds)
    return f"{stamp}.{fraction:09d}Z" if nanos else f"{stamp}.{fraction // 1000:06d}Z"


@functools.lru_cache(maxsize=1024)
def _second_stamp(seconds: int) -> str:
    # Per trade, strftime was the simulator's costliest call; a tick's trades share seconds.
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _status(connection_id: int) -> dict[str, Any]:
    return {
        "channel": "status",
        "type": "update",
        "data": [
            {
                "version": "2.0.10",
                "system": "online",
                "api_version": "v2",
                "connection_id": connection_id,
                "upcoming_maintenance": [],
                "emergency": [],
            }
        ],
    }


def _malformed(time_in: str, req_id: object = None) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "error": "Malformed request",
        "method": "error",
        "success": False,
        "time_in": time_in,
        "time_out": _rfc3339_now(),
    }
    if req_id is not None:
        reply["req_id"] = req_id
    return reply


def _number(value: Decimal) -> str:
    """A decimal as a JSON number, digit for digit (Kraken sends numbers, not strings)."""
    return f"{value:f}"


def _trade_dict(trade: Trade) -> dict[str, Any]:
    return {
        "symbol": trade.symbol,
        "side": str(trade.side),
        "price": float(trade.price),
        "qty": float(trade.volume),
        "ord_type": trade.ord_type,
        "trade_id": trade.trade_id,
        "timestamp": _rfc3339(trade.time_ns),
    }


def _trade_json(trade: Trade) -> str:
    return (
        f'{{"symbol":"{trade.symbol}","side":"{trade.side}","price":{_number(trade.price)},'
        f'"qty":{_number(trade.volume)},"ord_type":"{trade.ord_type}",'
        f'"trade_id":{trade.trade_id},"timestamp":"{_rfc3339(trade.time_ns)}"}}'
    )


def _trade_frame(kind: str, trades: Iterable[Trade]) -> str:
    rows = ",".join(_trade_json(trade) for trade in trades)
    return f'{{"channel":"trade","type":"{kind}","data":[{rows}]}}'


def _ohlc_update(book: SymbolMarket, trades: Sequence[Trade], interval: int) -> str:
    """The ``update`` frame of every ``interval`` candle that ``trades`` touched, each whole."""
    width = interval * MINUTE_NS
    touched = sorted({t.time_ns - t.time_ns % width for t in trades})
    bars = [bar for start in touched for bar in book.bars_between(start, start + width, interval)]
    return _ohlc_frame("update", book, bars, interval)


def _ohlc_frame(kind: str, book: SymbolMarket, bars: Iterable[MinuteBar], interval: int) -> str:
    decimals = book.info.price_decimals
    rows = ",".join(
        f'{{"symbol":"{book.info.symbol}","open":{_number(bar.open)},"high":{_number(bar.high)},'
        f'"low":{_number(bar.low)},"close":{_number(bar.close)},"trades":{bar.trades},'
        f'"volume":{_number(bar.volume)},"vwap":{_number(bar.vwap(decimals))},'
        f'"interval_begin":"{_rfc3339(bar.start_ns, nanos=True)}","interval":{interval},'
        f'"timestamp":"{_rfc3339(bar.start_ns + interval * MINUTE_NS)}"}}'
        for bar in bars
    )
    sent = _rfc3339(time.time_ns(), nanos=True)
    return f'{{"channel":"ohlc","type":"{kind}","timestamp":"{sent}","data":[{rows}]}}'
