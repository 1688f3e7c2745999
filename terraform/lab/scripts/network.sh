#!/usr/bin/env bash
# The lab's networks: `up` makes the state directory, a namespace per region (with its private
# network on a dummy interface) and per client, and starts the WAN emulator (`linkemu`) that
# joins them with the RTT matrix; `down` stops the emulator, kills anything left in the
# namespaces, deletes them and removes the state directory.
# Environment: STATE, BIN_DIR (up), REGION_NETNS ("ns=private_addr/24 ..."), CLIENT_NETNS
# ("ns ..."), LINKEMU_SPEC (JSON, up).
export LAB_WHAT=network
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
need STATE REGION_NETNS CLIENT_NETNS

namespaces() {
  local e
  for e in $REGION_NETNS; do echo "${e%%=*}"; done
  for e in $CLIENT_NETNS; do echo "$e"; done
}

up() {
  need BIN_DIR LINKEMU_SPEC
  if [ -e "$STATE" ]; then
    if [ -e "$STATE/$MARKER" ]; then
      die "$STATE holds a lab already: run terraform destroy first (or network.sh down with its environment)"
    fi
    [ -z "$(ls -A "$STATE")" ] || die "$STATE exists and is not empty: choose another state_dir"
  fi
  for b in hub spoke tunnel linkemu; do
    [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b is missing (cargo build --release --workspace)"
  done
  local ns
  for ns in $(namespaces); do
    [ ! -e "/run/netns/$ns" ] || die "namespace $ns exists already: destroy the earlier lab or 'ip netns del $ns'"
  done
  # From here on, a failure undoes everything (checked above: nothing here is someone else's).
  cleanup_on_failure down
  install -d -m 0755 "$STATE" "$STATE/run" "$STATE/log"
  touch "$STATE/$MARKER"
  install -d -m 0700 "$STATE/secrets"

  for ns in $(namespaces); do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
  local e addr
  for e in $REGION_NETNS; do
    ns=${e%%=*} addr=${e#*=}
    # The region's private network: only this namespace and, through the tunnel, the other
    # regions reach it. A veth pair (this kernel has no dummy interfaces); privx is the segment
    # where more private hosts would attach.
    ip -n "$ns" link add priv0 type veth peer name privx
    ip -n "$ns" address add "$addr" dev priv0
    ip -n "$ns" link set privx up
    ip -n "$ns" link set priv0 up
  done

  printf '%s\n' "$LINKEMU_SPEC" >"$STATE/linkemu.json"
  "$BIN_DIR/linkemu" --config "$STATE/linkemu.json" --check
  rm -f "$STATE/run/linkemu.ready"
  start_daemon linkemu - "$BIN_DIR/linkemu" --config "$STATE/linkemu.json" \
    --ready-file "$STATE/run/linkemu.ready"
  wait_daemon 20 linkemu test -s "$STATE/run/linkemu.ready"
}

down() {
  stop_daemon linkemu 5
  local ns pid
  for ns in $(namespaces); do
    [ -e "/run/netns/$ns" ] || continue
    # Whatever a failed apply left running in the namespace.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      kill -KILL "$pid" 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true
  done
  if [ -e "$STATE/$MARKER" ]; then
    rm -rf "$STATE"
  elif [ -e "$STATE" ]; then
    log "$STATE is not a lab's state directory (no $MARKER): left alone"
  fi
}

case "${1:-}" in
up) up ;;
down) down ;;
*) die "usage: network.sh up|down" ;;
esac
