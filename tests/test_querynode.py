"""``histdata serve`` and the read-only path: standbys, read-only users, the schema check.

The standby is real: a private PostgreSQL 15 primary and a ``pg_basebackup -R`` hot standby
streaming from it (skipped only when the PostgreSQL 15 server binaries are absent). Commands
run as subprocesses, as a user runs them.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
import trio

from histdata.client import socket_transport
from histdata.config import Config, DatabaseConfig, QueryConfig, ServiceConfig
from histdata.model import Candle, CandleSource, Side, Trade, datetime_to_ns
from histdata.querynode import QueryNode
from histdata.storage import migrate, open_storage
from histdata.storage.candles import write_candles
from histdata.storage.trades import write_trades

PGBIN = Path("/usr/lib/postgresql/15/bin")
SYMBOL = "BTC/USD"
T0 = datetime(2024, 3, 1, tzinfo=UTC)
RANGE = ("2024-03-01T00:00:00Z", "2024-03-02T00:00:00Z")
_roles = itertools.count()


def sample_trades(first_id: int, count: int, base: datetime = T0) -> list[Trade]:
    start = datetime_to_ns(base)
    return [
        Trade(
            symbol=SYMBOL,
            time_ns=start + i * 7_000_000_000,
            price=Decimal("100.5") + i,
            volume=Decimal("0.25"),
            side=Side.SELL if i % 3 else Side.BUY,
            trade_id=first_id + i,
        )
        for i in range(count)
    ]


def sample_candles(count: int) -> list[Candle]:
    return [
        Candle(
            symbol=SYMBOL,
            time=T0 + timedelta(minutes=i),
            open=Decimal(100 + i),
            high=Decimal(102 + i),
            low=Decimal(99 + i),
            close=Decimal(101 + i),
            volume=Decimal("1.5"),
            vwap=Decimal("100.75"),
            trades=3,
            source=CandleSource.REST,
        )
        for i in range(count)
    ]


async def seed(conninfo: str) -> None:
    async with open_storage(conninfo, pool_max=2) as storage:
        await write_trades(storage, sample_trades(1, 500), source="rest")
        await write_candles(storage, sample_candles(300))


def write_config(tmp_path: Path, url: str, name: str = "c") -> Path:
    path = tmp_path / f"{name}.toml"
    socket = tmp_path / f"{name}.sock"
    path.write_text(
        f'[service]\ndata_dir = "{tmp_path / name}"\n'
        f'[database]\nurl = "{url}"\nconnect_timeout_s = 5\n'
        f'[query]\nsocket = "{socket}"\n'
    )
    return path


async def histdata(*args: str) -> tuple[int, str, str]:
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "histdata.cli", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def socket_of(config: Path) -> str:
    return str(config.with_suffix(".sock"))


@asynccontextmanager
async def serving(config: Path) -> AsyncIterator[str]:
    """``histdata serve -c config`` as a subprocess, until the block ends (SIGTERM)."""
    socket = socket_of(config)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "histdata.cli", "-c", str(config), "serve"],
        stderr=subprocess.PIPE,
    )
    try:
        with trio.fail_after(30):
            while not await trio.Path(socket).exists():
                if process.poll() is not None:
                    assert process.stderr is not None
                    raise AssertionError(
                        f"serve exited: {(await process.stderr.receive_some()).decode()}"
                    )
                await trio.sleep(0.05)
        yield socket
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await process.wait()
    assert process.returncode == 0  # a graceful stop


def get(socket: str, path: str) -> httpx.Response:
    with httpx.Client(transport=socket_transport(socket), base_url="http://h", timeout=30) as c:
        return c.get(path)


async def aget(socket: str, path: str) -> httpx.Response:
    return await trio.to_thread.run_sync(get, socket, path)


@pytest.fixture
def reader(database_url: str) -> Iterator[str]:
    """A login with USAGE on the schema and SELECT on its tables, nothing else."""
    name = f"histdata_ro_{os.getpid()}_{next(_roles)}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{name}" LOGIN'.encode())
        conn.execute(f'GRANT USAGE ON SCHEMA public TO "{name}"'.encode())
        conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{name}"'.encode())
    yield psycopg.conninfo.make_conninfo(database_url, user=name)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DROP OWNED BY "{name}"'.encode())
        conn.execute(f'DROP ROLE "{name}"'.encode())


class TestSchemaCheck:
    @pytest.mark.parametrize(
        ("change", "said"),
        [
            (
                "DELETE FROM schema_migrations WHERE version = (SELECT max(version)"
                " FROM schema_migrations)",
                "older than this histdata",
            ),
            ("INSERT INTO schema_migrations VALUES (9999, 'x', 'y')", "newer than this histdata"),
        ],
    )
    async def test_serve_refuses_another_schema_in_one_line(
        self, database_url: str, tmp_path: Path, change: str, said: str
    ) -> None:
        """A schema older or newer than the code stops ``serve`` with one line, status 1,
        and nothing written (the schema is left as it was)."""
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(change.encode())
            before = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
        status, _, err = await histdata("-c", str(write_config(tmp_path, database_url)), "serve")
        assert status == 1
        assert said in err
        assert len(err.strip().splitlines()) == 1, err
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == before


class TestReadOnlyUser:
    async def test_read_commands_and_serve_work_with_usage_and_select(
        self, database_url: str, reader: str, tmp_path: Path
    ) -> None:
        """A user with USAGE and SELECT only reads candles and trades with ``--direct``, runs
        ``gaps``, and ``serve`` answers candles over the socket and ``status`` for itself."""
        await seed(database_url)
        owner = write_config(tmp_path, database_url, "owner")
        ro = write_config(tmp_path, reader, "ro")
        for kind in ("candles", "trades"):
            args = [kind, SYMBOL, "--start", RANGE[0], "--end", RANGE[1], "--direct"]
            want = await histdata("-c", str(owner), *args)
            got = await histdata("-c", str(ro), *args)
            assert got[0] == 0, got[2]
            assert got[1] == want[1]
            assert len(got[1].splitlines()) > 100
        status, _, err = await histdata(
            "-c", str(ro), "gaps", SYMBOL, "--start", RANGE[0], "--end", RANGE[1]
        )
        assert status in (0, 3), err
        async with serving(ro) as socket:
            served = await aget(
                socket, f"/v1/candles?symbol={SYMBOL}&interval=1h&start={RANGE[0]}&end={RANGE[1]}"
            )
            health = await aget(socket, "/healthz")
            shown = await histdata("-c", str(ro), "status")
        assert shown[0] == 0, shown[2]
        assert "query node" in shown[1]
        assert served.status_code == 200
        assert len(served.json()["candles"]) == 5
        assert health.json()["service"]["role"] == "query"

    async def test_a_missing_privilege_is_one_line(
        self, database_url: str, reader: str, tmp_path: Path
    ) -> None:
        """Without SELECT on trades, ``trades --direct`` says so in one line, status 1."""
        await seed(database_url)
        user = psycopg.conninfo.conninfo_to_dict(reader)["user"]
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'REVOKE SELECT ON trades FROM "{user}"'.encode())
        status, _, err = await histdata(
            "-c",
            str(write_config(tmp_path, reader)),
            "trades",
            SYMBOL,
            "--start",
            RANGE[0],
            "--end",
            RANGE[1],
            "--direct",
        )
        assert status == 1
        assert "permission denied for table trades" in err
        assert len(err.strip().splitlines()) == 1, err


class TestLiveStream:
    async def test_trades_any_writer_commits_reach_stream_clients_within_a_second(
        self, database_url: str, tmp_path: Path
    ) -> None:
        """On the primary a query node relays trades another process commits, by NOTIFY."""
        config = Config(
            service=ServiceConfig(data_dir=str(tmp_path)),
            database=DatabaseConfig(url=database_url),
            query=QueryConfig(socket=str(tmp_path / "q.sock")),
        )
        async with open_storage(database_url, pool_max=2) as collector:
            await write_trades(collector, sample_trades(1, 5), source="live")
            async with (
                open_storage(database_url, pool_max=2, read_only=True) as storage,
                trio.open_nursery() as nursery,
            ):
                node = QueryNode(config, storage, database_url)
                await nursery.start(node.run)
                with trio.fail_after(10):
                    await node.stream_ready.wait()
                assert node.stream_mode == "listen"
                with node.hub.subscribe([SYMBOL]) as sub:
                    await write_trades(
                        collector, sample_trades(100, 3, T0 + timedelta(hours=1)), source="live"
                    )
                    written = trio.current_time()
                    got = []
                    with trio.fail_after(1.0):
                        async for line in sub.events:
                            got.append(orjson.loads(line))
                            if len(got) == 3:
                                break
                    assert trio.current_time() - written < 1.0
                node.shutdown()
        assert [event["trade_id"] for event in got] == [100, 101, 102]


# -- a real hot standby -----------------------------------------------------------------------


def _as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _pg(*args: str) -> None:
    subprocess.run([*_as_postgres(), *args], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def replica() -> Iterator[tuple[str, str]]:
    """``(primary, standby)`` conninfos: a private primary and a streaming hot standby."""
    if not (PGBIN / "initdb").exists() or not (PGBIN / "pg_basebackup").exists():
        pytest.skip("PostgreSQL 15 server binaries are absent")
    root = Path(tempfile.mkdtemp(prefix="histdata-rep-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    port = 20000 + os.getpid() % 20000
    primary, standby = root / "primary", root / "standby"
    opts = f"-c listen_addresses='' -k {root} -c wal_level=replica -c fsync=off"
    try:
        _pg(str(PGBIN / "initdb"), "-D", str(primary), "-A", "trust", "-U", "postgres")
        _pg(
            str(PGBIN / "pg_ctl"),
            "-D",
            str(primary),
            "-l",
            str(root / "primary.log"),
            "-w",
            "start",
            "-o",
            f"{opts} -c port={port}",
        )
        _pg(
            str(PGBIN / "pg_basebackup"),
            "-D",
            str(standby),
            "-R",
            "-h",
            str(root),
            "-p",
            str(port),
            "-U",
            "postgres",
        )
        _pg(
            str(PGBIN / "pg_ctl"),
            "-D",
            str(standby),
            "-l",
            str(root / "standby.log"),
            "-w",
            "start",
            "-o",
            f"{opts} -c port={port + 1} -c hot_standby=on",
        )
        yield (
            f"host={root} port={port} user=postgres dbname=postgres",
            f"host={root} port={port + 1} user=postgres dbname=postgres",
        )
    finally:
        for data in (standby, primary):
            if data.exists():
                subprocess.run(
                    [
                        *_as_postgres(),
                        str(PGBIN / "pg_ctl"),
                        "-D",
                        str(data),
                        "-m",
                        "immediate",
                        "stop",
                    ],
                    capture_output=True,
                    check=False,
                    timeout=60,
                )
        shutil.rmtree(root, ignore_errors=True)


async def stream_mode(socket: str) -> str:
    """The node's stream mode once its relay has chosen one (polled: another process)."""
    with trio.fail_after(10):
        while True:
            mode = str((await aget(socket, "/healthz")).json()["stream"]["mode"])
            if mode != "starting":
                return mode
            await trio.sleep(0.1)


