"""deploy/ and docker-compose.yml: what an operator installs says what it does.

No Docker daemon runs where the tests run, so the compose file is checked as YAML against the
compose specification's basics (Debian's ``docker-compose config`` accepted it too when this
was written); the init SQL it mounts is run on a real, throwaway PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
import yaml
from psycopg import sql

from histdata.config import load_config
from histdata.storage import migrate, open_storage
from histdata.storage.migrations import ensure_reader_role

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


@pytest.fixture
def throwaway_admin(tmp_path: Path) -> Iterator[str]:
    """A private PostgreSQL of our own: the init SQL creates cluster-wide roles."""
    from histdata.storage.embedded import start_throwaway

    with start_throwaway(tmp_path) as dsn:
        yield dsn


class TestCompose:
    def test_services_and_volumes_are_well_formed(self, compose: dict[str, Any]) -> None:
        """Both services exist with an image or a build, and every named volume is declared."""
        services = compose["services"]
        assert set(services) == {"timescaledb", "histdata"}
        build = services["histdata"]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()
        declared = set(compose["volumes"])
        for service in services.values():
            assert "image" in service or "build" in service
            for mount in service.get("volumes", []):
                source = mount.split(":")[0]
                if not source.startswith("."):
                    assert source in declared
                else:
                    assert (ROOT / source).exists()

    def test_histdata_connects_as_a_plain_role_with_no_default_password(
        self, compose: dict[str, Any]
    ) -> None:
        """histdata's URL names the histdata role; passwords must come from the environment."""
        services = compose["services"]
        url = services["histdata"]["environment"]["HISTDATA_DATABASE_URL"]
        assert url.startswith("postgresql://histdata@timescaledb:")
        for service in services.values():
            for key, value in service.get("environment", {}).items():
                if "PASSWORD" in key:
                    assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", value), key

    def test_ports_are_published_on_loopback_only(self, compose: dict[str, Any]) -> None:
        """Neither the database nor /metrics is published beyond this machine."""
        for service in compose["services"].values():
            for port in service.get("ports", []):
                assert port.startswith("127.0.0.1:")


class TestInitSql:
    def test_roles_let_histdata_migrate_and_read_only_without_superuser(
        self, throwaway_admin: str
    ) -> None:
        """After the init SQL, histdata (no superuser) migrates and gets its read-only role."""
        # Run as the image's entrypoint would, with psql's :'var' replaced by the quoted
        # password, and without CREATE EXTENSION timescaledb (not installed here).
        text = (DEPLOY / "initdb" / "roles.sql.in").read_text()
        assert "10-histdata-roles.sh" in {p.name for p in (DEPLOY / "initdb").iterdir()}
        script = text.replace("CREATE EXTENSION IF NOT EXISTS timescaledb;", "")
        with psycopg.connect(throwaway_admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE histdata")
        target = psycopg.conninfo.make_conninfo(throwaway_admin, dbname="histdata")
        with psycopg.connect(target, autocommit=True) as conn:
            literal = sql.Literal("s3cret").as_string(conn)
            conn.execute(script.replace(":'histdata_password'", literal).encode())
        dsn = psycopg.conninfo.make_conninfo(target, user="histdata", password="s3cret")
        assert migrate(dsn).current >= 1

        async def check() -> tuple[bool, tuple[Any, ...] | None]:
            async with open_storage(dsn, pool_max=1) as storage:
                usable = await storage.run(ensure_reader_role, "histdata_reader")
                me = await storage.run(
                    lambda conn: conn.execute(
                        "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles"
                        " WHERE rolname = current_user"
                    ).fetchone()
                )
                return usable, me

        usable, me = trio.run(check)
        assert usable
        assert me == (False, False, False)


class TestSystemdUnit:
    def test_documentation_and_config_exist_after_the_install_steps(self) -> None:
        """Documentation= and the config name files the header's install steps create."""
        unit = (DEPLOY / "histdata.service").read_text()
        steps = [line[1:].strip() for line in unit.splitlines() if line.startswith("#")]
        docs = next(s for s in steps if s.startswith("install -D") and "/usr/share/doc" in s)
        installed = {f"/usr/share/doc/histdata/{Path(p).name}" for p in docs.split()[-2:]}
        documented = re.search(r"^Documentation=(.+)$", unit, re.M)
        assert documented is not None
        assert {u.removeprefix("file://") for u in documented.group(1).split()} <= installed
        assert any("deploy/config.toml /etc/histdata/config.toml" in s for s in steps)
        assert any(s.startswith("useradd --system") for s in steps)
        config = load_config(DEPLOY / "config.toml", environ={})
        assert str(config.service.data_path) == "/var/lib/histdata"  # StateDirectory=histdata
        assert config.query.socket == "/run/histdata/histdata.sock"  # RuntimeDirectory=histdata
        assert "StateDirectory=histdata" in unit
        assert "RuntimeDirectory=histdata" in unit
