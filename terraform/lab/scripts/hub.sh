#!/usr/bin/env bash
# The hubs. `schema`: the master key (made here, mode 0600, never in terraform's state), the
# migrations on the primary, the Meta API token (written to $STATE/secrets/meta.token).
# `up`: the region's configuration (the database password filled in from its file), then
# `hub serve` in the region's namespace until /readyz answers. `down`: stops it.
# Environment: STATE, BIN_DIR, REGION, NETNS, HUB_CONFIG (YAML with __DB_USERINFO__
# where the database URLs' user:password go),
# READY_URL (up); REGION (down).
export LAB_WHAT=hub
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
need STATE REGION

CONF=$STATE/$REGION/hub.yaml

write_config() {
  need HUB_CONFIG
  install -d -m 0755 "$STATE/$REGION"
  install -d -m 0700 "$STATE/$REGION/hub"
  local pw
  pw=$(cat "$STATE/secrets/db.password")
  (umask 077 && printf '%s\n' "${HUB_CONFIG//__DB_USERINFO__/switchyard:$pw}" >"$CONF")
}

schema() {
  need BIN_DIR NETNS
  (umask 077 && head -c 32 /dev/urandom | base64 >"$STATE/secrets/master.key")
  write_config
  in_ns "$NETNS" "$BIN_DIR/hub" --config "$CONF" migrate >"$STATE/log/migrate.log" 2>&1 ||
    {
      tail -n 20 "$STATE/log/migrate.log" >&2
      die "hub migrate failed"
    }
  local out token
  out=$(in_ns "$NETNS" "$BIN_DIR/hub" --config "$CONF" meta-token create --name lab)
  token=$(sed -n 's/^meta token: \(mt_[A-Za-z0-9_-]*\)$/\1/p' <<<"$out")
  [ -n "$token" ] || die "hub meta-token create printed no token"
  (umask 077 && printf '%s\n' "$token" >"$STATE/secrets/meta.token")
}

up() {
  need BIN_DIR NETNS READY_URL
  cleanup_on_failure down
  write_config
  start_daemon "hub-$REGION" "$NETNS" "$BIN_DIR/hub" --config "$CONF" serve
  wait_daemon 60 "hub-$REGION" http_ok "$NETNS" "$READY_URL"
}

down() {
  stop_daemon "hub-$REGION" 10
}

case "${1:-}" in
schema) schema ;;
up) up ;;
down) down ;;
*) die "usage: hub.sh schema|up|down" ;;
esac
