-- The spoke CA: the issuer of spoke certificates only. The network CA (`network_ca`, the one
-- join strings pin) issues hub certificates only, so a spoke's certificate can never pass as a
-- hub's, and hubs accept as spokes only certificates from this CA. Spokes enrolled before this
-- migration hold certificates from the network CA and must enroll again.
CREATE TABLE spoke_ca (
    id          BIGINT PRIMARY KEY CHECK (id = 1),
    cert_pem    TEXT    NOT NULL,
    key_sealed  BYTEA   NOT NULL,
    fingerprint TEXT    NOT NULL,
    created_ms  BIGINT  NOT NULL
);
