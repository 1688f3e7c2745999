#!/bin/bash
# shellcheck disable=SC2154 # the ARG_* variables are set by parse_args (printf -v).
# Installs the API's certificate and key from SSM into /etc/switchyard/tls (the key 0600, owned
# by the hub's user) and, when they changed and the hub runs, reloads it (SIGHUP: new
# connections get the new certificate; a pair that does not load keeps the old one).
# Usage: hub-tls.sh --prefix P --ssm-region A --cert-parameter NAME --key-parameter NAME
set -euo pipefail
. "$(dirname "$0")/common.sh"
parse_args "$@"
need ssm_region cert_parameter key_parameter

dir=/etc/switchyard/tls
install -d -m 0750 -o root -g switchyard "$dir"
work=$(mktemp -d "$dir/.new.XXXXXX")
trap 'rm -rf "$work"' EXIT
( umask 077
  ssm_wait "$ARG_cert_parameter" >"$work/cert.pem"
  ssm_wait "$ARG_key_parameter" >"$work/key.pem" )
grep -q 'BEGIN CERTIFICATE' "$work/cert.pem" || die "$ARG_cert_parameter does not hold a PEM certificate"
grep -q 'PRIVATE KEY' "$work/key.pem" || die "$ARG_key_parameter does not hold a PEM private key"
if cmp -s "$work/cert.pem" "$dir/cert.pem" && cmp -s "$work/key.pem" "$dir/key.pem"; then
  exit 0
fi
chown switchyard "$work/cert.pem" "$work/key.pem"
# Key first, then the certificate, each by rename: the hub never reads half a file.
mv "$work/key.pem" "$dir/key.pem"
mv "$work/cert.pem" "$dir/cert.pem"
if systemctl is-active -q switchyard-hub.service; then systemctl reload switchyard-hub.service; fi
log "API certificate installed"
