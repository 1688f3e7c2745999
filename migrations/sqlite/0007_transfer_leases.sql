-- Transfers are held through leases, not by the hub that created them. A hub process holds
-- each unfinished transfer it works on as `lease_holder` (`<advertise or public url>#<16 hex>`,
-- new for every process, so a restarted hub is a new holder) until `lease_until` (ms),
-- renewed every third of `transfers.lease_ms`. Any hub takes over a transfer whose lease
-- expired (or that has no holder) with one conditional UPDATE that bumps `lease_epoch`: every
-- write a holder makes names its holder id and epoch, so a stale holder's writes change
-- nothing. `owner` stays as information: the hub that created the transfer. Transfers created
-- before this migration have no holder and are taken over by the first hub that looks.
ALTER TABLE transfers ADD COLUMN lease_holder TEXT;
ALTER TABLE transfers ADD COLUMN lease_until INTEGER;
ALTER TABLE transfers ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
-- "Expired leases of unfinished transfers" and "this holder's unfinished transfers" (the
-- renewal) read only unfinished rows, which stay few however many transfers ended.
CREATE INDEX transfers_lease_until ON transfers(lease_until) WHERE state IN ('queued', 'running');
CREATE INDEX transfers_lease_holder ON transfers(lease_holder) WHERE state IN ('queued', 'running');
