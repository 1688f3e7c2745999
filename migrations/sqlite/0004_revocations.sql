-- Revocation reaches every process within a second. SQLite serves one hub, which forgets its
-- own cached credentials at once; the `hub` command line writes the same file from another
-- process, so every change that revokes (or may narrow) a credential bumps this one-row
-- generation, which the hub polls a few times a second and then drops its caches.
CREATE TABLE revocations (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
);
INSERT INTO revocations (id, generation) VALUES (1, 0);

CREATE TRIGGER revoke_app_update AFTER UPDATE ON applications
BEGIN UPDATE revocations SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER revoke_app_delete AFTER DELETE ON applications
BEGIN UPDATE revocations SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER revoke_key_delete AFTER DELETE ON api_keys
BEGIN UPDATE revocations SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER revoke_meta_delete AFTER DELETE ON meta_tokens
BEGIN UPDATE revocations SET generation = generation + 1 WHERE id = 1; END;
-- Not for the sealing UPDATE that completes a new account (its credentials were empty): a
-- new account revokes nothing, and every account connected would otherwise empty the caches.
CREATE TRIGGER revoke_account_update AFTER UPDATE ON accounts
WHEN length(OLD.credentials) > 0
BEGIN UPDATE revocations SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER revoke_account_delete AFTER DELETE ON accounts
BEGIN UPDATE revocations SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER revoke_token_delete AFTER DELETE ON account_tokens
BEGIN UPDATE revocations SET generation = generation + 1 WHERE id = 1; END;
