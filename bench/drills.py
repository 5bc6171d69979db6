"""``make drills``: fault drills against the real processes, written up in docs/reliability.md.

Usage::

    .venv/bin/python -m bench.drills [--only NAME ...] [--quick] [--dsn DSN] [--out PATH]

Drills (``--only`` takes these names). The live ones record 2 symbols × 1,500 trades/s from a
pausable simulator, run their fault with the gap filler off, check that every trade id missing
up to the simulator's LAST one lies in a range ``histdata gaps`` reports, then restart with the
gap filler on and check every id from the first stored to the last emitted is stored exactly
once, REST-repaired rows (``source`` 'r') counted apart from live ones ('w'):

- ``sigkill``: SIGKILL of ``histdata run`` mid-stream, then again with a backlog held by a
  table lock.
- ``sigterm``: the same with SIGTERM; a stop that needs SIGKILL after 30 s is a crash.
- ``pg_stop``: ``pg_ctl stop -m immediate`` for 90 s (30 s with ``--quick``) on a private
  PostgreSQL 15 cluster in /tmp/drill-pg (the machine's shared server is never stopped).
- ``ws_faults``: the simulator closes every WebSocket every 8 s, sends 5% malformed frames and
  omits REST ``last`` in 30% of replies.
- ``slow_consumer``: ``histdata run`` SIGSTOPped for 25 s, so the simulator drops it as a slow
  client (its outbox holds 2,048 frames; ``histdata sim`` has no flag for this).
- ``drop_oldest``: ``HISTDATA_LIVE_OVERFLOW=drop_oldest``, a 2,000-trade buffer and writes
  stalled 8 s by ``LOCK TABLE trades IN ACCESS EXCLUSIVE MODE``; status must count the drops.
- ``journal_flip``: journal through an outage, stop, flip one byte mid-segment, start: only
  that record may be lost, and ``histdata status`` must say how many trades.
- ``socket``: bench/socket_drill.py's 20,000 idle connections while recording.
- ``kill_import``: ``histdata import`` of a generated multi-million-row Kraken trades CSV,
  SIGKILLed twice mid-import and re-run: the stored rows must be exactly the file's.
- ``kill_backfill``: ``histdata backfill`` against the simulator, SIGKILLed twice and re-run:
  the stored trades must be exactly the simulator's in ``[since, until)``.
- ``fuzz``: 10,000+ malformed WebSocket frames, CSV rows, REST bodies and query requests
  through tests/test_fuzz.py's properties at drill size.

Each drill uses a scratch database created and dropped on ``--dsn``'s server (``pg_stop``: on
its private cluster), reports trades emitted / stored / REST-repaired / lost / duplicated /
unreported before repair, process crashes and actor restarts (``histdata status --json``),
peak RSS (psutil) and the load average, and the verdict. A failed drill is a finding: it is written
up, never retried until it passes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import psycopg

from bench.drill_common import (
    DEFAULT_DSN,
    HISTDATA,
    NS_PER_S,
    DrillResult,
    Proc,
    RssMonitor,
    Sim,
    Truth,
    actor_restarts,
    channel,
    compare_ids,
    count_trades,
    coverage,
    gaps_report,
    id_ranges,
    scratch_database,
    service_env,
    set_connections,
    sim_truth,
    start_sim,
    status,
    stored_trade_ids,
    wait_until,
)

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "reliability.md"
SYMBOLS = ("BTC/USD", "ETH/USD")


class Options(argparse.Namespace):
    only: list[str] | None
    quick: bool
    dsn: str
    out: Path
    keep: bool


# ----------------------------------------------------------------------------- service runner


class Service:
    """``histdata run`` as a child process; an unexpected exit is counted and restarted."""

    def __init__(self, result: DrillResult, env: dict[str, str], workdir: Path, rss: RssMonitor):
        self.result = result
        self.env = env
        self.workdir = workdir
        self.rss = rss
        self.proc: Proc | None = None
        self.starts = 0
        self.last: dict[str, Any] | None = None
        self.restarts_seen: dict[str, int] = {}

    def start(self) -> None:
        self.starts += 1
        self.proc = Proc("run", [*HISTDATA, "run"], self.workdir / "run.log", self.env).start()
        self.rss.track("run", self.proc.pid)
        if not wait_until(lambda: self.poll() is not None, 60, 0.5):
            raise RuntimeError("histdata run did not answer on its socket within 60 s")

    def check(self) -> None:
        """Count and restart an unexpected exit."""
        assert self.proc is not None
        code = self.proc.exit_code()
        if code is not None:
            self.proc.close()
            self.result.process_crashes += 1
            self.result.findings.append(
                f"`histdata run` exited unexpectedly with status {code}; last log lines: "
                + " | ".join(self.proc.tail(4))
            )
            self.result.step(f"histdata run exited with {code}: restarting it")
            self.start()

    def poll(self) -> dict[str, Any] | None:
        """A status snapshot (kept as :attr:`last`), merging actor restarts seen so far."""
        snapshot = status(self.env)
        if snapshot is not None:
            self.last = snapshot
            for name, n in actor_restarts(snapshot).items():
                self.restarts_seen[name] = max(self.restarts_seen.get(name, 0), n)
        return snapshot

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; a non-zero exit is a finding."""
        assert self.proc is not None
        started = time.monotonic()
        code = self.proc.stop(timeout_s)
        took = time.monotonic() - started
        self.result.step(f"SIGTERM: histdata run exited with {code} after {took:.1f} s")
        if code != 0:
            self.result.process_crashes += 1
            self.result.findings.append(
                f"`histdata run` exited with {code} on SIGTERM; last log lines: "
                + " | ".join(self.proc.tail(4))
            )
        return code

    def settle_restarts(self) -> None:
        self.result.actor_restarts = sum(self.restarts_seen.values())
        if self.restarts_seen:
            self.result.findings.append(f"actor restarts: {self.restarts_seen}")


def journal_trades(snapshot: dict[str, Any]) -> int:
    """Trades this process appended to the journal and has not replayed or dropped (a
    journal left by an earlier process is replayed but was not appended: it can go
    negative; ``journal.bytes`` says whether the journal is empty)."""
    j = snapshot["journal"]
    return int(j["appended_trades"] - j["replayed_trades"] - j["dropped_trades"])


def timeline(service: Service, label: str) -> str:
    """One line of live statistics for the notes."""
    s = service.last
    if s is None:
        return f"{label}: no status"
    trades = channel(s, "live.trades")
    fl = s["flusher"]
    return (
        f"{label}: live.trades depth {trades['depth']} (peak {trades['peak']}, spilled "
        f"{trades['spilled']}, dropped {trades['dropped']}), journal {s['journal']['bytes']} B /"
        f" {journal_trades(s)} trades, written {fl['trades_inserted'] + fl['trades_present']},"
        f" database_up {fl['database_up']}"
    )


