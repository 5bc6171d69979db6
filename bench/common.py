"""What the benchmarks share: the result line, the machine, scratch databases, a simulator process.

Every bench module runs on its own (``python -m bench.NAME --help``) and, with ``--json``,
prints its :class:`Result` as ONE JSON line, the last line of stdout (progress goes to
stderr). ``python -m bench`` runs them and writes the results into docs/benchmarks.md.

The JSON line (what any bench, including ``bench/import_bench.py``, must print)::

    {"name": "live",                      # the docs block <!-- bench:live --> to its end
     "title": "Live ingest",
     "command": ".venv/bin/python -m bench.live_bench …",   # reproduces the figures
     "columns": ["rate asked", …],
     "rows": [["2,000", …], …],           # cells already formatted for the table
     "notes": ["…"],                      # one bullet each, under the table
     "summary": {"metric": "value"},      # headline figures for the table at the top
     "machine": "AMD EPYC, 2 cores, …",   # optional: bench.common.machine(dsn)
     "date": "2026-11-24"}                # optional: UTC date of the run

Running ``python -m bench.common sim …`` serves a Kraken simulator in its own process (the
service and the simulator must not share a GIL, or the figures measure both at once); see
:class:`SimProcess`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo

from histdata.storage.migrations import timescale_available

__all__ = [
    "Result",
    "SimProcess",
    "add_common_arguments",
    "emit",
    "machine",
    "markdown_table",
    "say",
    "scratch_database",
]


@dataclass(frozen=True, slots=True)
class Result:
    """One benchmark's figures, ready for a Markdown table; see the module docstring."""

    name: str
    title: str
    command: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    summary: dict[str, str] = field(default_factory=dict)
    machine: str = ""
    date: str = ""

    def to_json(self) -> str:
        """The single-line JSON form ``python -m bench`` reads."""
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Result:
        """Parse the line :meth:`to_json` writes.

        Raises:
            ValueError: not JSON, or a required key is missing.
        """
        data = json.loads(line)
        try:
            return cls(
                name=str(data["name"]),
                title=str(data["title"]),
                command=str(data["command"]),
                columns=[str(c) for c in data["columns"]],
                rows=[[str(cell) for cell in row] for row in data["rows"]],
                notes=[str(n) for n in data.get("notes", [])],
                summary={str(k): str(v) for k, v in data.get("summary", {}).items()},
                machine=str(data.get("machine", "")),
                date=str(data.get("date", "")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a bench result line: {exc}") from exc


def markdown_table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], *, labels: int = 1
) -> str:
    """A Markdown table; the first ``labels`` columns left-aligned, the figures right-aligned."""
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join(["---"] * labels + ["---:"] * (len(columns) - labels)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def emit(result: Result, *, as_json: bool) -> None:
    """Print ``result``: the JSON line, or a human-readable table."""
    if as_json:
        print(result.to_json(), flush=True)
        return
    print(f"\n{result.title}\n\n{markdown_table(result.columns, result.rows)}\n")
    if result.machine:
        print(f"- Machine: {result.machine}. Date {result.date or today()}.")
    for note in result.notes:
        print(f"- {note}")
    print(f"\nreproduce: {result.command}")


def say(message: str) -> None:
    """Progress for the person watching: stderr, so stdout stays the result."""
    print(message, file=sys.stderr, flush=True)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dsn``, ``--json`` and ``--quick``, the flags every bench takes."""
    parser.add_argument(
        "--dsn",
        default=os.environ.get("HISTDATA_TEST_DSN", ""),
        help="admin DSN allowed to create databases (default $HISTDATA_TEST_DSN)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON result line")
    parser.add_argument("--quick", action="store_true", help="short run to check the harness")


def machine(dsn: str) -> str:
    """CPU model, cores, memory, PostgreSQL version and TimescaleDB or plain, one line."""
    cpu = platform.processor() or "unknown CPU"
    memory = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.0f} GiB"
                break
    except OSError:
        pass
    with psycopg.connect(dsn, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        timescale = conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone()
        preloaded = timescale_available(conn)
    server = f"PostgreSQL {version[0].split()[0] if version else '?'}"
    if preloaded and timescale:
        flavour = f"TimescaleDB {timescale[0]} preloaded (hypertables)"
    elif timescale:
        flavour = f"plain tables (TimescaleDB {timescale[0]} installed, not preloaded)"
    else:
        flavour = "plain tables (no TimescaleDB)"
    return f"{cpu}, {os.cpu_count()} cores, {memory} RAM; {server}, {flavour}"


def today() -> str:
    """The UTC date, for the docs."""
    return datetime.now(UTC).strftime("%Y-%m-%d")


@contextmanager
def scratch_database(admin_dsn: str, name: str) -> Iterator[str]:
    """Create database ``name`` afresh (dropping a leftover), yield its DSN, drop it after.

    Raises:
        psycopg.Error: the admin DSN cannot connect or create databases.
    """

    def drop() -> None:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())

    drop()
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    finally:
        drop()


class SimProcess:
    """A Kraken simulator in a child process, driven by one-line commands over its stdin.

    It starts with trading paused (no trades exist), so the ground truth of a run is exactly
    the trade ids 1..N made between :meth:`resume` and :meth:`pause`.

    Raises (from the constructor):
        RuntimeError: the child did not start.
    """

    def __init__(
        self,
        symbols: Sequence[str],
        *,
        rate_per_symbol: float,
        history_s: float = 0.0,
        rest_limit: float = 0.0,
        rest_burst: int = 20,
        paused: bool = True,
        pairs: int = 0,
    ) -> None:
        command = [
            sys.executable,
            "-m",
            "bench.common",
            "sim",
            "--symbols",
            ",".join(symbols),
            "--rate",
            str(rate_per_symbol),
            "--history-s",
            str(history_s),
            "--rest-limit",
            str(rest_limit),
            "--rest-burst",
            str(rest_burst),
            "--pairs",
            str(pairs),
        ]
        if paused:
            command.append("--paused")
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        hello = self._reply()
        self.rest_url: str = hello["rest_url"]
        self.ws_url: str = hello["ws_url"]

    def _reply(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"simulator process exited ({self.process.poll()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ask(self, command: str) -> dict[str, Any]:
        """Send one command (``resume``, ``pause``, ``stats``, ``subscribed N``) and wait."""
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._reply()

    def resume(self) -> dict[str, Any]:
        """Start making trades now."""
        return self.ask("resume")

    def pause(self) -> dict[str, Any]:
        """Stop making trades; returns :meth:`stats` at the moment of the pause."""
        return self.ask("pause")

    def stats(self) -> dict[str, Any]:
        """Trades made per symbol, first trade time per symbol, REST and WebSocket counters."""
        return self.ask("stats")

    def wait_subscribed(self, symbols: int, timeout_s: float = 60.0) -> None:
        """Block until one WebSocket client holds trade subscriptions for ``symbols`` pairs.

        Raises:
            TimeoutError: no client got there within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ask(f"subscribed {symbols}")["ok"]:
                return
            time.sleep(0.1)
        raise TimeoutError(f"no client subscribed to {symbols} pairs within {timeout_s} s")

    def close(self) -> None:
        """End the child (EOF on its stdin) and wait for it."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------- the child's side


def _sim_stats(sim: Any) -> dict[str, Any]:
    stats = sim.statistics()
    first = {
        symbol: book.trades[0].time_ns if book.trades else None
        for symbol, book in sim.market.symbols.items()
    }
    return {
        "trades": stats.trades,
        "first_ns": first,
        "time_ns": time.time_ns(),
        "rest": asdict(stats.rest),
        "ws": asdict(stats.ws),
    }


def _subscribed(sim: Any, symbols: int) -> bool:
    # The service subscribes both channels (trade and ohlc) for every symbol.
    return bool(sim.statistics().ws.subscriptions >= 2 * symbols)


async def _serve_sim(args: argparse.Namespace) -> None:
    import trio

    from histdata.sim import SimConfig, open_simulator

    config = SimConfig(
        seed=1,
        symbols=tuple(args.symbols.split(",")),
        trade_rate_per_s=args.rate,
        history_s=args.history_s,
        rest_rate_per_s=args.rest_limit or None,
        rest_burst=args.rest_burst,
        pairs=args.pairs,
        own_process=True,
    )
    async with open_simulator(config) as sim:
        if args.paused:
            sim.pause_trading()
        print(json.dumps({"rest_url": sim.rest_url, "ws_url": sim.ws_url}), flush=True)
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line:
                return
            command, *rest = line.split()
            reply: dict[str, Any]
            if command == "resume":
                sim.resume_trading()
                reply = {"ok": True, "time_ns": time.time_ns()}
            elif command == "pause":
                sim.pause_trading()
                reply = _sim_stats(sim)
            elif command == "stats":
                reply = _sim_stats(sim)
            elif command == "subscribed":
                reply = {"ok": _subscribed(sim, int(rest[0]))}
            else:
                reply = {"error": f"unknown command {command!r}"}
            print(json.dumps(reply), flush=True)


def _main() -> None:
    parser = argparse.ArgumentParser(description="bench helpers")
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser("sim", help="a simulator driven over stdin (see SimProcess)")
    sim.add_argument("--symbols", default="BTC/USD")
    sim.add_argument("--rate", type=float, default=5.0, help="trades/s per symbol")
    sim.add_argument("--history-s", type=float, default=0.0)
    sim.add_argument("--rest-limit", type=float, default=0.0, help="requests/s, 0 for none")
    sim.add_argument("--rest-burst", type=int, default=20)
    sim.add_argument("--paused", action="store_true", help="start with trading paused")
    sim.add_argument("--pairs", type=int, default=0, help="generated pairs beside --symbols")
    args = parser.parse_args()
    import trio

    from histdata.logs import configure_logging

    configure_logging("warning")
    trio.run(_serve_sim, args)


if __name__ == "__main__":
    _main()
