"""Tests for histdata.supervisor.systemd: sd_notify over a real Unix datagram socket."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from histdata.supervisor import systemd


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def notify_socket(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket bound in a temp dir, with $NOTIFY_SOCKET pointing at it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        clean_env.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


class TestNotify:
    def test_unset_socket_is_a_noop(self, clean_env: pytest.MonkeyPatch) -> None:
        """Without $NOTIFY_SOCKET every call returns False and does nothing."""
        assert systemd.notify("READY=1") is False
        assert systemd.ready() is False
        assert systemd.watchdog() is False

    def test_lifecycle_messages_reach_the_socket(self, notify_socket: socket.socket) -> None:
        """ready, status, watchdog and stopping send the sd_notify assignments."""
        assert systemd.ready()
        assert received(notify_socket) == "READY=1"
        assert systemd.status("catching up BTC/USD")
        assert received(notify_socket) == "STATUS=catching up BTC/USD"
        assert systemd.watchdog()
        assert received(notify_socket) == "WATCHDOG=1"
        assert systemd.stopping()
        assert received(notify_socket) == "STOPPING=1"

    def test_status_cannot_inject_other_assignments(self, notify_socket: socket.socket) -> None:
        """A newline in the status text cannot smuggle a second assignment (e.g. READY=1)."""
        assert systemd.status("draining\nREADY=1")
        assert received(notify_socket) == "STATUS=draining READY=1"

    def test_abstract_namespace_address(self, clean_env: pytest.MonkeyPatch) -> None:
        """An address starting with @ is an abstract-namespace socket."""
        name = f"histdata-test-{uuid.uuid4().hex}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind("\0" + name)
            sock.settimeout(5)
            clean_env.setenv("NOTIFY_SOCKET", "@" + name)
            assert systemd.ready()
            assert received(sock) == "READY=1"

    def test_missing_socket_returns_false(
        self, clean_env: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """A socket path nobody listens on makes notify return False instead of raising."""
        clean_env.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
        assert systemd.ready() is False

    def test_unsupported_address_returns_false(self, clean_env: pytest.MonkeyPatch) -> None:
        """An address that is neither a path nor @abstract (e.g. vsock:) is not attempted."""
        clean_env.setenv("NOTIFY_SOCKET", "vsock:2:1234")
        assert systemd.ready() is False


class TestWatchdog:
    def test_interval_from_watchdog_usec(self, clean_env: pytest.MonkeyPatch) -> None:
        """WATCHDOG_USEC is converted to seconds."""
        clean_env.setenv("WATCHDOG_USEC", "30000000")
        assert systemd.watchdog_interval_s() == 30.0

    @pytest.mark.parametrize("value", ["", "0", "-5", "soon"])
    def test_disabled_or_invalid_interval_is_none(
        self, clean_env: pytest.MonkeyPatch, value: str
    ) -> None:
        """An unset, zero, negative or malformed WATCHDOG_USEC means no watchdog."""
        clean_env.setenv("WATCHDOG_USEC", value)
        assert systemd.watchdog_interval_s() is None

    def test_watchdog_for_another_pid_is_ignored(self, clean_env: pytest.MonkeyPatch) -> None:
        """WATCHDOG_PID naming another process means the watchdog is not ours."""
        clean_env.setenv("WATCHDOG_USEC", "1000000")
        clean_env.setenv("WATCHDOG_PID", str(os.getpid() + 1))
        assert systemd.watchdog_interval_s() is None
        clean_env.setenv("WATCHDOG_PID", str(os.getpid()))
        assert systemd.watchdog_interval_s() == 1.0