def watch(service: Service, seconds: float, label: str, *, every_s: float = 2.0) -> None:
    """Keep the service under observation for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(every_s, max(0.0, deadline - time.monotonic())))
        service.check()
        service.poll()
    service.result.notes.append(timeline(service, label))


# ----------------------------------------------------------------------------- live drills

RATE = 1500  # trades/s per symbol: the floor, two symbols
GAPFILL_INTERVAL_S = 5.0
REST_RATE = 50.0  # histdata's REST limiter; the simulator allows 60/s
SIM_REST_LIMIT = 60


@dataclass
class Live:
    """The moving parts of one live drill, handed to its fault."""

    opts: Options
    result: DrillResult
    workdir: Path
    rss: RssMonitor
    admin_dsn: str
    url: str
    sim: Sim
    service: Service


Fault = Callable[[Live], None]


def stored_max(url: str) -> dict[str, int]:
    """The newest stored trade id per symbol."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT s.symbol, max(t.trade_id) FROM trades t JOIN symbols s"
                " ON s.id = t.symbol_id GROUP BY s.symbol"
            ).fetchall()
    except psycopg.Error:
        return {}
    return {str(sym): int(top) for sym, top in rows if top is not None}


def settle(live: Live, truth: Truth, timeout_s: float = 90.0) -> None:
    """With the simulator paused, wait until the service stored each symbol's last emitted id
    and its journal is empty (or ``timeout_s`` passed: what is missing then is the finding)."""

    def done() -> bool:
        live.service.check()
        top = stored_max(live.url)
        snap = live.service.poll()
        return (
            all(top.get(sym, -1) >= truth.last_id(sym) for sym in SYMBOLS)
            and snap is not None
            and snap["journal"]["bytes"] == 0
        )

    started = time.monotonic()
    ok = wait_until(done, timeout_s, 1.0)
    live.result.step(
        "simulator paused at ids "
        + ", ".join(f"{sym} {truth.last_id(sym)}" for sym in SYMBOLS)
        + (
            f"; the service stored both last ids {time.monotonic() - started:.0f} s later"
            if ok
            else f"; after {timeout_s:.0f} s the last ids were still not stored"
        )
    )


def load() -> str:
    """The load average, for the noisy figures."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def before_repair(live: Live, truth: Truth) -> dict[str, int]:
    """The coverage promise before any repair: every id missing from the lowest stored one to
    the simulator's last must lie inside a range ``histdata gaps`` reports. Returns the first
    stored id per symbol (where the promise begins)."""
    r = live.result
    first: dict[str, int] = {}
    parts: list[str] = []
    env = live.service.env
    for sym in SYMBOLS:
        cov = coverage(live.url, truth, sym)
        first[sym] = cov.first
        times = dict(truth.trades[sym])
        start_ns = times.get(cov.first, truth.trades[sym][0][1]) - NS_PER_S
        end_ns = truth.trades[sym][-1][1] + NS_PER_S
        rep = gaps_report(env, sym, start_ns, end_ns)
        cov.unreported = [(i, t) for i, t in cov.missing if not rep.explains(i, t)]
        r.unreported += len(cov.unreported)
        r.notes.append("before repair: " + cov.describe())
        r.notes.append(
            f"before repair: `histdata gaps {sym}` over those {(end_ns - start_ns) / NS_PER_S:.0f}"
            f" s: {len(rep.times)} coverage holes ({rep.hole_seconds():.1f} s), "
            f"{len(rep.ids)} trade-id holes"
            + (": " + "; ".join(rep.lines[:6]) if rep.lines else "")
        )
        parts.append(f"{sym} missing {len(cov.missing):,}, unreported {len(cov.unreported):,}")
        if cov.unreported:
            ids = [i for i, _ in cov.unreported]
            r.findings.append(
                f"{sym}: before repair {len(ids):,} missing trades lie in time that"
                f" `histdata gaps` does not report (silent holes): ids {id_ranges(ids)}, times"
                f" {_iso_range(cov.unreported)}; gaps printed: "
                + ("; ".join(rep.lines[:8]) or "no gaps")
            )
    r.before = "; ".join(parts)
    r.step("before repair (gap filler off): " + r.before)
    return first


def _iso_range(trades: list[tuple[int, int]]) -> str:
    low, high = min(t for _, t in trades), max(t for _, t in trades)
    fmt = "%H:%M:%S.%f"
    return (
        f"{datetime.fromtimestamp(low / NS_PER_S, UTC).strftime(fmt)}.."
        f"{datetime.fromtimestamp(high / NS_PER_S, UTC).strftime(fmt)} UTC"
    )


def after_repair(live: Live, truth: Truth, first: dict[str, int]) -> None:
    """After the gap filler's round: every id from first to last stored exactly once."""
    r = live.result
    r.emitted = r.stored = r.lost = r.duplicated = r.rest_repaired = 0
    for sym in SYMBOLS:
        cov = coverage(live.url, truth, sym, first=first[sym])
        r.emitted += cov.last - cov.first + 1
        r.stored += sum(cov.sources.values()) - cov.duplicated
        r.lost += len(cov.missing)
        r.duplicated += cov.duplicated
        r.rest_repaired += cov.sources.get("r", 0)
        r.notes.append("after repair: " + cov.describe())
        if cov.missing:
            r.findings.append(
                f"{sym}: after the gap filler's rounds {len(cov.missing):,} ids of"
                f" {cov.first}..{cov.last} are still not stored:"
                f" {id_ranges([i for i, _ in cov.missing])}"
            )
        if cov.duplicated:
            r.findings.append(f"{sym}: {cov.duplicated} duplicate rows")


def status_notes(live: Live, label: str) -> None:
    """The service's own account: drops, journal damage, health reasons."""
    snap = live.service.poll()
    if snap is None:
        live.result.notes.append(f"{label}: status did not answer")
        return
    keep: dict[str, Any] = {"healthy": snap.get("healthy")}
    keep["reasons"] = snap.get("unhealthy_reasons")
    keep["drops"] = {k: v for k, v in snap.get("drops", {}).items() if v}  # nonzero only
    j = snap.get("journal", {})
    keep["journal"] = {k: v for k, v in j.items() if v and not isinstance(v, dict | list)}
    live.result.notes.append(f"{label}: status " + json.dumps(keep, separators=(",", ":")))


