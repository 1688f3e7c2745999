-- The operator console (`/ui/network`) shows what each hub runs and how it reads the database,
-- and when each spoke's certificate runs out. Every hub writes its own `hubs` row on its
-- periodic refresh: its version, its database role (`sqlite`, `postgres primary`,
-- `postgres replica-reading`, ...) and, with a replica configured, the replica's lag as the
-- hub last measured it (NULL without a replica, and in rows of hubs older than this).
ALTER TABLE hubs ADD COLUMN version TEXT;
ALTER TABLE hubs ADD COLUMN db_role TEXT;
ALTER TABLE hubs ADD COLUMN replica_lag_ms INTEGER;
-- A spoke certificate's not-after, recorded when the hub issues it and again from the
-- certificate a spoke connects with (so spokes enrolled before this get theirs on their next
-- connection).
ALTER TABLE spokes ADD COLUMN cert_not_after_ms INTEGER;
