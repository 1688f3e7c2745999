#!/bin/bash
# shellcheck disable=SC2154 # the ARG_* variables are set by parse_args (printf -v).
# First boot of a hub: reads the database password and the master key from SSM, the steering
# zone's name servers from SSM (public facts), writes /etc/switchyard/hub.yaml (0600: the
# database URLs carry the password) and starts `hub serve` with the API on 8080, QUIC on 7443
# and the steering DNS on 53.
# Usage: hub-boot.sh --region R --prefix P --ssm-region A --zone sy.example.com
#          --public-url http://R.api.sy.example.com --databases PRIMARY,REPLICA1,...
#          --quic-advertise LB_NAME:7443 --addresses IP,IP [--replica LOCAL_REPLICA]
set -euo pipefail
. "$(dirname "$0")/common.sh"
parse_args "$@"
need region prefix ssm_region zone public_url databases quic_advertise addresses

service_user switchyard /var/lib/switchyard
install -d -m 0750 -o root -g switchyard /etc/switchyard
( umask 077; ssm_wait "$ARG_prefix/hub/master_key" >/etc/switchyard/master.key )
chown switchyard /etc/switchyard/master.key
tmp=$(mktemp -d /etc/switchyard/.hub.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
( umask 077
  ssm_wait "$ARG_prefix/db/password" >"$tmp/password"
  ssm_wait "$ARG_prefix/hub/dns" >"$tmp/dns.json"
  "$(dirname "$0")/hub-config.sh" --region "$ARG_region" --zone "$ARG_zone" \
    --public-url "$ARG_public_url" --databases "$ARG_databases" \
    --quic-advertise "$ARG_quic_advertise" --addresses "$ARG_addresses" \
    ${ARG_replica:+--replica "$ARG_replica"} \
    --password-file "$tmp/password" --dns-file "$tmp/dns.json" \
    --private-ip "$(imds local-ipv4)" >"$tmp/hub.yaml" )
chown switchyard "$tmp/hub.yaml"
mv "$tmp/hub.yaml" /etc/switchyard/hub.yaml

install_units switchyard-hub.service
systemctl enable --now switchyard-hub.service
