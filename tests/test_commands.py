"""The ``histdata`` command line as a user drives it, against PostgreSQL and the simulator.

Commands run in-process through :func:`histdata.cli.main` with their output captured; the
service (``histdata run``) and an interrupted backfill run as real processes. The simulator
runs in a thread of its own, because every command calls ``trio.run`` itself.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import structlog
import trio

from histdata.cli import main
from histdata.commands.run import _explain
from histdata.commands.status import render
from histdata.model import NS_PER_S, CoverageSpan, Trade
from histdata.runlock import hold_run_lock
from histdata.sim import SimConfig, Simulator, open_simulator
from histdata.storage import SchemaError, open_storage
from histdata.storage.coverage import mark_unrecoverable
from histdata.storage.trades import read_trades, write_trades
from histdata.supervisor import SupervisorEscalation
from histdata.timeutil import format_time

T = TypeVar("T")
SYMBOL = "BTC/USD"
FAR = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one command did: its exit status and what it printed."""

    status: int
    out: str
    err: str


class SimThread:
    """The Kraken simulator on its own trio loop in a thread; ``call`` runs code on that loop."""

    def __init__(self, sim: Simulator, token: trio.lowlevel.TrioToken) -> None:
        self.sim = sim
        self._token = token

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def trades(self, symbol: str = SYMBOL) -> list[Trade]:
        return self.call(self.sim.market.trades, symbol)


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Callable[..., Outcome]]:
    """``cli("gaps", "BTC/USD", ...)`` runs a command as a user would, on a fresh database."""
    monkeypatch.chdir(tmp_path)  # no ./config.toml: defaults plus the variables below
    for name in list(os.environ):
        if name.startswith("HISTDATA_") and name != "HISTDATA_TEST_DSN":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HISTDATA_DATABASE_URL", database_url)
    monkeypatch.setenv("HISTDATA_SERVICE_LOG_LEVEL", "warning")
    monkeypatch.setenv("HISTDATA_SERVICE_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HISTDATA_QUERY_SOCKET", str(tmp_path / "var" / "histdata.sock"))
    # The simulator has no limit of its own here; the client's pacing would only add waits.
    monkeypatch.setenv("HISTDATA_KRAKEN_REST_RATE_PER_S", "100")
    monkeypatch.setenv("HISTDATA_KRAKEN_REST_BURST", "100")
    # Commands configure logging onto the captured stderr; put the session's set-up back.
    saved_structlog = structlog.get_config()
    saved_handlers, saved_level = logging.root.handlers[:], logging.root.level

    def run(*argv: str) -> Outcome:
        capsys.readouterr()
        status = main(list(argv))
        captured = capsys.readouterr()
        return Outcome(status, captured.out, captured.err)

    yield run
    structlog.configure(**saved_structlog)
    logging.root.handlers[:] = saved_handlers
    logging.root.setLevel(saved_level)


@pytest.fixture
def sim_thread(cli: Callable[..., Outcome], monkeypatch: pytest.MonkeyPatch) -> Iterator[SimThread]:
    """A simulator with 10 minutes of BTC/USD history, trading stopped (a fixed truth).

    It depends on ``cli`` so that its URLs are set after ``cli`` cleared the environment.
    """
    config = SimConfig(seed=5, symbols=(SYMBOL,), trade_rate_per_s=4.0, history_s=600.0)
    with run_simulator(config) as handle:
        handle.call(handle.sim.pause_trading)
        monkeypatch.setenv("HISTDATA_KRAKEN_REST_URL", handle.sim.rest_url)
        monkeypatch.setenv("HISTDATA_KRAKEN_WS_URL", handle.sim.ws_url)
        yield handle


@contextmanager
def run_simulator(config: SimConfig) -> Iterator[SimThread]:
    """Run the simulator on a trio loop in a thread until the block exits."""
    ready: queue.Queue[tuple[SimThread, trio.Event] | BaseException] = queue.Queue()

    async def serve() -> None:
        async with open_simulator(config) as sim:
            stop = trio.Event()
            ready.put((SimThread(sim, trio.lowlevel.current_trio_token()), stop))
            await stop.wait()

    def run() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:  # handed to the test thread, which waits on the queue
            ready.put(exc)

    thread = threading.Thread(target=run, name="simulator", daemon=True)
    thread.start()
    item = ready.get(timeout=60)
    if isinstance(item, BaseException):
        raise item
    handle, stop = item
    try:
        yield handle
    finally:
        handle.call(stop.set)
        thread.join(timeout=30)


