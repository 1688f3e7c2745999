-- Sharing links (`storage/links`; `hub::api::storage::links`). The link's URL carries a token
-- that is never stored: it is `<id>.<tag>`, the tag an HMAC of the id and `nonce` under a key
-- derived from the master key, so the database alone cannot produce a working URL. A password
-- is kept as a scrypt PHC string; failed attempts are counted per link in a window
-- (`fail_since_ms`, `fail_count`) to limit guessing.
CREATE TABLE links (
    id             BIGSERIAL PRIMARY KEY,
    app_id         BIGINT NOT NULL,
    account_id     BIGINT NOT NULL,
    path           TEXT   NOT NULL,
    nonce          TEXT   NOT NULL,
    direct         BIGINT NOT NULL,
    active         BIGINT NOT NULL,
    password_hash  TEXT,
    expires_ms     BIGINT,
    created_ms     BIGINT NOT NULL,
    modified_ms    BIGINT NOT NULL,
    fail_since_ms  BIGINT NOT NULL DEFAULT 0,
    fail_count     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX links_account ON links (account_id, id);
