-- What the write path holds at a provider while a request runs, so that a crashed or abandoned
-- request's leftovers are found again without walking any account's storage:
--   staging: an upload's staging object (`.switchyard-partial/<hex>`), deleted by the sweep;
--   name:    a file name reserved by an upload that writes in place (object stores);
--   folder:  a folder name being created on a service without an exclusive mkdir.
-- A live request refreshes `touched_ms`; rows untouched for `storage.staging_grace_secs` are
-- swept (their staging objects first, then the rows).
CREATE TABLE storage_claims (
    account_id INTEGER NOT NULL,
    object_key TEXT    NOT NULL,
    app_id     INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    created_ms INTEGER NOT NULL,
    touched_ms INTEGER NOT NULL,
    PRIMARY KEY (account_id, object_key)
);
CREATE INDEX storage_claims_touched ON storage_claims (touched_ms);
