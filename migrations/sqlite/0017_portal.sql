-- Developer portal sign-ins (`hub::portal`): a session made from a meta token, kept in an
-- HttpOnly SameSite=Strict cookie; only a SHA-256 of the session token is stored, and the
-- session dies with the meta token it came from.
CREATE TABLE portal_sessions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash    BLOB NOT NULL UNIQUE,
    meta_token_id INTEGER NOT NULL REFERENCES meta_tokens(id) ON DELETE CASCADE,
    created_ms    INTEGER NOT NULL,
    expires_ms    INTEGER NOT NULL
);
CREATE INDEX portal_sessions_expiry ON portal_sessions(expires_ms);

-- Short-lived account tokens: the portal's file explorer gets one per account it opens
-- (`expires_ms`, minutes ahead); every other token has none and lives until revoked.
ALTER TABLE account_tokens ADD COLUMN expires_ms INTEGER;
