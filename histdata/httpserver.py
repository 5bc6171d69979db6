"""A small HTTP/1.1 server on trio and h11, for the query socket and the simulator's REST API.

Handlers are ``async (Request) -> Response``. A response body is bytes (sent with a
``Content-Length``), an async iterator of bytes, or an async context manager giving one (a
``trio.as_safe_channel`` generator, which may run tasks of its own, such as a prefetch), the
last two sent with chunked transfer encoding as they are produced, so a year of candles never
sits whole in memory. Connections are kept alive between requests. Malformed HTTP gets a
400, a handler that raises a 500 with a JSON body; the exception is logged, the connection
closed, and the server keeps serving everyone else.

The server survives its users (:class:`HTTPServer`):

- **Bounded requests.** A request line over ``max_line_bytes`` gets 414, a head over
  ``max_head_bytes`` 431, a body over ``max_body_bytes`` 413 (at once when its
  ``Content-Length`` says so); the connection is then closed.
- **No idle hoarding.** A connection that has not sent a complete request within
  ``header_timeout_s`` is closed (with a 408 if it had started one). That holds between
  keep-alive requests too: a connection waiting for its next request is idle.
- **A connection cap.** At most ``max_connections`` are open. A connection accepted beyond it
  evicts the oldest idle one, so a new request is still served; when none is idle (every
  connection is busy answering) the new one gets a 503 and is closed.
- **Out of descriptors.** When ``accept`` fails with EMFILE/ENFILE/ENOBUFS/ENOMEM the server
  evicts the oldest idle connection, or waits briefly, counts it and logs one warning per
  ``10 s`` without a traceback — the pending client is accepted once a descriptor is free.
- **Descriptors kept for others.** With ``reserve_descriptors``, the soft ``RLIMIT_NOFILE`` is
  raised to the hard limit and the cap lowered, if needed, to leave that many descriptors for
  the rest of the process, so readers can never take the ones live capture needs.

Counters are in :meth:`HTTPServer.statistics`.
"""

from __future__ import annotations

import errno
import os
import resource
import socket as stdlib_socket
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import orjson
import structlog
import trio

from histdata.supervisor.changes import statistics_changed

__all__ = [
    "HTTPServer",
    "Handler",
    "Request",
    "Response",
    "ServerStatistics",
    "open_tcp_listener",
    "open_unix_listener",
    "serve_http",
]

_log = structlog.get_logger("histdata.httpserver")
_READ_SIZE = 65536
# accept() errors that mean "no descriptor (or kernel memory) for a new socket right now".
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_RETRY_S = 0.1
_WARN_EVERY_S = 10.0
# A refusal or timeout notice is a courtesy: never let a client that does not read hold it up.
_NOTICE_SEND_S = 1.0
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: 56\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    b'{"error": "too many connections, all busy; try again"}\r\n'
)
Body = bytes | AsyncIterator[bytes] | AbstractAsyncContextManager[AsyncIterable[bytes]]


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request. Header names are lower case; ``query`` keeps repeated keys."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Response:
    """A status, extra headers and a body (bytes, or streamed chunked: see the module docs)."""

    status: int
    headers: Sequence[tuple[str, str]] = ()
    body: Body = b""

    @classmethod
    def json(cls, status: int, value: Any, *, headers: Sequence[tuple[str, str]] = ()) -> Response:
        """A JSON response of ``value``."""
        return cls(status, (("content-type", "application/json"), *headers), orjson.dumps(value))


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class _Limits:
    max_line_bytes: int
    max_head_bytes: int
    max_body_bytes: int


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """Connections of one :class:`HTTPServer`, counted since it was created.

    ``max_connections`` is the cap in force (after ``reserve_descriptors``); ``evicted``
    counts idle connections closed to make room, ``timed_out`` those closed by
    ``header_timeout_s``, ``refused`` new ones answered 503 because all were busy,
    ``oversized`` requests answered 413/414/431 and ``accept_errors`` failed accepts for
    lack of descriptors.
    """

    max_connections: int
    open: int
    peak: int
    accepted: int
    evicted: int
    timed_out: int
    refused: int
    oversized: int
    accept_errors: int


