"""The query actor: the read API over HTTP/1.1 on a Unix socket.

Endpoints (GET only)::

    /v1/candles?symbol=&interval=&start=&end=&format=json|csv|arrow
    /v1/trades?symbol=&start=&end=&format=json|csv|arrow
    /v1/symbols
    /v1/coverage?symbol=&stream=trades|candles&start=&end=
    /v1/stream?symbols=BTC/USD,ETH/USD        (NDJSON; no symbols: all)
    /healthz                                  (200 when healthy, else 503)
    /metrics                                  (Prometheus text)

Every parameter is validated before anything reaches the database, which only ever sees
bound parameters: an unknown or repeated parameter, a malformed symbol, interval, time,
stream or format, a time outside ``EARLIEST`` to ``LATEST``, or ``start >= end`` is answered
``400 {"error": "..."}`` naming the parameter; a well-formed symbol the registry does not
know is ``404``. Symbols accept every spelling the registry does (``BTC/USD``, ``XBTUSD``,
``XXBTZUSD``, ``XBT/USD``); responses use the canonical name. ``interval`` defaults to
``1m``, ``format`` to ``json``.

Candle and trade bodies stream in chunks (see :mod:`histdata.formats`); the first chunk is
read before the status line is sent, so a database outage is a clean ``503``. An outage after
that raises out of the body, so the connection is cut before the end of the chunked body and
no client mistakes a truncated read for a complete one. Reads run in
READ ONLY transactions, under the read-only role when the database allowed creating it.
A ``/v1/stream`` client gets a bounded queue in the :class:`~histdata.actors.hub.LiveHub`;
when it falls behind it receives an ``{"type":"error"}`` line and is disconnected, and
ingestion never waits for it. Idle streams get a heartbeat line every ``heartbeat_s``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog
import trio

from histdata.actors.hub import LiveHub
from histdata.errors import DatabaseUnavailable, UnknownSymbol
from histdata.formats import (
    FORMATS,
    Encoder,
    Format,
    candle_encoder,
    trade_encoder,
)
from histdata.httpserver import (
    HTTPServer,
    Request,
    Response,
    ServerStatistics,
    open_unix_listener,
)
from histdata.storage import Storage
from histdata.storage.candles import candle_mismatches
from histdata.storage.continuity import id_holes
from histdata.storage.coverage import covered, gaps
from histdata.storage.reads import ReadOptions, iter_candle_rows, iter_trade_rows, symbol_extent
from histdata.symbols import SymbolRegistry
from histdata.telemetry import Latencies, timed_reads
from histdata.timeutil import format_time, parse_interval, parse_time

__all__ = ["EARLIEST", "LATEST", "BadParameter", "QueryApp", "Reply", "check_range"]

_log = structlog.get_logger("histdata.actors.query", actor="query")
# Spellings the registry could ever know: letters, digits and . / : _ -, at most 32.
_SYMBOL_RE = re.compile(r"^[A-Za-z0-9./:_-]{1,32}$")
_STREAMS = ("trades", "candles")
_JSON = "application/json"
_NDJSON = "application/x-ndjson"
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
Body = bytes | AsyncIterator[bytes]
# The times a read may name: Unix time, up to where the trades' int64 nanoseconds end, less
# room for the storage to round an edge up to a bucket (at most 366 days) without overflow.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2262, 1, 1, tzinfo=UTC)
# Descriptors the query socket leaves to the rest of the process: the WebSocket and REST
# connections (a handful), the database pool (``pool_max``, 8 by default), the journal (its
# active segment, a dup and the directory during fsync, segments awaiting fsync: under 10),
# the other listeners, logs and trio's own (under 10). That is under 50 by default; 256
# leaves room for a pool of a hundred and more. The cap is min(max_connections, limit - 256).
_RESERVED_DESCRIPTORS = 256


class BadParameter(ValueError):
    """A query parameter is missing or malformed; answered with HTTP 400."""

    def __init__(self, parameter: str, message: str) -> None:
        self.parameter = parameter
        super().__init__(f"parameter {parameter!r}: {message}")


@dataclass(frozen=True, slots=True)
class Reply:
    """A response before it meets HTTP: status, content type and body (bytes or a stream)."""

    status: int
    content_type: str
    body: Body


def check_range(start: datetime, end: datetime) -> None:
    """Check a read range: both edges within ``[EARLIEST, LATEST]`` and ``start < end``.

    Raises:
        BadParameter: naming ``start`` or ``end``.
    """
    for name, value in (("start", start), ("end", end)):
        if not EARLIEST <= value <= LATEST:
            raise BadParameter(
                name, f"must be between {format_time(EARLIEST)} and {format_time(LATEST)}"
            )
    if end <= start:
        raise BadParameter("end", "must be after start")


def _error(status: int, message: str) -> Reply:
    return Reply(status, _JSON, orjson.dumps({"error": message}))


def _json(status: int, value: Any) -> Reply:
    return Reply(status, _JSON, orjson.dumps(value))


class _Params:
    """Validating view of a query string (``name -> [values]``)."""

    def __init__(self, query: Mapping[str, list[str]], allowed: tuple[str, ...]) -> None:
        for name, values in query.items():
            if name not in allowed:
                shown = name if len(name) <= 40 else name[:40] + "…"
                raise BadParameter(
                    shown, f"unknown parameter; this endpoint takes {', '.join(allowed)}"
                )
            if len(values) != 1:
                raise BadParameter(name, "given more than once")
        self._query = query

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._query.get(name)
        return values[0] if values else default

    def required(self, name: str) -> str:
        value = self.get(name)
        if value is None or value == "":
            raise BadParameter(name, "is required")
        return value

    def time(self, name: str) -> datetime:
        try:
            return parse_time(self.required(name))
        except ValueError as exc:
            if isinstance(exc, BadParameter):
                raise
            raise BadParameter(name, str(exc)) from exc

    def range(self) -> tuple[datetime, datetime]:
        start, end = self.time("start"), self.time("end")
        check_range(start, end)
        return start, end

    def fmt(self) -> Format:
        value = self.get("format", "json")
        for known in FORMATS:
            if value == known:
                return known
        raise BadParameter("format", f"must be one of {', '.join(FORMATS)}")

    def interval(self) -> int:
        try:
            return parse_interval(self.get("interval", "1m") or "")
        except ValueError as exc:
            raise BadParameter("interval", str(exc)) from exc


class QueryApp:
    """The endpoints as plain async functions from (path, query) to a :class:`Reply`.

    ``storage`` is the open Storage or a getter raising :class:`DatabaseUnavailable` while
    there is none (the service's, so reads answer 503 during an outage and work again after
    it, while ``/healthz`` and ``/metrics`` never need the database).
    """

    def __init__(
        self,
        storage: Storage | Callable[[], Storage],
        registry: SymbolRegistry,
        *,
        hub: LiveHub,
        status: Callable[[], Mapping[str, Any]],
        metrics: Callable[[], bytes],
        stream_queue: int = 10_000,
        read_options: ReadOptions = ReadOptions(),  # noqa: B008 - frozen value
        heartbeat_s: float = 15.0,
        chunk: int = 20_000,
        max_connections: int = 512,
        header_timeout_s: float = 5.0,
        latencies: Latencies | None = None,
    ) -> None:
        self._http = HTTPServer(
            self.handle_http if latencies is None else timed_reads(self.handle_http, latencies),
            max_connections=max_connections,
            header_timeout_s=header_timeout_s,
            reserve_descriptors=_RESERVED_DESCRIPTORS,
        )
        self._get_storage: Callable[[], Storage] = (
            (lambda: storage) if isinstance(storage, Storage) else storage
        )
        self._registry = registry
        self._hub = hub
        self._status = status
        self._metrics = metrics
        self._stream_queue = stream_queue
        self._options = read_options
        self._heartbeat_s = heartbeat_s
        self._chunk = chunk
        self.requests = 0
        self.rejected = 0
        self.failures = 0

    @property
    def _storage(self) -> Storage:
        return self._get_storage()

    def _read_options(self, storage: Storage) -> ReadOptions:
        """The options given, else reads under the storage's read-only role (if it has one)."""
        if self._options.role is None and storage.read_role is not None:
            return ReadOptions(role=storage.read_role)
        return self._options

    def _symbol(self, text: str, parameter: str = "symbol") -> str:
        if not _SYMBOL_RE.match(text):
            raise BadParameter(parameter, "is not a symbol (letters, digits, . / : _ -)")
        return self._registry.canonical(text)

    async def handle(self, method: str, path: str, query: Mapping[str, list[str]]) -> Reply:
        """Answer one request; never raises for bad input or a database outage."""
        self.requests += 1
        routes = {
            "/v1/candles": self._candles,
            "/v1/trades": self._trades,
            "/v1/symbols": self._symbols,
            "/v1/coverage": self._coverage,
            "/v1/stream": self._stream,
            "/healthz": self._healthz,
            "/metrics": self._metrics_reply,
        }
        route = routes.get(path)
        if route is None:
            return _error(404, f"no such endpoint {path[:100]!r}")
        if method != "GET":
            return _error(405, f"method {method[:10]} not allowed; use GET")
        try:
            return await route(query)
        except BadParameter as exc:
            self.rejected += 1
            return _error(400, str(exc))
        except UnknownSymbol as exc:
            self.rejected += 1
            return _error(404, str(exc))
        except DatabaseUnavailable as exc:
            self.failures += 1
            _log.warning("read failed: database unavailable", path=path, error=str(exc))
            return _error(503, "database unavailable; try again")

    async def serve(
        self,
        path: Path,
        *,
        mode: int = 0o660,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the endpoints over HTTP/1.1 on a Unix socket at ``path`` until cancelled.

        The socket file is created with ``mode`` before it accepts connections, reported
        started once listening, and removed on exit. Connections are capped and timed out
        as :class:`~histdata.httpserver.HTTPServer` describes; the soft descriptor limit is
        raised to the hard one and the cap kept below it (see ``_RESERVED_DESCRIPTORS``).

        Raises:
            OSError: another server listens on ``path``, or it cannot be created.
        """
        listener = await open_unix_listener(path, mode=mode)
        try:
            await self._http.serve([listener], task_status=task_status)
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()
                await trio.Path(path).unlink(missing_ok=True)

    def statistics(self) -> ServerStatistics:
        """The socket's connection counters (open, peak, evicted, timed out, refused, …)."""
        return self._http.statistics()

    async def handle_http(self, request: Request) -> Response:
        """:meth:`handle` as an :mod:`histdata.httpserver` handler."""
        reply = await self.handle(request.method, request.path, request.query)
        return Response(reply.status, (("content-type", reply.content_type),), reply.body)

    async def _stream_body(self, encoder: Encoder, chunks: AsyncIterator[list[Any]]) -> Body:
        """Read the first chunk now (errors become a status), stream the rest."""
        first = await anext(chunks, None)

        async def body() -> AsyncIterator[bytes]:
            try:
                yield encoder.begin()
                if first is not None:
                    yield encoder.rows(first)
                try:
                    async for rows in chunks:
                        yield encoder.rows(rows)
                except DatabaseUnavailable as exc:
                    self.failures += 1
                    _log.warning("read failed mid-body: database unavailable", error=str(exc))
                    raise
                yield encoder.end()
            finally:
                await chunks.aclose()  # type: ignore[attr-defined]

        return body()

    async def _candles(self, query: Mapping[str, list[str]]) -> Reply:
        p = _Params(query, ("symbol", "interval", "start", "end", "format"))
        symbol = self._symbol(p.required("symbol"))
        interval = p.interval()
        start, end = p.range()
        fmt = p.fmt()
        encoder = candle_encoder(fmt, symbol, interval)
        storage = self._storage
        options = self._read_options(storage)
        chunks = iter_candle_rows(
            storage, symbol, interval, start, end, chunk=self._chunk, options=options
        )
        return Reply(200, encoder.content_type, await self._stream_body(encoder, chunks))

    async def _trades(self, query: Mapping[str, list[str]]) -> Reply:
        p = _Params(query, ("symbol", "start", "end", "format"))
        symbol = self._symbol(p.required("symbol"))
        start, end = p.range()
        fmt = p.fmt()
        encoder = trade_encoder(fmt, symbol)
        storage = self._storage
        options = self._read_options(storage)
        chunks = iter_trade_rows(storage, symbol, start, end, chunk=self._chunk, options=options)
        return Reply(200, encoder.content_type, await self._stream_body(encoder, chunks))

    async def _symbols(self, query: Mapping[str, list[str]]) -> Reply:
        _Params(query, ())
        storage = self._storage
        extent = await symbol_extent(storage, self._read_options(storage))
        out = []
        for name, streams in extent.items():
            if name not in self._registry:
                continue
            info = self._registry.resolve(name)
            entry: dict[str, Any] = {
                "symbol": info.symbol,
                "rest_key": info.rest_key,
                "altname": info.altname,
                "wsname": info.wsname,
            }
            for stream, span in streams.items():
                entry[stream] = (
                    None
                    if span is None
                    else {"first": format_time(span[0]), "last": format_time(span[1])}
                )
            out.append(entry)
        return _json(200, {"symbols": out})

    async def _coverage(self, query: Mapping[str, list[str]]) -> Reply:
        p = _Params(query, ("symbol", "stream", "start", "end"))
        symbol = self._symbol(p.required("symbol"))
        stream = p.get("stream", "trades")
        if stream == "trades" or stream == "candles":
            chosen: Any = stream
        else:
            raise BadParameter("stream", f"must be one of {', '.join(_STREAMS)}")
        start, end = p.range()
        observed = await covered(self._storage, symbol, chosen, start, end)
        holes = await gaps(self._storage, symbol, chosen, start, end)
        breaks = await id_holes(self._storage, symbol, start, end) if stream == "trades" else []
        disagree = (
            await candle_mismatches(self._storage, symbol, start, end)
            if stream == "candles"
            else []
        )

        def spans(items: list[tuple[datetime, datetime]]) -> list[dict[str, str]]:
            return [{"start": format_time(a), "end": format_time(b)} for a, b in items]

        return _json(
            200,
            {
                "symbol": symbol,
                "stream": chosen,
                "start": format_time(start),
                "end": format_time(end),
                "covered": spans(observed),
                "gaps": spans(holes),
                "id_holes": [
                    {
                        "first_id": h.first_id,
                        "last_id": h.last_id,
                        "missing": h.missing,
                        "after": format_time(h.after),
                        "before": format_time(h.before),
                        "status": h.status,
                        "reason": h.reason,
                    }
                    for h in breaks
                ],
                "mismatches": [
                    {
                        "time": format_time(m.time),
                        "fields": {k: [str(a), str(b)] for k, (a, b) in m.fields.items()},
                    }
                    for m in disagree
                ],
            },
        )

    async def _stream(self, query: Mapping[str, list[str]]) -> Reply:
        p = _Params(query, ("symbols",))
        raw = p.get("symbols", "") or ""
        symbols = (
            None
            if not raw.strip()
            else {self._symbol(s.strip(), "symbols") for s in raw.split(",") if s.strip()}
        )
        hub, queue, heartbeat = self._hub, self._stream_queue, self._heartbeat_s

        async def body() -> AsyncIterator[bytes]:
            with hub.subscribe(symbols, queue=queue) as sub:
                yield orjson.dumps({"type": "hello", "symbols": sorted(symbols or [])}) + b"\n"
                while True:
                    line = b""
                    with trio.move_on_after(heartbeat) as idle:
                        try:
                            line = await sub.events.receive()
                        except trio.EndOfChannel:
                            break
                    if idle.cancelled_caught:
                        line = b'{"type":"heartbeat"}\n'
                    yield line
                if sub.dropped_reason is not None:
                    yield (
                        orjson.dumps(
                            {
                                "type": "error",
                                "error": f"stream dropped: {sub.dropped_reason}",
                                "reason": sub.dropped_reason,
                            }
                        )
                        + b"\n"
                    )

        return Reply(200, _NDJSON, body())

    async def _healthz(self, query: Mapping[str, list[str]]) -> Reply:
        _Params(query, ())
        status = dict(self._status())
        return Reply(
            200 if status.get("healthy") else 503,
            _JSON,
            orjson.dumps(status, default=str, option=orjson.OPT_NON_STR_KEYS),
        )

    async def _metrics_reply(self, query: Mapping[str, list[str]]) -> Reply:
        _Params(query, ())
        return Reply(200, _PROMETHEUS, self._metrics())