def run_live(
    opts: Options,
    workdir: Path,
    rss: RssMonitor,
    *,
    name: str,
    title: str,
    fault: Fault,
    sim_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    admin_dsn: str | None = None,
    warm_s: float = 20.0,
    after_s: float = 15.0,
    repair_s: float = 30.0,
) -> DrillResult:
    """One live drill at 2 × RATE trades/s: the fault with the gap filler off, the coverage
    check against the simulator paused at its last id, then a restart with the gap filler on
    and the exactly-once check from the first stored id to the last emitted one."""
    result = DrillResult(name, title)
    result.load = load()
    admin = admin_dsn or opts.dsn
    with scratch_database(admin, f"histdata_drill_{name}_{os.getpid()}") as url:
        args = ["--rate", str(RATE), "--symbols", ",".join(SYMBOLS), "--history-s", "30"]
        args += ["--rest-limit", str(SIM_REST_LIMIT), *sim_args]
        sim = start_sim(workdir, *args)
        rss.track("sim", sim.proc.pid)
        result.commands.append("histdata sim --rest-port 0 --ws-port 0 " + " ".join(args))
        extra = dict(env or {})
        before_env = service_env(url, workdir, sim, SYMBOLS, gapfill_enabled="false", **extra)
        shown = " ".join(f"HISTDATA_{k.upper()}={v}" for k, v in extra.items())
        result.commands.append(f"HISTDATA_GAPFILL_ENABLED=false {shown} histdata run".strip())
        service = Service(result, before_env, workdir, rss)
        live = Live(opts, result, workdir, rss, admin, url, sim, service)
        try:
            service.start()
            result.step(f"recording {len(SYMBOLS)} symbols at {RATE} trades/s each, gap filler off")
            watch(service, warm_s, f"after {warm_s:.0f} s warm-up")
            fault(live)
            watch(service, after_s, f"{after_s:.0f} s after the fault")
            truth = sim.pause()
            settle(live, truth)
            status_notes(live, "before repair")
            service.settle_restarts()
            service.stop()
            first = before_repair(live, truth)

            sim.resume()
            service.env = service_env(
                url,
                workdir,
                sim,
                SYMBOLS,
                gapfill_enabled="true",
                gapfill_interval_s=f"{GAPFILL_INTERVAL_S:g}",
                kraken_rest_rate_per_s=f"{REST_RATE:g}",
                **extra,
            )
            result.commands.append(
                f"HISTDATA_GAPFILL_ENABLED=true HISTDATA_GAPFILL_INTERVAL_S={GAPFILL_INTERVAL_S:g}"
                f" HISTDATA_KRAKEN_REST_RATE_PER_S={REST_RATE:g} {shown} histdata run"
            )
            service.start()
            result.step("restarted with the gap filler on; simulator trading again")
            watch(service, repair_s, f"{repair_s:.0f} s of repair")
            truth = sim.pause()
            settle(live, truth)
            watch(service, 3 * GAPFILL_INTERVAL_S, "three more gap-filler intervals")
            status_notes(live, "after repair")
            snap = service.last
            if snap is not None and "gapfiller" in snap:
                result.notes.append(
                    "gapfiller: " + json.dumps(snap["gapfiller"], separators=(",", ":"))[:600]
                )
            service.settle_restarts()
            service.stop()
            after_repair(live, truth, first)
            result.notes.append(
                "simulator WebSocket: " + json.dumps(truth.ws, separators=(",", ":"))
            )
        finally:
            if service.proc is not None and service.proc.exit_code() is None:
                service.stop()
            sim.proc.stop()
    result.peak_rss_mb = rss.peak_mb("run")
    result.load += " → " + load()
    result.findings = list(dict.fromkeys(result.findings))
    return result


@contextmanager
def table_locked(url: str) -> Iterator[None]:
    """``LOCK TABLE trades IN ACCESS EXCLUSIVE MODE`` held by another session: every write
    of the service waits, the database is up, so the backlog stays in memory."""
    with psycopg.connect(url) as conn:
        conn.execute("LOCK TABLE trades IN ACCESS EXCLUSIVE MODE")
        yield
        conn.commit()


def kill(live: Live, sig: int) -> None:
    """Send ``sig`` to ``histdata run`` and wait for its exit (SIGTERM: a graceful stop,
    whose exit status is checked)."""
    if sig == signal.SIGTERM:
        live.service.stop()
        left = leftover_journal(live.workdir)
        live.result.step(
            "left in the journal for the next start: "
            + (", ".join(f"{sym} {len(ids):,} trades" for sym, ids in left.items()) or "nothing")
        )
        return
    proc = live.service.proc
    assert proc is not None
    proc.signal(sig)
    proc.wait(10)
    proc.close()


def backlog_then(live: Live, sig: int, lock_s: float = 6.0) -> None:
    """Stall the writes (a table lock) until a backlog builds, then ``sig`` while it is held
    in memory; the lock is released once the process is gone."""
    with table_locked(live.url):
        time.sleep(lock_s)
        snap = live.service.poll()
        depth = channel(snap, "live.trades")["depth"] if snap else -1
        pending = snap["buffer"]["pending_trades"] if snap else -1
        name = signal.Signals(sig).name
        live.result.step(
            f"{name} after {lock_s:.0f} s of `LOCK TABLE trades IN ACCESS EXCLUSIVE MODE`"
            f" (live.trades depth {depth}, buffer pending {pending})"
        )
        kill(live, sig)
    live.service.start()


def fault_signal(sig: int) -> Fault:
    """``sig`` twice: once in the plain stream, once with a backlog held in memory."""

    def fault(live: Live) -> None:
        name = signal.Signals(sig).name
        kill(live, sig)
        live.result.step(f"{name} to histdata run under load (no backlog); started again")
        live.service.start()
        watch(live.service, 15.0, f"15 s after the first {name}")
        backlog_then(live, sig)
        live.result.step("started again")

    return fault


def drill_sigkill(opts: Options, workdir: Path, rss: RssMonitor) -> DrillResult:
    return run_live(
        opts,
        workdir,
        rss,
        name="sigkill",
        title="SIGKILL mid-stream, plain and with a backlog",
        fault=fault_signal(signal.SIGKILL),
    )


def drill_sigterm(opts: Options, workdir: Path, rss: RssMonitor) -> DrillResult:
    return run_live(
        opts,
        workdir,
        rss,
        name="sigterm",
        title="SIGTERM (graceful stop) under load, plain and with a backlog",
        fault=fault_signal(signal.SIGTERM),
    )


PRIVATE_PG = Path("/tmp/drill-pg")
PRIVATE_PORT = 5499
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def pg_ctl(*args: str) -> None:
    """``pg_ctl -D /tmp/drill-pg ARGS`` as the postgres user."""
    subprocess.run(
        ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(PRIVATE_PG), *args],
        check=True,
        capture_output=True,
        timeout=120,
    )


