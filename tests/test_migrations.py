"""Schema migrations on a real database."""

from __future__ import annotations

import threading

import psycopg
import pytest

from histdata.storage import SchemaError, migrate
from histdata.storage.migrations import migration_files


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
        assert [r[0] for r in rows] == ["candles_1m", "candles_rollup", "trades"]
        assert [r[0] for r in indexes] == [
            "candles_1m_pkey",
            "candles_rollup_open",
            "candles_rollup_pkey",
            "trades_by_trade_id",
            "trades_key",
        ]
