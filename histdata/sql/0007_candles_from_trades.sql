-- Candles derived from our own trades are served beside Kraken's (storage/candles.py).
--
-- candles_1m holds the candle each read returns: ours (source 'trades') for a minute inside
-- derived candle coverage, else Kraken's. A Kraken candle for a minute we serve ourselves is
-- kept in candles_kraken instead, so both are stored and the two can be compared; every
-- Kraken candle lives in exactly one of the two tables.
--
-- pv is the exact sum of price·volume of the minute's trades (numeric, unrounded) for our
-- candles, and vwap·volume for Kraken's (Kraken prints a rounded vwap: nothing more exact
-- exists for those minutes). Rollups and reads sum pv, never a rounded vwap.
ALTER TABLE candles_1m ADD COLUMN IF NOT EXISTS pv numeric;
UPDATE candles_1m SET pv = vwap * volume WHERE vwap IS NOT NULL AND source <> 'trades';
-- Candles derived before this column existed: their exact pv comes from their trades.
UPDATE candles_1m c
   SET pv = (SELECT sum(t.price * t.volume) FROM trades t
              WHERE t.symbol_id = c.symbol_id AND t.time >= c.time
                AND t.time < c.time + interval '1 minute')
 WHERE c.source = 'trades';
INSERT INTO rollup_dirty (symbol_id, start_time, end_time)
SELECT symbol_id, min(time), max(time) + interval '1 minute'
  FROM candles_1m WHERE source = 'trades' GROUP BY symbol_id;

CREATE TABLE IF NOT EXISTS candles_kraken (
    symbol_id  smallint    NOT NULL,
    time       timestamptz NOT NULL,
    open       numeric     NOT NULL,
    high       numeric     NOT NULL,
    low        numeric     NOT NULL,
    close      numeric     NOT NULL,
    volume     numeric     NOT NULL,
    vwap       numeric,
    trades     integer     NOT NULL,
    source     text        NOT NULL CHECK (source IN ('live', 'rest', 'csv')),
    final      boolean     NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol_id, time)
);

-- Finished minutes where our candle and Kraken's disagree; recomputed whenever either side
-- of a minute changes, so a minute whose trades were re-fetched and now agree drops out.
-- fields: {"open": ["ours", "kraken"], ...} with the values as text.
CREATE TABLE IF NOT EXISTS candle_mismatches (
    symbol_id   smallint    NOT NULL,
    time        timestamptz NOT NULL,
    fields      jsonb       NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol_id, time)
);
