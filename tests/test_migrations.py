"""Schema migrations on a real database."""

from __future__ import annotations

import hashlib
import os
import threading

import psycopg
import psycopg.conninfo
import pytest

from histdata.storage import SchemaError, migrate
from histdata.storage.migrations import (
    HYPERTABLES,
    check_schema,
    hypertables,
    migration_files,
    timescale_available,
)


class TestMigrate:
    def test_fresh_database_gets_every_migration_once(self, empty_database_url: str) -> None:
        """The first run applies all files; the second run is a no-op."""
        first = migrate(empty_database_url)
        second = migrate(empty_database_url)
        assert first.applied == tuple(name for _, name, _ in migration_files())
        assert second.applied == ()
        assert second.current == first.current

    def test_concurrent_migrations_serialise(self, empty_database_url: str) -> None:
        """Two processes migrating at once apply each file exactly once, without errors."""
        results: list[tuple[str, ...]] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                results.append(migrate(empty_database_url).applied)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert sorted(len(applied) for applied in results) == [0, len(migration_files())]

    def test_schema_from_the_future_is_refused(self, database_url: str) -> None:
        """A migration version this histdata does not know stops start-up with SchemaError."""
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'x', 'y')"
            )
        with pytest.raises(SchemaError, match="upgrade histdata"):
            migrate(database_url)

    def test_edited_migration_is_refused(self, database_url: str) -> None:
        """An applied migration whose file changed is reported instead of silently skipped."""
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE schema_migrations SET checksum = 'tampered' WHERE version = 1")
        with pytest.raises(SchemaError, match="edited"):
            migrate(database_url)

    def test_rollup_vwap_is_filled_for_rows_written_before_it_existed(
        self, database_url: str
    ) -> None:
        """0005 gives older rollup rows the VWAP reads used to compute: pv/volume, 12 places
        rounded half-up, trailing zeros trimmed; NULL without pv."""
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO symbols (symbol, rest_key, altname, wsname, price_decimals,"
                " volume_decimals) VALUES ('BTC/USD', 'XXBTZUSD', 'XBTUSD', 'XBT/USD', 1, 8)"
            )
            conn.execute(
                "INSERT INTO candles_rollup (symbol_id, interval_min, time, open, high, low,"
                " close, volume, pv, vwap, trades, final) SELECT 1, 60, t, 1, 1, 1, 1, v, pv,"
                " NULL, 1, true FROM (VALUES ('2024-01-01 00:00Z'::timestamptz, 3, 2),"
                " ('2024-01-01 01:00Z', 3, 10), ('2024-01-01 02:00Z', 4, 10),"
                " ('2024-01-01 03:00Z', 4, NULL)) AS x(t, v, pv)"
            )
            conn.execute("DELETE FROM schema_migrations WHERE name = '0005_rollup_vwap.sql'")
        assert migrate(database_url).applied == ("0005_rollup_vwap.sql",)
        with psycopg.connect(database_url) as conn:
            rows = conn.execute("SELECT vwap::text FROM candles_rollup ORDER BY time").fetchall()
        assert [r[0] for r in rows] == ["0.666666666667", "3.333333333333", "2.5", None]

    def test_timescale_path_makes_hypertables(self, database_url: str) -> None:
        """With TimescaleDB preloaded, trades and candles are hypertables; without, plain tables."""
        result = migrate(database_url)
        with psycopg.connect(database_url) as conn:
            has_ext = conn.execute(
                "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
            ).fetchone()
            assert has_ext is not None
            if not result.timescale:
                assert has_ext[0] == 0
                return
            rows = conn.execute(
                "SELECT hypertable_name FROM timescaledb_information.hypertables ORDER BY 1"
            ).fetchall()
            # Only the tables' own indexes: TimescaleDB's default (time DESC) index would be
            # paid for by every insert and used by no query.
            indexes = conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
                " AND tablename IN ('trades', 'candles_1m', 'candles_rollup') ORDER BY 1"
            ).fetchall()
        assert [r[0] for r in rows] == ["candles_1m", "candles_kraken", "candles_rollup", "trades"]
        assert [r[0] for r in indexes] == [
            "candles_1m_pkey",
            "candles_rollup_open",
            "candles_rollup_pkey",
            "trades_by_trade_id",
            "trades_key",
        ]


def _plain_schema(url: str) -> None:
    """The schema as an older histdata left it: every table plain, as if made before
    TimescaleDB was installed (the first file applied by hand, so the run is not fresh)."""
    version, name, text = migration_files()[0]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(text.encode())
        conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
            (version, name, hashlib.sha256(text.encode()).hexdigest()),
        )