@contextmanager
def private_cluster() -> Iterator[str]:
    """A private PostgreSQL 15 on a Unix socket in /tmp/drill-pg (port 5499), so the drill
    can stop its server without touching the machine's shared one; removed afterwards."""
    subprocess.run(["rm", "-rf", str(PRIVATE_PG)], check=True)
    initdb = (str(PG_BIN / "initdb"), "-D", str(PRIVATE_PG), "-A", "trust", "-U", "postgres")
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *initdb],
        check=True,
        capture_output=True,
        timeout=300,
    )
    opts = f"-c listen_addresses='' -k {PRIVATE_PG} -c port={PRIVATE_PORT}"
    pg_ctl("-o", opts, "-l", str(PRIVATE_PG / "server.log"), "-w", "start")
    try:
        yield f"host={PRIVATE_PG} port={PRIVATE_PORT} user=postgres dbname=postgres"
    finally:
        with suppress(subprocess.CalledProcessError):
            pg_ctl("-m", "immediate", "stop")  # already stopped if the drill failed there
        subprocess.run(["rm", "-rf", str(PRIVATE_PG)], check=False)


def wait_drained(live: Live, timeout_s: float) -> float | None:
    """Seconds until the database is up and the journal empty (None: not within
    ``timeout_s``)."""
    started = time.monotonic()

    def drained() -> bool:
        live.service.check()
        snap = live.service.poll()
        return bool(snap and snap["flusher"]["database_up"] and snap["journal"]["bytes"] == 0)

    if wait_until(drained, timeout_s, 1.0):
        return time.monotonic() - started
    return None


def fault_pg_stop(outage_s: float) -> Fault:
    def fault(live: Live) -> None:
        pg_ctl("-m", "immediate", "stop")
        live.result.step(f"`pg_ctl -D {PRIVATE_PG} -m immediate stop`; down for {outage_s:.0f} s")
        watch(live.service, outage_s, "end of the outage")
        snap = live.service.last
        if snap is not None:
            live.result.notes.append(
                f"during the outage: healthy {snap.get('healthy')}, reasons"
                f" {snap.get('unhealthy_reasons')}, journal {journal_trades(snap):,} trades"
            )
        opts = f"-c listen_addresses='' -k {PRIVATE_PG} -c port={PRIVATE_PORT}"
        pg_ctl("-o", opts, "-l", str(PRIVATE_PG / "server.log"), "-w", "start")
        took = wait_drained(live, 300)
        live.result.step(
            "database started again; "
            + (
                f"journal drained in {took:.0f} s while live trades kept arriving"
                if took is not None
                else "journal NOT drained within 300 s"
            )
        )
        if took is None:
            live.result.findings.append(
                "the journal did not drain within 300 s after the database came back: "
                + timeline(live.service, "at the deadline")
            )
        else:
            appended = live.service.last["journal"]["appended_trades"] if live.service.last else 0
            live.result.notes.append(
                f"drain: {appended:,} journaled trades replayed in {took:.0f} s beside"
                f" {2 * RATE} live trades/s"
            )

    return fault


def drill_pg_stop(opts: Options, workdir: Path, rss: RssMonitor) -> DrillResult:
    outage_s = 30.0 if opts.quick else 90.0
    with private_cluster() as admin:
        result = run_live(
            opts,
            workdir,
            rss,
            name="pg_stop",
            title=f"`pg_ctl stop -m immediate` for {outage_s:.0f} s (private cluster)",
            fault=fault_pg_stop(outage_s),
            admin_dsn=admin,
        )
    result.commands.insert(
        0,
        f"runuser -u postgres -- initdb -D {PRIVATE_PG} -A trust -U postgres; pg_ctl -D"
        f" {PRIVATE_PG} -o \"-c listen_addresses='' -k {PRIVATE_PG} -c port={PRIVATE_PORT}\""
        " -w start",
    )
    return result


def fault_wait(seconds: float, label: str) -> Fault:
    def fault(live: Live) -> None:
        watch(live.service, seconds, label)
        live.result.step(f"{seconds:.0f} s of {label}")

    return fault


def drill_ws_faults(opts: Options, workdir: Path, rss: RssMonitor) -> DrillResult:
    run_s = 40.0 if opts.quick else 90.0
    return run_live(
        opts,
        workdir,
        rss,
        name="ws_faults",
        title="WebSocket closed every 8 s, 5% malformed frames, REST drop-last 30%",
        fault=fault_wait(run_s, "simulator faults"),
        sim_args=("--close-every-s", "8", "--drop-last-ratio", "0.3", "--malformed-ratio", "0.05"),
    )


def fault_sigstop(stop_s: float) -> Fault:
    """The simulator drops a client whose outbox (2,048 frames) is full; ``histdata run``
    stopped with SIGSTOP reads nothing, so after the socket buffers fill it is dropped as a
    slow consumer, and on SIGCONT it finds what the kernel still held, then a closed socket."""

    def fault(live: Live) -> None:
        proc = live.service.proc
        assert proc is not None
        proc.signal(signal.SIGSTOP)
        time.sleep(stop_s)
        proc.signal(signal.SIGCONT)
        dropped = live.sim.proc.log.read_text(errors="replace").count("sim_ws_slow_client_dropped")
        live.result.step(
            f"SIGSTOP histdata run for {stop_s:.0f} s, then SIGCONT; the simulator logged"
            f" {dropped} slow-client drop(s)"
        )
        if not dropped:
            live.result.findings.append(
                "the drill did not provoke a slow-consumer drop (the simulator logged none)"
            )

    return fault


def drill_slow_consumer(opts: Options, workdir: Path, rss: RssMonitor) -> DrillResult:
    return run_live(
        opts,
        workdir,
        rss,
        name="slow_consumer",
        title="dropped by the exchange as a slow consumer (SIGSTOP for 25 s)",
        fault=fault_sigstop(25.0),
    )


def fault_overflow(lock_s: float) -> Fault:
    def fault(live: Live) -> None:
        with table_locked(live.url):
            watch(live.service, lock_s, "during the table lock", every_s=1.0)
        live.result.step(
            f"`LOCK TABLE trades IN ACCESS EXCLUSIVE MODE` held for {lock_s:.0f} s, released"
        )
        snap = live.service.poll()
        if snap is not None:
            ch = channel(snap, "live.trades")
            drops = snap["drops"].get("channel live.trades", 0)
            live.result.notes.append(
                f"after the lock: live.trades dropped {ch['dropped']:,}, status drops"
                f" 'channel live.trades' {drops:,}, healthy {snap.get('healthy')},"
                f" reasons {snap.get('unhealthy_reasons')}"
            )
            if not ch["dropped"]:
                live.result.findings.append("the drill did not overflow the buffer (0 dropped)")
            elif drops != ch["dropped"]:
                live.result.findings.append(
                    f"status `drops` says {drops} for live.trades, the channel dropped"
                    f" {ch['dropped']}"
                )

    return fault


