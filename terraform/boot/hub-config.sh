#!/bin/bash
# shellcheck disable=SC2154 # the ARG_* variables are set by parse_args (printf -v).
# Prints a hub's hub.yaml (the caller writes it 0600: the database URLs carry the password).
# Usage: hub-config.sh --region R --zone Z --public-url URL --databases H1,H2,...
#          --join-advertise HOST:PORT --addresses IP,IP --password-file F --dns-file F
#          --private-ip IP [--replica HOST] [--tls-cert-file F --tls-key-file F]
# With the TLS files the API is HTTPS on 8443 (public_url must be https://), else HTTP on 8080.
# The steering DNS binds the instance's private address (what the load balancer forwards to),
# so a local resolver on 127.0.0.53:53 does not stand in its way.
# --dns-file holds <prefix>/hub/dns: {"zone","nameservers":[...],"records":[{name,type,value}]}.
set -euo pipefail
. "$(dirname "$0")/common.sh"
parse_args "$@"
need region zone public_url databases join_advertise addresses password_file dns_file private_ip

pw=$(cat "$ARG_password_file")
[[ $pw =~ ^[A-Za-z0-9._~-]+$ ]] || die "the database password must be URL-safe (unreserved characters)"
hosts=""
for h in ${ARG_databases//,/ }; do hosts="${hosts:+$hosts,}$h:5432"; done
yaml_list() { local out="" x; for x in ${1//,/ }; do out="${out:+$out, }$x"; done; printf '[%s]' "$out"; }

port=8080
[ -z "${ARG_tls_cert_file:-}" ] || port=8443
printf 'listen: 0.0.0.0:%s\npublic_url: %s\nregion: %s\ndata_dir: /var/lib/switchyard\n' "$port" "$ARG_public_url" "$ARG_region"
if [ -n "${ARG_tls_cert_file:-}" ]; then
  need tls_key_file
  printf 'tls:\n  cert_file: %s\n  key_file: %s\n' "$ARG_tls_cert_file" "$ARG_tls_key_file"
fi
printf 'database:\n  url: postgres://switchyard:%s@%s/switchyard\n' "$pw" "$hosts"
if [ -n "${ARG_replica:-}" ]; then
  printf '  replica_url: postgres://switchyard:%s@%s:5432/switchyard\n' "$pw" "$ARG_replica"
fi
printf 'secrets:\n  master_key_file: /etc/switchyard/master.key\n'
# Spokes enroll through the load balancer (join strings carry its name) and then hold a session
# with every hub at its own private address (through the VPC and the tunnel).
printf 'network:\n  quic_listen: 0.0.0.0:7443\n  quic_advertise: %s:7443\n  join_advertise: %s\n' \
  "$ARG_private_ip" "$ARG_join_advertise"
printf 'dns:\n  listen: %s:53\n  zone: %s\n' "$ARG_private_ip" "$ARG_zone"
printf '  nameservers: %s\n' "$(jq -c .nameservers "$ARG_dns_file")"
printf '  addresses: %s\n' "$(yaml_list "$ARG_addresses")"
printf '  records: %s\n' "$(jq -c '[.records[] | {name, type, value}]' "$ARG_dns_file")"
printf '  regions: []\n'