def stored_trades(database_url: str, start: datetime, end: datetime) -> list[Trade]:
    async def read() -> list[Trade]:
        async with open_storage(database_url, pool_max=1, apply_migrations=False) as storage:
            return await read_trades(storage, SYMBOL, start, end)

    return trio.run(read)


def identity(trades: list[Trade]) -> list[tuple[Any, ...]]:
    return [(t.trade_id, t.time_ns, t.price, t.volume, t.side) for t in trades]


def iso(value: datetime) -> str:
    return format_time(value)


def minute_floor(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // NS_PER_S // 60 * 60, UTC)


class TestMigrate:
    def test_applies_then_reports_up_to_date(
        self, cli: Callable[..., Outcome], empty_database_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A first migrate lists each file applied; a second changes nothing and says so."""
        monkeypatch.setenv("HISTDATA_DATABASE_URL", empty_database_url)
        first = cli("migrate")
        assert first.status == 0
        applied = [line for line in first.out.splitlines() if line.startswith("applied ")]
        assert applied[0] == "applied 0001_core.sql"
        assert "schema migrated at version" in first.out
        dbname = psycopg.conninfo.conninfo_to_dict(empty_database_url)["dbname"]
        assert f"on database {dbname} at " in first.out
        second = cli("migrate")
        assert second.status == 0
        assert second.out.splitlines() == [
            first.out.splitlines()[-1].replace("schema migrated", "schema up to date")
        ]

    def test_unreachable_database_is_one_line(
        self, cli: Callable[..., Outcome], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A database that refuses connections exits 1 with one line naming it, no traceback."""
        monkeypatch.setenv("HISTDATA_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/histdata")
        result = cli("migrate")
        assert result.status == 1
        assert result.err.count("\n") == 1
        assert result.err.startswith("histdata migrate: cannot use the database histdata at")
        assert "127.0.0.1:1" in result.err


class TestConfigErrors:
    def test_bad_type_in_the_file(self, cli: Callable[..., Outcome], tmp_path: Path) -> None:
        """A wrong type in the -c file exits 2 with one line naming the key and the file."""
        path = tmp_path / "bad.toml"
        path.write_text('[database]\npool_max = "many"\n')
        result = cli("-c", str(path), "migrate")
        assert result.status == 2
        assert result.out == ""
        assert result.err.count("\n") == 1
        assert "[database] pool_max" in result.err
        assert str(path) in result.err

    def test_unknown_key_with_c_after_the_command(
        self, cli: Callable[..., Outcome], tmp_path: Path
    ) -> None:
        """``-c`` after the command works too; an unknown key is named with the file."""
        path = tmp_path / "typo.toml"
        path.write_text('[kraken]\nsymbol = ["BTC/USD"]\n')
        result = cli("status", "-c", str(path))
        assert result.status == 2
        assert result.err.count("\n") == 1
        assert "unknown key [kraken] symbol" in result.err
        assert str(path) in result.err

    def test_bad_environment_value(
        self, cli: Callable[..., Outcome], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A bad HISTDATA_* value exits 2 with one line naming the key and the variable."""
        monkeypatch.setenv("HISTDATA_KRAKEN_REST_RATE_PER_S", "fast")
        result = cli("gaps", SYMBOL)
        assert result.status == 2
        assert result.err.count("\n") == 1
        assert "[kraken] rest_rate_per_s" in result.err
        assert "$HISTDATA_KRAKEN_REST_RATE_PER_S" in result.err


T0 = 1_700_000_040  # a whole minute


class TestImport:
    def test_csv_and_zip_summary_then_nothing_new(
        self, cli: Callable[..., Outcome], tmp_path: Path
    ) -> None:
        """The summary gives read/inserted/present/rejected with reasons and line numbers;
        importing the same files again inserts nothing."""
        trades = [f"{T0 + i},100.{i},0.5\n" for i in range(10)]
        trades[3] = f"{T0 + 3},abc,0.5\n"
        trades[7] = f"{T0 + 7},100.7\n"
        csv_path = tmp_path / "XBTUSD.csv"
        csv_path.write_text("".join(trades))
        candles = [f"{T0 + i * 60},10,11,9,10.5,2.5,3\n" for i in range(5)]
        candles[2] = f"{T0 + 120},10,8,9,10.5,2.5,3\n"  # high below low
        archive = tmp_path / "Kraken_OHLCVT.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("Kraken_OHLCVT/ETHUSD_1.csv", "".join(candles))
        first = cli("import", str(csv_path), str(archive))
        assert first.status == 0
        lines = first.out.splitlines()
        assert lines[0].startswith(f"{csv_path}: BTC/USD trades (time,price,volume)")
        assert lines[1] == "  read 10, inserted 8, already present 0, rejected 2"
        assert "  rejected bad_columns: 1" in lines
        assert any(line.strip().startswith("line 8:") for line in lines)
        assert any(line.strip().startswith("line 4:") for line in lines)
        member = f"{archive}:Kraken_OHLCVT/ETHUSD_1.csv: ETH/USD 1m candles"
        assert any(line.startswith(member) for line in lines)
        assert "  read 5, inserted 4, already present 0, rejected 1" in lines
        assert "  rejected bad_ohlc: 1" in lines
        assert lines[-1] == "total: 2 files, read 15, inserted 12, already present 0, rejected 3"
        again = cli("import", str(csv_path), str(archive))
        assert again.status == 0
        last = again.out.splitlines()[-1]
        assert last == "total: 2 files, read 15, inserted 0, already present 12, rejected 3"

    def test_missing_path_is_a_usage_error(
        self, cli: Callable[..., Outcome], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A path that does not exist stops before anything is imported, exit status 2."""
        with pytest.raises(SystemExit) as exit_info:
            cli("import", str(tmp_path / "nothere.csv"))
        assert exit_info.value.code == 2
        assert "no such file or folder" in capsys.readouterr().err

    def test_unrecognised_file_exits_1_with_its_reason(
        self, cli: Callable[..., Outcome], tmp_path: Path
    ) -> None:
        """A CSV that is no Kraken file is listed as skipped with the reason, exit status 1."""
        folder = tmp_path / "downloads"
        folder.mkdir()
        (folder / "notes.csv").write_text("hello,world\n")
        result = cli("import", str(folder))
        assert result.status == 1
        assert f"{folder / 'notes.csv'}: skipped (bad_name: " in result.out


class TestBackfill:
    def test_stores_exactly_the_simulators_trades_through_a_throttle(
        self, cli: Callable[..., Outcome], sim_thread: SimThread, database_url: str
    ) -> None:
        """Backfill stores every simulated trade once, despite a throttled request; a second
        run finds the range recorded and asks Kraken nothing."""
        truth = sim_thread.trades()
        since = minute_floor(truth[0].time_ns)
        until = minute_floor(truth[-1].time_ns) - timedelta(minutes=1)
        expected = [t for t in truth if since <= t.time < until]
        sim_thread.call(sim_thread.sim.faults.throttle_next, 1)
        first = cli("backfill", SYMBOL, "--since", iso(since), "--until", iso(until))
        assert first.status == 0, first.err
        assert f"{len(expected)} trades inserted, 0 already present" in first.out
        assert first.out.rstrip().endswith(f"trades now recorded up to {iso(until)}")
        assert identity(stored_trades(database_url, *FAR)) == identity(expected)
        stats = sim_thread.call(sim_thread.sim.statistics)
        assert stats.rest.injected_throttles == 1
        requests = sum(stats.rest.requests.values())
        again = cli("backfill", SYMBOL, "--since", iso(since), "--until", iso(until))
        assert again.status == 0
        assert "already recorded" in again.out
        assert "nothing to fetch" in again.out
        stats = sim_thread.call(sim_thread.sim.statistics)
        assert sum(stats.rest.requests.values()) == requests
        assert len(stored_trades(database_url, *FAR)) == len(expected)

    def test_interrupted_run_resumes_from_its_cursor(
        self, cli: Callable[..., Outcome], sim_thread: SimThread, database_url: str
    ) -> None:
        """Ctrl-C keeps the committed pages; the same command then resumes and completes."""
        truth = sim_thread.trades()
        since = minute_floor(truth[0].time_ns)
        until = minute_floor(truth[-1].time_ns)
        expected = [t for t in truth if since <= t.time < until]
        assert len(expected) > 1000  # more than one page
        faults = sim_thread.sim.faults
        sim_thread.call(setattr, faults, "slow_s", 1.0)  # a second a page: time to interrupt
        command = [sys.executable, "-m", "histdata.cli", "backfill", SYMBOL]
        command += ["--since", iso(since), "--until", iso(until)]
        # A job started in the background by a non-interactive shell (CI under nohup, `&`)
        # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler:
        # give the child the default disposition, as a terminal would.
        with subprocess.Popen(
            command, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint
        ) as process:
            try:
                _wait_for_cursor(database_url)
            finally:
                process.send_signal(signal.SIGINT)
                _, err = process.communicate(timeout=60)
        assert process.returncode == 130
        assert "running the same command again resumes" in err
        kept = len(stored_trades(database_url, *FAR))
        assert 0 < kept < len(expected)
        sim_thread.call(setattr, faults, "slow_s", 0.0)
        result = cli("backfill", SYMBOL, "--since", iso(since), "--until", iso(until))
        assert result.status == 0
        assert "(resumed from " in result.out
        assert f"{len(expected) - kept} trades inserted" in result.out
        assert identity(stored_trades(database_url, *FAR)) == identity(expected)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_cursor(database_url: str) -> None:
    """Wait (bounded) until a backfill has committed a page with its cursor."""
    deadline = time.monotonic() + 60
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM cursors WHERE name LIKE 'backfill:%'").fetchone():
                return
            time.sleep(0.05)
    raise AssertionError("the backfill committed no page")


class TestGaps:
    def test_holes_exit_3_until_repaired(
        self, cli: Callable[..., Outcome], sim_thread: SimThread, database_url: str
    ) -> None:
        """Holes are listed with exit 3; --repair fills them from the simulator; then 0."""
        truth = sim_thread.trades()
        until = minute_floor(truth[-1].time_ns) - timedelta(minutes=1)
        since = until - timedelta(minutes=5)
        window = ["--since", iso(since), "--until", iso(until)]
        report = cli("gaps", SYMBOL, *window)
        assert report.status == 3
        assert f"  {iso(since)} .. {iso(until)}  not observed" in report.out.splitlines()
        repaired = cli("gaps", SYMBOL, *window, "--repair")
        assert repaired.status == 0, repaired.out
        assert repaired.out.startswith(f"repaired {SYMBOL}: ")
        after = cli("gaps", SYMBOL, *window)
        assert after.status == 0
        assert after.out.count("  no gaps") == 2  # trades and candles
        expected = [t for t in truth if since <= t.time < until]
        assert identity(stored_trades(database_url, since, until)) == identity(expected)

    def test_live_tail_still_being_recorded_is_no_hole(
        self, cli: Callable[..., Outcome], database_url: str
    ) -> None:
        """Coverage that reaches a few seconds ago, as a running service leaves it, reports
        no gaps by default: the default end lags now by a minute."""
        now = datetime.now(UTC)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO symbols (symbol, rest_key, altname, wsname, price_decimals,"
                " volume_decimals) VALUES ('BTC/USD', 'XXBTZUSD', 'XBTUSD', 'XBT/USD', 1, 8)"
                " ON CONFLICT DO NOTHING"
            )
            for stream in ("trades", "candles"):
                conn.execute(
                    "INSERT INTO coverage (symbol_id, stream, source, during)"
                    " SELECT id, %s, 'live', tstzrange(%s, %s) FROM symbols"
                    " WHERE symbol = 'BTC/USD'",
                    (stream, now - timedelta(minutes=10), now - timedelta(seconds=3)),
                )
        result = cli("gaps", SYMBOL, "--since", iso(now - timedelta(minutes=9)))
        assert result.status == 0, result.out
        assert result.out.count("  no gaps") == 2

    def test_bad_time_says_what_is_accepted(
        self, cli: Callable[..., Outcome], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Unparseable time text is a usage error that quotes it and names the accepted forms."""
        with pytest.raises(SystemExit) as exit_info:
            cli("gaps", SYMBOL, "--since", "yesterday")
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "argument --start/--since: bad time 'yesterday'; use ISO 8601" in err

    def test_empty_range_is_a_usage_error(self, cli: Callable[..., Outcome]) -> None:
        """A range whose start is not before its end exits 2 and says which flags to fix."""
        result = cli("gaps", SYMBOL, "--start", "2024-01-02", "--end", "2024-01-01")
        assert result.status == 2
        assert "--start must be earlier than --end" in result.err


class TestStatus:
    def test_no_service_exits_1(self, cli: Callable[..., Outcome], tmp_path: Path) -> None:
        """With nothing on the socket, status says histdata is not running and exits 1."""
        result = cli("status")
        assert result.status == 1
        socket = tmp_path / "var" / "histdata.sock"
        assert result.err == (
            f"histdata is not running (nothing answers on {socket}: No such file or directory);"
            " start it with `histdata run`\n"
        )

    def test_running_service_shows_data_arriving(
        self, cli: Callable[..., Outcome], database_url: str, tmp_path: Path
    ) -> None:
        """Against `histdata run` on the simulator, status lists the actors and the age of the
        last trade per symbol, and exits 0 once data arrives."""
        config = SimConfig(seed=6, symbols=(SYMBOL,), trade_rate_per_s=20.0, history_s=60.0)
        with run_simulator(config) as handle:
            # The variables the cli fixture set (database, data_dir, socket) plus Kraken's.
            env = os.environ | {
                "HISTDATA_KRAKEN_REST_URL": handle.sim.rest_url,
                "HISTDATA_KRAKEN_WS_URL": handle.sim.ws_url,
                "HISTDATA_KRAKEN_SYMBOLS": SYMBOL,
            }
            command = [sys.executable, "-m", "histdata.cli", "run"]
            with subprocess.Popen(
                command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
            ) as process:
                try:
                    shown = _wait_for_healthy_status(cli, process)
                finally:
                    process.send_signal(signal.SIGTERM)
                    _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err[-2000:]
        lines = shown.out.splitlines()
        assert "healthy" in lines[0]
        assert "UNHEALTHY" not in lines[0]
        for actor in ("storage", "live", "feed", "flusher", "rollup", "gapfiller", "query"):
            assert any(line.split()[:2] == [actor, "running"] for line in lines), actor
        (symbol_line,) = [line for line in lines if line.split()[:1] == [SYMBOL]]
        assert "last trade" in symbol_line
        assert " s ago" in symbol_line


def _wait_for_healthy_status(
    cli: Callable[..., Outcome], process: subprocess.Popen[str]
) -> Outcome:
    """Poll `histdata status` (bounded) until it exits 0 with a trade seen for the symbol."""
    deadline = time.monotonic() + 60
    result = Outcome(-1, "", "")
    while time.monotonic() < deadline and process.poll() is None:
        result = cli("status")
        if result.status == 0 and "last trade never" not in result.out:
            return result
        time.sleep(0.2)
    raise AssertionError(f"no healthy status with data: {result}")


def _trades_csv(path: Path, count: int) -> Path:
    """A Kraken trades CSV of ``count`` BTC/USD trades, one a second from T0."""
    path.write_text("".join(f"{T0 + i},100.{i % 10},0.5\n" for i in range(count)))
    return path


class TestQuietOutput:
    def test_closed_pipe_is_quiet(self, cli: Callable[..., Outcome], tmp_path: Path) -> None:
        """`histdata trades … | head` prints nothing on stderr and exits 0."""
        assert cli("import", str(_trades_csv(tmp_path / "XBTUSD.csv", 20_000))).status == 0
        command = [sys.executable, "-m", "histdata.cli", "trades", SYMBOL, "--direct"]
        command += ["--start", str(T0), "--end", str(T0 + 20_000)]
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path
        ) as process:
            assert process.stdout is not None
            assert process.stderr is not None
            assert process.stdout.read(64).startswith(b"time,price,volume")
            process.stdout.close()  # what `head` does once it has its lines
            err = process.stderr.read().decode()
            process.wait(timeout=60)
        assert err == ""
        assert process.returncode == 0

    def test_one_shot_commands_log_no_info_unless_verbose(
        self, cli: Callable[..., Outcome], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With the default log level, import prints its summary only; -v adds info logs."""
        monkeypatch.delenv("HISTDATA_SERVICE_LOG_LEVEL")
        monkeypatch.setenv("HISTDATA_SERVICE_LOG_FORMAT", "json")
        csv_path = _trades_csv(tmp_path / "XBTUSD.csv", 10)
        quiet = cli("import", str(csv_path))
        assert quiet.status == 0
        assert quiet.err == ""
        verbose = cli("import", "-v", str(csv_path))
        assert verbose.status == 0
        assert '"event": "import_file_done"' in verbose.err
        before_command = cli("-v", "import", str(csv_path))
        assert '"event": "import_file_done"' in before_command.err


class TestExitStatus:
    @pytest.mark.parametrize(
        "argv",
        [
            ("candles", "NOPE/USD", "--start", "2024-01-01", "--direct"),
            ("trades", "NOPE/USD", "--start", "2024-01-01"),
            ("gaps", "NOPE/USD"),
            ("backfill", "NOPE/USD", "--since", "2024-01-01"),
            ("run",),
        ],
    )
    def test_unknown_symbol_is_a_usage_error_everywhere(
        self, cli: Callable[..., Outcome], monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...]
    ) -> None:
        """An unknown symbol exits 2 with one line naming it, in every command."""
        monkeypatch.setenv("HISTDATA_KRAKEN_SYMBOLS", "NOPE/USD")
        result = cli(*argv)
        assert result.status == 2, result.err
        # `run` asks Kraken's AssetPairs first (the pair might be new); where Kraken cannot be
        # reached the service logs that before the error line.
        errors = [line for line in result.err.splitlines() if not line.startswith("{")]
        assert len(errors) == 1
        assert "NOPE/USD" in errors[0]

    def test_second_run_says_already_running(
        self, cli: Callable[..., Outcome], tmp_path: Path
    ) -> None:
        """A run on a data_dir whose lock is held exits 1 at once, naming the holder's pid."""
        with hold_run_lock(tmp_path / "var"):
            result = cli("run")
        assert result.status == 1
        assert result.err == (
            f"histdata run: already running (pid {os.getpid()}) on data_dir {tmp_path / 'var'};"
            " stop it first, or give this one another [service] data_dir\n"
        )
        assert not (tmp_path / "var" / "histdata.sock").exists()

    def test_a_nested_escalation_names_the_child_that_failed(self) -> None:
        """When storage under the database supervisor gives up, the one line names storage
        and its error, not only the database branch the root gave up on."""
        schema = SchemaError("the schema is version 9; this histdata knows up to 8")
        inner = SupervisorEscalation("database", "storage", "fatal error", fatal=True)
        inner.__cause__ = schema
        outer = SupervisorEscalation("root", "database", "fatal error", fatal=True)
        outer.__cause__ = inner
        assert _explain(outer) == (
            "supervisor 'database' gave up on child 'storage': fatal error; last error:"
            " SchemaError: the schema is version 9; this histdata knows up to 8"
        )

    def test_read_of_an_unrecorded_data_dir_exits_2(
        self, cli: Callable[..., Outcome], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Reading with no database and no data_dir says so instead of an empty CSV."""
        monkeypatch.delenv("HISTDATA_DATABASE_URL")
        monkeypatch.setenv("HISTDATA_SERVICE_DATA_DIR", str(tmp_path / "elsewhere"))
        result = cli("candles", SYMBOL, "--start", "2024-01-01", "--end", "2024-01-02")
        assert result.status == 2
        assert result.out == ""
        assert result.err.startswith(f"histdata: no database in {tmp_path / 'elsewhere'}")
        assert not (tmp_path / "elsewhere" / "pg").exists()


class TestEnvironment:
    def test_misspelt_override_stops_with_the_nearest_name(
        self, cli: Callable[..., Outcome], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """HISTDATA_DATABASE_ULR exits 2 and names HISTDATA_DATABASE_URL."""
        monkeypatch.setenv("HISTDATA_DATABASE_ULR", "postgresql://h@db/x")
        result = cli("migrate")
        assert result.status == 2
        assert "did you mean $HISTDATA_DATABASE_URL?" in result.err

    def test_stray_variable_is_a_one_line_warning(
        self, cli: Callable[..., Outcome], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A HISTDATA_* variable histdata does not read is named in one warning line."""
        monkeypatch.setenv("HISTDATA_VERBOSE", "1")
        result = cli("status")
        assert result.err.splitlines()[0].startswith(
            "histdata: warning: $HISTDATA_VERBOSE is neither a config key"
        )


class TestCompletion:
    @pytest.mark.parametrize(
        ("line", "expected"),
        [
            ("histdata can", "candles"),
            ("histdata candles BTC/USD --for", "--format"),
            ("histdata backfill XBTU", "XBTUSD"),
            ("histdata trades ETH/U", "ETH/USD"),
        ],
    )
    def test_bash_completion_offers_commands_and_options(
        self, tmp_path: Path, line: str, expected: str
    ) -> None:
        """argcomplete completes command names, a command's own options and symbols."""
        out = tmp_path / "completions"
        env = os.environ | {
            "_ARGCOMPLETE": "1",
            "COMP_LINE": line,
            "COMP_POINT": str(len(line)),
            "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
        }
        subprocess.run([sys.executable, "-m", "histdata.cli"], env=env, check=True, timeout=60)
        assert expected in [word.strip() for word in out.read_text().split("\v")]


def _snapshot(symbols: dict[str, dict[str, Any]], **flusher: Any) -> dict[str, Any]:
    """A /healthz snapshot as the service serves it, reduced to what status renders."""
    return {
        "healthy": False,
        "unhealthy_reasons": ["feed down for 75 s"],
        "service": {"version": "0", "pid": 1, "uptime_s": 10.0, "healthy": False},
        "supervisor": {"children": []},
        "channels": [],
        "feed": {
            "connected": False,
            "sessions": 1,
            "closes": {},
            "last_message_age_s": 1.0,
            "symbols": symbols,
            "rejections": {},
        },
        "flusher": {
            "database_up": True,
            "trades_inserted": 0,
            "trades_present": 0,
            "trades_journaled": 0,
            "trades_replayed": 0,
        }
        | flusher,
        "journal": {"bytes": 0, "max_bytes": 1024, "segments": 0, "torn_records": 0},
        "drops": {"channel live.trades": 0, "quarantined batches": 2},
    }


class TestStatusText:
    def test_hundreds_of_symbols_are_summarised(self) -> None:
        """300 symbols give one count line and the five most lagging, never-traded first."""
        symbols: dict[str, dict[str, Any]] = {
            f"S{i:03}/USD": {"last_trade_age_s": float(i), "subscription_error": None}
            for i in range(300)
        }
        symbols["S007/USD"]["last_trade_age_s"] = None
        symbols["S008/USD"]["subscription_error"] = "Currency pair not supported"
        lines = render(_snapshot(symbols)).splitlines()
        assert (
            "  symbols: 300 subscribed, 298 with trades, 1 without a trade yet,"
            " 1 subscription failures"
        ) in lines
        listed = [line.split()[0] for line in lines if line.startswith("  S")]
        assert listed == ["S008/USD", "S007/USD", "S299/USD", "S298/USD", "S297/USD", "S296/USD"]
        assert "  unhealthy: feed down for 75 s" in lines

    def test_trades_new_and_present_are_separate(self) -> None:
        """Status shows new and already-present trades that add up to those written."""
        text = render(_snapshot({}, trades_inserted=916, trades_present=122))
        assert "trades stored 916 new, 122 already present (of 1038 written" in text
        assert text.splitlines()[-1] == "drops: quarantined batches 2"

    def test_connections_are_counted(self) -> None:
        """A feed over several connections says how many; a single one says nothing extra."""
        snapshot = _snapshot({})
        snapshot["feed"]["connections"] = 3
        assert "feed: DISCONNECTED (3 connections), sessions" in render(snapshot)
        snapshot["feed"]["connections"] = 1
        assert "feed: DISCONNECTED, sessions" in render(snapshot)


def store_listing_fixture(database_url: str) -> None:
    """Ten BTC/USD trades a minute apart, observed except for [3m, 5m), of which [3m, 4m) is
    marked unrecoverable."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    trades = [
        Trade(SYMBOL, (int(start.timestamp()) + 60 * i) * NS_PER_S, Decimal(1), Decimal(1))
        for i in range(10)
    ]
    spans = [(start, start + timedelta(minutes=3)), (start + timedelta(minutes=5), FAR[1])]

    async def write() -> None:
        async with open_storage(database_url, pool_max=1) as storage:
            await write_trades(
                storage,
                trades,
                source="csv",
                coverage=[(SYMBOL, CoverageSpan("trades", "csv", a, b)) for a, b in spans],
            )
            await mark_unrecoverable(
                storage,
                SYMBOL,
                "trades",
                start + timedelta(minutes=3),
                start + timedelta(minutes=4),
                "test",
            )

    trio.run(write)


class TestSymbols:
    def test_lists_rows_coverage_holes_and_marks(
        self, cli: Callable[..., Outcome], database_url: str
    ) -> None:
        """One line per stored stream: span, rows, observed share, holes, unrecoverable."""
        store_listing_fixture(database_url)
        result = cli("symbols")
        assert result.status == 0, result.err
        lines = result.out.splitlines()
        assert lines[0].split() == [
            *("SYMBOL", "STREAM", "FIRST", "LAST", "ROWS", "COVERAGE", "HOLES", "UNRECOVERABLE"),
        ]
        assert lines[1].split() == [
            *("BTC/USD", "trades", "2024-01-01T00:00:00Z", "2024-01-01T00:09:00Z", "10"),
            *("77.78%", "1", "1", "(0:01:00)"),
        ]
        assert lines[-1].startswith("1 symbol with data; 11 more known pairs with nothing stored")

    def test_json(self, cli: Callable[..., Outcome], database_url: str) -> None:
        """--json gives the same figures as numbers."""
        store_listing_fixture(database_url)
        result = cli("symbols", "--json")
        assert result.status == 0, result.err
        body = json.loads(result.out)
        (stream,) = body["streams"]
        assert (stream["symbol"], stream["rows"], stream["holes"]) == (SYMBOL, 10, 1)
        assert stream["coverage"] == pytest.approx(7 / 9, abs=1e-6)
        assert stream["unrecoverable_s"] == 60.0
        assert body["refresh"] is None

    def test_refresh_stores_asset_pairs(
        self, cli: Callable[..., Outcome], sim_thread: SimThread, database_url: str
    ) -> None:
        """--refresh loads the simulator's AssetPairs; later listings know only those pairs."""
        result = cli("symbols", "--refresh")
        assert result.status == 0, result.err
        assert result.out.splitlines()[0].startswith("AssetPairs: 1 pairs listed, 1 new")
        again = cli("symbols")
        assert again.out.splitlines()[-1] == (
            "0 symbols with data; 1 more known pairs with nothing stored (online 1)"
        )

    def test_refresh_without_kraken_is_one_line(
        self, cli: Callable[..., Outcome], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With Kraken unreachable, --refresh exits 1 with one line naming the URL."""
        monkeypatch.setenv("HISTDATA_KRAKEN_REST_URL", "http://127.0.0.1:9")
        monkeypatch.setenv("HISTDATA_KRAKEN_REQUEST_TIMEOUT_S", "2")
        result = cli("symbols", "--refresh")
        assert result.status == 1
        errors = [line for line in result.err.splitlines() if line.startswith("histdata")]
        assert len(errors) == 1
        assert errors[0].startswith("histdata symbols: cannot refresh AssetPairs from http://127")
        assert "ConnectError" in errors[0]


def test_import_and_run_keep_pandas_out_and_arrow_still_converts() -> None:
    # pyarrow imports an installed pandas on its first conversion of a Python value (0.36 s):
    # the commands that never build a frame refuse it, and pyarrow must then work unchanged.
    pytest.importorskip("pandas")
    script = (
        "import sys\n"
        "from histdata.commands.common import without_pandas\n"
        "without_pandas()\n"
        "import pyarrow as pa, pyarrow.compute as pc\n"
        "assert pc.less_equal(pa.array(['1', '22']).cast(pa.int64()), 12).to_pylist()"
        " == [True, False]\n"
        "assert pa.scalar('x').as_py() == 'x'\n"
        "assert 'pandas' not in sys.modules\n"
        "try:\n"
        "    import pandas\n"
        "except ModuleNotFoundError as exc:\n"
        "    assert 'kept out' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('pandas was imported')\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