def drill_drop_oldest(opts: Options, workdir: Path, rss: RssMonitor) -> DrillResult:
    return run_live(
        opts,
        workdir,
        rss,
        name="drop_oldest",
        title="`drop_oldest` overflow: buffer of 2,000 trades, writes stalled for 8 s",
        fault=fault_overflow(8.0),
        env={"live_overflow": "drop_oldest", "live_buffer_capacity": "2000"},
    )


def journal_records(directory: Path, scratch: Path) -> list[list[tuple[str, int]]]:
    """The journal's records in order, each as its (symbol, trade id) list, read from a copy
    (the service stopped) with batches not merged."""
    import trio

    from histdata.actors.buffer import Batch
    from histdata.actors.journal import Journal

    records: list[list[tuple[str, int]]] = []

    async def collect(batch: Batch) -> None:
        records.append([(t.symbol, t.trade_id) for t in batch.trades if t.trade_id is not None])

    subprocess.run(["rm", "-rf", str(scratch)], check=True)
    subprocess.run(["cp", "-r", str(directory), str(scratch)], check=True)
    trio.run(partial(Journal(scratch, max_bytes=1 << 34).replay, collect, group_trades=1))
    return records


def fault_journal_flip(outage_s: float) -> Fault:
    """Journal through an outage, stop, flip one byte in the middle of the largest segment,
    bring the database back and start: only the record holding that byte may be lost."""

    def fault(live: Live) -> None:
        r = live.result
        set_connections(live.admin_dsn, live.url, False)
        r.step(f"database refuses connections (ALLOW_CONNECTIONS false) for {outage_s:.0f} s")
        try:
            watch(live.service, outage_s, "during the outage")
            kill(live, signal.SIGTERM)
            directory = live.workdir / "var" / "journal"
            records = journal_records(directory, live.workdir / "journal-before")
            segments = sorted(directory.glob("*.jnl"), key=lambda p: p.stat().st_size)
            if not segments:
                r.findings.append("nothing was journaled during the outage")
                return
            target = segments[-1]
            offset = target.stat().st_size // 2
            with target.open("r+b") as f:
                f.seek(offset)
                byte = f.read(1)[0]
                f.seek(offset)
                f.write(bytes([byte ^ 0xFF]))
            after = journal_records(directory, live.workdir / "journal-after")
            r.step(
                f"stopped with {sum(map(len, records)):,} trades in {len(records)} journal"
                f" records ({len(segments)} segments); flipped byte {offset:,} of"
                f" {target.name} ({target.stat().st_size:,} B): {byte:#04x} → {byte ^ 0xFF:#04x};"
                f" an offline read of the damaged copy finds {len(after)} records"
            )
        finally:
            set_connections(live.admin_dsn, live.url, True)
        live.service.start()
        took = wait_drained(live, 180)
        r.step(
            "database back, service started: journal "
            + (f"replayed in {took:.0f} s" if took is not None else "NOT replayed within 180 s")
        )
        snap = live.service.poll()
        journaled = {key for rec in records for key in rec}
        stored = set()
        for sym in SYMBOLS:
            stored |= {(sym, i) for i in stored_trade_ids(live.url, sym)}
        lost = journaled - stored
        whole = [n for n, rec in enumerate(records) if rec and set(rec) <= lost]
        lost_in_records = sum(len(records[n]) for n in whole)
        damaged = sorted(p.name for p in (directory / "damaged").glob("*"))
        j = snap["journal"] if snap else {}
        r.notes.append(
            f"journal after replay: lost_records {j.get('lost_records')}, lost_trades"
            f" {j.get('lost_trades')}, lost_unknown_records {j.get('lost_unknown_records')},"
            f" corrupt_segments {j.get('corrupt_segments')}, withheld_spans"
            f" {j.get('withheld_spans')}; journal/damaged/: {damaged or 'empty'}"
        )
        r.notes.append(
            f"journaled trades not stored after replay: {len(lost):,}, which make up"
            f" {len(whole)} whole record(s) ({lost_in_records:,} trades)"
        )
        text = status_text(live.service.env)
        lines = [ln.strip() for ln in text.splitlines() if "journal" in ln or "drops" in ln]
        r.notes.append("`histdata status` journal lines: " + " | ".join(lines[:6]))
        if len(whole) > 1 or lost_in_records != len(lost):
            r.findings.append(
                f"one flipped byte lost {len(lost):,} journaled trades over {len(whole)} records"
                " (expected one record)"
            )
        if j.get("lost_trades") != len(lost):
            r.findings.append(
                f"status counts lost_trades {j.get('lost_trades')}, but {len(lost):,} journaled"
                " trades are not stored"
            )
        if not damaged:
            r.findings.append("the damaged segment was not kept in journal/damaged/")
        # A user reads `histdata status`, not the JSON: it must say how many trades were lost.
        if lost and f"{len(lost)} trades" not in text.replace(",", ""):
            r.findings.append(
                f"`histdata status` does not say that {len(lost):,} trades were lost with the"
                " damaged record; its journal and drops lines: " + " | ".join(lines[:6])
            )
        drops = snap.get("drops", {}) if snap else {}
        if lost and len(lost) not in drops.values():
            r.findings.append(
                f"status `drops` has no entry counting the {len(lost):,} lost trades: "
                + json.dumps({k: v for k, v in drops.items() if v})
            )

    return fault


