-- The primary's roles and database (db-boot.sh runs it as postgres; idempotent). The passwords
-- are read from files in the directory :pwdir (pw, rpw; 0600, owned by postgres), so they
-- never appear in argv or the environment.
\set pw `cat :pwdir/pw`
\set rpw `cat :pwdir/rpw`
SELECT 'CREATE ROLE switchyard LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'switchyard')\gexec
SELECT 'CREATE ROLE replicator LOGIN REPLICATION' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replicator')\gexec
SET password_encryption = 'scram-sha-256';
ALTER ROLE switchyard PASSWORD :'pw';
ALTER ROLE replicator PASSWORD :'rpw';
SELECT 'CREATE DATABASE switchyard OWNER switchyard' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'switchyard')\gexec
-- hub db status reads the replication views; hub db promote runs pg_promote on a replica.
GRANT pg_monitor TO switchyard;
GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO switchyard;
