"""The machinery the fault drills share: scratch databases, real processes, ground truth.

Everything here drives the real programs (``histdata sim``, ``histdata run``, ``histdata
import``, ``histdata backfill``) as child processes and reads the real database: the drills
measure what a user would see, not what a test double promises.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import httpx
import psutil  # type: ignore[import-untyped]  # no stubs installed
import psycopg
import psycopg.conninfo
from psycopg import sql

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
HISTDATA = (sys.executable, "-m", "histdata.cli")
NS_PER_S = 1_000_000_000


@dataclass
class DrillResult:
    """One drill's outcome, as the results table and docs/reliability.md show it."""

    name: str
    title: str
    commands: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    emitted: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    process_crashes: int = 0
    actor_restarts: int = 0
    peak_rss_mb: float = 0.0
    findings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""
    rest_repaired: int = 0  # stored rows with source 'r' (the gap filler's or a backfill's)
    before: str = ""  # the coverage check before any repair, in one line
    unreported: int = 0  # missing ids before repair that no `histdata gaps` range names
    load: str = ""  # load average at the start and the end of the drill

    @property
    def passed(self) -> bool:
        """Zero loss, zero duplicates, every early loss reported, no crash, no finding and no
        harness error."""
        return not (
            self.lost
            or self.duplicated
            or self.unreported
            or self.process_crashes
            or self.actor_restarts
            or self.findings
            or self.error
        )

    def step(self, text: str) -> None:
        """Record (and print) what the drill did, in order."""
        self.steps.append(text)
        print(f"  [{self.name}] {text}", flush=True)


# ----------------------------------------------------------------------------- database


@contextmanager
def scratch_database(admin_dsn: str, name: str) -> Iterator[str]:
    """A fresh empty database for one drill; dropped (with its sessions) afterwards."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def set_connections(admin_dsn: str, url: str, allow: bool) -> None:
    """Take a database offline (no new sessions, existing ones terminated) or back online.

    The same real outage as tests/test_flusher.py's ``Outage``: to the service it is a
    database server that refuses connections.
    """
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(str(name)),
                sql.SQL("true" if allow else "false"),
            )
        )
        if not allow:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )


def stored_trade_ids(url: str, symbol: str) -> list[int]:
    """Every stored trade id of ``symbol``, one entry per stored row (duplicates repeat)."""
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('trades') IS NOT NULL").fetchone()
        if not (exists and exists[0]):
            return []  # the program under test never got as far as migrating
        rows = conn.execute(
            "SELECT t.trade_id FROM trades t JOIN symbols s ON s.id = t.symbol_id"
            " WHERE s.symbol = %s AND t.trade_id IS NOT NULL",
            (symbol,),
        ).fetchall()
    return [row[0] for row in rows]


def count_trades(url: str) -> int:
    """Trades stored over all symbols (0 while the schema does not exist yet)."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM trades").fetchone()
    except psycopg.Error:
        return 0
    return int(row[0]) if row else 0


# ----------------------------------------------------------------------------- processes


