-- Detectors of services with delta APIs (Dropbox, Google Drive, OneDrive; `hub::detect::delta`).
--
-- Their changes name objects by the provider's id (Drive, OneDrive) or by path with an id
-- (Dropbox), so a detector looks snapshot rows up by `ident` (the provider's id; an inode on
-- local disks): a known id under a new path is a rename or a move.
CREATE INDEX detect_snapshots_ident ON detect_snapshots(account_id, ident) WHERE ident IS NOT NULL;

-- A full listing (the first poll, or after the provider expired the cursor) stamps every row it
-- sees with the poll's lease epoch; rows left with an older stamp are what disappeared, swept in
-- `sort_key` order once the listing is done.
ALTER TABLE detect_snapshots ADD COLUMN mark INTEGER;
