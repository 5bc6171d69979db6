"""Shared fixtures: a real PostgreSQL for every database test.

The server is ``$HISTDATA_TEST_DSN`` when set (CI points it at the machine's PostgreSQL and
at a TimescaleDB-enabled one); otherwise a throwaway server is started from the embedded
wheel in a temporary directory, so ``make test`` passes on a machine with no PostgreSQL.
Each test gets a fresh database cloned from a migrated template, so tests never see each
other's rows.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path

import psycopg
import psycopg.conninfo
import pytest

from histdata.logs import configure_logging
from histdata.storage import Storage, migrate, open_storage

_counter = itertools.count()
# Plain console logs: pytest captures them per test and shows them only for failures.
configure_logging("debug", "console")


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A conninfo with the right to create databases, on a real server."""
    given = os.environ.get("HISTDATA_TEST_DSN")
    if given:
        yield given
        return
    from histdata.storage.embedded import start_throwaway

    with ExitStack() as stack:
        yield stack.enter_context(start_throwaway(Path(tmp_path_factory.mktemp("pg"))))


def _with_dbname(dsn: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, dbname=dbname)


@pytest.fixture(scope="session")
def pg_template(pg_admin_dsn: str) -> Iterator[str]:
    """Name of a migrated template database the per-test databases are cloned from."""
    name = f"histdata_tpl_{os.getpid()}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"'.encode())
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    migrate(_with_dbname(pg_admin_dsn, name))
    yield name
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture
def database_url(pg_admin_dsn: str, pg_template: str) -> Iterator[str]:
    """A conninfo to a fresh, migrated database that is dropped after the test."""
    name = f"histdata_t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'.encode())
    yield _with_dbname(pg_admin_dsn, name)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture
def empty_database_url(pg_admin_dsn: str) -> Iterator[str]:
    """A conninfo to a fresh database with no schema at all."""
    name = f"histdata_e{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    yield _with_dbname(pg_admin_dsn, name)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture
async def storage(database_url: str) -> AsyncIterator[Storage]:
    """An open Storage on a fresh migrated database."""
    async with open_storage(database_url, pool_max=4) as opened:
        yield opened
