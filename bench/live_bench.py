"""Live ingest: ``histdata run`` against the Kraken simulator, the trade rate stepped up.

Usage::

    .venv/bin/python -m bench.live_bench [--dsn DSN] [--rates 2000,5000,10000,...,320000]
        [--duration-s 30] [--symbols BTC/USD,ETH/USD,SOL/USD,XRP/USD] [--json] [--quick]
        [--all-rates]

Three processes per step, so none shares a GIL with another: the simulator
(:class:`bench.common.SimProcess`), the service (``python -m histdata.cli run`` with the
default configuration, gap filling off so the live path alone is measured) and this driver.
Per step, in a fresh scratch database:

1. the simulator starts with trading paused (no trades exist); the service starts and
   subscribes; trading resumes at the step's rate, spread evenly over the symbols;
2. after ``--duration-s`` trading pauses: the simulator's trade ids 1..N per symbol are the
   ground truth; the driver waits until the service has stored all of them, or until
   nothing has been stored for ``--drain-timeout-s``;
3. lost = ids in 1..N not stored, duplicated = rows beyond one per trade id; latency = the
   row's ``ingested_at`` minus the trade's time. ``ingested_at`` (``DEFAULT
   clock_timestamp()``) exists only in the scratch copy: it is added after migrating and
   before the service starts. It is stamped when the row is inserted, a few milliseconds
   before the commit; the trade's time is when the simulator made it (the simulator
   publishes every ``tick_s`` = 20 ms, as Kraken batches), so latency covers the exchange's
   batching, the WebSocket, parsing, batching, the journal-less happy path and the insert;
4. the service's peak RSS is the kernel's high-water mark (``VmHWM``); CPU is process time
   over the trading window, in % of one core, beside the whole machine's busy share;
5. a :class:`CommitProbe` times a one-row commit every 100 ms beside the service, so a
   stall of the storage is told apart from one of ours.

A step passes when nothing was lost or duplicated, its backlog was stored within
``KEPT_UP_DRAIN_S`` of trading stopping (without that condition a step of a few seconds
"passes" however slow the writer is, because the 200,000-trade buffer absorbs it) and its
p99 latency is under 1 s. The ladder climbs until a step fails (``--all-rates`` runs every
step anyway), so its top is the ceiling: the failing step says which criterion failed and
which resource ran out (:func:`limit`): the simulator not emitting the rate asked, one of
the three processes at a core, the machine's cores all busy, or the storage stalled. The
table also gives the drain time and the store rate (stored trades over the trading time
plus the drain).
``--profile DIR`` runs the service under cProfile (slower; for finding the bottleneck);
``--logs DIR`` keeps the service's log of each step.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.common import (
    Result,
    SimProcess,
    add_common_arguments,
    emit,
    machine,
    say,
    scratch_database,
    today,
)
from histdata.client import socket_transport
from histdata.storage import migrate

DB = "histdata_bench_live"
ROOT = Path(__file__).resolve().parent.parent
# A step "kept up" when its last trade was stored this soon after trading stopped: one
# batch age plus a write, not a backlog.
KEPT_UP_DRAIN_S = 2.0
# The storage probe's application_name (CommitProbe).
PROBE_NAME = "histdata-bench-probe"
# A probe commit this slow is a stall of the storage or the machine, not of histdata.
STORAGE_STALL_S = 0.5


@dataclass(frozen=True, slots=True)
class Step:
    """What one rate step measured."""

    rate: int
    seconds: float
    emitted: int
    stored_rows: int
    stored_ids: int
    lost: int
    duplicated: int
    p50_s: float | None
    p99_s: float | None
    max_s: float | None
    drain_s: float
    drained: bool
    service_cpu: float
    sim_cpu: float
    db_cpu: float
    service_us_per_trade: float  # service CPU over trading and drain, per stored trade
    db_us_per_trade: float
    peak_rss: int
    sessions: int
    slow_client_drops: int
    journaled: int
    sim_us_per_trade: float = 0.0  # the simulator's CPU per emitted trade: its code is fixed,
    # so across days this compares the machines, not histdata
    probe_max_s: float = 0.0  # the slowest one-row commit of the storage probe (CommitProbe)
    io_stalled: float | None = None  # share of the window all tasks waited on I/O (PSI)
    machine_busy: float | None = None  # share of all cores busy over the window, any process


class CommitProbe:
    """A one-row INSERT committed every ``interval_s`` into its own table, timed.

    It shares nothing with the service but the server and its WAL, so a slow probe commit
    while the service is slow points at the storage (the WAL's fsync) or a frozen machine,
    not at histdata: it is how a stall of the write path is told apart from a bottleneck
    of ours. The table lives in the scratch database and goes with it.
    """

    def __init__(self, dsn: str, *, interval_s: float = 0.1) -> None:
        self._dsn = dsn
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.slowest_s = 0.0
        self.slow: list[tuple[float, float]] = []  # (Unix time, seconds) of commits over 0.5 s
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS _bench_commit_probe (at timestamptz)")
        self._thread = threading.Thread(target=self._run, name="commit-probe", daemon=True)

    def __enter__(self) -> CommitProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        # Named, so that _backend_cpu leaves the probe's backend out of PostgreSQL's share.
        with psycopg.connect(self._dsn, autocommit=True, application_name=PROBE_NAME) as conn:
            while not self._stop.wait(self._interval_s):
                began = time.monotonic()
                conn.execute("INSERT INTO _bench_commit_probe VALUES (clock_timestamp())")
                took = time.monotonic() - began
                self.slowest_s = max(self.slowest_s, took)
                if took >= STORAGE_STALL_S:
                    self.slow.append((time.time() - took, took))


def _io_stall_us() -> int | None:
    """Microseconds all non-idle tasks have waited on I/O at once (PSI ``full``), or None."""
    try:
        for line in Path("/proc/pressure/io").read_text().splitlines():
            if line.startswith("full"):
                return int(line.rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        pass
    return None


def _machine_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all cores so far, from ``/proc/stat``, or None.

    Busy is everything but idle and I/O wait: the three processes, the bench's driver,
    PostgreSQL's own background processes, the kernel's work for them, other tenants.
    """
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) ``pid`` has used so far, from ``/proc`` (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _backend_cpu(dsn: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving the scratch database (same machine)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        pids = [
            int(row[0])
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND application_name <> %s",
                (PROBE_NAME,),
            )
        ]
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # the backend ended meanwhile
            out[pid] = _cpu(pid)
    return out


def _peak_rss(pid: int) -> int:
    """The kernel's RSS high-water mark of ``pid`` in bytes (``VmHWM``, Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def _stored(dsn: str, truth: dict[str, int]) -> tuple[int, int]:
    """Rows stored, and distinct trade ids of the ground truth (1..N per symbol) stored."""
    rows = ids = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        for symbol, n in truth.items():
            row = conn.execute(
                "SELECT count(*),"
                " count(DISTINCT trade_id) FILTER (WHERE trade_id BETWEEN 1 AND %s)"
                " FROM trades WHERE symbol_id = (SELECT id FROM symbols WHERE symbol = %s)",
                (n, symbol),
            ).fetchone()
            assert row is not None
            rows += int(row[0])
            ids += int(row[1])
    return rows, ids


def _latency(dsn: str) -> tuple[float | None, float | None, float | None]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d),"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY d), max(d)"
            " FROM (SELECT extract(epoch FROM ingested_at - time)::float8 AS d"
            " FROM trades WHERE source = 'w') s"
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _healthz(socket: Path) -> dict[str, Any]:
    try:
        with httpx.Client(transport=socket_transport(str(socket)), timeout=5.0) as http:
            status: dict[str, Any] = http.get("http://histdata/healthz").json()
            return status
    except (httpx.HTTPError, ValueError):
        return {}


def run_step(
    admin_dsn: str,
    rate: int,
    symbols: list[str],
    *,
    duration_s: float,
    drain_timeout_s: float,
    profile: Path | None,
    logs: Path | None,
    pairs: int = 0,
    record: str | None = None,
) -> Step:
    """Measure one rate step from a fresh database, simulator and service.

    ``pairs`` generated pairs trade beside ``symbols`` (the simulator's own rates for them);
    ``record`` is ``[kraken] symbols`` (default: the named symbols).
    """
    with scratch_database(admin_dsn, DB) as dsn, tempfile.TemporaryDirectory() as tmp:
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "ALTER TABLE trades ADD COLUMN ingested_at timestamptz DEFAULT clock_timestamp()"
            )
        work = Path(tmp)
        socket = work / "q.sock"
        with SimProcess(symbols, rate_per_symbol=rate / len(symbols), pairs=pairs) as sim:
            env = {
                **os.environ,
                "HISTDATA_CONFIG": "/dev/null",
                "HISTDATA_DATABASE_URL": dsn,
                "HISTDATA_SERVICE_DATA_DIR": str(work / "var"),
                "HISTDATA_QUERY_SOCKET": str(socket),
                "HISTDATA_KRAKEN_WS_URL": sim.ws_url,
                "HISTDATA_KRAKEN_REST_URL": sim.rest_url,
                "HISTDATA_KRAKEN_SYMBOLS": record if record is not None else ",".join(symbols),
                "HISTDATA_GAPFILL_ENABLED": "false",
                "HISTDATA_SERVICE_LOG_LEVEL": "warning",
            }
            command = [sys.executable, "-m", "histdata.cli", "run"]
            if profile is not None:
                profile.mkdir(parents=True, exist_ok=True)
                out = profile / f"service-{rate}.prof"
                command[1:2] = ["-m", "cProfile", "-o", str(out), "-m"]
            log_path = work / "service.log"
            if logs is not None:
                logs.mkdir(parents=True, exist_ok=True)
                log_path = logs / f"service-{rate}.log"
            with log_path.open("w") as log:
                service = subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=ROOT)
            try:
                return _measure(
                    dsn,
                    sim,
                    service,
                    rate,
                    len(symbols) + pairs,
                    socket,
                    duration_s,
                    drain_timeout_s,
                )
            finally:
                service.send_signal(signal.SIGTERM)
                try:
                    service.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    service.kill()
                    service.wait()
                if service.returncode != 0:
                    log_tail = log_path.read_text()[-2000:]
                    say(f"service exited {service.returncode}; log tail:\n{log_tail}")


def _measure(
    dsn: str,
    sim: SimProcess,
    service: subprocess.Popen[bytes],
    rate: int,
    recorded: int,
    socket: Path,
    duration_s: float,
    drain_timeout_s: float,
) -> Step:
    sim.wait_subscribed(recorded)
    probe = CommitProbe(dsn)
    with probe:
        cpu0 = (_cpu(service.pid), _cpu(sim.process.pid))
        pg0 = _backend_cpu(dsn)
        io0, ticks0 = _io_stall_us(), _machine_ticks()
        sim.resume()
        began = time.monotonic()
        time.sleep(duration_s)
        paused = sim.pause()
        seconds = time.monotonic() - began
        io1, ticks1 = _io_stall_us(), _machine_ticks()
        cpu1 = (_cpu(service.pid), _cpu(sim.process.pid))
        pg1 = _backend_cpu(dsn)
    for at, took in probe.slow:
        stamp = time.strftime("%H:%M:%S", time.gmtime(at))
        say(f"live: the storage probe's commit at {stamp} UTC took {took:.2f} s")
    truth: dict[str, int] = paused["trades"]
    emitted = sum(truth.values())
    stopped = time.monotonic()
    last_progress, last_ids = stopped, -1
    while True:
        rows, ids = _stored(dsn, truth)
        now = time.monotonic()
        if ids >= emitted:
            break
        if ids != last_ids:
            last_progress, last_ids = now, ids
        elif now - last_progress > drain_timeout_s:
            break
        time.sleep(0.1)
    drain_s = time.monotonic() - stopped
    cpu2 = _cpu(service.pid)
    pg2 = _backend_cpu(dsn)
    status = _healthz(socket)
    peak = _peak_rss(service.pid)
    p50, p99, worst = _latency(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        distinct = conn.execute(
            "SELECT count(DISTINCT (symbol_id, trade_id)) FROM trades"
        ).fetchone()
    assert distinct is not None
    ws = sim.stats()["ws"]
    return Step(
        rate=rate,
        seconds=seconds,
        emitted=emitted,
        stored_rows=rows,
        stored_ids=ids,
        lost=emitted - ids,
        duplicated=rows - int(distinct[0]),
        p50_s=p50,
        p99_s=p99,
        max_s=worst,
        drain_s=drain_s if ids >= emitted else float("nan"),
        drained=ids >= emitted,
        service_cpu=(cpu1[0] - cpu0[0]) / seconds,
        sim_cpu=(cpu1[1] - cpu0[1]) / seconds,
        db_cpu=sum(cpu - pg0.get(pid, 0.0) for pid, cpu in pg1.items()) / seconds,
        service_us_per_trade=(cpu2 - cpu0[0]) / max(ids, 1) * 1e6,
        db_us_per_trade=sum(cpu - pg0.get(pid, 0.0) for pid, cpu in pg2.items())
        / max(ids, 1)
        * 1e6,
        peak_rss=peak,
        sessions=int(ws["connections"]),
        slow_client_drops=int(ws["slow_clients_dropped"]),
        journaled=int(status.get("flusher", {}).get("trades_journaled", 0)),
        sim_us_per_trade=(cpu1[1] - cpu0[1]) / max(emitted, 1) * 1e6,
        probe_max_s=probe.slowest_s,
        io_stalled=None if io0 is None or io1 is None else (io1 - io0) / 1e6 / seconds,
        machine_busy=None
        if ticks0 is None or ticks1 is None or ticks1[1] == ticks0[1]
        else (ticks1[0] - ticks0[0]) / (ticks1[1] - ticks0[1]),
    )


# A process at this share of one core is taken to be the limit (the service's event loop,
# the simulator and each PostgreSQL backend are single-threaded where it matters).
_CORE_BOUND = 0.85
# The cores are taken to be the limit when this share of them was busy over the trading
# window, whoever used it: the three processes' own times leave out the driver, the kernel's
# work for their sockets and PostgreSQL's background writers.
_MACHINE_BOUND = 0.85


def failures(step: Step) -> list[str]:
    """The pass criteria ``step`` failed (empty: it passed)."""
    failed = []
    if step.lost:
        failed.append(f"{step.lost:,} lost")
    if step.duplicated:
        failed.append(f"{step.duplicated:,} duplicated")
    if not step.drained:
        failed.append("backlog not stored")
    elif step.drain_s > KEPT_UP_DRAIN_S:
        failed.append(f"backlog stored {step.drain_s:.1f} s after trading stopped")
    if (step.p99_s or 0.0) >= 1.0:
        failed.append(f"p99 {step.p99_s:.1f} s")
    return failed


def limit(step: Step, cores: int) -> str:
    """Which resource ran out in ``step``, from its CPU shares and emitted rate."""
    shares = {
        "the service": step.service_cpu,
        "PostgreSQL": step.db_cpu,
        "the simulator": step.sim_cpu,
    }
    total = sum(shares.values())
    emitted_rate = step.emitted / step.seconds
    found = []
    if emitted_rate < 0.9 * step.rate:
        found.append(f"the simulator emitted only {emitted_rate:,.0f}/s")
    found += [
        f"{name} at {share:.0%} of a core" for name, share in shares.items() if share >= _CORE_BOUND
    ]
    busy = step.machine_busy
    if total >= 0.85 * cores or (busy is not None and busy >= _MACHINE_BOUND):
        machine_wide = ""
        if busy is not None:
            outside = max(0.0, busy * cores - total)
            machine_wide = f"; the machine {busy:.0%} busy, {outside:.0%} of a core outside them"
        found.append(
            f"all {cores} cores busy (the three processes {total:.0%} of one core{machine_wide})"
        )
    if step.probe_max_s >= STORAGE_STALL_S:
        found.append(
            "the storage stalled: a one-row commit beside the service took"
            f" {step.probe_max_s:.1f} s"
        )
    if step.slow_client_drops:
        found.append(
            f"the simulator dropped the service as a slow client {step.slow_client_drops}x"
        )
    return "; ".join(found) or f"no resource saturated ({total:.0%} of one core in all)"


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:,.0f} ms"


def result(steps: list[Step], args: argparse.Namespace, command: str, where: str) -> Result:
    """The table, the sustained rate and the notes."""
    rows = [
        [
            f"{s.rate:,}",
            f"{s.emitted:,} ({s.emitted / s.seconds:,.0f}/s)",
            f"{s.stored_ids:,}",
            f"{s.lost:,}",
            f"{s.duplicated:,}",
            f"{_ms(s.p50_s)} / {_ms(s.p99_s)}",
            _ms(s.max_s),
            f"{s.drain_s:.1f} s" if s.drained else "not drained",
            f"{s.journaled:,}",
            f"{s.stored_ids / (s.seconds + s.drain_s):,.0f}/s" if s.drained else "–",
            f"{s.service_cpu:.0%} / {s.db_cpu:.0%} / {s.sim_cpu:.0%}"
            + ("" if s.machine_busy is None else f" ({s.machine_busy:.0%})"),
            f"{s.service_us_per_trade:.1f} / {s.db_us_per_trade:.1f} / {s.sim_us_per_trade:.1f}",
            _ms(s.probe_max_s) + ("" if s.io_stalled is None else f" ({s.io_stalled:.0%})"),
            f"{s.peak_rss / 2**20:,.0f} MiB",
            f"{s.sessions} / {s.slow_client_drops}",
            "pass" if not failures(s) else "fail: " + ", ".join(failures(s)),
        ]
        for s in steps
    ]
    cores = os.cpu_count() or 1
    failed = [s for s in steps if failures(s)]
    lossless = [s.rate for s in steps if s.lost == 0 and s.duplicated == 0]
    kept_up = [s.rate for s in steps if s.rate in lossless and s.drain_s <= KEPT_UP_DRAIN_S]
    timely = [s.rate for s in steps if s.rate in kept_up and (s.p99_s or 0.0) < 1.0]

    def best(rates: list[int]) -> str:
        return f"{max(rates):,} trades/s" if rates else "none of the steps"

    sustained, within, buffered = best(kept_up), best(timely), best(lossless)
    if failed:
        top = failed[0]
        ceiling = (
            f"**Ceiling: the {top.rate:,} trades/s step failed** ({', '.join(failures(top))});"
            f" limit: {limit(top, cores)}."
        )
    else:
        ceiling = (
            f"No step failed: the ceiling lies above {max(s.rate for s in steps):,} trades/s"
            " (not reached by this ladder)."
        )
    at_2k = next((s for s in steps if s.rate == 2000), None)
    summary = {
        "sustained (no loss, kept up)": sustained,
        "sustained with p99 < 1 s": within,
        "no loss (backlog allowed)": buffered,
    }
    if at_2k is not None:
        summary["latency p50/p99 at 2,000/s"] = f"{_ms(at_2k.p50_s)} / {_ms(at_2k.p99_s)}"
    summary["service peak RSS"] = f"{max(s.peak_rss for s in steps) / 2**20:,.0f} MiB"
    summary["ceiling (first failing step)"] = (
        f"{failed[0].rate:,} trades/s: {limit(failed[0], cores)}" if failed else "not reached"
    )
    notes = [
        f"{args.duration_s:g} s of trading per step, spread over {len(args.symbols)} symbols "
        f"({', '.join(args.symbols)}); the service runs with the default configuration "
        "(batches of 2,000 trades or 0.25 s, merged up to 20,000 when the writer is behind; "
        "2 writer connections), gap filling off. The ladder climbs until a step fails.",
        ceiling,
        f"**Sustained rate: {sustained}** (highest step with no loss whose backlog was stored "
        f"within {KEPT_UP_DRAIN_S:g} s of trading stopping); with p99 latency under 1 s as "
        f"well: {within}; without loss but with a backlog the buffer absorbed: {buffered}. "
        "Target on this machine when otherwise quiet: 40,000 trades/s with p99 < 1 s.",
        "Limit: a process at 85% of one core or more, all cores busy (the three processes "
        "together at 85% of the machine, or the machine 85% busy whoever used it), or the "
        "simulator short of the rate asked by more than 10%; these are read from the failing "
        "step's CPU columns. Machine busy is the share of all cores not idle over the trading "
        "window (`/proc/stat`), the bench's driver, the kernel and other tenants included.",
        "Latency is insert time (`clock_timestamp()`) minus the trade's time at the simulator, "
        "over every WebSocket-sourced row; it includes the simulator's 20 ms publishing tick. "
        '"Drain" is how long the service needed, after trading stopped, to store the last '
        'trade: a backlog that grew during the step. "Journaled" trades went through the disk '
        "journal; with the database up that is none: a writer that is behind gets "
        "backpressure and larger batches, and the journal is for a database that is away.",
        "CPU is process time over the trading window in % of one core (PostgreSQL: the backends "
        "serving the scratch database); the simulator, the service and PostgreSQL share 2 "
        "cores. CPU per trade is process time from trading's start to the last trade stored, "
        "over the trades stored: the cost of a trade, which a shared machine disturbs less "
        "than it does the shares. WS sessions / slow-client drops: the simulator "
        "disconnects a client whose outbox holds 2,048 unsent frames; each drop loses what was "
        "queued unless the service repairs it (gap filling is off here). The simulator's "
        "CPU per trade is a yardstick of the machine: its code does not change between runs "
        "of the same commit, so a higher figure on another day means slower cores.",
        "Storage probe: beside the service, the bench commits a one-row INSERT into a table "
        "of its own every 100 ms and times it; it shares only the server and its WAL with "
        f"the service, so a probe commit of {STORAGE_STALL_S:g} s or more marks a stall of "
        "the storage (fsync) or of the machine, not of histdata, and the limit says so. I/O "
        "stalled is the share of the trading window in which every runnable task waited on "
        "I/O (Linux PSI `full`).",
    ]
    return Result(
        name="live",
        title="Live ingest",
        command=command,
        columns=[
            "rate asked (trades/s)",
            "emitted",
            "stored",
            "lost",
            "duplicated",
            "latency p50 / p99",
            "latency max",
            "drain",
            "journaled",
            "store rate",
            "CPU service / PostgreSQL / sim (machine busy)",
            "CPU µs per trade service / PostgreSQL / sim",
            "slowest probe commit (I/O stalled)",
            "service peak RSS",
            "WS sessions / drops",
            "verdict",
        ],
        rows=rows,
        notes=notes,
        summary=summary,
        machine=where,
        date=today(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--rates", help="trades/s steps, comma-separated (default 2k..40k)")
    parser.add_argument("--duration-s", type=float, help="seconds of trading per step")
    parser.add_argument(
        "--symbols",
        default="BTC/USD,ETH/USD,SOL/USD,XRP/USD",
        help="pairs the rate is spread over",
    )
    parser.add_argument("--drain-timeout-s", type=float, default=15.0)
    parser.add_argument(
        "--all-rates", action="store_true", help="run every step, not only up to the first failure"
    )
    parser.add_argument("--profile", type=Path, help="cProfile the service into DIR")
    parser.add_argument("--logs", type=Path, help="keep the service's log of each step in DIR")
    args = parser.parse_args()
    if not args.dsn:
        parser.error("--dsn (or HISTDATA_TEST_DSN) is required")
    if args.rates is None:
        args.rates = (
            "2000,5000" if args.quick else "2000,5000,10000,20000,40000,80000,160000,320000"
        )
    if args.duration_s is None:
        args.duration_s = 8.0 if args.quick else 30.0
    rates = [int(r) for r in args.rates.split(",")]
    args.symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    command = shlex.join(
        [
            ".venv/bin/python",
            "-m",
            "bench.live_bench",
            "--rates",
            ",".join(map(str, rates)),
            "--duration-s",
            f"{args.duration_s:g}",
            "--symbols",
            ",".join(args.symbols),
        ]
    )
    where = machine(args.dsn)
    steps = []
    for rate in rates:
        say(f"live: {rate:,} trades/s for {args.duration_s:g} s …")
        step = run_step(
            args.dsn,
            rate,
            args.symbols,
            duration_s=args.duration_s,
            drain_timeout_s=args.drain_timeout_s,
            profile=args.profile,
            logs=args.logs,
        )
        say(f"live: {step}")
        steps.append(step)
        if failures(step) and not args.all_rates:
            say(f"live: the {rate:,} trades/s step failed ({', '.join(failures(step))}): the top")
            break
    emit(result(steps, args, command, where), as_json=args.json)


if __name__ == "__main__":
    main()
