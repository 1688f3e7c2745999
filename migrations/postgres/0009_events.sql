-- The per-account change feed (`/v1/accounts/{acc}/events`). Every change made through the API
-- (and, later, every change a detector sees at the provider) is one row of `events`, written
-- only after the provider confirmed the change.
--
-- Ordering: each account has a dense sequence (`seq` = 1, 2, 3, ...) taken from its
-- `event_streams` row in the transaction that inserts the event. The row lock held until
-- commit makes commit order equal to `seq` order per account, so a reader paging by `seq`
-- never skips an event that commits later with a smaller number (a global sequence would:
-- transactions commit out of id order on PostgreSQL). Dense numbers also make the oldest
-- valid cursor exact: the events with seq <= min(seq) - 1 are exactly the ones retention
-- deleted. Rolled-back transactions roll the counter back too, so no gaps appear.
--
-- `after-auth`: `auth_seq` is the stream position when the account was (re)connected: 0 at
-- creation, the head at a credentials update.
--
-- Hooks for later parts (no code uses them yet beyond `origin = 'api'` and `dedupe_key`):
-- * Transactional outbox: webhook deliveries will insert their pending row in the same
--   transaction as the event (`Db::record_event` runs one transaction per event).
-- * Detectors of outside changes insert with `origin` naming the detector. To suppress the
--   echo of an API change, an API event keeps the provider's view of the object after the
--   change: `path`, `version` (the provider ETag when the service has one), `size` and
--   `mtime_ms`; a detector that sees (path, version or size + mtime) already recorded by an
--   API event on that account does not record it again. `events_path` serves that lookup.
-- * `dedupe_key` makes an insert idempotent per account (a spoke's report of a direct upload
--   may arrive at several hubs, a detector may re-scan): a second insert with the same key
--   records nothing.
CREATE TABLE event_streams (
    account_id BIGINT PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    last_seq   BIGINT NOT NULL DEFAULT 0,
    auth_seq   BIGINT NOT NULL DEFAULT 0,
    -- The newest event's `created_ms`: events get max(now, last_ms), so recording times never
    -- go back within an account (hub clocks differ) and the retention sweep, which deletes by
    -- time, always deletes a prefix of a stream, never a hole.
    last_ms    BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL
);
INSERT INTO event_streams (account_id, last_seq, auth_seq, last_ms, created_ms)
    SELECT id, 0, 0, 0, created_ms FROM accounts;

CREATE TABLE events (
    id             BIGSERIAL PRIMARY KEY,
    account_id     BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    seq            BIGINT NOT NULL,
    -- add, update, delete, rename, move, copy
    kind           TEXT   NOT NULL,
    action         TEXT   NOT NULL,
    object_id      TEXT   NOT NULL,
    path           TEXT   NOT NULL,
    -- The object as the API returns it (JSON text).
    metadata       TEXT   NOT NULL,
    prev_id        TEXT,
    prev_name      TEXT,
    prev_parent_id TEXT,
    prev_path      TEXT,
    -- When the change happened (ms) and when it was recorded (retention counts from this).
    modified_ms    BIGINT NOT NULL,
    created_ms     BIGINT NOT NULL,
    ip             TEXT,
    user_id        TEXT,
    -- api, or the detector that saw the change.
    origin         TEXT   NOT NULL DEFAULT 'api',
    version        TEXT,
    size           BIGINT,
    mtime_ms       BIGINT,
    dedupe_key     TEXT,
    UNIQUE (account_id, seq)
);
CREATE UNIQUE INDEX events_dedupe ON events(account_id, dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX events_path ON events(account_id, path);
-- The retention sweep deletes the oldest rows in batches.
CREATE INDEX events_created ON events(created_ms);

-- Collection is per application, off by default (`hub dev` turns it on for its application).
ALTER TABLE applications ADD COLUMN collect_events BIGINT NOT NULL DEFAULT 0;
