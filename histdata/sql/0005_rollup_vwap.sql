-- Rollup candles store their VWAP. Reads used to divide pv by volume (exact numeric, rounded
-- half-up to 12 places) for every row they returned, which was half the server time of a
-- year of 1h candles; the rollup pass now computes it once per bucket (storage/rollups.py,
-- vwap_sql, with the same rounding as below).
ALTER TABLE candles_rollup ADD COLUMN IF NOT EXISTS vwap numeric;
UPDATE candles_rollup
   SET vwap = trim_scale(div(2 * pv * 1e12 + volume, 2 * volume) * 1e-12)
 WHERE pv IS NOT NULL AND volume <> 0 AND vwap IS NULL;
