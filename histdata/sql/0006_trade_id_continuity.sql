-- Trade-id continuity: Kraken numbers each pair's trades 1, 2, 3…, so a break in the stored
-- ids is a hole whatever coverage says. The gap filler audits each symbol incrementally:
-- trade_id_audit holds the id range [low_id, high_id] already checked, trade_id_holes every
-- break found in it that is not filled yet ('open') or that REST could not fill ('unfillable').
CREATE TABLE trade_id_audit (
    symbol_id  smallint    PRIMARY KEY REFERENCES symbols (id),
    low_id     bigint      NOT NULL,
    low_time   timestamptz NOT NULL,
    high_id    bigint      NOT NULL,
    high_time  timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (low_id <= high_id)
);

CREATE TABLE trade_id_holes (
    symbol_id   smallint    NOT NULL REFERENCES symbols (id),
    first_id    bigint      NOT NULL,              -- the first missing id
    last_id     bigint      NOT NULL,              -- the last missing id
    after_time  timestamptz NOT NULL,              -- time of the stored trade first_id - 1
    before_time timestamptz NOT NULL,              -- time of the stored trade last_id + 1
    status      text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'unfillable')),
    reason      text        NOT NULL DEFAULT '',
    found_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol_id, first_id),
    CHECK (first_id <= last_id)
);
