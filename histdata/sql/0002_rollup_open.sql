-- The rollup actor re-examines rollup buckets that were still open (not final) when last
-- computed, so a bucket whose last minute had no candle still becomes final once it ends.
-- This partial index keeps that probe to the handful of open rows.
CREATE INDEX candles_rollup_open ON candles_rollup (interval_min, time) WHERE NOT final;
