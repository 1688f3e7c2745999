-- Upload sessions (`storage/multipart`; `hub::sessions`): a client sends a file in numbered
-- parts, to any hub of the region, over hours if it likes; the session and its parts live here
-- and at the provider, never in a hub's memory or disk, so a restart loses nothing.
--
-- `store` says where the parts are: `s3` (a native multipart upload, `upload_id`, each part's
-- ETag) or `objects` (each part a staging object of its own, `upload_parts.staging`, also
-- claimed in `storage_claims` until the session expires, so a part written by a hub that died
-- before recording it is swept). `state`: `open`, then `completing` (one request at a time;
-- taken over after `state_ms` is old), then `done` (the row stays until `expires_ms`).
CREATE TABLE upload_sessions (
    id          BIGSERIAL PRIMARY KEY,
    app_id      BIGINT  NOT NULL,
    account_id  BIGINT  NOT NULL,
    path        TEXT    NOT NULL,
    overwrite   BIGINT  NOT NULL,
    size        BIGINT,
    part_size   BIGINT  NOT NULL,
    store       TEXT    NOT NULL,
    upload_id   TEXT,
    name_claim  TEXT,
    state       TEXT    NOT NULL,
    state_ms    BIGINT  NOT NULL,
    created_ms  BIGINT  NOT NULL,
    expires_ms  BIGINT  NOT NULL,
    file_path   TEXT
);
CREATE INDEX upload_sessions_expires ON upload_sessions (expires_ms);
CREATE INDEX upload_sessions_account ON upload_sessions (account_id) WHERE upload_id IS NOT NULL;

CREATE TABLE upload_parts (
    session_id   BIGINT  NOT NULL REFERENCES upload_sessions(id) ON DELETE CASCADE,
    part_number  BIGINT  NOT NULL,
    size         BIGINT  NOT NULL,
    etag         TEXT,
    staging      TEXT,
    received_ms  BIGINT  NOT NULL,
    PRIMARY KEY (session_id, part_number)
);