class Proc:
    """One child process with its output in a log file; never touches other processes."""

    def __init__(
        self, name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.env = dict(env) if env is not None else dict(os.environ)
        self._log_file: IO[bytes] | None = None
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, *, stdout_pipe: bool = False) -> Proc:
        """Start the process (stderr, and stdout unless piped, go to the log)."""
        self._log_file = self.log.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=subprocess.PIPE if stdout_pipe else self._log_file,
            stderr=self._log_file,
            stdin=subprocess.DEVNULL,
        )
        return self

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.popen is not None
        return self.popen.pid

    def exit_code(self) -> int | None:
        """The exit status, or None while running."""
        assert self.popen is not None
        return self.popen.poll()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to this process only."""
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout_s: float) -> int | None:
        """Wait for the exit; None when it is still running after ``timeout_s``."""
        assert self.popen is not None
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit status."""
        self.signal(signal.SIGTERM)
        code = self.wait(timeout_s)
        if code is None:
            self.signal(signal.SIGKILL)
            code = self.wait(10.0)
        self.close()
        return code if code is not None else -9

    def close(self) -> None:
        """Close the log file (after the process exited)."""
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def tail(self, lines: int = 8) -> list[str]:
        """The last ``lines`` lines of the log, for findings."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        return [line[:400] for line in text.splitlines()[-lines:]]


class RssMonitor:
    """Samples the resident memory of tracked processes (and their children) in a thread."""

    def __init__(self, period_s: float = 0.25) -> None:
        self.period_s = period_s
        self.peak: Counter[str] = Counter()
        self._tracked: dict[str, list[psutil.Process]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def track(self, name: str, pid: int) -> None:
        """Add ``pid`` under ``name`` (several processes may share a name: the peak is per
        process, the largest one wins)."""
        with self._lock:
            self._tracked.setdefault(name, []).append(psutil.Process(pid))

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            with self._lock:
                tracked = {name: list(procs) for name, procs in self._tracked.items()}
            for name, procs in tracked.items():
                for proc in procs:
                    try:
                        rss = proc.memory_info().rss
                        rss += sum(c.memory_info().rss for c in proc.children(recursive=True))
                    except psutil.Error:
                        continue
                    self.peak[name] = max(self.peak[name], rss)

    def __enter__(self) -> RssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mb(self, name: str) -> float:
        """Peak RSS of ``name`` in MiB."""
        return self.peak[name] / (1 << 20)


# ----------------------------------------------------------------------------- simulator


@dataclass
class Truth:
    """The simulator's ground truth at a pause: every trade it made, per symbol, and its
    WebSocket counters (``slow_clients_dropped`` among them)."""

    trades: dict[str, list[tuple[int, int]]]  # symbol -> [(trade_id, time_ns)], id order
    ws: dict[str, Any]

    def last_id(self, symbol: str) -> int:
        """The newest trade id the simulator emitted for ``symbol``."""
        return self.trades[symbol][-1][0]

    def emitted(self) -> int:
        """Trades made over all symbols."""
        return sum(len(rows) for rows in self.trades.values())


@dataclass
class Sim:
    """A running simulator and its URLs; a drill simulator (:func:`start_sim`) can pause."""

    proc: Proc
    rest_url: str
    ws_url: str
    truth_dir: Path | None = None
    pauses: int = 0

    def pause(self, timeout_s: float = 60.0) -> Truth:
        """Stop the market (SIGUSR1) and read its ground truth, which stays fixed until
        :meth:`resume`; connections stay open, heartbeats keep flowing."""
        if self.truth_dir is None:
            raise RuntimeError("this simulator cannot pause")
        self.pauses += 1
        path = self.truth_dir / f"truth-{self.pauses}.json"
        self.proc.signal(signal.SIGUSR1)
        if not wait_until(path.exists, timeout_s, 0.1):
            raise RuntimeError(f"the simulator wrote no {path.name}; see {self.proc.log}")
        raw = json.loads(path.read_text())
        trades = {sym: [(int(i), int(t)) for i, t in rows] for sym, rows in raw["trades"].items()}
        return Truth(trades, raw["ws"])

    def resume(self) -> None:
        """Make trades again (SIGUSR2), from now on, without a burst for the paused time."""
        self.proc.signal(signal.SIGUSR2)


def start_sim(workdir: Path, *args: str) -> Sim:
    """Start a drill simulator: ``histdata sim``'s flags (``ARGS``), ports chosen by the
    kernel, and :meth:`Sim.pause` / :meth:`Sim.resume` for a fixed ground truth.

    It is the library's simulator (:func:`histdata.sim.open_simulator`) run by
    :func:`sim_main` below, because ``histdata sim`` itself cannot pause.
    """
    truth_dir = workdir / "truth"
    truth_dir.mkdir(exist_ok=True)
    proc = Proc(
        "sim",
        [
            *(sys.executable, "-m", "bench.drill_common", "sim", "--truth-dir", str(truth_dir)),
            *("--rest-port", "0", "--ws-port", "0", "--report-s", "3600", *args),
        ],
        workdir / "sim.log",
    ).start(stdout_pipe=True)
    assert proc.popen is not None
    assert proc.popen.stdout is not None
    first = proc.popen.stdout.readline().decode()
    words = first.split()
    if "REST" not in words or "WebSocket" not in words:
        proc.stop()
        raise RuntimeError(f"the simulator did not start: {first!r}; see {proc.log}")
    rest_url = words[words.index("REST") + 1]
    ws_url = words[words.index("WebSocket") + 1]
    # Keep draining stdout so the simulator never blocks on a full pipe.
    stdout = proc.popen.stdout
    threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()
    return Sim(proc, rest_url, ws_url, truth_dir)


def sim_main(argv: Sequence[str]) -> int:
    """``python -m bench.drill_common sim --truth-dir DIR [histdata sim flags]``.

    ``histdata sim`` with two signals: SIGUSR1 pauses the market and writes
    ``DIR/truth-N.json`` (N counts the pauses), SIGUSR2 resumes it.
    """
    import argparse
    import dataclasses
    import random

    import trio

    from histdata.commands.sim import apply_faults, config_from, configure
    from histdata.logs import configure_logging
    from histdata.sim import CLOSE_CODES, Simulator, open_simulator

    parser = argparse.ArgumentParser(prog="python -m bench.drill_common sim")
    parser.add_argument("--truth-dir", type=Path, required=True)
    configure(parser)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    config = replace(config_from(args), own_process=True)

    def dump(sim: Simulator, n: int) -> None:
        stats = sim.statistics()
        body = {
            "trades": {
                symbol: [[t.trade_id, t.time_ns] for t in sim.market.trades(symbol)]
                for symbol in config.symbols
            },
            "ws": dataclasses.asdict(stats.ws),
        }
        tmp = args.truth_dir / f".truth-{n}.json"
        tmp.write_text(json.dumps(body))
        tmp.rename(args.truth_dir / f"truth-{n}.json")

    async def close_periodically(sim: Simulator) -> None:
        rng = random.Random(args.seed)
        while True:
            await trio.sleep(args.close_every_s)
            sim.faults.close_ws(rng.choice(CLOSE_CODES))

    async def serve() -> None:
        async with open_simulator(config) as sim:
            apply_faults(sim, args)
            print(f"Kraken simulator: REST {sim.rest_url}  WebSocket {sim.ws_url}", flush=True)
            pauses = 0
            async with trio.open_nursery() as nursery:
                if args.close_every_s > 0:
                    nursery.start_soon(close_periodically, sim)
                with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGUSR2) as signals:
                    async for signum in signals:
                        if signum == signal.SIGUSR1:
                            sim.pause_trading()
                            pauses += 1
                            dump(sim, pauses)
                        else:
                            sim.resume_trading()

    trio.run(serve)
    return 0


def sim_truth(rest_url: str, symbol: str, *, since_ns: int = 0) -> list[tuple[int, int]]:
    """Every trade the simulator has made for ``symbol`` since ``since_ns``: (trade_id, time_ns).

    Pages through REST ``Trades`` exactly as a client does, waiting out throttles.
    """
    out: dict[int, int] = {}
    since = str(since_ns)
    with httpx.Client(base_url=rest_url, headers={"user-agent": "histdata-drills"}) as client:
        while True:
            reply = client.get("/0/public/Trades", params={"pair": symbol, "since": since})
            body = json.loads(reply.text, parse_float=Decimal)
            if body.get("error"):
                time.sleep(1.0)  # throttled: Kraken's answer is to wait
                continue
            result = body["result"]
            rows = next(v for k, v in result.items() if k != "last")
            for row in rows:
                out[int(row[6])] = int(Decimal(row[2]) * NS_PER_S)
            last = result.get("last")
            if not rows or last is None or last == since:
                break
            since = str(last)
    return sorted(out.items())


# ----------------------------------------------------------------------------- service


def service_env(
    database_url: str, workdir: Path, sim: Sim | None, symbols: Sequence[str], **extra: str
) -> dict[str, str]:
    """The environment for ``histdata run`` (and its subcommands) in ``workdir``."""
    env = {
        **os.environ,
        "HISTDATA_CONFIG": "/dev/null",
        "HISTDATA_DATABASE_URL": database_url,
        "HISTDATA_SERVICE_DATA_DIR": str(workdir / "var"),
        "HISTDATA_SERVICE_LOG_FORMAT": "json",
        "HISTDATA_QUERY_SOCKET": str(workdir / "var" / "q.sock"),
        "HISTDATA_KRAKEN_SYMBOLS": ",".join(symbols),
    }
    if sim is not None:
        env["HISTDATA_KRAKEN_WS_URL"] = sim.ws_url
        env["HISTDATA_KRAKEN_REST_URL"] = sim.rest_url
    env.update({f"HISTDATA_{key.upper()}": value for key, value in extra.items()})
    return env


def status(env: Mapping[str, str]) -> dict[str, Any] | None:
    """``histdata status --json`` of the running service; None when it does not answer."""
    done = subprocess.run(
        [*HISTDATA, "status", "--json"],
        env=dict(env),
        capture_output=True,
        timeout=60,
        check=False,
    )
    if done.returncode not in (0, 3):
        return None
    try:
        snapshot: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        return None
    return snapshot


def actor_restarts(snapshot: Mapping[str, Any]) -> dict[str, int]:
    """Restarts per actor (path ``live/feed``) over the whole supervision tree, nonzero only."""
    found: dict[str, int] = {}

    def walk(tree: Mapping[str, Any], prefix: str) -> None:
        for child in tree["children"]:
            name = prefix + child["name"]
            if child["restarts"] or child["crashes"]:
                found[name] = max(child["restarts"], child["crashes"])
            if child.get("supervisor"):
                walk(child["supervisor"], name + "/")

    walk(snapshot["supervisor"], "")
    return found


def channel(snapshot: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One channel's statistics from a status snapshot."""
    for ch in snapshot["channels"]:
        if ch["name"] == name:
            return dict(ch)
    raise KeyError(name)


