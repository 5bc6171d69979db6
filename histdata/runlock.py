"""One ``histdata run`` per data directory: an ``flock`` on ``<data_dir>/run.lock``.

Two services on one ``data_dir`` would share its journal and embedded database and fight
over the query socket; the second used to start its feed and then die in an exception
group. The lock is taken before anything starts, and the kernel releases it when the
holder exits, however it exits, so a crashed service never leaves a stale lock behind.
The file holds the holder's pid, for the message the second one prints.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from histdata.errors import FatalError

__all__ = ["AlreadyRunning", "hold_run_lock"]

LOCK_NAME = "run.lock"


class AlreadyRunning(FatalError):
    """Another ``histdata run`` holds the lock of the same ``data_dir`` (its pid is named)."""


@contextmanager
def hold_run_lock(data_dir: Path) -> Iterator[None]:
    """Hold ``data_dir``'s run lock for the block (creating ``data_dir`` if needed).

    Raises:
        AlreadyRunning: another process holds it; the message names its pid.
        OSError: ``data_dir`` or the lock file cannot be created.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise AlreadyRunning(
                f"already running (pid {holder}) on data_dir {data_dir}; stop it first, or give"
                " this one another [service] data_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        # The file stays when we are done: unlinking it would let a third process lock a new
        # file while a second still waits on the old one.
        yield
    finally:
        os.close(fd)
