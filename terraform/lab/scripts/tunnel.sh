#!/usr/bin/env bash
# The tunnel gateways. `keys`: a WireGuard key pair per region, made here (the private key
# never leaves $STATE/<region>, mode 0600; terraform never sees it). `up`: writes the region's
# gateway configuration (the peers' public keys filled in from their files), starts `tunnel up`
# in the region's namespace, and makes connections into the tunnel leave from the region's
# private address. `down`: stops it.
# Environment: STATE, BIN_DIR, REGIONS (keys); REGION, NETNS, TUNNEL_CONFIG (YAML with
# __PUBKEY_<region>__ placeholders), PRIVATE_ADDR, PEER_NETS (up); REGION (down).
export LAB_WHAT=tunnel
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
need STATE

keys() {
  need BIN_DIR REGIONS
  local r
  for r in $REGIONS; do
    install -d -m 0755 "$STATE/$r"
    install -d -m 0700 "$STATE/$r/tunnel"
    (umask 077 && "$BIN_DIR/tunnel" keygen >"$STATE/$r/tunnel/private.key")
    "$BIN_DIR/tunnel" pubkey <"$STATE/$r/tunnel/private.key" >"$STATE/$r/tunnel/public.key"
  done
}

up() {
  need BIN_DIR REGION NETNS TUNNEL_CONFIG PRIVATE_ADDR PEER_NETS
  cleanup_on_failure down
  local conf=$STATE/$REGION/tunnel/tunnel.yaml
  local text=$TUNNEL_CONFIG f r
  for f in "$STATE"/*/tunnel/public.key; do
    r=$(basename "$(dirname "$(dirname "$f")")")
    text=${text//__PUBKEY_${r}__/$(cat "$f")}
  done
  case $text in *__PUBKEY_*) die "a peer's public key is missing: $(grep -o '__PUBKEY_[a-z0-9-]*__' <<<"$text" | head -n 1)" ;; esac
  printf '%s\n' "$text" >"$conf"
  start_daemon "tunnel-$REGION" "$NETNS" "$BIN_DIR/tunnel" up --config "$conf"
  wait_daemon 15 "tunnel-$REGION" in_ns "$NETNS" "$BIN_DIR/tunnel" status --config "$conf"
  # The gateway routes the other regions' networks into its interface; connections opened
  # here (replication, hub to database) leave from the private address, which the other
  # regions' servers allow, rather than from the transit address.
  local net
  for net in $PEER_NETS; do
    wait_daemon 5 "tunnel-$REGION" sh -c "ip -n '$NETNS' route show '$net' | grep -q ."
    ip -n "$NETNS" route change "$net" dev wg0 src "$PRIVATE_ADDR"
  done
}

down() {
  need REGION
  stop_daemon "tunnel-$REGION" 5
}

case "${1:-}" in
keys) keys ;;
up) up ;;
down) down ;;
*) die "usage: tunnel.sh keys|up|down" ;;
esac