# ----------------------------------------------------------------------------- comparison


@dataclass
class Comparison:
    """Stored trade ids of one symbol against the simulator's, within the stored id range."""

    symbol: str
    low: int
    high: int
    emitted: int
    stored: int
    missing: list[int]
    duplicated: dict[int, int]

    def describe(self) -> str:
        """One line for the notes."""
        text = (
            f"{self.symbol}: ids {self.low}..{self.high}: emitted {self.emitted}, stored rows "
            f"{self.stored}, lost {len(self.missing)}, duplicated {sum(self.duplicated.values())}"
        )
        if self.missing:
            text += f"; missing {id_ranges(self.missing)}"
        return text


def compare_ids(symbol: str, truth: Sequence[int], stored: Sequence[int]) -> Comparison:
    """Lost and duplicated ids within ``[min(stored), max(stored)]`` (end gaps are not loss)."""
    counts = Counter(stored)
    duplicated = {i: n - 1 for i, n in counts.items() if n > 1}
    if not counts:
        return Comparison(symbol, 0, 0, len(truth), 0, list(truth), {})
    low, high = min(counts), max(counts)
    window = [i for i in truth if low <= i <= high]
    missing = [i for i in window if i not in counts]
    return Comparison(symbol, low, high, len(window), len(stored), missing, duplicated)


