-- OAuth 2.0 for applications (`hub::api::oauth`): the redirect URIs an application registered
-- (exact match; JSON array of absolute URLs), the origins its browser code calls the API from
-- (CORS; JSON array of `scheme://host[:port]`), and whether the implicit grant
-- (`response_type=token`) is allowed.
ALTER TABLE applications ADD COLUMN redirect_uris TEXT NOT NULL DEFAULT '[]';
ALTER TABLE applications ADD COLUMN trusted_domains TEXT NOT NULL DEFAULT '[]';
ALTER TABLE applications ADD COLUMN implicit_grant_enabled BIGINT NOT NULL DEFAULT 0;

-- Authorization codes: only a SHA-256 of the code is kept. Single use (`used_ms` set by one
-- conditional UPDATE), 10 minutes, bound to the application and the redirect URI, with the
-- PKCE challenge (S256) when the app sent one. `token_id` is the token the code was exchanged
-- for: a code presented twice revokes it (RFC 6749 §4.1.2).
CREATE TABLE oauth_codes (
    id             BIGSERIAL PRIMARY KEY,
    code_hash      BYTEA NOT NULL UNIQUE,
    app_id         BIGINT NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    account_id     BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    redirect_uri   TEXT NOT NULL,
    scope          TEXT NOT NULL,
    code_challenge TEXT,
    expires_ms     BIGINT NOT NULL,
    used_ms        BIGINT,
    token_id       BIGINT,
    created_ms     BIGINT NOT NULL
);
CREATE INDEX oauth_codes_expiry ON oauth_codes(expires_ms);

-- The scope a bearer token was granted with (tokens from `POST /v1/accounts` have `all`).
ALTER TABLE account_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'all';
