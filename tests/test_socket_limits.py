"""The HTTP server under hostile clients on real Unix sockets: caps, timeouts, sizes, EMFILE."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from waiting import until  # type: ignore[import-not-found]

from histdata.actors.hub import LiveHub
from histdata.actors.query import QueryApp
from histdata.httpserver import HTTPServer, Request, Response, open_unix_listener
from histdata.storage import Storage
from histdata.symbols import SymbolRegistry

GET = b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n"


class Gate:
    """A handler whose ``/slow`` requests wait until the test opens the gate."""

    def __init__(self) -> None:
        self.open = trio.Event()
        self.waiting = 0

    async def handle(self, request: Request) -> Response:
        if request.path == "/slow":
            self.waiting += 1
            await self.open.wait()
        return Response.json(200, {"path": request.path})


async def start(
    tmp_path: Path, nursery: trio.Nursery, gate: Gate, **limits: float
) -> tuple[Path, HTTPServer]:
    path = tmp_path / "api.sock"
    server = HTTPServer(gate.handle, **limits)  # type: ignore[arg-type]
    await nursery.start(server.serve, [await open_unix_listener(path)])
    return path, server


class Clients:
    """Client connections of one test, all closed at its end."""

    def __init__(self) -> None:
        self.streams: list[trio.SocketStream] = []

    async def connect(self, path: Path) -> trio.SocketStream:
        stream = await trio.open_unix_socket(str(path))
        self.streams.append(stream)
        return stream


async def reply(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection (at most 5 s)."""
    data = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def settle(server: HTTPServer, open_connections: int) -> None:
    """Wait until the server has accepted (and counted) ``open_connections``."""
    await until(lambda: server.statistics().open == open_connections, timeout_s=5)


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate()
    yield gate
    gate.open.set()


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    made = Clients()
    yield made
    for stream in made.streams:
        await stream.aclose()


class TestConnectionCap:
    async def test_idle_connections_beyond_the_cap_are_evicted(
        self, tmp_path: Path, nursery: trio.Nursery, gate: Gate, clients: Clients
    ) -> None:
        """At the cap, a new connection evicts the oldest idle one and its request is answered."""
        path, server = await start(tmp_path, nursery, gate, max_connections=4)
        idle = []
        for _ in range(4):
            idle.append(await clients.connect(path))
            await settle(server, len(idle))
        fresh = await clients.connect(path)
        await fresh.send_all(GET.replace(b"1.1", b"1.0"))
        answer = await reply(fresh)
        assert answer.startswith(b"HTTP/1.1 200")
        assert await reply(idle[0]) == b""  # the oldest was closed
        stats = server.statistics()
        assert stats.evicted == 1
        assert stats.peak == 5
        with trio.move_on_after(0.2):  # the newer idle ones are still open
            assert await idle[1].receive_some(1) != b""

    async def test_all_busy_means_503_for_the_newcomer(
        self, tmp_path: Path, nursery: trio.Nursery, gate: Gate, clients: Clients
    ) -> None:
        """With every connection busy answering, a new one gets 503 and is closed."""
        path, server = await start(tmp_path, nursery, gate, max_connections=2)
        busy = []
        for _ in range(2):
            stream = await clients.connect(path)
            await stream.send_all(b"GET /slow HTTP/1.0\r\n\r\n")
            busy.append(stream)
            await settle(server, len(busy))
        await until(lambda: gate.waiting >= 2, timeout_s=5)
        newcomer = await clients.connect(path)
        answer = await reply(newcomer)
        assert answer.startswith(b"HTTP/1.1 503")
        assert b"too many connections" in answer
        assert server.statistics().refused == 1
        gate.open.set()
        for stream in busy:
            assert (await reply(stream)).startswith(b"HTTP/1.1 200")


