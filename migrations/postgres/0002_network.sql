-- The spoke network: the internal CA, join tokens, spokes, transfers and their durable parts.
CREATE TABLE network_ca (
    id          BIGINT PRIMARY KEY CHECK (id = 1),
    cert_pem    TEXT    NOT NULL,
    key_sealed  BYTEA    NOT NULL,
    fingerprint TEXT    NOT NULL,
    created_ms  BIGINT NOT NULL
);

CREATE TABLE join_tokens (
    id          TEXT    PRIMARY KEY,
    secret_hash BYTEA    NOT NULL,
    region      TEXT    NOT NULL,
    name        TEXT,
    expires_ms  BIGINT NOT NULL,
    used_ms     BIGINT,
    spoke_id    BIGINT,
    created_ms  BIGINT NOT NULL
);

CREATE TABLE spokes (
    id               BIGSERIAL PRIMARY KEY,
    name             TEXT    NOT NULL,
    region           TEXT    NOT NULL,
    cert_fingerprint TEXT    NOT NULL UNIQUE,
    advertise        TEXT,
    enrolled_ms      BIGINT NOT NULL,
    revoked_ms       BIGINT,
    last_seen_ms     BIGINT
);

CREATE TABLE transfers (
    id            BIGSERIAL PRIMARY KEY,
    app_id        BIGINT NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    kind          TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    src_account   BIGINT NOT NULL,
    src_path      TEXT    NOT NULL,
    dst_account   BIGINT NOT NULL,
    dst_path      TEXT    NOT NULL,
    size          BIGINT NOT NULL,
    part_size     BIGINT NOT NULL,
    upload_id     TEXT,
    executor      TEXT,
    spoke_id      BIGINT,
    region        TEXT,
    bytes_done    BIGINT NOT NULL DEFAULT 0,
    checksum      TEXT,
    error         TEXT,
    note          TEXT,
    owner         TEXT    NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    created_ms    BIGINT NOT NULL,
    updated_ms    BIGINT NOT NULL,
    finished_ms   BIGINT
);
CREATE INDEX transfers_app ON transfers(app_id, id);
CREATE INDEX transfers_state ON transfers(state);

CREATE TABLE transfer_parts (
    transfer_id BIGINT NOT NULL REFERENCES transfers(id) ON DELETE CASCADE,
    idx         BIGINT NOT NULL,
    len         BIGINT NOT NULL,
    sha256      TEXT    NOT NULL,
    etag        TEXT    NOT NULL,
    spoke_id    BIGINT,
    done_ms     BIGINT NOT NULL,
    PRIMARY KEY (transfer_id, idx)
);

-- Hubs announce themselves here so that enrollment can hand spokes the whole list.
CREATE TABLE hubs (
    quic    TEXT   PRIMARY KEY,
    region  TEXT   NOT NULL,
    api     TEXT   NOT NULL,
    seen_ms BIGINT NOT NULL
);
