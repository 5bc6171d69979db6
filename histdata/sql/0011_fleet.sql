-- What a fleet of collectors coordinates through (docs/scaling.md).

-- A lease: one holder of a named job at a time (``maintenance``, ``repair:BTC/USD``,
-- ``backfill:BTC/USD``) until it expires; the holder renews it while it works, so a crashed
-- holder's job is free again within one lease time.
CREATE TABLE fleet_leases (
    name       text        PRIMARY KEY,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL,
    detail     jsonb       NOT NULL DEFAULT '{}'
);

-- One row per collector process (``histdata run``), refreshed every few seconds.
CREATE TABLE collectors (
    id         text        PRIMARY KEY,  -- host:pid:start time
    host       text        NOT NULL,
    pid        integer     NOT NULL,
    version    text        NOT NULL,
    symbols    text[]      NOT NULL,
    started_at timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL,
    last_write timestamptz
);

-- The Kraken REST budget of a host (Kraken limits per IP): a token bucket every process on
-- that host draws from. ``tokens`` may go below zero: each request reserves its slot and
-- waits until the bucket would have refilled to it.
CREATE TABLE rest_budget (
    host       text             PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at timestamptz      NOT NULL
);
