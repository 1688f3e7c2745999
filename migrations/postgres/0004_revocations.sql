-- Revocation reaches every hub within a second: every change that revokes (or may narrow) a
-- credential notifies `switchyard_revocations` with what to forget (`app:<id>`,
-- `account:<id>` or `all`), whoever made it (a hub, the `hub` command line, plain SQL). Hubs
-- LISTEN and drop the matching cache entries; the notification is sent on commit only.
CREATE FUNCTION switchyard_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    what TEXT;
BEGIN
    IF TG_TABLE_NAME = 'applications' THEN
        what := 'app:' || OLD.id;
    ELSIF TG_TABLE_NAME = 'api_keys' THEN
        what := 'app:' || OLD.app_id;
    ELSIF TG_TABLE_NAME = 'accounts' THEN
        what := 'account:' || OLD.id;
    ELSIF TG_TABLE_NAME = 'account_tokens' THEN
        what := 'account:' || OLD.account_id;
    ELSE
        what := 'all';
    END IF;
    PERFORM pg_notify('switchyard_revocations', what);
    RETURN NULL;
END
$$;

CREATE TRIGGER revoke_app AFTER UPDATE OR DELETE ON applications
    FOR EACH ROW EXECUTE FUNCTION switchyard_revoked();
CREATE TRIGGER revoke_key AFTER DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION switchyard_revoked();
CREATE TRIGGER revoke_meta AFTER DELETE ON meta_tokens
    FOR EACH ROW EXECUTE FUNCTION switchyard_revoked();
CREATE TRIGGER revoke_account AFTER UPDATE OR DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION switchyard_revoked();
CREATE TRIGGER revoke_token AFTER DELETE ON account_tokens
    FOR EACH ROW EXECUTE FUNCTION switchyard_revoked();
