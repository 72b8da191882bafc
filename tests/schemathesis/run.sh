#!/usr/bin/env bash
# Tests the running server against its OpenAPI description (GET /api/openapi.json) with
# Schemathesis, bounded in time, in three runs:
#   open    an open server (no authorizer);
#   token   a server started with --auth-secret-file, with a token granting '*=write' in an
#           Authorization header, so that the authorized paths are exercised;
#   no-token the same server without a token: every answer must be documented (401 with
#           WWW-Authenticate) and every document operation refused (hooks.py, auth_enforced);
# then contract_checks.py, the contract scenarios generated cases do not reach (on the open
# server, before Schemathesis writes to it).
#
# Installs Schemathesis (requirements.txt, exact pins) in a venv, target/schemathesis-venv by
# default. Writes reports and server logs to target/schemathesis/. Exits non-zero when a run
# or a check fails.
#
# Environment: SCHEMATHESIS_MAX_EXAMPLES (per operation and phase, default 100),
# SCHEMATHESIS_SEED (default 1), SCHEMATHESIS_RUN_TIMEOUT (seconds per run, default 120),
# SCHEMATHESIS_VENV, SCHEMATHESIS_OUT (reports, default target/schemathesis), SKIP_BUILD=1 (use
# the built server as it is), CONCORD_SERVER_BIN (the server binary, default
# target/debug/concord-server; $CARGO_TARGET_DIR/debug/concord-server when that is set).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=$ROOT/tests/schemathesis
BIN=${CONCORD_SERVER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/concord-server}
VENV=${SCHEMATHESIS_VENV:-$ROOT/target/schemathesis-venv}
OUT=${SCHEMATHESIS_OUT:-$ROOT/target/schemathesis}
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-100}
SEED=${SCHEMATHESIS_SEED:-1}
RUN_TIMEOUT=${SCHEMATHESIS_RUN_TIMEOUT:-120}

started=$(date +%s)
if [ "${SKIP_BUILD:-}" != 1 ]; then
  echo "== building concord-server"
  cargo build -p concord-server --bins
fi

echo "== schemathesis in $VENV"
stamp=$VENV/.requirements.sha256
want=$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/st" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
  echo "$want" >"$stamp"
fi
"$VENV/bin/st" --version

rm -rf "$OUT"
mkdir -p "$OUT/work"
tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

# start_server NAME ARGS...: starts the binary on a free port, in memory, with connection
# attempt limits lifted (the run makes thousands of requests from one address; with the
# defaults most would be answered 429). Sets $port.
start_server() {
  local name=$1
  shift
  "$BIN" --port 0 --in-memory \
    --connection-attempts-per-ip 1000000 --connection-attempt-burst 1000000 \
    "$@" >"$OUT/$name.stdout" 2>"$OUT/$name.log" &
  pids+=($!)
  port=
  for _ in $(seq 100); do
    port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$OUT/$name.stdout")
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "the $name server did not start (see $OUT/$name.log)" >&2; exit 1; }
  local served
  served=$(curl -sf "http://127.0.0.1:$port/api/openapi.json")
  if [ "$served" != "$(cat "$ROOT/crates/concord-server/src/edge/http/openapi.json")" ]; then
    echo "the $name server does not serve crates/concord-server/src/edge/http/openapi.json: rebuild it" >&2
    exit 1
  fi
  echo "   $name server on 127.0.0.1:$port"
}

failed=()
# schemathesis NAME PORT [ARGS...]: one bounded run; reports in $OUT/NAME.
schemathesis() {
  local name=$1 port=$2
  shift 2
  echo "== schemathesis: $name (at most $MAX_EXAMPLES examples per operation, ${RUN_TIMEOUT}s)"
  local t0=$SECONDS rc=0
  # From a scratch directory: Schemathesis and Hypothesis write caches in the current one.
  (cd "$OUT/work" && SCHEMATHESIS_HOOKS=$HERE/hooks.py timeout --kill-after=10 "$RUN_TIMEOUT" \
    "$VENV/bin/st" --no-color --config-file "$HERE/schemathesis.toml" run \
    "http://127.0.0.1:$port/api/openapi.json" \
    --max-examples "$MAX_EXAMPLES" --seed "$SEED" \
    --report junit,har --report-dir "$OUT/$name" \
    "$@") || rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "!! $name: stopped after ${RUN_TIMEOUT}s"
  fi
  echo "   $name: exit $rc in $((SECONDS - t0))s"
  [ "$rc" = 0 ] || failed+=("schemathesis $name")
}

echo "== servers"
start_server open
open_port=$port
printf '%s' "$(head -c 32 /dev/urandom | base64)" >"$tmp/secret"
start_server auth --auth-secret-file "$tmp/secret"
auth_port=$port
token=$("$BIN" token --secret-file "$tmp/secret" --doc '*=write')

echo "== contract checks (open server)"
"$VENV/bin/python" "$HERE/contract_checks.py" "http://127.0.0.1:$open_port" || failed+=("contract checks")

schemathesis open "$open_port"
schemathesis token "$auth_port" -H "Authorization: Bearer $token"
CONCORD_ST_EXPECT_AUTH=1 schemathesis no-token "$auth_port"

for name in open auth; do
  if grep -q "panicked" "$OUT/$name.log"; then
    echo "!! the $name server panicked (see $OUT/$name.log); times, message:"
    grep -A1 "panicked at" "$OUT/$name.log" | grep -v -e "panicked at" -e "^--$" | sort | uniq -c | head -10
  fi
done

echo "== done in $(($(date +%s) - started))s"
if [ "${#failed[@]}" -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "all passed"
