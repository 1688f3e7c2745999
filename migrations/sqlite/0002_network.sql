-- The spoke network: the internal CA, join tokens, spokes, transfers and their durable parts.
CREATE TABLE network_ca (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem    TEXT    NOT NULL,
    key_sealed  BLOB    NOT NULL,
    fingerprint TEXT    NOT NULL,
    created_ms  INTEGER NOT NULL
);

CREATE TABLE join_tokens (
    id          TEXT    PRIMARY KEY,
    secret_hash BLOB    NOT NULL,
    region      TEXT    NOT NULL,
    name        TEXT,
    expires_ms  INTEGER NOT NULL,
    used_ms     INTEGER,
    spoke_id    INTEGER,
    created_ms  INTEGER NOT NULL
);

CREATE TABLE spokes (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT    NOT NULL,
    region           TEXT    NOT NULL,
    cert_fingerprint TEXT    NOT NULL UNIQUE,
    advertise        TEXT,
    enrolled_ms      INTEGER NOT NULL,
    revoked_ms       INTEGER,
    last_seen_ms     INTEGER
);

CREATE TABLE transfers (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id        INTEGER NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    kind          TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    src_account   INTEGER NOT NULL,
    src_path      TEXT    NOT NULL,
    dst_account   INTEGER NOT NULL,
    dst_path      TEXT    NOT NULL,
    size          INTEGER NOT NULL,
    part_size     INTEGER NOT NULL,
    upload_id     TEXT,
    executor      TEXT,
    spoke_id      INTEGER,
    region        TEXT,
    bytes_done    INTEGER NOT NULL DEFAULT 0,
    checksum      TEXT,
    error         TEXT,
    note          TEXT,
    owner         TEXT    NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    created_ms    INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL,
    finished_ms   INTEGER
);
CREATE INDEX transfers_app ON transfers(app_id, id);
CREATE INDEX transfers_state ON transfers(state);

CREATE TABLE transfer_parts (
    transfer_id INTEGER NOT NULL REFERENCES transfers(id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    len         INTEGER NOT NULL,
    sha256      TEXT    NOT NULL,
    etag        TEXT    NOT NULL,
    spoke_id    INTEGER,
    done_ms     INTEGER NOT NULL,
    PRIMARY KEY (transfer_id, idx)
);

-- Hubs announce themselves here so that enrollment can hand spokes the whole list.
CREATE TABLE hubs (
    quic    TEXT   PRIMARY KEY,
    region  TEXT   NOT NULL,
    api     TEXT   NOT NULL,
    seen_ms BIGINT NOT NULL
);
