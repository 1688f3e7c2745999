-- A transfer that failed on a spoke (the spoke reported the failure, or was lost while running
-- it) is kept away from that spoke for `transfers.failed_spoke_exclusion_secs`, whichever hub
-- dispatches it next: one row per (transfer, spoke) with until when and why (the dispatcher
-- names it in the transfer's note). Rows whose time ran out are pruned in batches through
-- `until_ms`. And the steering tables written every probe (`hub_health`) get the
-- `updated_ms` index `steering_rtt` already has, so their periodic prune (bounded batches of
-- the oldest rows) never scans a table.
CREATE TABLE transfer_exclusions (
    transfer_id BIGINT  NOT NULL REFERENCES transfers(id) ON DELETE CASCADE,
    spoke_id    BIGINT  NOT NULL,
    until_ms    BIGINT  NOT NULL,
    reason      TEXT    NOT NULL,
    PRIMARY KEY (transfer_id, spoke_id)
);
CREATE INDEX transfer_exclusions_until ON transfer_exclusions (until_ms);
CREATE INDEX hub_health_updated ON hub_health (updated_ms);