def stored_rows(url: str, symbol: str) -> list[tuple[int, str]]:
    """Every stored ``(trade_id, source)`` of ``symbol`` with an id, one entry per row;
    ``source`` is ``w`` (live WebSocket), ``r`` (REST) or ``c`` (CSV)."""
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('trades') IS NOT NULL").fetchone()
        if not (exists and exists[0]):
            return []
        rows = conn.execute(
            "SELECT t.trade_id, t.source FROM trades t JOIN symbols s ON s.id = t.symbol_id"
            " WHERE s.symbol = %s AND t.trade_id IS NOT NULL",
            (symbol,),
        ).fetchall()
    return [(int(i), str(src)) for i, src in rows]


@dataclass
class Reported:
    """What ``histdata gaps SYMBOL --stream trades`` printed for a range: coverage holes
    (times, ns) and trade-id holes (ids), and the lines themselves."""

    times: list[tuple[int, int]] = field(default_factory=list)
    ids: list[tuple[int, int]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def explains(self, trade_id: int, time_ns: int) -> bool:
        """Whether a missing trade lies inside a reported range (times to the microsecond
        ``gaps`` prints, both ends included)."""
        if any(a <= trade_id <= b for a, b in self.ids):
            return True
        return any(a - 1000 <= time_ns <= b + 1000 for a, b in self.times)

    def hole_seconds(self) -> float:
        """The length of the coverage holes (overlaps counted twice; a rough honesty figure:
        a report that calls everything a hole explains every loss)."""
        return sum(b - a for a, b in self.times) / NS_PER_S


_ID_HOLE = re.compile(r"trade ids (\d+)(?:\.\.(\d+))? missing \(\d+\) between")
_TIME_HOLE = re.compile(r"^  (\d{4}-\S+) \.\. (\d{4}-\S+)  \S")


def _iso_ns(text: str) -> int:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (calendar.timegm(value.utctimetuple()) * 1_000_000 + value.microsecond) * 1000


def _iso(time_ns: int) -> str:
    seconds, ns = divmod(time_ns, NS_PER_S)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ns // 1000:06d}Z"


def gaps_report(env: Mapping[str, str], symbol: str, start_ns: int, end_ns: int) -> Reported:
    """Run ``histdata gaps SYMBOL --stream trades --start … --end …`` and parse it.

    ``gaps`` prints at most 50 trade-id holes per call; a longer list is read by halving the
    range until every part fits.
    """
    window = ("--start", _iso(start_ns), "--end", _iso(end_ns))
    done = subprocess.run(
        [*HISTDATA, "gaps", symbol, "--stream", "trades", *window],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode not in (0, 1, 3) or "Traceback" in done.stderr:
        raise RuntimeError(f"histdata gaps failed ({done.returncode}): {done.stderr[-800:]}")
    text = done.stdout
    if "more trade-id holes" in text and end_ns - start_ns > 2 * NS_PER_S:
        mid = (start_ns + end_ns) // 2
        low, high = gaps_report(env, symbol, start_ns, mid), gaps_report(env, symbol, mid, end_ns)
        return Reported(low.times + high.times, low.ids + high.ids, low.lines + high.lines)
    out = Reported()
    for line in text.splitlines():
        if m := _ID_HOLE.search(line):
            first = int(m.group(1))
            out.ids.append((first, int(m.group(2) or first)))
            out.lines.append(line.strip())
        elif m := _TIME_HOLE.match(line):
            out.times.append((_iso_ns(m.group(1)), _iso_ns(m.group(2))))
            out.lines.append(line.strip())
    return out


@dataclass
class Coverage:
    """One symbol's stored trades against the simulator's truth up to its LAST emitted id."""

    symbol: str
    first: int  # the lowest stored id: recording began there
    last: int  # the simulator's newest id at the pause
    missing: list[tuple[int, int]]  # (id, time_ns) in first..last, not stored
    duplicated: int  # stored rows beyond one per id
    sources: Counter[str]  # stored rows in first..last per source
    unreported: list[tuple[int, int]] = field(default_factory=list)

    def describe(self) -> str:
        """One line for the notes."""
        src = ", ".join(f"{_SOURCE[k]} {n:,}" for k, n in sorted(self.sources.items()))
        text = (
            f"{self.symbol}: ids {self.first}..{self.last} ({self.last - self.first + 1:,}):"
            f" stored {src or 'none'}; missing {len(self.missing):,}, duplicated"
            f" {self.duplicated:,}"
        )
        if self.missing:
            text += f" (ids {id_ranges([i for i, _ in self.missing])})"
        return text


_SOURCE = {"w": "live", "r": "REST", "c": "CSV"}


def coverage(url: str, truth: Truth, symbol: str, *, first: int | None = None) -> Coverage:
    """Stored rows of ``symbol`` against ``truth`` from ``first`` (default: the lowest stored
    id) to the simulator's last emitted id: the tail after the last stored trade counts."""
    rows = stored_rows(url, symbol)
    last = truth.last_id(symbol)
    if not rows:
        return Coverage(symbol, 0, last, [], 0, Counter())
    low = min(i for i, _ in rows) if first is None else first
    counts = Counter(i for i, _ in rows if low <= i <= last)
    sources = Counter(src for i, src in rows if low <= i <= last)
    missing = [(i, t) for i, t in truth.trades[symbol] if low <= i <= last and i not in counts]
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    return Coverage(symbol, low, last, missing, duplicated, sources)


def id_ranges(ids: Sequence[int], limit: int = 8) -> str:
    """``[3, 4, 5, 9]`` as ``3-5, 9`` (the first ``limit`` runs, then a count)."""
    runs: list[tuple[int, int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    shown = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs[:limit])
    if len(runs) > limit:
        shown += f", … ({len(runs)} runs)"
    return shown


def wait_until(predicate: Any, timeout_s: float, period_s: float = 1.0) -> bool:
    """Poll ``predicate()`` until true or ``timeout_s`` passed; whether it came true."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(period_s)


if __name__ == "__main__":
    if sys.argv[1:2] != ["sim"]:
        sys.exit("usage: python -m bench.drill_common sim --truth-dir DIR [histdata sim flags]")
    sys.exit(sim_main(sys.argv[2:]))
