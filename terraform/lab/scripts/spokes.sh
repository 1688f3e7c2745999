#!/usr/bin/env bash
# The region's spokes: one reusable join token (as many uses as spokes, valid one hour; its
# secret lives only in this script's memory), then per spoke `spoke enroll` (its own key pair
# and certificate) and `spoke run`, until the region's hub sees them all connected.
# Environment: STATE, BIN_DIR, REGION, NETNS, DATA_ADDRS ("host:port ..."), HUB_URL (up);
# STATE, REGION, SPOKE_COUNT (down).
export LAB_WHAT=spokes
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
need STATE REGION

connected() { # connected N: the region's hub has at least N of this region's spokes connected
  in_ns "$NETNS" curl -fsS --max-time 2 -H "Authorization: Bearer $(cat "$STATE/secrets/meta.token")" \
    "$HUB_URL/v1/network/spokes" |
    python3 -c 'import json,sys; n=sum(1 for s in json.load(sys.stdin)["objects"] if s["region"]==sys.argv[1] and s["connected"] and not s["revoked"]); sys.exit(0 if n>=int(sys.argv[2]) else 1)' "$REGION" "$1"
}

up() {
  need BIN_DIR NETNS HUB_URL
  local addrs count
  read -r -a addrs <<<"${DATA_ADDRS:-}"
  count=${#addrs[@]}
  SPOKE_COUNT=$count
  cleanup_on_failure down
  [ "$count" -gt 0 ] || return 0
  local json join
  json=$(in_ns "$NETNS" "$BIN_DIR/hub" --config "$STATE/$REGION/hub.yaml" spokes token create \
    --region "$REGION" --name "$REGION" --uses "$count" --ttl 1h --json) ||
    die "hub spokes token create failed"
  join=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["join"])' <<<"$json")
  local k dir
  for k in $(seq 1 "$count"); do
    dir=$STATE/$REGION/spoke-$k
    # On standard input: never in the process list.
    printf '%s\n' "$join" | in_ns "$NETNS" "$BIN_DIR/spoke" enroll --join-file - --data-dir "$dir" \
      --advertise "${addrs[$((k - 1))]}" --name "$REGION-$k" \
      >>"$STATE/log/spoke-$REGION-$k.log" 2>&1 || {
      tail -n 20 "$STATE/log/spoke-$REGION-$k.log" >&2
      die "spoke enroll $REGION-$k failed"
    }
    start_daemon "spoke-$REGION-$k" "$NETNS" "$BIN_DIR/spoke" run --data-dir "$dir"
  done
  wait_for 60 "$count spokes of $REGION connected" connected "$count"
  for k in $(seq 1 "$count"); do check_running "spoke-$REGION-$k"; done
}

down() {
  need SPOKE_COUNT
  local k
  for k in $(seq 1 "$SPOKE_COUNT"); do stop_daemon "spoke-$REGION-$k" 5; done
}

case "${1:-}" in
up) up ;;
down) down ;;
*) die "usage: spokes.sh up|down" ;;
esac
