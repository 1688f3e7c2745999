#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (Debian and PyPI
# packages, only when missing), then checks formatting and lints and runs every test. The
# tests start their own servers (PostgreSQL, S3, WebDAV, SFTP) on loopback and stop them.
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/install-deps.sh

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