def status_text(env: dict[str, str]) -> str:
    """``histdata status`` as a user reads it."""
    done = subprocess.run(
        [*HISTDATA, "status"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    return done.stdout


def drill_journal_flip(opts: Options, workdir: Path, rss: RssMonitor) -> DrillResult:
    return run_live(
        opts,
        workdir,
        rss,
        name="journal_flip",
        title="one flipped byte in a journal segment",
        fault=fault_journal_flip(30.0),
    )


def leftover_journal(workdir: Path) -> dict[str, list[int]]:
    """Trade ids per symbol left in the service's journal (read from a copy, service stopped)."""
    import trio

    from histdata.actors.buffer import Batch
    from histdata.actors.journal import Journal

    directory = workdir / "var" / "journal"
    found: dict[str, list[int]] = {}
    if not directory.exists():
        return found

    async def collect(batch: Batch) -> None:
        for trade in batch.trades:
            if trade.trade_id is not None:
                found.setdefault(trade.symbol, []).append(trade.trade_id)

    copy = workdir / "journal-copy"
    subprocess.run(["rm", "-rf", str(copy)], check=True)
    subprocess.run(["cp", "-r", str(directory), str(copy)], check=True)
    trio.run(Journal(copy, max_bytes=1 << 34).replay, collect)
    return found


# ----------------------------------------------------------------------------- drill 2a


def drill_kill_import(opts: Options, workdir: Path, rss: RssMonitor) -> DrillResult:
    from bench.import_bench import generate

    rows = 1_000_000 if opts.quick else 3_000_000
    result = DrillResult("kill_import", f"SIGKILL twice mid-import of {rows:,} CSV rows")
    path = workdir / "XBTUSD.csv"
    generate(path, rows)
    count, price_sum, volume_sum = 0, Decimal(0), Decimal(0)
    with path.open() as f:
        for line in f:
            _, p, v = line.rstrip("\n").split(",")
            count += 1
            price_sum += Decimal(p)
            volume_sum += Decimal(v)
    result.emitted = count
    result.step(f"generated {path.name}: {count:,} rows (time,price,volume)")
    with scratch_database(opts.dsn, f"histdata_drill_import_{os.getpid()}") as url:
        env = service_env(url, workdir, None, ("BTC/USD",))
        argv = [*HISTDATA, "import", str(path), "--no-progress"]
        result.commands.append(f"histdata import {path.name} --no-progress")
        for fraction in (0.3, 0.7):
            proc = Proc("import", argv, workdir / "import.log", env).start()
            rss.track("import", proc.pid)
            target = int(rows * fraction)
            reached = wait_until(
                lambda t=target, p=proc: count_trades(url) >= t or p.exit_code() is not None,
                600,
                0.2,
            )
            stored = count_trades(url)
            if proc.exit_code() is not None:
                proc.close()
                result.findings.append(
                    f"the import finished before the planned kill at {fraction:.0%}"
                    f" (exit {proc.exit_code()})"
                )
                break
            proc.signal(signal.SIGKILL)
            proc.wait(10)
            proc.close()
            result.step(
                f"SIGKILL with {stored:,} rows stored (target {fraction:.0%}"
                f"{'' if reached else ', not reached'})"
            )
        proc = Proc("import", argv, workdir / "import.log", env).start(stdout_pipe=True)
        rss.track("import", proc.pid)
        assert proc.popen is not None
        out, _ = proc.popen.communicate(timeout=1800)
        proc.close()
        summary = out.decode(errors="replace").strip()
        result.step(f"re-run exited with {proc.exit_code()}: {summary.splitlines()[-1]}")
        result.notes.extend(summary.splitlines())
        if proc.exit_code() != 0:
            result.process_crashes += 1
            result.findings.append(f"the re-run exited with {proc.exit_code()}")
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*), count(DISTINCT (time, time_ns, seq)), sum(price), sum(volume)"
                " FROM trades"
            ).fetchone()
        assert row is not None
        total, distinct, stored_price, stored_volume = row
        result.stored = total
        result.duplicated = total - distinct
        result.lost = max(0, count - distinct)
        extra = distinct - count
        result.notes.append(
            f"stored rows {total:,}, distinct keys {distinct:,}; sum(price) file {price_sum} "
            f"stored {stored_price}; sum(volume) file {volume_sum} stored {stored_volume}"
        )
        if extra > 0:
            result.findings.append(f"{extra} stored rows are not in the file")
        if (stored_price, stored_volume) != (price_sum, volume_sum):
            result.findings.append("stored price/volume sums differ from the file's")
    result.peak_rss_mb = rss.peak_mb("import")
    return result


# ----------------------------------------------------------------------------- drill 2b


def drill_kill_backfill(opts: Options, workdir: Path, rss: RssMonitor) -> DrillResult:
    history_s = 900 if opts.quick else 1800
    rate = 100
    result = DrillResult("kill_backfill", "SIGKILL twice mid-backfill from the simulator")
    sim_args = ["--rate", str(rate), "--symbols", "BTC/USD", "--history-s", str(history_s)]
    sim_args += ["--rest-limit", "20"]
    sim = start_sim(workdir, *sim_args)
    result.commands.append("histdata sim --rest-port 0 --ws-port 0 " + " ".join(sim_args))
    now = int(time.time())
    since, until = now - history_s + 60, now - 5
    try:
        with scratch_database(opts.dsn, f"histdata_drill_backfill_{os.getpid()}") as url:
            env = service_env(
                url, workdir, sim, ("BTC/USD",), kraken_rest_rate_per_s="15", kraken_rest_burst="20"
            )
            argv = [*HISTDATA, "backfill", "BTC/USD", "--since", str(since), "--until", str(until)]
            argv.append("--no-progress")
            result.commands.append(
                f"histdata backfill BTC/USD --since {since} --until {until} --no-progress"
                "  (HISTDATA_KRAKEN_REST_RATE_PER_S=15; the simulator allows 20/s)"
            )
            truth = [(i, t) for i, t in sim_truth(sim.rest_url, "BTC/USD") if since * NS_PER_S <= t]
            truth = [(i, t) for i, t in truth if t < until * NS_PER_S]
            result.emitted = len(truth)
            result.step(f"simulator holds {len(truth):,} trades in [since, until)")
            for fraction in (0.3, 0.6):
                proc = Proc("backfill", argv, workdir / "backfill.log", env).start()
                rss.track("backfill", proc.pid)
                target = int(len(truth) * fraction)
                wait_until(
                    lambda t=target, p=proc: count_trades(url) >= t or p.exit_code() is not None,
                    600,
                    0.2,
                )
                stored = count_trades(url)
                if proc.exit_code() is not None:
                    proc.close()
                    result.findings.append(
                        f"the backfill ended before the planned kill at {fraction:.0%}"
                        f" (exit {proc.exit_code()}): " + " | ".join(proc.tail(3))
                    )
                    break
                proc.signal(signal.SIGKILL)
                proc.wait(10)
                proc.close()
                result.step(f"SIGKILL with {stored:,} trades stored (target {fraction:.0%})")
            proc = Proc("backfill", argv, workdir / "backfill.log", env).start()
            rss.track("backfill", proc.pid)
            code = proc.wait(1800)
            proc.close()
            result.step(f"re-run exited with {code}")
            if code != 0:
                result.process_crashes += 1
                result.findings.append(
                    f"the re-run exited with {code}: " + " | ".join(proc.tail(4))
                )
            stored_ids = stored_trade_ids(url, "BTC/USD")
            cmp = compare_ids("BTC/USD", [i for i, _ in truth], stored_ids)
            wanted = {i for i, _ in truth}
            missing = sorted(wanted - set(stored_ids))
            extra = sorted(set(stored_ids) - wanted)
            result.stored = len(stored_ids)
            result.lost = len(missing)
            result.duplicated = sum(cmp.duplicated.values())
            result.notes.append(
                f"truth ids {min(wanted)}..{max(wanted)}; stored {len(stored_ids):,} rows"
            )
            if missing:
                result.findings.append(f"{len(missing)} trades missing: {id_ranges(missing)}")
            if extra:
                result.findings.append(f"{len(extra)} trades outside [since, until) stored")
            if cmp.duplicated:
                result.findings.append(f"duplicates: {sorted(cmp.duplicated)[:5]}")
    finally:
        sim.proc.stop()
    result.peak_rss_mb = rss.peak_mb("backfill")
    return result


