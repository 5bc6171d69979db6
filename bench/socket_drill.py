"""Drill: a flood of idle connections on the query socket while the service records.

Runs the real programs: ``histdata sim`` at a modest rate, ``histdata run`` on a scratch
database, then ``--processes`` client processes that each open their share of
``--connections`` connections to the query socket and hold them idle for ``--hold-s``. The
drill measures ``/healthz`` (a fresh connection each time, the answer read to its end)
every half second during the flood and after it, and counts the trades stored meanwhile,
so it shows whether the API answers and capture goes on. It prints one JSON document.

    python -m bench.socket_drill [--dsn DSN] [--connections 20000] [--processes 4]
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.drill_common import (
    DEFAULT_DSN,
    HISTDATA,
    Proc,
    count_trades,
    scratch_database,
    service_env,
    start_sim,
    wait_until,
)

_HEALTHZ = b"GET /healthz HTTP/1.0\r\n\r\n"


def healthz(path: str, timeout_s: float = 10.0) -> tuple[float, int]:
    """Seconds to a complete ``/healthz`` answer on a new connection, and its status (0: none)."""
    began = time.monotonic()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)  # blocking, like curl: waits its turn in a full backlog
            sock.settimeout(timeout_s)
            sock.sendall(_HEALTHZ)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    except OSError:
        return time.monotonic() - began, 0
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    if status != 200:
        print(f"healthz {status}: {answer[:600]!r}", file=sys.stderr)
    return time.monotonic() - began, status


def client(path: str, connections: int, hold_s: float) -> dict[str, Any]:
    """Open ``connections`` idle connections, hold them ``hold_s``, count the server's closes."""
    began = time.monotonic()
    selector = selectors.DefaultSelector()
    opened = failed = closed = 0
    for _ in range(connections):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Blocking: a non-blocking connect fails at once (EAGAIN) while the listen
            # backlog is full, and a real client would wait for its turn.
            sock.connect(path)
        except OSError:
            failed += 1
            sock.close()
            continue
        opened += 1
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    connect_s = time.monotonic() - began
    deadline = time.monotonic() + hold_s
    while (left := deadline - time.monotonic()) > 0 and selector.get_map():
        for key, _ in selector.select(timeout=min(left, 1.0)):
            held = key.fileobj
            assert isinstance(held, socket.socket)
            try:
                data = held.recv(4096)
            except OSError:
                data = b""
            if not data:  # the server closed it: evicted or timed out
                closed += 1
                selector.unregister(held)
                held.close()
    still_open = len(selector.get_map())
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    return {
        "opened": opened,
        "failed": failed,
        "closed_by_server": closed,
        "open_at_end": still_open,
        "connect_s": round(connect_s, 2),
    }


def drill(opts: argparse.Namespace) -> dict[str, Any]:
    """The whole drill; returns its figures."""
    workdir = Path(tempfile.mkdtemp(prefix="socket-drill-"))
    with scratch_database(opts.dsn, "histdata_socket_drill") as url:
        sim = start_sim(workdir, "--rate", str(opts.rate), "--history-s", "5", "--rest-limit", "0")
        env = service_env(url, workdir, sim, ["BTC/USD", "ETH/USD"])
        service = Proc("run", [*HISTDATA, "run"], workdir / "run.log", env).start()
        path = env["HISTDATA_QUERY_SOCKET"]
        try:
            if not wait_until(lambda: healthz(path, 2.0)[1] == 200, 120):
                raise RuntimeError(f"service not healthy; see {service.log}")
            wait_until(lambda: count_trades(url) > 0, 60)
            # Settled: healthy on five checks a second apart (the first seconds after start
            # can still report unhealthy), so a 503 later is the flood's doing.
            streak = 0
            while streak < 5:
                streak = streak + 1 if healthz(path, 2.0)[1] == 200 else 0
                time.sleep(1.0)
            stored_before = count_trades(url)
            share = opts.connections // opts.processes
            clients = [
                subprocess.Popen(
                    [sys.executable, "-m", "bench.socket_drill", "--client", path, str(share)],
                    stdout=subprocess.PIPE,
                )
                for _ in range(opts.processes)
            ]
            began = time.monotonic()
            during: list[tuple[float, float, int]] = []
            while any(c.poll() is None for c in clients):
                seconds, status = healthz(path)
                during.append((round(time.monotonic() - began, 1), seconds, status))
                time.sleep(0.5)
            reports = [json.loads(c.communicate()[0]) for c in clients]
            flood_s = time.monotonic() - began
            stored_after = count_trades(url)
            after = [healthz(path) for _ in range(10)]
            service_log = service.log.read_text(errors="replace")
        finally:
            service.stop()
            sim.proc.stop()
    latencies = [s for _, s, _ in during]
    return {
        "connections": opts.connections,
        "processes": opts.processes,
        "hold_s": opts.hold_s,
        "clients": reports,
        "opened": sum(r["opened"] for r in reports),
        "closed_by_server": sum(r["closed_by_server"] for r in reports),
        "flood_s": round(flood_s, 1),
        "healthz_during": {
            "samples": len(during),
            "answered_200": sum(1 for *_, status in during if status == 200),
            "p50_s": round(statistics.median(latencies), 4) if latencies else None,
            "max_s": round(max(latencies), 4) if latencies else None,
            "statuses": sorted({status for *_, status in during}),
            "timeline": during,
        },
        "healthz_after": {
            "answered_200": sum(1 for _, status in after if status == 200),
            "max_s": round(max(s for s, _ in after), 4),
        },
        "trades_stored_during_flood": stored_after - stored_before,
        "tracebacks_in_service_log": service_log.count("Traceback"),
        "descriptor_warnings_in_service_log": service_log.count("out of file descriptors"),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the drill (or, with ``--client``, one client process of it)."""
    parser = argparse.ArgumentParser(prog="python -m bench.socket_drill", description=__doc__)
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="admin DSN of a PostgreSQL")
    parser.add_argument("--connections", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--hold-s", type=float, default=15.0, help="how long clients hold")
    parser.add_argument("--rate", type=int, default=200, help="simulated trades/s per symbol")
    parser.add_argument("--client", nargs=2, metavar=("SOCKET", "N"), help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.client:
        path, n = opts.client
        print(json.dumps(client(path, int(n), opts.hold_s)))
        return 0
    print(json.dumps(drill(opts), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