class TestTimescaleConversion:
    def test_existing_plain_tables_are_converted_only_when_asked(
        self, empty_database_url: str
    ) -> None:
        """With TimescaleDB available, a migrate of an existing schema leaves its tables plain
        and says so; ``convert=True`` turns them into hypertables, keeping their rows and
        reporting a line per table."""
        with psycopg.connect(empty_database_url) as conn:
            if not timescale_available(conn):
                pytest.skip("TimescaleDB is not available on this server")
        _plain_schema(empty_database_url)
        result = migrate(empty_database_url)
        assert not result.timescale
        assert result.plain_tables == tuple(HYPERTABLES)
        with psycopg.connect(empty_database_url, autocommit=True) as conn:
            assert hypertables(conn) == frozenset()
            conn.execute(
                "INSERT INTO symbols (symbol, rest_key, altname, wsname, price_decimals,"
                " volume_decimals) VALUES ('BTC/USD', 'XXBTZUSD', 'XBTUSD', 'XBT/USD', 1, 8)"
            )
            conn.execute(
                "INSERT INTO trades (symbol_id, time, price, volume, trade_id, source)"
                " VALUES (1, '2024-01-01Z', 1, 1, 7, 'r')"
            )
        lines: list[str] = []
        converted = migrate(empty_database_url, convert=True, progress=lines.append)
        assert converted.timescale
        assert converted.plain_tables == ()
        assert "converting trades to a hypertable (1 rows)" in lines
        assert sum(line.startswith("converted ") for line in lines) == len(HYPERTABLES)
        with psycopg.connect(empty_database_url) as conn:
            assert hypertables(conn) == frozenset(HYPERTABLES)
            assert conn.execute("SELECT trade_id FROM trades").fetchall() == [(7,)]

    def test_convert_without_timescaledb_is_refused(self, empty_database_url: str) -> None:
        """``migrate --timescale`` where the extension cannot be created says why."""
        with psycopg.connect(empty_database_url) as conn:
            if timescale_available(conn):
                pytest.skip("TimescaleDB is available on this server")
        with pytest.raises(SchemaError, match="cannot convert to hypertables"):
            migrate(empty_database_url, convert=True)


class TestSchemaCheck:
    def test_the_current_schema_passes_and_others_are_refused(self, database_url: str) -> None:
        """check_schema accepts this histdata's schema and names an older or a newer one."""
        with psycopg.connect(database_url, autocommit=True) as conn:
            assert check_schema(conn) == max(v for v, _, _ in migration_files())
            conn.execute("INSERT INTO schema_migrations VALUES (9999, 'x', 'y')")
            with pytest.raises(SchemaError, match="newer than this histdata"):
                check_schema(conn)
            conn.execute("DELETE FROM schema_migrations WHERE version >= 2")
            with pytest.raises(SchemaError, match="older than this histdata"):
                check_schema(conn)

    def test_no_schema_is_refused(self, empty_database_url: str) -> None:
        """A database histdata never migrated is named as such."""
        with (
            psycopg.connect(empty_database_url, autocommit=True) as conn,
            pytest.raises(SchemaError, match="no histdata schema"),
        ):
            check_schema(conn)


class TestWithoutSuperuser:
    def test_an_owner_without_settings_privileges_migrates(
        self, empty_database_url: str, pg_admin_dsn: str
    ) -> None:
        """A plain owner (no superuser, no pg_read_all_settings, no CREATEROLE) migrates; the
        read-only role is reported as not permitted rather than failing."""
        name = f"histdata_owner_{os.getpid()}"
        dbname = psycopg.conninfo.conninfo_to_dict(empty_database_url)["dbname"]
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{name}"'.encode())
            conn.execute(f'CREATE ROLE "{name}" LOGIN'.encode())
            conn.execute(f'ALTER DATABASE "{dbname}" OWNER TO "{name}"'.encode())
        with psycopg.connect(empty_database_url, autocommit=True) as conn:
            conn.execute(f'ALTER SCHEMA public OWNER TO "{name}"'.encode())
        try:
            owner = psycopg.conninfo.make_conninfo(empty_database_url, user=name)
            result = migrate(owner, reader_role=f"{name}_nobody")
            assert result.current == max(v for v, _, _ in migration_files())
            assert not result.reader_role
        finally:
            with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'.encode())
                conn.execute(f'DROP ROLE IF EXISTS "{name}"'.encode())
