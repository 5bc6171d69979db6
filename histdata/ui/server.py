"""``[ui] listen``: the coverage map and the read-only API its page needs, over TCP.

A browser cannot reach the Unix socket, so with ``listen = "127.0.0.1:8780"`` the service
also serves, on that loopback address and nowhere else:

- ``GET /``: the page (``static/index.html``) and ``GET /static/<file>``: its script, style
  and the vendored lightweight-charts build — a fixed list of files shipped in the package;
- ``GET /api/map?symbol=&start=&end=``: the coverage map of :mod:`histdata.ui.mapdata`;
- ``GET /v1/symbols`` and ``GET /v1/candles?…``: answered by the query socket's own
  :class:`~histdata.actors.query.QueryApp`, same parameters, same validation.

Nothing else: no trades, no live stream, no health or metrics, no method but GET (and HEAD
for the page). The API has no authentication, so anyone who can connect to the port on
this machine can read the data; :func:`histdata.config.parse_loopback_listen` refuses any
address but loopback, and a request whose ``Host`` is not a loopback address or
``localhost`` is refused (403), so a web page elsewhere cannot read it through the
browser by pointing a DNS name at 127.0.0.1 (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from datetime import datetime
from importlib import resources

import trio

from histdata.actors.hub import LiveHub
from histdata.actors.query import BadParameter, QueryApp, check_range
from histdata.config import parse_loopback_listen
from histdata.errors import ConfigError, DatabaseUnavailable, UnknownSymbol
from histdata.httpserver import HTTPServer, Request, Response, open_tcp_listener
from histdata.storage import Storage
from histdata.storage.reads import ReadOptions
from histdata.supervisor import current_child_stopping
from histdata.symbols import SymbolRegistry
from histdata.timeutil import parse_time
from histdata.ui.mapdata import coverage_map

__all__ = ["STATIC_FILES", "UIApp", "run"]

# The files the page is made of: name → content type. Nothing outside this list is served.
STATIC_FILES: Mapping[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "lightweight-charts.standalone.production.js": "text/javascript; charset=utf-8",
    "LICENSE-lightweight-charts.txt": "text/plain; charset=utf-8",
}
_FORWARDED = ("/v1/symbols", "/v1/candles")
# A browser opens about six connections per origin; a few people looking at once need no
# more than this, and the descriptors the query socket reserves for live capture must not
# go to a loop that opens connections to this port instead (beyond it, the oldest idle one
# is evicted, as on the socket).
_MAX_CONNECTIONS = 32
_MAP_PARAMETERS = ("symbol", "start", "end")
# Inline styles are allowed because lightweight-charts sets some in markup it builds;
# scripts, fetches and frames are this origin's own only.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_COMMON_HEADERS = (
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-cache"),
)


def _error(status: int, message: str) -> Response:
    return Response.json(status, {"error": message}, headers=_COMMON_HEADERS)


def _loopback_host(header: str) -> bool:
    """Whether a ``Host`` header names this machine: ``localhost`` or a loopback address,
    with or without a port."""
    host = header.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class UIApp:
    """The handler behind ``[ui] listen`` (see the module docs for what it answers).

    ``storage`` is the open Storage or a getter raising :class:`DatabaseUnavailable` while
    there is none, as for :class:`~histdata.actors.query.QueryApp`. The page's files are
    read once, here.
    """

    def __init__(
        self,
        storage: Storage | Callable[[], Storage],
        registry: SymbolRegistry,
        *,
        read_options: ReadOptions = ReadOptions(),  # noqa: B008 - frozen value
        max_buckets: int = 2000,
    ) -> None:
        self._get_storage: Callable[[], Storage] = (
            (lambda: storage) if isinstance(storage, Storage) else storage
        )
        self._registry = registry
        self._max_buckets = max_buckets
        # Only its candles and symbols endpoints are ever routed here, so the live hub it
        # is given stays empty and its health and metrics callables are never called.
        self._query = QueryApp(
            storage,
            registry,
            hub=LiveHub(),
            status=dict,
            metrics=bytes,
            read_options=read_options,
        )
        folder = resources.files("histdata.ui") / "static"
        self._files = {name: (folder / name).read_bytes() for name in STATIC_FILES}

    async def handle(self, request: Request) -> Response:
        """Answer one request; never raises for bad input or a database outage."""
        if not _loopback_host(request.headers.get("host", "")):
            return _error(403, "this listener answers only requests addressed to loopback")
        if request.method not in ("GET", "HEAD"):
            return Response.json(
                405,
                {"error": f"method {request.method[:10]} not allowed; use GET"},
                headers=(("allow", "GET, HEAD"), *_COMMON_HEADERS),
            )
        path = request.path
        if path == "/":
            return self._file("index.html")
        if path.startswith("/static/"):
            name = path.removeprefix("/static/")
            if name in STATIC_FILES and name != "index.html":
                return self._file(name)
        elif path == "/api/map":
            return await self._map(request.query)
        elif path in _FORWARDED:
            response = await self._query.handle_http(request)
            return Response(response.status, (*response.headers, *_COMMON_HEADERS), response.body)
        return _error(404, f"no such path {path[:100]!r}; the coverage map is at /")

    def _file(self, name: str) -> Response:
        headers = [("content-type", STATIC_FILES[name]), *_COMMON_HEADERS]
        if name == "index.html":
            headers.append(("content-security-policy", _CSP))
        return Response(200, headers, self._files[name])

    async def _map(self, query: Mapping[str, list[str]]) -> Response:
        try:
            symbol, start, end = self._map_parameters(query)
            found = await coverage_map(
                self._get_storage(), symbol, start, end, max_buckets=self._max_buckets
            )
        except BadParameter as exc:
            return _error(400, str(exc))
        except UnknownSymbol as exc:
            return _error(404, str(exc))
        except DatabaseUnavailable:
            return _error(503, "database unavailable; try again")
        return Response.json(200, found.to_json(), headers=_COMMON_HEADERS)

    def _map_parameters(self, query: Mapping[str, list[str]]) -> tuple[str, datetime, datetime]:
        for name, values in query.items():
            if name not in _MAP_PARAMETERS:
                raise BadParameter(
                    name[:40], f"unknown parameter; /api/map takes {', '.join(_MAP_PARAMETERS)}"
                )
            if len(values) != 1:
                raise BadParameter(name, "given more than once")
        given = {name: values[0] for name, values in query.items()}
        for name in _MAP_PARAMETERS:
            if not given.get(name):
                raise BadParameter(name, "is required")
        times = []
        for name in ("start", "end"):
            try:
                times.append(parse_time(given[name]))
            except ValueError as exc:
                raise BadParameter(name, str(exc)) from exc
        start, end = times
        check_range(start, end)
        return self._registry.canonical(given["symbol"]), start, end


async def run(
    listen: str,
    storage: Storage | Callable[[], Storage],
    registry: SymbolRegistry,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the coverage map at ``http://<listen>/`` until the supervisor stops us.

    A supervised child (``ChildSpec("ui", partial(run, listen, storage_getter, registry))``):
    reports started with the bound ``(host, port)`` once listening (port 0 in ``listen``
    picks a free one), and returns when its stopping event is set. The listener starts
    while the database is away; reads answer 503 until it is back.

    Raises:
        ConfigError: ``listen`` is not ``host:port`` on a loopback address.
        OSError: the address cannot be bound (in use, no permission).
    """
    try:
        host, port = parse_loopback_listen(listen)
    except ValueError as exc:
        raise ConfigError(f"[ui] listen: {exc}") from exc
    app = UIApp(storage, registry)
    stopping = current_child_stopping()
    listener = await open_tcp_listener(host, port)
    bound = listener.socket.getsockname()
    async with listener, trio.open_nursery() as nursery:
        server = HTTPServer(app.handle, max_connections=_MAX_CONNECTIONS)
        await nursery.start(server.serve, [listener])
        task_status.started((str(bound[0]), int(bound[1])))
        await stopping.wait()
        nursery.cancel_scope.cancel()
