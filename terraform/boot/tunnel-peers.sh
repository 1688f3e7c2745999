#!/bin/bash
# shellcheck disable=SC2154 # the ARG_* variables are set by parse_args (printf -v).
# Rewrites the gateway's configuration from SSM: the peer list (terraform's, public facts) and
# each peer's published public key (tunnel-config.sh renders it). When the file changes and
# the gateway runs, it is reloaded (SIGHUP re-reads the peers).
# Usage: tunnel-peers.sh --region R --prefix /switchyard --ssm-region AWS_REGION [--port 51820]
set -euo pipefail
. "$(dirname "$0")/common.sh"
parse_args "$@"
need region prefix ssm_region
ARG_port=${ARG_port:-51820}

conf=/etc/switchyard/tunnel/gateway.yaml
work=$(mktemp -d /etc/switchyard/tunnel/.peers.XXXXXX)
trap 'rm -rf "$work"' EXIT
ssm_get "$ARG_prefix/tunnel/peers" >"$work/peers.json"
[ -s "$work/peers.json" ] || die "$ARG_prefix/tunnel/peers is missing"
install -d -m 0700 "$work/keys"
for name in $(jq -r --arg r "$ARG_region" '.[] | select(.name != $r) | .name' "$work/peers.json"); do
  ssm_get "$ARG_prefix/tunnel/$name/public_key" >"$work/keys/$name.pub"
done
( umask 077
  "$(dirname "$0")/tunnel-config.sh" --region "$ARG_region" --port "$ARG_port" \
    --peers-file "$work/peers.json" --keys-dir "$work/keys" >"$work/gateway.yaml" )
if ! cmp -s "$work/gateway.yaml" "$conf"; then
  mv "$work/gateway.yaml" "$conf"
  if systemctl is-active -q switchyard-tunnel.service; then systemctl reload switchyard-tunnel.service; fi
  log "peers updated"
fi
