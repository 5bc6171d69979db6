"""The HTTP/1.1 server on real sockets: bodies, streaming, errors, Unix socket mode."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from histdata.httpserver import Request, Response, open_unix_listener, serve_http


async def handler(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    if request.path == "/stream":

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"line {i}\n".encode()

        return Response(200, (("content-type", "text/plain"),), chunks())
    if request.path == "/breaks":

        async def failing() -> AsyncIterator[bytes]:
            yield b"first\n"
            raise RuntimeError("database went away mid-body")

        return Response(200, (("content-type", "text/plain"),), failing())
    return Response.json(200, {"path": request.path, "query": request.query})


@pytest.fixture
async def socket_path(tmp_path: Path, nursery: trio.Nursery) -> Path:
    path = tmp_path / "api.sock"
    listener = await open_unix_listener(path)
    await nursery.start(serve_http, handler, [listener])
    return path


def client(path: Path) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=str(path)), base_url="http://localhost"
    )


class TestServe:
    async def test_json_query_and_keep_alive(self, socket_path: Path) -> None:
        """Two requests on one connection get their own answers, with repeated keys kept."""
        async with client(socket_path) as http:
            first = await http.get("/a", params=[("x", "1"), ("x", "2")])
            second = await http.get("/b")
        assert first.json() == {"path": "/a", "query": {"x": ["1", "2"]}}
        assert second.json()["path"] == "/b"

    async def test_streamed_body_arrives_whole(self, socket_path: Path) -> None:
        """An async-iterator body is sent chunked and arrives complete."""
        async with client(socket_path) as http:
            response = await http.get("/stream")
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.text == "line 0\nline 1\nline 2\n"

    async def test_handler_error_is_a_500_and_the_server_lives(self, socket_path: Path) -> None:
        """A handler exception becomes a JSON 500 and later requests are still served."""
        async with client(socket_path) as http:
            failed = await http.get("/boom")
            after = await http.get("/ok")
        assert failed.status_code == 500
        assert "RuntimeError" in failed.json()["error"]
        assert after.status_code == 200

    async def test_body_failure_truncates_only_that_response(self, socket_path: Path) -> None:
        """A body that raises after its headers ends that response visibly; others go on."""
        async with client(socket_path) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get("/breaks")
        async with client(socket_path) as http:
            after = await http.get("/ok")
        assert after.status_code == 200

    async def test_malformed_http_gets_400(self, socket_path: Path) -> None:
        """Garbage instead of a request line is answered 400, not a crash."""
        stream = await trio.open_unix_socket(str(socket_path))
        await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
        reply = await stream.receive_some(4096)
        await stream.aclose()
        assert reply.startswith(b"HTTP/1.1 400")


class TestUnixListener:
    async def test_socket_mode_is_0660(self, socket_path: Path) -> None:
        """The socket file is created with mode 0660."""
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o660

    async def test_stale_socket_file_is_replaced(self, tmp_path: Path) -> None:
        """A socket file nobody listens on (a crashed run) is replaced."""
        path = tmp_path / "stale.sock"
        first = await open_unix_listener(path)
        await first.aclose()
        second = await open_unix_listener(path)
        await second.aclose()

    async def test_live_socket_is_not_stolen(self, socket_path: Path) -> None:
        """Starting a second server on a socket that is in use fails instead of hijacking it."""
        with pytest.raises(OSError, match="another server"):
            await open_unix_listener(socket_path)
