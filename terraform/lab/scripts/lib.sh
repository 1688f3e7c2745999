#!/usr/bin/env bash
# Shared helpers of the lab's provisioner scripts (sourced, not run). Every script runs as
# root from a terraform local-exec provisioner with its parameters in the environment.
set -euo pipefail

# The marker that makes a directory a lab's state directory (destroy removes only those).
export MARKER=.switchyard-lab

log() { printf '[lab %s] %s\n' "${LAB_WHAT:-?}" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# cleanup_on_failure FUNC: runs FUNC when the script exits with an error. Terraform marks a
# resource whose create provisioner failed as tainted and never runs its destroy provisioner,
# so a failed create must undo itself.
cleanup_on_failure() {
  ON_FAILURE=$1
  trap on_exit EXIT
}

on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ] && [ -n "${ON_FAILURE:-}" ]; then
    log "failed: undoing"
    "$ON_FAILURE" || true
  fi
  exit "$rc"
}

need() { # need VAR...: every named variable is set and non-empty
  local v
  for v in "$@"; do
    [ -n "${!v:-}" ] || die "$v is not set (this script runs from terraform/lab)"
  done
}

# wait_for SECONDS WHAT CMD...: polls CMD every 100 ms until it succeeds.
wait_for() {
  local secs=$1 what=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      die "$what: not ready after ${secs}s"
    fi
    sleep 0.1
  done
}

# start_daemon NAME NETNS CMD...: starts CMD inside NETNS ("-": the root namespace) in a session of its own (so it
# survives terraform's process group), stdin from /dev/null, output to $STATE/log/NAME.log,
# its pid in $STATE/run/NAME.pid. `ip netns exec` execs CMD, so the pid is CMD's own.
start_daemon() {
  local name=$1 ns=$2
  shift 2
  mkdir -p "$STATE/run" "$STATE/log"
  local pidf="$STATE/run/$name.pid" logf="$STATE/log/$name.log"
  if [ -s "$pidf" ] && alive "$(cat "$pidf")"; then
    die "$name already runs (pid $(cat "$pidf"))"
  fi
  rm -f "$pidf"
  if [ "$ns" != - ]; then set -- ip netns exec "$ns" "$@"; fi
  # shellcheck disable=SC2016 # $$ and $0 are the inner shell's.
  setsid bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidf" "$@" \
    </dev/null >>"$logf" 2>&1 &
  wait_for 5 "$name's pid file" test -s "$pidf"
  log "$name started (pid $(cat "$pidf"))"
}

# alive PID: whether PID runs. A zombie does not: it has released everything and waits for
# its parent (init, once the script that started it is gone) to reap it, which may take a while.
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# running NAME: whether the daemon NAME is alive.
running() {
  local pidf="$STATE/run/$1.pid"
  [ -s "$pidf" ] && alive "$(cat "$pidf")"
}

# check_running NAME: fails with the end of its log if the daemon NAME died.
check_running() {
  running "$1" && return 0
  tail -n 30 "$STATE/log/$1.log" >&2 || true
  die "$1 exited (log: $STATE/log/$1.log)"
}

# wait_daemon SECONDS NAME CMD...: like wait_for, but gives up at once when NAME dies.
wait_daemon() {
  local secs=$1 name=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    check_running "$name"
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 30 "$STATE/log/$name.log" >&2 || true
      die "$name: not ready after ${secs}s (log: $STATE/log/$name.log)"
    fi
    sleep 0.1
  done
}

# stop_daemon NAME [GRACE [SIGNAL]]: SIGNAL (default TERM), then SIGKILL after GRACE seconds
# (default 5); waits for the process to be gone. A missing pid file or a dead process is fine
# (destroy is idempotent).
stop_daemon() {
  local name=$1 grace=${2:-5} signal=${3:-TERM}
  local pidf="$STATE/run/$name.pid"
  [ -s "$pidf" ] || return 0
  local pid
  pid=$(cat "$pidf")
  if kill "-$signal" "$pid" 2>/dev/null; then
    local deadline=$((SECONDS + grace))
    while alive "$pid"; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        log "$name (pid $pid) still runs ${grace}s after SIG$signal: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.05
    done
    while alive "$pid"; do sleep 0.05; done
  fi
  rm -f "$pidf"
}

# in_ns NETNS CMD...: runs CMD inside NETNS.
in_ns() {
  local ns=$1
  shift
  ip netns exec "$ns" "$@"
}

# http_ok NETNS URL: whether URL answers 2xx from inside NETNS.
http_ok() {
  in_ns "$1" curl -fsS -o /dev/null --max-time 2 "$2"
}

# The unprivileged account PostgreSQL runs as (initdb refuses root).
pg_account() {
  if id postgres >/dev/null 2>&1; then echo postgres; else echo nobody; fi
}

# PostgreSQL's server binaries (Debian keeps them out of PATH).
pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && {
      echo "$d"
      return 0
    }
  done
  command -v initdb >/dev/null && dirname "$(readlink -f "$(command -v initdb)")" && return 0
  die "PostgreSQL's initdb is not installed"
}
