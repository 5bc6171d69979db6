-- Applied at every migrate when the timescaledb extension is available; idempotent.
-- trades: 1-day chunks; candles: 7-day chunks (design.md §3).
CREATE EXTENSION IF NOT EXISTS timescaledb;
SELECT create_hypertable('trades', 'time', chunk_time_interval => interval '1 day',
                         if_not_exists => true, migrate_data => true);
SELECT create_hypertable('candles_1m', 'time', chunk_time_interval => interval '7 days',
                         if_not_exists => true, migrate_data => true);
SELECT create_hypertable('candles_rollup', 'time', chunk_time_interval => interval '7 days',
                         if_not_exists => true, migrate_data => true);
