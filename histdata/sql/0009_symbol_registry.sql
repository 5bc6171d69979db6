-- The symbols table becomes the registry every command loads, offline too: Kraken's
-- AssetPairs answer is stored here at service start, periodically, and by
-- `histdata symbols --refresh`; pairs it stops listing are kept (their rows stay readable)
-- with status 'delisted'.
--
-- status:      AssetPairs' status (online, cancel_only, post_only, limit_only, reduce_only),
--              'delisted' once a refresh no longer lists the pair, 'unverified' for a pair
--              derived from a file name and not yet seen in AssetPairs.
-- provisional: the row's names were derived from a CSV file name by Kraken's naming rules
--              (an offline import); the next refresh that lists the pair corrects them in
--              place, keeping the id and so every stored row.
-- aliases:     earlier spellings of the pair (a provisional name that was corrected), still
--              resolved so a re-import of the same file maps onto the same id.
-- first_seen:  when histdata first registered the pair; last_seen: the last refresh that
--              listed it (NULL: never seen in AssetPairs).
-- base/quote: the v2 name's halves, generated so a rename cannot leave them behind.
ALTER TABLE symbols
    ADD COLUMN base        text        GENERATED ALWAYS AS (split_part(symbol, '/', 1)) STORED,
    ADD COLUMN quote       text        GENERATED ALWAYS AS (split_part(symbol, '/', 2)) STORED,
    ADD COLUMN status      text        NOT NULL DEFAULT 'online',
    ADD COLUMN provisional boolean     NOT NULL DEFAULT false,
    ADD COLUMN aliases     text[]      NOT NULL DEFAULT '{}',
    ADD COLUMN first_seen  timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN last_seen   timestamptz;

