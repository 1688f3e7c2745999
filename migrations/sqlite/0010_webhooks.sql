-- Webhooks (Meta API `/v1/meta/applications/{app}/webhooks`) and their transactional outbox.
--
-- The database is the record; Redis (or the in-process queue) only carries the work:
-- * `webhook_pending` holds at most one pending notification per (webhook, account). The
--   transaction that inserts an event upserts it, so a committed event always has its
--   notification pending (coalescing: a burst of events leaves one row whose `seq` is the
--   newest event's).
-- * A hub delivering a row claims it first (`claimed_until_ms`), so two hubs that both got
--   the work from the queue deliver it once. Success deletes the row only if no event came
--   in meanwhile (`seq` unchanged); otherwise the row is re-armed as a new notification.
-- * `enqueued_ms` says when the row was last handed to the queue. The reconciler hands due
--   rows again when they were never handed or were handed long ago and are still here: a
--   Redis restart without persistence, or a hub that crashed holding the work, loses nothing.
--
-- `api_keys.key_sealed`: the X-Kloudless-Signature is an HMAC keyed with the application's
-- API key, so the key itself is kept, sealed with the master key (lookups still use the hash).
ALTER TABLE api_keys ADD COLUMN key_sealed BLOB;

CREATE TABLE webhooks (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id           INTEGER NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    url              TEXT   NOT NULL,
    -- The Standard Webhooks signing secret, sealed with the master key; shown once.
    secret_sealed    BLOB  NOT NULL,
    created_ms       INTEGER NOT NULL,
    -- Set when deliveries stopped for good: a 410 answer, or failures for too long.
    disabled_ms      INTEGER,
    disabled_reason  TEXT,
    -- When the current run of failed deliveries began (NULL after a success).
    failing_since_ms INTEGER
);
CREATE INDEX webhooks_app ON webhooks(app_id);

CREATE TABLE webhook_pending (
    webhook_id       INTEGER NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    account_id       INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    -- The event seq that opened this notification (names its `webhook-id`, stable across
    -- retries) and the newest event seq it covers.
    first_seq        INTEGER NOT NULL,
    seq              INTEGER NOT NULL,
    created_ms       INTEGER NOT NULL,
    next_ms          INTEGER NOT NULL,
    enqueued_ms      INTEGER,
    claimed_until_ms INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    PRIMARY KEY (webhook_id, account_id)
);
CREATE INDEX webhook_pending_due ON webhook_pending(next_ms);

CREATE TABLE webhook_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id  INTEGER NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    account_id  INTEGER NOT NULL,
    msg_id      TEXT   NOT NULL,
    attempt     INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL,
    -- The receiver's HTTP status; NULL when no answer came (timeout, refused, SSRF guard).
    status      INTEGER,
    latency_ms  INTEGER NOT NULL,
    ok          INTEGER NOT NULL,
    error       TEXT
);
CREATE INDEX webhook_attempts_hook ON webhook_attempts(webhook_id, id);
CREATE INDEX webhook_attempts_at ON webhook_attempts(at_ms);
