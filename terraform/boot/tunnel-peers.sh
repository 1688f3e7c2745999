#!/bin/bash
# shellcheck disable=SC2154 # the ARG_* variables are set by parse_args (printf -v).
# Writes the gateway's configuration from SSM: the peer list (terraform's, public facts) and
# each peer's published public key; peers whose key is not published yet are left out. When
# the file changes and the gateway runs, it is reloaded (SIGHUP re-reads the peers).
# Usage: tunnel-peers.sh --region R --prefix /switchyard --ssm-region AWS_REGION [--port 51820]
set -euo pipefail
. "$(dirname "$0")/common.sh"
parse_args "$@"
need region prefix ssm_region
ARG_port=${ARG_port:-51820}

conf=/etc/switchyard/tunnel/gateway.yaml
peers=$(ssm_get "$ARG_prefix/tunnel/peers")
[ -n "$peers" ] || die "$ARG_prefix/tunnel/peers is missing"
self=$(jq -r --arg r "$ARG_region" '.[] | select(.name == $r) | .address' <<<"$peers")
[ -n "$self" ] || die "region $ARG_region is not in $ARG_prefix/tunnel/peers"

tmp=$(mktemp /etc/switchyard/tunnel/.gateway.XXXXXX)
trap 'rm -f "$tmp"' EXIT
{
  printf 'interface:\n  name: wg-switchyard\n  private_key_file: private.key\n'
  printf '  addresses: [%s/32]\n  listen_port: %s\n  mtu: 1420\n' "$self" "$ARG_port"
  printf 'peers:\n'
  jq -c --arg r "$ARG_region" '.[] | select(.name != $r)' <<<"$peers" | while read -r p; do
    name=$(jq -r .name <<<"$p")
    key=$(ssm_get "$ARG_prefix/tunnel/$name/public_key")
    [ -n "$key" ] || { log "peer $name has not published its key yet"; continue; }
    printf '  - name: %s\n    public_key: %s\n    endpoint: %s\n    allowed_ips: [%s]\n    persistent_keepalive: 25\n' \
      "$name" "$key" "$(jq -r .endpoint <<<"$p")" "$(jq -r .cidr <<<"$p")"
  done
} >"$tmp"
[ "$(grep -c '^  - name:' "$tmp" || true)" -gt 0 ] || printf '  []\n' >>"$tmp"
chmod 0600 "$tmp"
if ! cmp -s "$tmp" "$conf"; then
  mv "$tmp" "$conf"
  if systemctl is-active -q switchyard-tunnel.service; then systemctl reload switchyard-tunnel.service; fi
  log "peers updated"
fi
