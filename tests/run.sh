#!/usr/bin/env bash
# Runs every Concord test suite: the Rust unit, integration and end-to-end tests, the interop
# tests that drive the built server with the real npm Yjs packages, the TypeScript HTTP
# provider's tests, the HTTP API's conformance to its OpenAPI description, and the web demo in a
# real headless Chromium.
# Installs what it needs (npm packages from the package-lock.json files, schemathesis from
# PyPI into target/schemathesis-venv, Debian's chromium, redis-server and haproxy packages with
# apt-get when they are missing). Tests start their own redis-server and haproxy processes on
# free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the suites need, installed once when missing.
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -z "${APT_UPDATED:-}" ]; then
    $sudo apt-get update
    APT_UPDATED=1
  fi
  $sudo apt-get install -y --no-install-recommends "$@"
}

missing=()
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || missing+=(redis-server redis-tools)
command -v haproxy >/dev/null || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} (the Redis and load-balancer tests start their own instances)"
  apt_install "${missing[@]}"
fi

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

echo "== the TypeScript HTTP provider (SSE and long-polling) against the server"
(cd web-demo/provider && npm ci --no-audit --no-fund && npm test)

echo "== the HTTP API against its OpenAPI description (schemathesis, from PyPI)"
command -v python3 >/dev/null || { echo "python3 (>= 3.9) is required for the API conformance run" >&2; exit 1; }
SKIP_BUILD=1 bash tests/schemathesis/run.sh

echo "== the web demo in headless Chromium (playwright-core driving Debian's chromium)"
if [ -z "${CHROMIUM_BIN:-}" ] && [ ! -x /usr/bin/chromium ]; then
  apt_install chromium
fi
(cd web-demo && npm ci --no-audit --no-fund && npm run build)
(cd tests/browser && npm ci --no-audit --no-fund && npm test)
