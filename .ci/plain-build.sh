#!/usr/bin/env bash
# Builds the hub with nothing but the Rust toolchain (no linker override, no RUSTFLAGS, no
# .cargo/config.toml) and runs `hub dev` until it answers /readyz: the README's run command must
# work on a machine that has only rustup's toolchain. Uses target/plain so the test build's
# flags never mix with it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -e .cargo/config.toml ] || [ -e .cargo/config ]; then
  echo "plain-build: .cargo/config* would apply to every build; keep toolchain settings out of the repo" >&2
  exit 1
fi

clean_env=(env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS
  -u CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER -u CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS)

"${clean_env[@]}" cargo build --locked -p hub --bin hub --target-dir target/plain

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The hub's own exit status on SIGTERM must not become this script's.
cleanup() {
  if [ -n "${pid:-}" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
hub="$PWD/target/plain/debug/hub"
(cd "$work" && exec "$hub" dev --port "$port" >"$work/hub.log" 2>&1) &
pid=$!
for _ in $(seq 1 100); do
  if python3 - "$port" <<'PY' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1)
PY
    echo "plain-build: hub built with the plain toolchain and \`hub dev\` is ready"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then break; fi
  sleep 0.2
done
echo "plain-build: \`hub dev\` did not become ready" >&2
cat "$work/hub.log" >&2
exit 1
