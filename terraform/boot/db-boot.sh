#!/bin/bash
# shellcheck disable=SC2154 # the ARG_* variables are set by parse_args (printf -v).
# First boot of a PostgreSQL server. The primary makes the database and replication passwords
# (or reuses the stored ones when rebuilt) and, with the hub binary, bootstraps the network:
# schema, master key, Meta token, one reusable join token per region, all stored as SSM
# SecureStrings. A replica waits for the replication password and the primary (through the
# tunnel), copies it with pg_basebackup and streams from it.
# Usage: db-boot.sh --role primary --region R --prefix P --ssm-region A --allow CIDR,CIDR
#                   [--join-uses 100]
#        db-boot.sh --role replica --region R --prefix P --ssm-region A --allow CIDR,CIDR
#                   --primary 10.x.y.z
set -euo pipefail
. "$(dirname "$0")/common.sh"
parse_args "$@"
need role region prefix ssm_region allow

apt-get install -y -q --no-install-recommends postgresql postgresql-client openssl >/dev/null
ver=$(ls /etc/postgresql)
conf=/etc/postgresql/$ver/main
data=/var/lib/postgresql/$ver/main
install -d -m 0700 /etc/switchyard

# Both roles get the same settings: a replica may be promoted and take replicas itself.
cat >"$conf/conf.d/switchyard.conf" <<CONF
listen_addresses = '*'
password_encryption = 'scram-sha-256'
wal_level = replica
max_wal_senders = 16
wal_keep_size = '4GB'
hot_standby = on
hot_standby_feedback = on
CONF
{
  echo "# Switchyard: hubs and replicas from the regions' networks (through the tunnel)"
  echo "local all postgres peer"
  for c in ${ARG_allow//,/ }; do
    echo "host switchyard switchyard $c scram-sha-256"
    echo "host replication replicator $c scram-sha-256"
  done
} >"$conf/pg_hba.conf"

pw=/etc/switchyard/db-password
rpw=/etc/switchyard/replication-password
gen_hex() { openssl rand -hex 24; }

case "$ARG_role" in
primary)
  secret_once "$ARG_prefix/db/password" "$pw" gen_hex
  secret_once "$ARG_prefix/db/replication_password" "$rpw" gen_hex
  systemctl restart postgresql
  # Roles and database. The passwords reach psql through files only postgres can read (psql's
  # backquote expansion), never argv or the environment.
  pwdir=$(mktemp -d)
  install -m 0600 -o postgres "$pw" "$pwdir/pw"
  install -m 0600 -o postgres "$rpw" "$pwdir/rpw"
  chown postgres "$pwdir"
  runuser -u postgres -- psql -v ON_ERROR_STOP=1 -q -v pwdir="$pwdir" -f "$(dirname "$0")/db-roles.sql"
  rm -rf "$pwdir"
  # Bootstrap with the hub binary: a config in a 0600 file holds the URL with the password.
  secret_once "$ARG_prefix/hub/master_key" /etc/switchyard/master.key sh -c 'head -c 32 /dev/urandom | base64'
  boot=/etc/switchyard/bootstrap.yaml
  ( umask 077
    printf 'region: %s\ndata_dir: /var/lib/switchyard-bootstrap\ndatabase:\n  url: postgres://switchyard:%s@127.0.0.1:5432/switchyard\nsecrets:\n  master_key_file: /etc/switchyard/master.key\nnetwork:\n  quic_listen: null\n' \
      "$ARG_region" "$(cat "$pw")" >"$boot" )
  install -d -m 0700 /var/lib/switchyard-bootstrap
  "$BIN/hub" --config "$boot" migrate
  if [ -z "$(ssm_get "$ARG_prefix/hub/meta_token")" ]; then
    out=$(mktemp); chmod 600 "$out"
    "$BIN/hub" --config "$boot" meta-token create --name terraform | sed -n 's/^meta token: //p' >"$out"
    ssm_put "$ARG_prefix/hub/meta_token" SecureString "$out"; rm -f "$out"
  fi
  # Join tokens for every region now, then hourly: new regions get one, tokens are renewed
  # a week before they expire.
  printf 'ARGS=--prefix %s --ssm-region %s --uses %s\n' "$ARG_prefix" "$ARG_ssm_region" "${ARG_join_uses:-100}" \
    >/etc/switchyard/join-tokens.env
  "$(dirname "$0")/join-tokens.sh" --prefix "$ARG_prefix" --ssm-region "$ARG_ssm_region" --uses "${ARG_join_uses:-100}"
  install_units switchyard-join-tokens.service switchyard-join-tokens.timer
  systemctl enable --now switchyard-join-tokens.timer
  ;;
replica)
  need primary
  ( umask 077; ssm_wait "$ARG_prefix/db/replication_password" >"$rpw" )
  deadline=$((SECONDS + WAIT_SECS))
  until pg_isready -q -h "$ARG_primary" -p 5432; do
    [ $SECONDS -lt $deadline ] || die "the primary $ARG_primary:5432 is not reachable through the tunnel"
    sleep 5
  done
  # The replication password reaches libpq (pg_basebackup now, the WAL receiver later)
  # through postgres's ~/.pgpass (0600), never argv or the environment.
  pgpass=/var/lib/postgresql/.pgpass
  ( umask 077; printf '%s:5432:replication:replicator:%s\n' "$ARG_primary" "$(cat "$rpw")" >"$pgpass" )
  chown postgres:postgres "$pgpass"
  if [ ! -f "$data/standby.signal" ]; then
    systemctl stop postgresql
    rm -rf "$data"
    install -d -m 0700 -o postgres -g postgres "$data"
    # -R writes standby.signal and primary_conninfo (host, user; the password comes from .pgpass).
    runuser -u postgres -- pg_basebackup -h "$ARG_primary" -U replicator -w \
      -D "$data" -R -X stream --checkpoint=fast
  fi
  systemctl restart postgresql
  ;;
*) die "--role must be primary or replica" ;;
esac
log "PostgreSQL $ARG_role of $ARG_region ready"
