#!/usr/bin/env bash
# Makes a Debian 12 machine (run as root) ready for the Switchyard test suite.
# Installs only what is missing; idempotent. Details go to $LOG, one line per install to stdout.
set -euo pipefail

LOG="${INSTALL_DEPS_LOG:-/tmp/install-deps-switchyard.log}"
: >>"$LOG"
export DEBIAN_FRONTEND=noninteractive

log() { printf '%s\n' "$*" | tee -a "$LOG"; }
fail() {
  printf 'install-deps: %s (see %s)\n' "$*" "$LOG" >&2
  tail -n 20 "$LOG" >&2 || true
  exit 1
}

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi

# The servers and tools the tests start live partly in sbin and PostgreSQL's bindir.
have() {
  PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin$(printf ':%s' /usr/lib/postgresql/*/bin)" command -v "$1" >/dev/null 2>&1
}

apt_updated=
apt_install() { # apt_install PACKAGE  (for a missing command)
  if [ -z "$apt_updated" ]; then
    $SUDO apt-get update -q >>"$LOG" 2>&1 || fail "apt-get update failed"
    apt_updated=1
  fi
  $SUDO apt-get install -y -q --no-install-recommends "$1" >>"$LOG" 2>&1 || fail "apt-get install $1 failed"
  log "installed $1 (apt)"
}

pip_install() { # pip_install SPEC
  local pip=(python3 -m pip)
  if ! python3 -m pip --version >/dev/null 2>&1; then
    have python3 || apt_install python3
    apt_install python3-pip
  fi
  # Debian's own python3 is "externally managed" (PEP 668); pyenv/venv pythons are not.
  local extra=()
  if "${pip[@]}" install --help 2>/dev/null | grep -q -- '--break-system-packages'; then
    extra+=(--break-system-packages)
  fi
  "${pip[@]}" install -q --disable-pip-version-check "${extra[@]}" "$1" >>"$LOG" 2>&1 ||
    fail "pip install $1 failed"
  hash -r
  # pyenv installs console scripts behind shims that need a rehash.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash >>"$LOG" 2>&1 || true; fi
  log "installed $1 (pip)"
}

# command -> Debian package
apt_deps=(
  "rclone rclone"
  "sshd openssh-server"
  "ssh openssh-client"
  "ssh-keygen openssh-client"
  "nginx nginx-light"
  "wrk wrk"
  "mold mold"
  "clang clang"
  "dig dnsutils"
  "initdb postgresql"
  "pg_isready postgresql-client"
  "createdb postgresql-client"
  "psql postgresql-client"
  "wireguard-go wireguard-go"
  "wg wireguard-tools"
  "iperf3 iperf3"
  "ping iputils-ping"
  "ip iproute2"
  "pebble pebble"
  "shellcheck shellcheck"
  "curl curl"
  "setpriv util-linux"
  "redis-server redis-server"
  "redis-cli redis-tools"
  "chromium chromium"
)
for entry in "${apt_deps[@]}"; do
  read -r cmd pkg <<<"$entry"
  have "$cmd" || apt_install "$pkg"
done

have moto_server || python3 -c 'import moto.server' >/dev/null 2>&1 || pip_install 'moto[server]'
have schemathesis || pip_install schemathesis

# checkov (terraform/'s policy scan) in a venv of its own: its pinned dependencies conflict
# with moto's. About a minute the first time.
if ! have checkov; then
  if [ ! -x /opt/switchyard-checkov/bin/checkov ]; then
    $SUDO python3 -m venv /opt/switchyard-checkov >>"$LOG" 2>&1 || fail "python3 -m venv /opt/switchyard-checkov failed"
    $SUDO /opt/switchyard-checkov/bin/pip install -q --disable-pip-version-check checkov >>"$LOG" 2>&1 ||
      fail "pip install checkov (venv /opt/switchyard-checkov) failed"
  fi
  $SUDO ln -sf /opt/switchyard-checkov/bin/checkov /usr/local/bin/checkov
  hash -r
  log "installed checkov (pip, venv /opt/switchyard-checkov)"
fi

# Azurite (the Azure Blob emulator) comes from the npm registry.
if ! have azurite-blob; then
  have npm || apt_install npm
  $SUDO npm install -g --silent azurite@3 >>"$LOG" 2>&1 || fail "npm install -g azurite failed"
  hash -r
  log "installed azurite (npm)"
fi

# The browser tests' driver (tests/browser/run.mjs): Playwright and axe-core from the npm
# registry, at the versions tests/browser/package-lock.json pins (no browser download: it
# drives Debian's chromium, installed above).
browser_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/browser"
if [ ! -f "$browser_dir/node_modules/playwright-core/package.json" ] ||
  [ ! -f "$browser_dir/node_modules/axe-core/axe.min.js" ]; then
  have npm || apt_install npm
  npm ci --prefix "$browser_dir" --no-audit --no-fund >>"$LOG" 2>&1 || fail "npm ci --prefix tests/browser failed"
  log "installed tests/browser/node_modules (npm ci)"
fi

# The Kloudless Python SDK, a client of the hub's Kloudless-compatible API.
python3 -c 'import kloudless' >/dev/null 2>&1 || pip_install 'kloudless==2.0.1'

# sshd's privilege-separation directory (not created in containers where sshd never ran).
if [ ! -d /run/sshd ]; then
  $SUDO install -d -m 0755 /run/sshd
fi

# Installing openssh-server/nginx/postgresql on a systemd-less box may leave services that the
# package scripts started; the tests start their own instances on free ports, so nothing to do.

missing=()
# terraform (with the AWS provider as a filesystem mirror) comes with the image: nothing here
# downloads it, so its absence is reported, not repaired.
for cmd in curl setpriv rclone sshd ssh ssh-keygen nginx wrk mold clang dig initdb pg_ctl postgres pg_isready schemathesis azurite-blob wireguard-go wg iperf3 ping ip pebble shellcheck checkov terraform chromium node npm; do
  have "$cmd" || missing+=("$cmd")
done
have moto_server || python3 -c 'import moto.server' >/dev/null 2>&1 || missing+=(moto_server)
python3 -c 'import kloudless' >/dev/null 2>&1 || missing+=("kloudless (python)")
[ -f "$browser_dir/node_modules/playwright-core/package.json" ] || missing+=(tests/browser/node_modules)
if [ "${#missing[@]}" -ne 0 ]; then
  fail "still missing after install: ${missing[*]}"
fi
log "install-deps: all test dependencies present"
