-- Switchyard hub schema (PostgreSQL). Timestamps are Unix milliseconds; flags are 0/1 integers
-- so that the same queries run on SQLite through sqlx's Any driver.
CREATE TABLE applications (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT   NOT NULL,
    description TEXT   NOT NULL DEFAULT '',
    active      BIGINT NOT NULL DEFAULT 1,
    created_ms  BIGINT NOT NULL,
    modified_ms BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id         BIGSERIAL PRIMARY KEY,
    app_id     BIGINT NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    key_hash   BYTEA  NOT NULL UNIQUE,
    key_hint   TEXT   NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX api_keys_app ON api_keys(app_id);

CREATE TABLE meta_tokens (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT   NOT NULL,
    token_hash BYTEA  NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL
);

CREATE TABLE accounts (
    id          BIGSERIAL PRIMARY KEY,
    app_id      BIGINT NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    service     TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    credentials BYTEA  NOT NULL,
    active      BIGINT NOT NULL DEFAULT 1,
    created_ms  BIGINT NOT NULL,
    modified_ms BIGINT NOT NULL
);
CREATE INDEX accounts_app ON accounts(app_id, id);

CREATE TABLE account_tokens (
    id         BIGSERIAL PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    token_hash BYTEA  NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL
);
CREATE INDEX account_tokens_account ON account_tokens(account_id);
