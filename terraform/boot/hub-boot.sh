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
pw=$(ssm_wait "$ARG_prefix/db/password")
dns=$(ssm_wait "$ARG_prefix/hub/dns")

hosts=""
for h in ${ARG_databases//,/ }; do hosts="${hosts:+$hosts,}$h:5432"; done
yaml_list() { local out="" x; for x in ${1//,/ }; do out="${out:+$out, }$x"; done; printf '[%s]' "$out"; }

tmp=$(mktemp /etc/switchyard/.hub.XXXXXX)
trap 'rm -f "$tmp"' EXIT
{
  printf 'listen: 0.0.0.0:8080\npublic_url: %s\nregion: %s\ndata_dir: /var/lib/switchyard\n' "$ARG_public_url" "$ARG_region"
  printf 'database:\n  url: postgres://switchyard:%s@%s/switchyard\n' "$pw" "$hosts"
  if [ -n "${ARG_replica:-}" ]; then
    printf '  replica_url: postgres://switchyard:%s@%s:5432/switchyard\n' "$pw" "$ARG_replica"
  fi
  printf 'secrets:\n  master_key_file: /etc/switchyard/master.key\n'
  printf 'network:\n  quic_listen: 0.0.0.0:7443\n  quic_advertise: %s\n' "$ARG_quic_advertise"
  printf 'dns:\n  listen: 0.0.0.0:53\n  zone: %s\n' "$ARG_zone"
  printf '  nameservers: %s\n' "$(jq -c .nameservers <<<"$dns")"
  printf '  addresses: %s\n' "$(yaml_list "$ARG_addresses")"
  printf '  records: %s\n' "$(jq -c '[.records[] | {name, type, value}]' <<<"$dns")"
  printf '  regions: []\n'
} >"$tmp"
chmod 0600 "$tmp"; chown switchyard "$tmp"
mv "$tmp" /etc/switchyard/hub.yaml

install_units switchyard-hub.service
systemctl enable --now switchyard-hub.service
