-- Applied at every migrate when the timescaledb extension is available; idempotent.
-- trades: 1-day chunks; candles: 7-day chunks (design.md §3).
CREATE EXTENSION IF NOT EXISTS timescaledb;
-- No default (time DESC) index: every read and write goes by symbol and time, which the
-- tables' own keys serve, and retention drops whole chunks. The default index was a third
-- btree on trades that each insert paid for and no query used.
SELECT create_hypertable('trades', 'time', chunk_time_interval => interval '1 day',
                         create_default_indexes => false,
                         if_not_exists => true, migrate_data => true);
SELECT create_hypertable('candles_1m', 'time', chunk_time_interval => interval '7 days',
                         create_default_indexes => false,
                         if_not_exists => true, migrate_data => true);
SELECT create_hypertable('candles_rollup', 'time', chunk_time_interval => interval '7 days',
                         create_default_indexes => false,
                         if_not_exists => true, migrate_data => true);
-- Databases made hypertables before that keep the index until it is dropped here.
DROP INDEX IF EXISTS trades_time_idx;
DROP INDEX IF EXISTS candles_1m_time_idx;
DROP INDEX IF EXISTS candles_rollup_time_idx;
-- Kraken's candles for the minutes we serve from our own trades: one per live minute.
SELECT create_hypertable('candles_kraken', 'time', chunk_time_interval => interval '7 days',
                         create_default_indexes => false,
                         if_not_exists => true, migrate_data => true);
