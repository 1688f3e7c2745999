#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (Debian and PyPI
# packages, only when missing), then checks formatting and lints and runs every test. The
# tests start their own servers (PostgreSQL, S3, WebDAV, SFTP) on loopback and stop them.
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/install-deps.sh

# The README's run command needs nothing but the Rust toolchain: prove it first, with a clean
# environment (no linker or flags from this script), in a target directory of its own.
bash .ci/plain-build.sh

# Fast linking (clang + mold, which install-deps provides) for the test build only; set
# SWITCHYARD_FAST_LINK=0 to link with the toolchain's default.
if [ "${SWITCHYARD_FAST_LINK:-1}" = 1 ] && command -v clang >/dev/null && command -v mold >/dev/null; then
  export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=clang
  export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C link-arg=-fuse-ld=mold"
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --config-file .ci/nextest.toml
else
  cargo test --workspace --locked --no-fail-fast
fi
