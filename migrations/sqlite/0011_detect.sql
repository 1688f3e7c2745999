-- Detection of changes made outside the API (`hub::detect`).
--
-- `detectors`: one row per account whose application collects events, created by the first
-- hub that looks at it. Its lease (`lease_holder`, `lease_until`, `lease_epoch`, the same
-- scheme as transfers' leases in 0007) makes exactly one hub process poll the account at a
-- time; a hub takes the lease of a poll with one conditional UPDATE that bumps the epoch (a
-- dead hub's lease once it ran out), and every write of the holder (snapshot rows, `cursor`,
-- `polled_seq`) is fenced by holder and epoch.
-- * `baseline`: 1 once a complete listing was stored (the first one records no events).
-- * `polled_seq`: the account's stream position read before the last complete poll started
--   listing. An event with a higher number may explain a difference the next poll finds (the
--   API made it; its own event says so); an older one cannot, since that poll's listing
--   already saw its change. See ARCHITECTURE.md ("A change appears once in the feed").
-- * `cursor`: the delta API's cursor (Dropbox, Google Drive, OneDrive).
-- Polls are scheduled here and run through the region's work queue (`hub::workqueue`): a hub's
-- scheduler hands the detectors whose `next_poll_ms` has come to the queue, marking them
-- `queued_until` (not handed again before then, unless the poll ran); whichever hub takes one
-- from the queue holds the lease for that one poll (renewing it while the poll runs), then
-- sets the next `next_poll_ms` and lets the lease go. `wake`: an `fs` root changed while a poll
-- ran (poll again at once). `last_holder`: who ran the last poll.
CREATE TABLE detectors (
    account_id   INTEGER PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    lease_holder TEXT,
    lease_until  INTEGER,
    lease_epoch  INTEGER NOT NULL DEFAULT 0,
    baseline     INTEGER NOT NULL DEFAULT 0,
    polled_seq   INTEGER NOT NULL DEFAULT 0,
    cursor       TEXT,
    last_poll_ms INTEGER,
    next_poll_ms INTEGER NOT NULL DEFAULT 0,
    queued_until INTEGER,
    wake         INTEGER NOT NULL DEFAULT 0,
    last_holder  TEXT,
    created_ms   INTEGER NOT NULL
);

-- The last listing a detector stored, one row per object, in `sort_key` order: the order the
-- service lists in (S3's byte order of the key, folders with their trailing slash; for services
-- walked folder by folder, the path with `/` spelled U+0001 so that a folder's subtree sorts
-- right after it). A poll merges the provider's listing with these rows page by page, so
-- neither side is ever held whole. SQLite compares TEXT by bytes (BINARY), as Rust does.
CREATE TABLE detect_snapshots (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    sort_key   TEXT NOT NULL,
    path       TEXT NOT NULL,
    folder     INTEGER NOT NULL,
    -- The provider's strong version (S3/Azure ETag), else NULL.
    version    TEXT,
    size       INTEGER,
    mtime_ms   INTEGER,
    -- What stays the same across a rename (an inode on local disks), for pairing renames.
    ident      TEXT,
    PRIMARY KEY (account_id, sort_key)
);

-- Schedulers look for due polls.
CREATE INDEX detectors_due ON detectors(next_poll_ms);

-- Detectors look up the latest event that moved an object away from a path.
CREATE INDEX events_prev_path ON events(account_id, prev_path) WHERE prev_path IS NOT NULL;