# ----------------------------------------------------------------------------- drill 4


def drill_fuzz(opts: Options, workdir: Path, rss: RssMonitor) -> DrillResult:
    result = DrillResult("fuzz", "10,000+ malformed inputs through the parsers and the API")
    counts_file = workdir / "fuzz-counts.json"
    examples = "300" if opts.quick else "1000"
    env = {
        **os.environ,
        "HISTDATA_TEST_DSN": os.environ.get("HISTDATA_TEST_DSN", opts.dsn),
        "HISTDATA_FUZZ_EXAMPLES": examples,
        "HISTDATA_FUZZ_COUNTS": str(counts_file),
    }
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py"]
    result.commands.append(f"HISTDATA_FUZZ_EXAMPLES={examples} python -m pytest tests/test_fuzz.py")
    proc = Proc("fuzz", argv, workdir / "fuzz.log", env)
    proc.start()
    rss.track("fuzz", proc.pid)
    code = proc.wait(3600)
    proc.close()
    counts: dict[str, dict[str, int]] = {}
    if counts_file.exists():
        counts = json.loads(counts_file.read_text())
    malformed = sum(c.get("malformed", 0) for c in counts.values())
    good = sum(c.get("good", 0) for c in counts.values())
    result.emitted = malformed
    result.stored = good
    for name, c in sorted(counts.items()):
        result.notes.append(
            f"{name}: {c.get('malformed', 0):,} malformed inputs, {c.get('good', 0):,} good ones"
            " kept beside them"
        )
    result.step(f"pytest exited with {code}: {proc.tail(1)}")
    if code != 0:
        result.findings.append("property failures: " + " | ".join(proc.tail(12)))
    if malformed < 10_000:
        result.findings.append(f"only {malformed} malformed inputs were generated (< 10,000)")
    result.peak_rss_mb = rss.peak_mb("fuzz")
    return result


def drill_socket(opts: Options, workdir: Path, rss: RssMonitor) -> DrillResult:
    """bench/socket_drill.py's flood (20,000 idle connections from 4 processes) while the
    service records 2 × RATE trades/s."""
    from bench import socket_drill

    result = DrillResult("socket", "20,000 idle connections on the query socket")
    result.load = load()
    args = argparse.Namespace(dsn=opts.dsn, connections=20_000, processes=4, hold_s=15.0, rate=RATE)
    result.commands.append(
        f"python -m bench.socket_drill --connections 20000 --processes 4 --hold-s 15 --rate {RATE}"
    )
    figures = socket_drill.drill(args)
    timeline = figures["healthz_during"].pop("timeline")
    result.notes.append("figures: " + json.dumps(figures, separators=(",", ":"))[:1500])
    result.notes.append(
        "/healthz during the flood (s since start, seconds, status): "
        + ", ".join(f"{t:.1f}:{s:.3f}:{c}" for t, s, c in timeline)
    )
    during = figures["healthz_during"]
    result.step(
        f"{figures['opened']:,} connections opened, {figures['closed_by_server']:,} closed by"
        f" the server; /healthz {during['answered_200']}/{during['samples']} answered 200"
        f" (max {during['max_s']} s); {figures['trades_stored_during_flood']:,} trades stored"
        f" during the {figures['flood_s']} s flood"
    )
    if during["answered_200"] != during["samples"] or (during["max_s"] or 0) > 1.0:
        result.findings.append("/healthz failed or took more than a second during the flood")
    result.stored = figures["trades_stored_during_flood"]
    if result.stored < len(SYMBOLS) * RATE * figures["flood_s"]:
        result.findings.append("capture fell behind during the flood")
    if figures["tracebacks_in_service_log"]:
        result.findings.append(f"{figures['tracebacks_in_service_log']} tracebacks in the log")
    result.load += " → " + load()
    return result


# ----------------------------------------------------------------------------- report

DRILLS: dict[str, Callable[[Options, Path, RssMonitor], DrillResult]] = {
    "sigkill": drill_sigkill,
    "sigterm": drill_sigterm,
    "pg_stop": drill_pg_stop,
    "ws_faults": drill_ws_faults,
    "slow_consumer": drill_slow_consumer,
    "drop_oldest": drill_drop_oldest,
    "journal_flip": drill_journal_flip,
    "socket": drill_socket,
    "kill_import": drill_kill_import,
    "kill_backfill": drill_kill_backfill,
    "fuzz": drill_fuzz,
}


def table(results: list[DrillResult]) -> list[str]:
    lines = [
        "| drill | emitted | stored | REST-repaired | lost | duplicated |"
        " unreported before repair | crashes (process / actor) | peak RSS | load | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        verdict = "PASS" if r.passed else ("ERROR" if r.error else "FAIL")
        lines.append(
            f"| {r.name} | {r.emitted:,} | {r.stored:,} | {r.rest_repaired:,} | {r.lost:,} |"
            f" {r.duplicated:,} | {r.unreported:,} | {r.process_crashes} / {r.actor_restarts} |"
            f" {r.peak_rss_mb:.0f} MiB | {r.load} | {verdict} |"
        )
    return lines


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs, {memory:.0f} GiB, Python "
        f"{platform.python_version()}, load average {load} at the end"
    )


METHOD = [
    "Each drill runs the real programs (`histdata run`, `histdata import`, `histdata"
    " backfill`, `histdata gaps`, `histdata status`) as child processes against a scratch"
    " database and compares what was stored with the ground truth: the simulator's own"
    " trades or the generated file. The live drills record 2 symbols × 1,500 trades/s from"
    " the simulator (`histdata sim`'s market and faults, run by `python -m bench.drill_common"
    " sim`, which adds one thing `histdata sim` lacks: SIGUSR1 pauses the market and writes"
    " every trade it made, SIGUSR2 resumes it). Each live drill has two phases:",
    "",
    "1. **Before repair.** `histdata run` with `HISTDATA_GAPFILL_ENABLED=false`; the fault;"
    " 15 s more; the simulator is paused and the service given time to store the last id it"
    " emitted; then `histdata gaps SYMBOL --stream trades --start … --end …` over the whole"
    " run. Every trade id from the lowest one stored to the simulator's LAST one that is not"
    " stored must lie inside a range `gaps` reports: a coverage hole (by its time) or a"
    " `trade ids a..b missing` line. A missing trade outside every reported range is a silent"
    " hole, counted as *unreported*, and fails the drill.",
    "2. **After repair.** The simulator trades again; `histdata run` restarts with the gap"
    " filler on (`HISTDATA_GAPFILL_ENABLED=true HISTDATA_GAPFILL_INTERVAL_S=5"
    " HISTDATA_KRAKEN_REST_RATE_PER_S=50`; the simulator allows 60 REST calls/s); after 30 s"
    " the simulator is paused again, the service stores its last id, three more gap-filler"
    " intervals pass, and every id from the first stored to the simulator's last must be"
    " stored exactly once. *REST-repaired* counts the rows whose `source` is `r` (written by"
    " the gap filler from REST), apart from the live ones (`w`), so a repair cannot hide a"
    " loss of the live path: the before-repair check is what judges the live path.",
    "",
    "*Emitted* is, for a live drill, the ids from the first stored to the simulator's last"
    " (last − first + 1, both symbols); *lost* is the ids of first..last not stored after"
    " the repair; *duplicated* the stored"
    " rows beyond one per id; *crashes* are unexpected exits of `histdata run` (a SIGTERM"
    " that needed a SIGKILL after 30 s, systemd's `TimeoutStopSec`, counts) and actor"
    " restarts from `histdata status --json`; *peak RSS* is psutil's resident set of"
    " `histdata run`, sampled every 250 ms; *load* is the 1/5/15-minute load average at the"
    " drill's start → end (2 cores shared with other work: the figures are noisy). A failed"
    " drill is a finding, written up, never retried until it passes.",
]

