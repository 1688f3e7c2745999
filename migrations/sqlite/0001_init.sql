-- Switchyard hub schema (SQLite). Timestamps are Unix milliseconds; flags are 0/1 integers so
-- that the same queries run on PostgreSQL through sqlx's Any driver.
CREATE TABLE applications (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    active      INTEGER NOT NULL DEFAULT 1,
    created_ms  INTEGER NOT NULL,
    modified_ms INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id     INTEGER NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    key_hash   BLOB    NOT NULL UNIQUE,
    key_hint   TEXT    NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX api_keys_app ON api_keys(app_id);

CREATE TABLE meta_tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL,
    token_hash BLOB    NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
);

CREATE TABLE accounts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id      INTEGER NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    service     TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    credentials BLOB    NOT NULL,
    active      INTEGER NOT NULL DEFAULT 1,
    created_ms  INTEGER NOT NULL,
    modified_ms INTEGER NOT NULL
);
CREATE INDEX accounts_app ON accounts(app_id, id);

CREATE TABLE account_tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    token_hash BLOB    NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
);
CREATE INDEX account_tokens_account ON account_tokens(account_id);
