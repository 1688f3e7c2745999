#!/bin/bash
# shellcheck disable=SC2154 # the ARG_* variables are set by parse_args (printf -v).
# Prints a gateway's configuration: its address and port, and one peer per entry of the peer
# list (terraform's <prefix>/tunnel/peers) other than itself whose public key is a file
# KEYS_DIR/<name>.pub (peers without one are left out until they publish it).
# Usage: tunnel-config.sh --region R --port 51820 --peers-file F --keys-dir D
set -euo pipefail
. "$(dirname "$0")/common.sh"
parse_args "$@"
need region port peers_file keys_dir

self=$(jq -r --arg r "$ARG_region" '.[] | select(.name == $r) | .address' "$ARG_peers_file")
[ -n "$self" ] || die "region $ARG_region is not in the peer list"
printf 'interface:\n  name: wg-switchyard\n  private_key_file: private.key\n'
printf '  addresses: [%s/32]\n  listen_port: %s\n  mtu: 1420\n' "$self" "$ARG_port"
peers=$(jq -c --arg r "$ARG_region" '.[] | select(.name != $r)' "$ARG_peers_file")
out=""
while read -r p; do
  [ -n "$p" ] || continue
  name=$(jq -r .name <<<"$p")
  [ -s "$ARG_keys_dir/$name.pub" ] || { log "peer $name has not published its key yet"; continue; }
  out+=$(printf '  - name: %s\n    public_key: %s\n    endpoint: %s\n    allowed_ips: [%s]\n    persistent_keepalive: 25' \
    "$name" "$(tr -d '[:space:]' <"$ARG_keys_dir/$name.pub")" "$(jq -r .endpoint <<<"$p")" "$(jq -r .cidr <<<"$p")")$'\n'
done <<<"$peers"
if [ -n "$out" ]; then printf 'peers:\n%s' "$out"; else printf 'peers: []\n'; fi