class TestHeaderTimeout:
    async def test_half_a_request_line_is_closed_after_the_timeout(
        self, tmp_path: Path, nursery: trio.Nursery, gate: Gate, clients: Clients
    ) -> None:
        """A client that sends part of a request line gets a 408 and is closed once time is up."""
        path, server = await start(tmp_path, nursery, gate, header_timeout_s=0.3)
        stream = await clients.connect(path)
        await stream.send_all(b"GET /hel")
        began = trio.current_time()
        answer = await reply(stream)
        assert answer.startswith(b"HTTP/1.1 408")
        assert 0.25 <= trio.current_time() - began < 3
        assert server.statistics().timed_out == 1

    async def test_idle_keep_alive_connection_is_closed(
        self, tmp_path: Path, nursery: trio.Nursery, gate: Gate, clients: Clients
    ) -> None:
        """After an answered request, a connection that sends nothing more is closed silently."""
        path, server = await start(tmp_path, nursery, gate, header_timeout_s=0.3)
        stream = await clients.connect(path)
        await stream.send_all(GET)
        answer = await reply(stream)
        assert answer.startswith(b"HTTP/1.1 200")
        assert b"408" not in answer
        assert server.statistics().timed_out == 1
        assert server.statistics().open == 0

    async def test_a_slow_answer_is_not_a_timeout(
        self, tmp_path: Path, nursery: trio.Nursery, gate: Gate, clients: Clients
    ) -> None:
        """The timeout bounds receiving the request, not the time spent answering it."""
        path, _ = await start(tmp_path, nursery, gate, header_timeout_s=0.2)
        stream = await clients.connect(path)
        await stream.send_all(b"GET /slow HTTP/1.0\r\n\r\n")
        await trio.sleep(0.5)
        gate.open.set()
        assert (await reply(stream)).startswith(b"HTTP/1.1 200")