class _Connection:
    """One accepted connection: its cancel scope, so the server can evict it."""

    __slots__ = ("scope",)

    def __init__(self) -> None:
        self.scope = trio.CancelScope()


class HTTPServer:
    """Serves ``handler`` with the limits the module docs describe.

    All sizes are in bytes, ``header_timeout_s`` in seconds. ``reserve_descriptors`` (0:
    leave the descriptor limit alone) is how many descriptors to keep free for the rest of
    the process when sizing the cap.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        max_connections: int = 512,
        header_timeout_s: float = 5.0,
        max_line_bytes: int = 8 * 1024,
        max_head_bytes: int = 16 * 1024,
        max_body_bytes: int = 1024 * 1024,
        reserve_descriptors: int = 0,
    ) -> None:
        self._handler = handler
        self._limits = _Limits(max_line_bytes, max_head_bytes, max_body_bytes)
        self._max_connections = max_connections
        self._header_timeout_s = header_timeout_s
        self._reserve = reserve_descriptors
        # Insertion-ordered: the first is the connection idle the longest.
        self._idle: dict[_Connection, None] = {}
        self._open = 0
        self._peak = 0
        self._accepted = 0
        self._evicted = 0
        self._timed_out = 0
        self._refused = 0
        self._oversized = 0
        self._accept_errors = 0
        self._last_warning = -_WARN_EVERY_S

    def statistics(self) -> ServerStatistics:
        """A snapshot of the connection counters."""
        return ServerStatistics(
            max_connections=self._max_connections,
            open=self._open,
            peak=self._peak,
            accepted=self._accepted,
            evicted=self._evicted,
            timed_out=self._timed_out,
            refused=self._refused,
            oversized=self._oversized,
            accept_errors=self._accept_errors,
        )

    async def serve(
        self,
        listeners: Sequence[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on ``listeners`` until cancelled; reports started once listening.

        Raises:
            OSError: ``accept`` failed for a reason other than lack of descriptors.
        """
        if self._reserve:
            self._max_connections = _reserve_descriptors(self._max_connections, self._reserve)
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept until cancelled, then close ``listener``."""
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _OUT_OF_DESCRIPTORS:
                        raise
                    self._accept_errors += 1
                    self._warn_out_of_descriptors(exc)
                    # An idle connection's descriptor is the quickest one to get back.
                    await trio.sleep(0 if self._evict_oldest_idle() else _ACCEPT_RETRY_S)
                    continue
                self._accepted += 1
                self._open += 1
                self._peak = max(self._peak, self._open)
                statistics_changed.notify()
                if self._open > self._max_connections and not self._evict_oldest_idle():
                    self._refused += 1
                    nursery.start_soon(self._refuse, stream)
                    continue
                nursery.start_soon(self._connection, stream)

    def _evict_oldest_idle(self) -> bool:
        if not self._idle:
            return False
        oldest = next(iter(self._idle))
        del self._idle[oldest]
        oldest.scope.cancel()
        self._evicted += 1
        return True

    def _warn_out_of_descriptors(self, exc: OSError) -> None:
        now = time.monotonic()
        if now - self._last_warning < _WARN_EVERY_S:
            return
        self._last_warning = now
        _log.warning(
            "out of file descriptors: accepting again once one is free",
            error=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
            accept_errors=self._accept_errors,
            open_connections=self._open,
        )

    async def _refuse(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(_NOTICE_SEND_S):
                await stream.send_all(_BUSY)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._open -= 1
            statistics_changed.notify()
            await trio.aclose_forcefully(stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        connection = _Connection()
        try:
            with connection.scope:
                await self._serve_connection(connection, stream)
        finally:
            self._idle.pop(connection, None)
            self._open -= 1
            statistics_changed.notify()
            await trio.aclose_forcefully(stream)

    async def _serve_connection(self, connection: _Connection, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._limits.max_head_bytes)
        try:
            while True:
                self._idle[connection] = None  # newest idle last
                request: Request | None = None
                error: tuple[int, str] | None = None
                with trio.move_on_after(self._header_timeout_s) as waiting:
                    try:
                        request = await _read_request(conn, stream, self._limits)
                    except h11.RemoteProtocolError as exc:
                        if exc.error_status_hint == 431:  # h11's own bound on a head
                            self._oversized += 1
                        error = (exc.error_status_hint, str(exc))
                    except _Oversized as exc:
                        self._oversized += 1
                        error = (exc.status, str(exc))
                # Answered outside the timeout, which bounds receiving, not the answer.
                if error is not None:
                    await _send_error(conn, stream, *error)
                    return
                if waiting.cancelled_caught:
                    self._timed_out += 1
                    if conn.their_state is not h11.IDLE or conn.trailing_data[0]:
                        await _send_error(
                            conn,
                            stream,
                            408,
                            f"request not complete within {self._header_timeout_s:g} s",
                        )
                    return
                if request is None:
                    return
                self._idle.pop(connection, None)
                response = await _call(self._handler, request)
                await _send_response(conn, stream, request, response)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            return  # the client went away; nothing to tell it
        except _BodyFailed:
            return  # logged where it happened; only this connection ends


async def serve_http(
    handler: Handler,
    listeners: Sequence[trio.SocketListener],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on ``listeners`` with the default limits until cancelled.

    Reports started once listening. See :class:`HTTPServer` to set limits or read counters.
    """
    await HTTPServer(handler).serve(listeners, task_status=task_status)