RULES = [
    "## The coverage rule",
    "",
    "`observed` (a `live` coverage row) is a promise: every trade Kraken emitted in that time"
    " is stored, or in the journal on its way to the database. The live feed earns it like"
    " this (actors/claims.py):",
    "",
    "- A session claims time only up to the exchange time of the newest trade it has received"
    " for that symbol, not including that instant (more trades with the same timestamp may"
    " be in the next frame). The receive clock counts for nothing: trades still in the"
    " socket, the channels or a stalled writer are not claimed.",
    "- Quiet time after the newest trade is claimed only while the feed is provably current:"
    " a message (a heartbeat counts) arrived within 3 s, the newest trade frame lagged its"
    " exchange time by less than 2 s, and the channel behind the feed is not backed up. Then"
    " the claim reaches now − lag − 1 s.",
    "- The mark that carries a claim travels behind the trades it covers and is committed in"
    " the same transaction as (or after) them, or journaled with them; a mark that follows a"
    " dropped trade (a `drop_oldest` overflow, a journal that could not write) is withheld,"
    " and after journal damage the rest of that replay is written without its marks.",
    "- Claims start when the subscriptions are acknowledged, only grow, and never span two"
    " sessions: the time between a close and the next session is a hole until a repair"
    " fills it.",
    "",
    "So a kill, a close, a slow-consumer drop or an overflow can lose trades, but their time"
    " is then not `observed`: `histdata gaps` shows it and the gap filler repairs it.",
    "",
    "## Trade-id continuity",
    "",
    "Kraken numbers each pair's trades 1, 2, 3… (`trade_id` on WebSocket v2, the last field of"
    " a REST `Trades` row; the simulator does the same). From a symbol's lowest stored id"
    " onward, an id that is not stored is a missing trade, whatever coverage says; id-less rows"
    " (3-column CSV imports) take no part. `histdata gaps SYMBOL --start … --end …` prints"
    " each break among the trades of the range as `trade ids a..b missing (n) between T1 and"
    " T2` (T1, T2: the stored trades either side), `; unfillable: reason` once the gap filler"
    " re-fetched the time from REST and the ids still did not come; `/v1/coverage?stream="
    "trades` lists the same breaks under `id_holes`. The gap filler audits the ids each round"
    " (incrementally, from a per-symbol watermark) and re-fetches every break from REST by"
    " time. The drills below use it as an independent check of coverage: a break inside"
    " `observed` time would be a silent hole that coverage alone cannot show.",
]


def write_doc(path: Path, results: list[DrillResult], opts: Options) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Reliability drills",
        "",
        "Written by `make drills` (`python -m bench.drills"
        + (" --quick" if opts.quick else "")
        + (f" --only {' '.join(opts.only)}" if opts.only else "")
        + f"`) on {stamp}; {machine()}.",
        "",
        *METHOD,
        "",
        *table(results),
        "",
    ]
    out += [*RULES, ""]
    for r in results:
        verdict = "PASS" if r.passed else ("ERROR" if r.error else "FAIL")
        out += [f"## {r.name}: {r.title} — {verdict}", "", "Commands:", ""]
        out += [f"    {c}" for c in r.commands] + ["", "What was done:", ""]
        out += [f"{n}. {s}" for n, s in enumerate(r.steps, start=1)] + [""]
        if r.before:
            out += [f"Before repair (gap filler off): {r.before}.", ""]
        out += [
            f"Emitted {r.emitted:,}, stored {r.stored:,} (REST-repaired {r.rest_repaired:,}),"
            f" lost {r.lost:,}, duplicated {r.duplicated:,}, missing before repair and not"
            f" reported by `gaps` {r.unreported:,}, process crashes {r.process_crashes}, actor"
            f" restarts {r.actor_restarts}, peak RSS {r.peak_rss_mb:.0f} MiB, load average"
            f" {r.load or 'n/a'}, {r.seconds:.0f} s.",
            "",
        ]
        if r.notes:
            out += ["Measurements:", ""] + [f"- {n}" for n in r.notes] + [""]
        if r.findings or r.error:
            out += ["**Findings:**", ""] + [f"- {f}" for f in r.findings]
            if r.error:
                out += ["- the drill itself failed:", "", "```", r.error.rstrip(), "```"]
            out += [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drills", description=__doc__)
    parser.add_argument("--only", action="append", choices=sorted(DRILLS), help="repeatable")
    parser.add_argument("--quick", action="store_true", help="shorter durations and sizes")
    parser.add_argument("--dsn", default=os.environ.get("HISTDATA_DRILL_DSN", DEFAULT_DSN))
    parser.add_argument("--out", type=Path, default=DOC, help="report (docs/reliability.md)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    opts = parser.parse_args(argv, namespace=Options())
    names = opts.only or list(DRILLS)
    results: list[DrillResult] = []
    base = Path(tempfile.mkdtemp(prefix="histdata-drills-"))
    print(f"drills: {', '.join(names)}; logs under {base}", flush=True)
    for name in names:
        workdir = base / name
        workdir.mkdir()
        started = time.monotonic()
        began_load = load()
        with RssMonitor() as rss:
            try:
                result = DRILLS[name](opts, workdir, rss)
            except Exception:
                result = DrillResult(name, "harness error", error=traceback.format_exc())
                print(result.error, file=sys.stderr)
        result.seconds = time.monotonic() - started
        result.load = result.load or f"{began_load} → {load()}"
        results.append(result)
        print("\n".join(table([result])), flush=True)
    print()
    print("\n".join(table(results)))
    write_doc(opts.out, results, opts)
    print(f"\nwrote {opts.out}")
    if not opts.keep:
        subprocess.run(["rm", "-rf", str(base)], check=False)
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