async def caught_up(primary: str, standby: str) -> None:
    """Wait until the standby has replayed everything the primary has written."""
    with psycopg.connect(primary) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    with psycopg.connect(standby, autocommit=True) as conn, trio.fail_after(30):
        while True:
            done = conn.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (row[0],)
            ).fetchone()
            if done and done[0]:
                return
            await trio.sleep(0.05)


class TestHotStandby:
    async def test_serve_and_direct_reads_on_a_standby_equal_the_primary(
        self, replica: tuple[str, str], tmp_path: Path
    ) -> None:
        """On a streaming standby, as a USAGE+SELECT user, ``serve`` answers candles and
        trades equal to the primary's, ``--direct`` reads print the same, and a live
        stream is served by polling (a standby cannot LISTEN)."""
        primary, standby = replica
        migrate(primary, reader_role="histdata_reader")
        with psycopg.connect(primary, autocommit=True) as conn:
            conn.execute("TRUNCATE trades, candles_1m, rollup_dirty, coverage")
            conn.execute("DROP ROLE IF EXISTS standby_reader")
            conn.execute("CREATE ROLE standby_reader LOGIN")
            conn.execute("GRANT USAGE ON SCHEMA public TO standby_reader")
            conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO standby_reader")
        await seed(primary)
        await caught_up(primary, standby)
        ro_standby = psycopg.conninfo.make_conninfo(standby, user="standby_reader")
        on_primary = write_config(tmp_path, primary, "primary")
        on_standby = write_config(tmp_path, ro_standby, "standby")
        paths = {
            "candles": f"/v1/candles?symbol={SYMBOL}&interval=5m&start={RANGE[0]}&end={RANGE[1]}",
            "trades": f"/v1/trades?symbol={SYMBOL}&start={RANGE[0]}&end={RANGE[1]}&format=csv",
        }
        async with serving(on_primary) as p_socket, serving(on_standby) as s_socket:
            for path in paths.values():
                want, got = await aget(p_socket, path), await aget(s_socket, path)
                assert got.status_code == want.status_code == 200
                assert got.content == want.content
                assert len(got.content.splitlines()) > 50 or b'"candles"' in got.content
            assert await stream_mode(s_socket) == "poll"
        for kind in ("candles", "trades"):
            args = [kind, SYMBOL, "--start", RANGE[0], "--end", RANGE[1], "--direct"]
            want_out = await histdata("-c", str(on_primary), *args)
            got_out = await histdata("-c", str(on_standby), *args)
            assert got_out[0] == 0, got_out[2]
            assert got_out[1] == want_out[1]

    async def test_writing_commands_on_a_standby_fail_in_one_line(
        self, replica: tuple[str, str], tmp_path: Path
    ) -> None:
        """``migrate`` and ``run`` against a standby are refused in one line each, not a
        traceback (``run`` at once, not after restarting its storage child)."""
        primary, standby = replica
        migrate(primary)
        await caught_up(primary, standby)
        config = write_config(tmp_path, standby)
        with config.open("a") as toml:  # nothing listens there: the feed just keeps retrying
            toml.write(
                '[kraken]\nrest_url = "http://127.0.0.1:9"\nws_url = "ws://127.0.0.1:9/v2"\n'
            )
        for command in ("migrate", "run"):
            status, _, err = await histdata("-c", str(config), command)
            assert status == 1, err
            assert "read-only" in err or "recovery" in err
            said = [line for line in err.splitlines() if not line.startswith("{")]  # not logs
            assert len(said) == 1, err
            assert said[0].startswith(f"histdata {command}: ")

    async def test_the_stream_on_a_standby_polls_the_replicated_rows(
        self, replica: tuple[str, str], tmp_path: Path
    ) -> None:
        """A query node on a standby (which cannot LISTEN) relays trades committed on the
        primary once they are replayed, by polling each symbol's rows after its last one."""
        primary, standby = replica
        migrate(primary)
        await seed(primary)
        await caught_up(primary, standby)
        config = Config(
            service=ServiceConfig(data_dir=str(tmp_path)),
            database=DatabaseConfig(url=standby),
            query=QueryConfig(socket=str(tmp_path / "q.sock")),
        )
        async with (
            open_storage(primary, pool_max=2) as collector,
            open_storage(standby, pool_max=2, read_only=True) as storage,
            trio.open_nursery() as nursery,
        ):
            node = QueryNode(config, storage, standby, poll_s=0.2)
            await nursery.start(node.run)
            with trio.fail_after(10):
                await node.stream_ready.wait()
            assert node.stream_mode == "poll"
            with node.hub.subscribe([SYMBOL]) as sub:
                fresh = sample_trades(90_000, 3, T0 + timedelta(days=2))
                await write_trades(collector, fresh, source="live")
                got = []
                with trio.fail_after(5):
                    async for line in sub.events:
                        got.append(orjson.loads(line)["trade_id"])
                        if len(got) == 3:
                            break
            node.shutdown()
        assert got == [90_000, 90_001, 90_002]
