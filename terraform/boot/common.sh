# Shared helpers of the Switchyard first-boot scripts (sourced, not run). Secrets travel only
# through SSM Parameter Store SecureStrings and files of mode 0600; never through argv.
# shellcheck shell=bash disable=SC2034,SC2154 # BIN and ARG_* are used by the scripts sourcing this.

BIN=${SWITCHYARD_BIN:-/opt/switchyard/bin}
# How long a boot waits for a parameter or a server another instance provides.
WAIT_SECS=${SWITCHYARD_BOOT_WAIT_SECS:-3600}
PENDING_SLEEP=10

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Parses --key value pairs into variables ARG_key (dashes become underscores).
parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --*) [ $# -ge 2 ] || die "$1 needs a value"
           local k=${1#--}; k=${k//-/_}
           printf -v "ARG_$k" '%s' "$2"; shift 2 ;;
      *) die "unexpected argument: $1" ;;
    esac
  done
}

need() { # need NAME...: each ARG_NAME must be set
  local n v
  for n in "$@"; do v="ARG_$n"; [ -n "${!v:-}" ] || die "--${n//_/-} is required"; done
}

# The instance metadata service (IMDSv2).
imds() {
  local token
  token=$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token)
  curl -fsS -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"
}

ssm() { aws --region "$ARG_ssm_region" ssm "$@"; }

# Prints a parameter's value, or nothing when it does not exist (other errors, such as a
# missing permission, are logged: a boot waiting on them should say why).
ssm_get() {
  local err
  err=$(mktemp)
  if ! ssm get-parameter --with-decryption --name "$1" --query Parameter.Value --output text 2>"$err"; then
    grep -q ParameterNotFound "$err" || log "ssm get-parameter $1: $(head -c 400 "$err")"
  fi
  rm -f "$err"
}

# Waits (bounded by WAIT_SECS) until a parameter exists, then prints it.
ssm_wait() {
  local deadline=$((SECONDS + WAIT_SECS)) v
  while :; do
    v=$(ssm_get "$1")
    [ -n "$v" ] && { printf '%s' "$v"; return 0; }
    [ $SECONDS -lt $deadline ] || die "parameter $1 did not appear within ${WAIT_SECS}s"
    sleep "$PENDING_SLEEP"
  done
}

# ssm_put NAME TYPE FILE: the value comes from a file (file://), so it never shows in argv.
ssm_put() {
  ssm put-parameter --overwrite --name "$1" --type "$2" --value "file://$3" >/dev/null
}

# A secret made once: reuse the stored one (a rebuilt instance), else make and store it.
# secret_once NAME FILE GENERATOR...: leaves the value in FILE (0600).
secret_once() {
  local name=$1 file=$2; shift 2
  local v
  v=$(ssm_get "$name")
  ( umask 077
    if [ -n "$v" ]; then printf '%s' "$v" >"$file"; else "$@" >"$file"; ssm_put "$name" SecureString "$file"; fi )
}

install_units() { # install_units UNIT...: from the boot directory's systemd/
  local u
  for u in "$@"; do install -m 0644 "$(dirname "$0")/systemd/$u" "/etc/systemd/system/$u"; done
  systemctl daemon-reload
}

service_user() { # service_user NAME HOME
  id -u "$1" >/dev/null 2>&1 || useradd --system --home-dir "$2" --shell /usr/sbin/nologin "$1"
  install -d -m 0700 -o "$1" -g "$1" "$2"
}