class TestOversized:
    @pytest.mark.parametrize(
        ("request_bytes", "status"),
        [
            (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nhost: x\r\n\r\n", b"414"),
            (b"GET / HTTP/1.1\r\n" + b"x-pad: " + b"b" * 20_000 + b"\r\n\r\n", b"431"),
            (
                b"GET / HTTP/1.1\r\n"
                + b"".join(b"x-%d: %s\r\n" % (i, b"c" * 100) for i in range(200))
                + b"\r\n",
                b"431",
            ),
            (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2000000\r\n\r\n", b"413"),
        ],
        ids=["long request line", "one huge header", "many headers", "declared body"],
    )
    async def test_oversized_requests_get_their_status(
        self,
        tmp_path: Path,
        nursery: trio.Nursery,
        gate: Gate,
        clients: Clients,
        request_bytes: bytes,
        status: bytes,
    ) -> None:
        """A request line, head or body over its bound is answered 414, 431 or 413 and closed."""
        path, server = await start(tmp_path, nursery, gate)
        stream = await clients.connect(path)
        await stream.send_all(request_bytes)
        answer = await reply(stream)
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]
        assert server.statistics().oversized == 1

    async def test_chunked_body_over_the_bound_is_413(
        self, tmp_path: Path, nursery: trio.Nursery, gate: Gate, clients: Clients
    ) -> None:
        """A chunked body without a declared size is cut off with 413 once it passes the bound."""
        path, _ = await start(tmp_path, nursery, gate, max_body_bytes=1000)
        stream = await clients.connect(path)
        await stream.send_all(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(3):
            await stream.send_all(b"200\r\n" + b"d" * 0x200 + b"\r\n")
        assert (await reply(stream)).startswith(b"HTTP/1.1 413")


class TestQuerySocket:
    async def test_query_app_applies_its_limits(
        self, tmp_path: Path, nursery: trio.Nursery, storage: Storage, clients: Clients
    ) -> None:
        """The query socket evicts and times out as configured, and its statistics say so."""
        app = QueryApp(
            storage,
            SymbolRegistry.shipped(),
            hub=LiveHub(),
            status=lambda: {"healthy": True},
            metrics=bytes,
            max_connections=2,
            header_timeout_s=0.5,
        )
        path = tmp_path / "q.sock"
        await nursery.start(app.serve, path)
        idle = [await clients.connect(path) for _ in range(2)]
        await until(lambda: app.statistics().open == 2, timeout_s=5)
        fresh = await clients.connect(path)
        await fresh.send_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert (await reply(fresh)).startswith(b"HTTP/1.1 200")
        assert await reply(idle[0]) == b""
        assert await reply(idle[1]) == b""  # timed out after 0.5 s
        stats = app.statistics()
        assert (stats.max_connections, stats.evicted, stats.timed_out) == (2, 1, 1)


# Runs in a child process with few descriptors: it exhausts them, so accept() fails with EMFILE
# while a client waits, then frees them when told to on stdin.
_EMFILE = """
import json, os, resource, sys
from dataclasses import asdict
from pathlib import Path
import trio
from histdata.httpserver import HTTPServer, Response, open_unix_listener
from histdata.logs import configure_logging

configure_logging("info", "console")
resource.setrlimit(resource.RLIMIT_NOFILE, (200, 300))

async def main():
    async def handle(request):
        return Response.json(200, asdict(server.statistics()))

    server = HTTPServer(handle, reserve_descriptors=256)
    listener = await open_unix_listener(Path(sys.argv[1]))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, [listener])
        hogs = []
        try:
            while True:
                hogs.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        print("exhausted", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        for fd in hogs:
            os.close(fd)
        await trio.to_thread.run_sync(sys.stdin.readline)
        nursery.cancel_scope.cancel()

trio.run(main)
"""


class Drill:
    """What the EMFILE child reported: the answer to the waiting client, and its logs."""

    def __init__(self, answered_while_exhausted: bool, answer: bytes, logs: str) -> None:
        self.answered_while_exhausted = answered_while_exhausted
        self.answer = answer
        self.logs = logs

    @property
    def statistics(self) -> dict[str, int]:
        body = self.answer.split(b"\r\n\r\n", 1)[1]
        stats: dict[str, int] = json.loads(body)
        return stats


@pytest.fixture(scope="module")
def emfile_drill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    path = tmp_path_factory.mktemp("emfile") / "api.sock"
    child = subprocess.Popen(
        [sys.executable, "-c", _EMFILE, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == b"exhausted\n"
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(5)
        client.connect(str(path))
        client.sendall(b"GET /stats HTTP/1.0\r\n\r\n")
        client.settimeout(1.5)  # some fifteen accept retries
        try:
            early = client.recv(1)
        except TimeoutError:
            early = b""
        child.stdin.write(b"free\n")
        child.stdin.flush()
        client.settimeout(5)
        answer = early
        while chunk := client.recv(65536):
            answer += chunk
        client.close()
        child.stdin.write(b"stop\n")
        child.stdin.flush()
        _, logs = child.communicate(timeout=10)
        yield Drill(bool(early), answer, logs.decode())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


class TestOutOfDescriptors:
    def test_serves_again_once_descriptors_free_up(self, emfile_drill: Drill) -> None:
        """A client that connects while accept fails with EMFILE is answered once fds are free."""
        assert not emfile_drill.answered_while_exhausted
        assert emfile_drill.answer.startswith(b"HTTP/1.1 200")
        assert emfile_drill.statistics["accept_errors"] >= 5

    def test_logs_one_warning_and_no_traceback(self, emfile_drill: Drill) -> None:
        """Repeated EMFILE is one rate-limited warning line, never a traceback per accept."""
        assert "Traceback" not in emfile_drill.logs
        assert emfile_drill.logs.count("out of file descriptors") == 1

    def test_cap_leaves_the_reserve(self, emfile_drill: Drill) -> None:
        """Under a hard limit of 300 with 256 reserved, the connection cap becomes 44."""
        assert emfile_drill.statistics["max_connections"] == 300 - 256
