#!/bin/bash
# shellcheck disable=SC2154 # the ARG_* variables are set by parse_args (printf -v).
# Keeps one reusable spoke join token per region in SSM (on the PostgreSQL primary, which holds
# the bootstrap config): the regions are the names in <prefix>/tunnel/peers, so a region added
# by terraform gets its token within the hour; a token is replaced a week before it expires
# (the old one stays valid until then; enrolled spokes never need it again).
# Usage: join-tokens.sh --prefix P --ssm-region A [--uses 100]
set -euo pipefail
. "$(dirname "$0")/common.sh"
parse_args "$@"
need prefix ssm_region
boot=/etc/switchyard/bootstrap.yaml
[ -r "$boot" ] || die "$boot is missing (run db-boot.sh --role primary first)"

peers=$(ssm_get "$ARG_prefix/tunnel/peers")
[ -n "$peers" ] || die "$ARG_prefix/tunnel/peers is missing"
renew_before=$((7 * 86400))
# expires_at as seconds since the epoch: RFC 3339 text, or a number of seconds or milliseconds.
epoch_of() {
  if [[ $1 =~ ^[0-9]+$ ]]; then
    if [ "${#1}" -ge 13 ]; then echo $(($1 / 1000)); else echo "$1"; fi
  else
    date -d "$1" +%s 2>/dev/null || echo 0
  fi
}
for r in $(jq -r '.[].name' <<<"$peers"); do
  expires=$(ssm_get "$ARG_prefix/join-expiry/$r")
  if [ -n "$(ssm_get "$ARG_prefix/join/$r")" ] && [ -n "$expires" ] &&
    [ "$(epoch_of "$expires")" -gt $((EPOCHSECONDS + renew_before)) ]; then
    continue
  fi
  token=$(mktemp); join=$(mktemp); chmod 600 "$token" "$join"
  "$BIN/hub" --config "$boot" spokes token create --region "$r" --uses "${ARG_uses:-100}" --ttl 30d --json >"$token"
  jq -j .join "$token" >"$join"
  ssm_put "$ARG_prefix/join/$r" SecureString "$join"
  jq -j .expires_at "$token" >"$join"
  ssm_put "$ARG_prefix/join-expiry/$r" String "$join"
  log "join token $(jq -r .id "$token") for $r, expires $(jq -r .expires_at "$token")"
  rm -f "$token" "$join"
done
