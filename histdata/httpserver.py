"""A small HTTP/1.1 server on trio and h11, for the query socket and the simulator's REST API.

Handlers are ``async (Request) -> Response``. A response body is bytes (sent with a
``Content-Length``) or an async iterator of bytes (sent with chunked transfer encoding as it
is produced, so a year of candles never sits whole in memory). Connections are kept alive
between requests. Malformed HTTP gets a 400, a request head or body over the size bound a
413, and a handler that raises a 500 with a JSON body; the exception is logged, the
connection closed, and the server keeps serving everyone else.
"""

from __future__ import annotations

import errno
import os
import socket as stdlib_socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import orjson
import structlog
import trio

__all__ = [
    "Handler",
    "Request",
    "Response",
    "open_tcp_listener",
    "open_unix_listener",
    "serve_http",
]

_log = structlog.get_logger("histdata.httpserver")
_READ_SIZE = 65536
Body = bytes | AsyncIterator[bytes]


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
    """A status, extra headers and a body (bytes, or an async iterator streamed chunked)."""

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
    max_head_bytes: int
    max_body_bytes: int


async def serve_http(
    handler: Handler,
    listeners: Sequence[trio.SocketListener],
    *,
    max_head_bytes: int = 16 * 1024,
    max_body_bytes: int = 1024 * 1024,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on ``listeners`` until cancelled; reports started once listening."""
    limits = _Limits(max_head_bytes, max_body_bytes)
    async with trio.open_nursery() as nursery:
        serve = partial(_serve_connection, handler, limits)
        for listener in listeners:
            nursery.start_soon(partial(trio.serve_listeners, serve, [listener]))
        task_status.started()


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


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_READ_SIZE)
            conn.receive_data(bytes(data))
            continue
        return event


async def _serve_connection(handler: Handler, limits: _Limits, stream: trio.abc.Stream) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
    try:
        while True:
            try:
                request = await _read_request(conn, stream, limits)
            except h11.RemoteProtocolError as exc:
                await _send_error(conn, stream, exc.error_status_hint, str(exc))
                return
            except _TooLarge:
                await _send_error(conn, stream, 413, "request body too large")
                return
            if request is None:
                return
            response = await _call(handler, request)
            await _send_response(conn, stream, request, response)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        return  # the client went away; nothing to tell it
    except _BodyFailed:
        return  # logged where it happened; only this connection ends
    finally:
        await trio.aclose_forcefully(stream)


class _TooLarge(Exception):
    """The request body passed the configured bound."""


async def _read_request(
    conn: h11.Connection, stream: trio.abc.Stream, limits: _Limits
) -> Request | None:
    event = await _next_event(conn, stream)
    if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
        return None
    if not isinstance(event, h11.Request):
        return None
    target = urlsplit(event.target.decode("latin-1"))
    headers = {
        name.decode("latin-1").lower(): value.decode("latin-1") for name, value in event.headers
    }
    body = bytearray()
    while True:
        part = await _next_event(conn, stream)
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > limits.max_body_bytes:
                raise _TooLarge
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
    try:
        await stream.send_all(conn.send(h11.Response(status_code=response.status, headers=headers)))
        chunks = aiter(body)
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except Exception as exc:
                # Headers are out, so no error status can be sent: end the connection without
                # the final chunk, which every HTTP client reports as a truncated response.
                _log.exception("http response body failed", path=request.path, error=str(exc))
                raise _BodyFailed from exc
            if chunk:
                await stream.send_all(conn.send(h11.Data(data=chunk)))
    finally:
        # Close the body even when it never started or the client went away, so its own
        # cleanup (a database cursor, a hub subscription) runs now rather than at GC.
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()
    await stream.send_all(conn.send(h11.EndOfMessage()))


class _BodyFailed(Exception):
    """A streamed response body raised after its headers were sent."""


async def _send_error(
    conn: h11.Connection, stream: trio.abc.Stream, status: int, detail: str
) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = orjson.dumps({"error": detail})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    try:
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
        await stream.send_all(conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        pass
