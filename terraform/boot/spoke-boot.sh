#!/bin/bash
# shellcheck disable=SC2154 # the ARG_* variables are set by parse_args (printf -v).
# First boot of a spoke: reads the region's reusable join token from SSM, enrolls (the spoke
# makes its own key pair and gets its own certificate; the token's use count goes down by
# one), then starts `spoke run`. The data endpoint and relay listen on the private address:
# hubs and other regions' spokes reach it through the VPC and the tunnel.
# Usage: spoke-boot.sh --region R --prefix P --ssm-region A [--port 8443]
set -euo pipefail
. "$(dirname "$0")/common.sh"
parse_args "$@"
need region prefix ssm_region
ARG_port=${ARG_port:-8443}

dir=/var/lib/switchyard-spoke
service_user switchyard-spoke "$dir"
if [ ! -s "$dir/spoke.yaml" ]; then
  join=$(ssm_wait "$ARG_prefix/join/$ARG_region")
  ip=$(imds local-ipv4)
  name=$(imds instance-id)
  # On standard input, never an argument (arguments show in every user's process list).
  printf '%s\n' "$join" | runuser -u switchyard-spoke -- "$BIN/spoke" enroll --join-file - \
    --data-dir "$dir" --advertise "$ip:$ARG_port" --name "$name" --timeout 60
fi
# The relay asks for 32 MiB UDP buffers (shared::quic::UDP_BUFFER): the spoke runs without
# CAP_NET_ADMIN, so the kernel's limits must allow them.
printf 'net.core.rmem_max = 33554432\nnet.core.wmem_max = 33554432\n' \
  >/etc/sysctl.d/60-switchyard-spoke.conf
sysctl -q -p /etc/sysctl.d/60-switchyard-spoke.conf
install_units switchyard-spoke.service
systemctl enable --now switchyard-spoke.service