def _reserve_descriptors(max_connections: int, reserve: int) -> int:
    """Raise the soft descriptor limit to the hard one; return the cap that leaves ``reserve``.

    The cap is ``max_connections`` unless the limit minus ``reserve`` is lower; then that,
    with a warning (at least 1).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            _log.warning("cannot raise the file descriptor limit", soft=soft, error=str(exc))
    fits = max(1, soft - reserve)
    if fits < max_connections:
        _log.warning(
            "connection cap lowered to keep descriptors for live capture",
            max_connections=max_connections,
            cap=fits,
            descriptor_limit=soft,
            reserved=reserve,
        )
        return fits
    return max_connections


async def open_tcp_listener(host: str = "127.0.0.1", port: int = 0) -> trio.SocketListener:
    """Listen on ``host:port`` (port 0 picks a free one; read it from ``.socket.getsockname()``)."""
    [listener] = await trio.open_tcp_listeners(port, host=host)
    return listener


async def open_unix_listener(path: Path, *, mode: int = 0o660) -> trio.SocketListener:
    """Listen on a Unix socket at ``path`` with file mode ``mode``.

    A leftover socket file from a crashed run is replaced; a socket another process still
    listens on is not.

    Raises:
        OSError: ``path`` is in use by a live server (EADDRINUSE) or cannot be created.
    """
    await trio.Path(path.parent).mkdir(parents=True, exist_ok=True)
    if await trio.Path(path).exists():
        probe = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
        try:
            await probe.connect(str(path))
        except OSError:
            await trio.Path(path).unlink()  # nobody listens: a stale file from an earlier run
        else:
            raise OSError(errno.EADDRINUSE, f"another server is listening on {path}")
        finally:
            probe.close()
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    await sock.bind(str(path))
    # chmod before listen(): no client can connect while the mode is still the umask's.
    os.chmod(path, mode)
    sock.listen(128)
    return trio.SocketListener(sock)


class _Oversized(Exception):
    """The request line or body passed its bound; ``status`` is the HTTP answer (414, 413)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream, limits: _Limits) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_READ_SIZE)
            conn.receive_data(bytes(data))
            if conn.their_state is h11.IDLE:
                _check_head(conn.trailing_data[0], limits)
            continue
        return event


def _check_head(buffered: bytes, limits: _Limits) -> None:
    """Raise :class:`_Oversized` when the request head received so far is over its bounds.

    h11 bounds only a head that is still incomplete, so one that arrives whole in a single
    read is checked here, and a long request line is told apart from long headers.
    """
    line = limits.max_line_bytes
    if len(buffered) > line and b"\n" not in buffered[: line + 1]:
        raise _Oversized(414, f"request line longer than {line} bytes")
    end = buffered.find(b"\r\n\r\n")
    if (end < 0 and len(buffered) > limits.max_head_bytes) or end + 4 > limits.max_head_bytes:
        raise _Oversized(431, f"request head larger than {limits.max_head_bytes} bytes")


