#!/bin/bash
# shellcheck disable=SC2154 # the ARG_* variables are set by parse_args (printf -v).
# First boot of a tunnel gateway: makes the WireGuard key on the instance (the private key never
# leaves it), publishes the public key to SSM, turns on forwarding with MSS clamping, and starts
# `tunnel up` plus a timer that rewrites the peer list from SSM (peers appear as their gateways
# boot; a region added later is picked up the same way) and reloads the gateway on change.
# Usage: tunnel-boot.sh --region R --prefix /switchyard --ssm-region AWS_REGION [--port 51820]
set -euo pipefail
. "$(dirname "$0")/common.sh"
parse_args "$@"
need region prefix ssm_region
ARG_port=${ARG_port:-51820}

apt-get install -y -q --no-install-recommends iptables >/dev/null
install -d -m 0700 /etc/switchyard/tunnel
key=/etc/switchyard/tunnel/private.key
if [ ! -s "$key" ]; then
  (umask 077; "$BIN/tunnel" keygen >"$key")
fi
pub=$(mktemp); "$BIN/tunnel" pubkey <"$key" >"$pub"
ssm_put "$ARG_prefix/tunnel/$ARG_region/public_key" String "$pub"
rm -f "$pub"

# The gateway forwards between the VPC and the tunnel; TCP's MSS is clamped to the tunnel's MTU
# so hosts with the VPC's 9001-byte MTU never depend on ICMP getting through.
printf 'net.ipv4.ip_forward = 1\n' >/etc/sysctl.d/60-switchyard-tunnel.conf
sysctl -q -p /etc/sysctl.d/60-switchyard-tunnel.conf
iptables -t mangle -C FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu 2>/dev/null ||
  iptables -t mangle -A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu

cat >/etc/switchyard/tunnel/boot.env <<ENV
ARGS=--region $ARG_region --prefix $ARG_prefix --ssm-region $ARG_ssm_region --port $ARG_port
ENV
"$(dirname "$0")/tunnel-peers.sh" --region "$ARG_region" --prefix "$ARG_prefix" --ssm-region "$ARG_ssm_region" --port "$ARG_port"
install_units switchyard-tunnel.service switchyard-tunnel-peers.service switchyard-tunnel-peers.timer
systemctl enable --now switchyard-tunnel.service switchyard-tunnel-peers.timer
