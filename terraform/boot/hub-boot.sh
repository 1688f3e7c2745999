#!/bin/bash
# shellcheck disable=SC2154 # the ARG_* variables are set by parse_args (printf -v).
# First boot of a hub: reads the database password and the master key from SSM, the steering
# zone's name servers from SSM (public facts), writes /etc/switchyard/hub.yaml (0600: the
# database URLs carry the password) and starts `hub serve` with the API on 8080, QUIC on 7443
# and the steering DNS on 53.
# Usage: hub-boot.sh --region R --prefix P --ssm-region A --zone sy.example.com
#          --public-url http://R.api.sy.example.com --databases PRIMARY,REPLICA1,...
#          --join-advertise LB_NAME:7443 --addresses IP,IP [--replica LOCAL_REPLICA]
#          [--tls-cert-parameter NAME --tls-key-parameter NAME]
# With the TLS parameters the API is HTTPS on 8443 with the certificate from SSM, refreshed
# hourly by switchyard-hub-tls.timer (hub-tls.sh).
set -euo pipefail
. "$(dirname "$0")/common.sh"
parse_args "$@"
need region prefix ssm_region zone public_url databases join_advertise addresses

service_user switchyard /var/lib/switchyard
install -d -m 0750 -o root -g switchyard /etc/switchyard
( umask 077; ssm_wait "$ARG_prefix/hub/master_key" >/etc/switchyard/master.key )
chown switchyard /etc/switchyard/master.key
tls_args=()
if [ -n "${ARG_tls_cert_parameter:-}" ]; then
  need tls_key_parameter
  printf 'ARGS=--prefix %s --ssm-region %s --cert-parameter %s --key-parameter %s\n' \
    "$ARG_prefix" "$ARG_ssm_region" "$ARG_tls_cert_parameter" "$ARG_tls_key_parameter" >/etc/switchyard/hub-tls.env
  "$(dirname "$0")/hub-tls.sh" --prefix "$ARG_prefix" --ssm-region "$ARG_ssm_region" \
    --cert-parameter "$ARG_tls_cert_parameter" --key-parameter "$ARG_tls_key_parameter"
  tls_args=(--tls-cert-file /etc/switchyard/tls/cert.pem --tls-key-file /etc/switchyard/tls/key.pem)
fi
tmp=$(mktemp -d /etc/switchyard/.hub.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
( umask 077
  ssm_wait "$ARG_prefix/db/password" >"$tmp/password"
  ssm_wait "$ARG_prefix/hub/dns" >"$tmp/dns.json"
  "$(dirname "$0")/hub-config.sh" --region "$ARG_region" --zone "$ARG_zone" \
    --public-url "$ARG_public_url" --databases "$ARG_databases" \
    --join-advertise "$ARG_join_advertise" --addresses "$ARG_addresses" \
    ${ARG_replica:+--replica "$ARG_replica"} \
    --password-file "$tmp/password" --dns-file "$tmp/dns.json" \
    --private-ip "$(imds local-ipv4)" "${tls_args[@]}" >"$tmp/hub.yaml" )
chown switchyard "$tmp/hub.yaml"
mv "$tmp/hub.yaml" /etc/switchyard/hub.yaml

install_units switchyard-hub.service switchyard-hub-tls.service switchyard-hub-tls.timer
systemctl enable --now switchyard-hub.service
if [ -n "${ARG_tls_cert_parameter:-}" ]; then systemctl enable --now switchyard-hub-tls.timer; fi