async def _read_request(
    conn: h11.Connection, stream: trio.abc.Stream, limits: _Limits
) -> Request | None:
    _check_head(conn.trailing_data[0], limits)  # a pipelined request may be there already
    event = await _next_event(conn, stream, limits)
    if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
        return None
    if not isinstance(event, h11.Request):
        return None
    target = urlsplit(event.target.decode("latin-1"))
    headers = {
        name.decode("latin-1").lower(): value.decode("latin-1") for name, value in event.headers
    }
    too_large = _Oversized(413, f"request body larger than {limits.max_body_bytes} bytes")
    declared = headers.get("content-length", "0")
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise too_large
    body = bytearray()
    while True:
        part = await _next_event(conn, stream, limits)
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > limits.max_body_bytes:
                raise too_large
        elif isinstance(part, h11.EndOfMessage):
            break
        else:
            return None
    return Request(
        method=event.method.decode("ascii").upper(),
        path=target.path,
        query=parse_qs(target.query, keep_blank_values=True),
        headers=headers,
        body=bytes(body),
    )


async def _call(handler: Handler, request: Request) -> Response:
    try:
        return await handler(request)
    except Exception as exc:
        _log.exception("http handler failed", path=request.path, error=str(exc))
        return Response.json(500, {"error": f"internal error: {type(exc).__name__}"})


async def _send_response(
    conn: h11.Connection, stream: trio.abc.Stream, request: Request, response: Response
) -> None:
    headers = [(name.encode(), value.encode()) for name, value in response.headers]
    body = response.body
    if isinstance(body, bytes):
        headers.append((b"content-length", str(len(body)).encode()))
        await stream.send_all(conn.send(h11.Response(status_code=response.status, headers=headers)))
        if body and request.method != "HEAD":
            await stream.send_all(conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        return
    headers.append((b"transfer-encoding", b"chunked"))
    head = conn.send(h11.Response(status_code=response.status, headers=headers))
    if isinstance(body, AbstractAsyncContextManager):
        await stream.send_all(head)
        try:
            async with body as chunks:
                await _send_chunks(conn, stream, request, aiter(chunks))
        except (_BodyFailed, trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception as exc:  # raised while the body's own tasks were wound up
            _log.exception("http response body failed", path=request.path, error=str(exc))
            raise _BodyFailed from exc
    else:
        try:
            await stream.send_all(head)
            await _send_chunks(conn, stream, request, body)
        finally:
            # Close the body even when it never started or the client went away, so its own
            # cleanup (a database cursor, a hub subscription) runs now rather than at GC.
            close = getattr(body, "aclose", None)
            if close is not None:
                await close()
    await stream.send_all(conn.send(h11.EndOfMessage()))


async def _send_chunks(
    conn: h11.Connection, stream: trio.abc.Stream, request: Request, chunks: AsyncIterator[bytes]
) -> None:
    while True:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except Exception as exc:
            # Headers are out, so no error status can be sent: end the connection without
            # the final chunk, which every HTTP client reports as a truncated response.
            _log.exception("http response body failed", path=request.path, error=str(exc))
            raise _BodyFailed from exc
        if chunk:
            await stream.send_all(conn.send(h11.Data(data=chunk)))


class _BodyFailed(Exception):
    """A streamed response body raised after its headers were sent."""


async def _send_error(
    conn: h11.Connection, stream: trio.abc.Stream, status: int, detail: str
) -> None:
    """Answer ``status`` with ``{"error": detail}`` before the connection is closed.

    The client may still be sending (a body over the bound): what it sends is read and
    discarded for a moment, because closing a socket with unread input resets the
    connection, and the client could lose the answer. Bounded in time, so a client that
    neither reads nor stops sending cannot hold the connection.
    """
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = orjson.dumps({"error": detail})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    with trio.move_on_after(_NOTICE_SEND_S):
        try:
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
            await stream.send_all(conn.send(h11.Data(data=body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            if isinstance(stream, trio.SocketStream):
                await stream.send_eof()
            while await stream.receive_some(_READ_SIZE):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass
