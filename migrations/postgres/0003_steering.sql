-- Latency-aware DNS steering: the hub directory with the addresses answered for each hub,
-- the RTTs hubs measure to client networks, and what each hub sees of the others' health.

CREATE TABLE steering_hubs (
    api       TEXT   PRIMARY KEY,
    region    TEXT   NOT NULL,
    -- Comma-separated IPv4/IPv6 addresses answered for this hub.
    addresses TEXT   NOT NULL,
    seen_ms   BIGINT NOT NULL
);

-- One row per (client prefix, measuring hub's region): an EWMA of TCP handshake RTTs.
CREATE TABLE steering_rtt (
    prefix     TEXT   NOT NULL,
    region     TEXT   NOT NULL,
    rtt_us     BIGINT NOT NULL,
    samples    BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (prefix, region)
);
CREATE INDEX steering_rtt_updated ON steering_rtt (updated_ms);

-- What `observer` (a hub's api URL) last saw of `target`'s /readyz.
CREATE TABLE hub_health (
    observer   TEXT   NOT NULL,
    target     TEXT   NOT NULL,
    healthy    BIGINT NOT NULL,
    failures   BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (observer, target)
);
