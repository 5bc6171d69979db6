-- Run by storage/migrations.py once every time-series table is a hypertable (the tables
-- themselves are converted there, one per transaction: trades 1-day chunks, candles 7-day).
-- Idempotent.
-- No default (time DESC) index: every read and write goes by symbol and time, which the
-- tables' own keys serve, and retention drops whole chunks. The default index was a third
-- btree on trades that each insert paid for and no query used. Databases made hypertables
-- before that keep the index until it is dropped here.
DROP INDEX IF EXISTS trades_time_idx;
DROP INDEX IF EXISTS candles_1m_time_idx;
DROP INDEX IF EXISTS candles_rollup_time_idx;
