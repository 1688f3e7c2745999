#!/usr/bin/env bash
# The database servers. `primary`: initdb (the `switchyard` role's password made here, kept
# in $STATE/secrets, never in terraform's state), listening on the region's private address
# only, replication allowed from the private networks. `replica`: pg_basebackup from the
# primary's private address (through the tunnel) with a replication slot, then a hot standby
# streaming from it. `down`: a fast shutdown.
# Environment: STATE, REGION, NETNS, LISTEN_ADDR, ALLOW_NET (primary, replica); PRIMARY_ADDR
# (replica); REGION (down).
export LAB_WHAT=postgres
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
need STATE REGION

BIN=$(pg_bindir)
ACCT=$(pg_account)
DIR=$STATE/$REGION/postgres
PASSWORD_FILE=$STATE/secrets/db.password

as_pg() { # as_pg CMD...: CMD as the PostgreSQL account inside the region's namespace
  ip netns exec "$NETNS" setpriv --reuid="$ACCT" --regid="$ACCT" --clear-groups -- "$@"
}

prepare_dir() {
  install -d -m 0700 -o "$ACCT" -g "$ACCT" "$DIR" "$DIR/sock"
}

settings() { # settings: what both servers add to postgresql.conf
  cat >>"$DIR/data/postgresql.conf" <<CONF
# --- terraform/lab ---
listen_addresses = '$LISTEN_ADDR'
port = 5432
unix_socket_directories = '$DIR/sock'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
# Two replicas seeding at once each force a checkpoint, which may recycle the WAL the other's
# backup still needs before its slot exists ("requested WAL segment ... has already been
# removed"): keep some regardless of slots.
wal_keep_size = 256MB
hot_standby = on
hot_standby_feedback = on
max_connections = 100
shared_buffers = 32MB
CONF
}

start() {
  start_daemon "postgres-$REGION" "$NETNS" setpriv --reuid="$ACCT" --regid="$ACCT" \
    --clear-groups -- "$BIN/postgres" -D "$DIR/data"
  wait_daemon 30 "postgres-$REGION" in_ns "$NETNS" "$BIN/pg_isready" -q -h "$LISTEN_ADDR" -p 5432
}

# A failed create leaves nothing: no server, no half-made cluster a retry would trip on.
undo() {
  down
  rm -rf "$DIR"
}

primary() {
  need NETNS LISTEN_ADDR ALLOW_NET
  cleanup_on_failure undo
  prepare_dir
  (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$PASSWORD_FILE")
  # initdb reads the password from a file the PostgreSQL account can read; it goes at once.
  local pw=$DIR/initdb.pw
  install -m 0600 -o "$ACCT" -g "$ACCT" "$PASSWORD_FILE" "$pw"
  as_pg "$BIN/initdb" -D "$DIR/data" -U switchyard --pwfile="$pw" -E UTF8 --locale=C \
    --auth-local=peer --auth-host=scram-sha-256 --no-sync >"$STATE/log/initdb-$REGION.log" 2>&1 ||
    {
      rm -f "$pw"
      tail -n 20 "$STATE/log/initdb-$REGION.log" >&2
      die "initdb failed"
    }
  rm -f "$pw"
  settings
  # Local connections as the server's own account map to the switchyard role.
  sed -i "s/^local *all *all *peer\$/local all all peer map=lab/" "$DIR/data/pg_hba.conf"
  printf 'lab %s switchyard\n' "$ACCT" >>"$DIR/data/pg_ident.conf"
  cat >>"$DIR/data/pg_hba.conf" <<HBA
host switchyard switchyard $ALLOW_NET scram-sha-256
host replication switchyard $ALLOW_NET scram-sha-256
HBA
  start
  as_pg "$BIN/createdb" -h "$DIR/sock" -U switchyard switchyard
}

replica() {
  need NETNS LISTEN_ADDR ALLOW_NET PRIMARY_ADDR
  cleanup_on_failure undo
  prepare_dir
  local pass=$DIR/pgpass
  (umask 077 && printf '%s:5432:*:switchyard:%s\n' "$PRIMARY_ADDR" "$(cat "$PASSWORD_FILE")" >"$pass")
  chown "$ACCT:$ACCT" "$pass"
  local slot
  slot=replica_$(tr -- - _ <<<"$REGION")
  # Through the tunnel: the primary listens on its private address only. A fast checkpoint:
  # the default spreads it over checkpoint_timeout (minutes).
  PGPASSFILE=$pass as_pg "$BIN/pg_basebackup" -h "$PRIMARY_ADDR" -p 5432 -U switchyard \
    -D "$DIR/data" -R -X stream -C -S "$slot" --checkpoint=fast --no-sync >"$STATE/log/basebackup-$REGION.log" 2>&1 ||
    {
      tail -n 20 "$STATE/log/basebackup-$REGION.log" >&2
      die "pg_basebackup from $PRIMARY_ADDR failed"
    }
  settings
  start
}

down() {
  # SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for every client to leave).
  stop_daemon "postgres-$REGION" 10 INT
}

case "${1:-}" in
primary) primary ;;
replica) replica ;;
down) down ;;
*) die "usage: postgres.sh primary|replica|down" ;;
esac
