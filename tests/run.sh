#!/usr/bin/env bash
# Runs every Concord test suite: the Rust unit, integration and end-to-end tests, then the
# interop tests that drive the built server with the real npm Yjs packages.
# Installs what it needs (npm packages from tests/interop/package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building the workspace (server binary and yrs peer used by the interop tests)"
cargo build --workspace --bins --locked

echo "== Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  # nextest does not run doctests.
  cargo test --workspace --doc --locked
else
  cargo test --workspace --locked --no-fail-fast
fi

echo "== interop tests with the npm yjs, y-websocket and y-protocols packages"
command -v node >/dev/null || { echo "node (>= 20) is required for the interop tests" >&2; exit 1; }
(cd tests/interop && npm ci --no-audit --no-fund && npm test)
