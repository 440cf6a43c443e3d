#!/usr/bin/env bash
# Runs the host interop cases (spec/CONFORMANCE.md §7) against this host,
# over gRPC and then over framed TCP streams, once per sync mode each, and
# the reference client against it after each run
# (../reference_client_check.sh).
#
#   run_conformance.sh RUNNER [EXTRA RUNNER ARGS...]
#
# RUNNER is the cosystem-conformance binary. Exit status: 0 when every run
# passed; 1 when a run failed; 2 on a usage or setup error; 3 when `npm ci`
# failed because npm could not reach its registry.
set -uo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 RUNNER [EXTRA RUNNER ARGS...]" >&2
  exit 2
fi
RUNNER=$1
shift
case "$RUNNER" in
  */*) RUNNER=$(cd "$(dirname "$RUNNER")" && pwd)/$(basename "$RUNNER") ;;
  *) RUNNER=$(command -v "$RUNNER" || echo "$RUNNER") ;;
esac
if [ ! -x "$RUNNER" ]; then
  echo "runner not executable: $RUNNER" >&2
  exit 2
fi

# The reference client checked against this host after the runner: the
# `cosystem-worker` binary beside RUNNER unless COSYSTEM_WORKER names one.
CLIENT=${COSYSTEM_WORKER:-$(dirname "$RUNNER")/cosystem-worker}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$HERE" || exit 2

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ts-host-conformance.XXXXXX")
HOST_PID=""
RUNNER_PID=""

stop_host() {
  if [ -n "$HOST_PID" ]; then
    kill -TERM "$HOST_PID" 2>/dev/null
    for _ in $(seq 1 50); do
      kill -0 "$HOST_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$HOST_PID" 2>/dev/null
    wait "$HOST_PID" 2>/dev/null
    HOST_PID=""
  fi
}
cleanup() {
  if [ -n "$RUNNER_PID" ]; then
    kill -TERM "$RUNNER_PID" 2>/dev/null
    wait "$RUNNER_PID" 2>/dev/null
  fi
  stop_host
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- install and build ----
if ! npm ci --no-audit --no-fund --loglevel=error >"$WORK/npm.log" 2>&1; then
  cat "$WORK/npm.log" >&2
  if grep -Eq 'code (ENOTFOUND|ECONNREFUSED|ECONNRESET|ETIMEDOUT|EAI_AGAIN)|network request to .* failed' "$WORK/npm.log"; then
    echo "npm ci failed: the npm registry is unreachable" >&2
    exit 3
  fi
  echo "npm ci failed" >&2
  exit 1
fi
if ! ./node_modules/.bin/tsc -p . >"$WORK/tsc.log" 2>&1; then
  cat "$WORK/tsc.log" >&2
  echo "tsc failed" >&2
  exit 1
fi

# ---- the host vectors, replayed against this host's own core (in process) ----
status=0
echo "== host vectors: node dist/vectors.js"
node dist/vectors.js >"$WORK/vectors.out" 2>&1
vrc=$?
grep -v '^PASS ' "$WORK/vectors.out"
if [ $vrc -ne 0 ]; then
  echo "host vectors failed" >&2
  status=1
fi

# ---- one run per sync mode ----
# start_host NAME URL_PATTERN ARGS...: starts the host with ARGS, its
# stdout in $WORK/NAME.out and stderr in $WORK/NAME.err, and sets HOST_PID
# and URL (the first match of URL_PATTERN it prints); URL stays empty, and
# the status is 1, if it did not start.
start_host() {
  local name=$1 pattern=$2
  shift 2
  : >"$WORK/$name.out"
  node dist/main.js "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  HOST_PID=$!
  URL=""
  for _ in $(seq 1 200); do
    URL=$(grep -o "$pattern" "$WORK/$name.out" 2>/dev/null | head -n1)
    [ -n "$URL" ] && return 0
    kill -0 "$HOST_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "[$name] the host did not start:" >&2
  cat "$WORK/$name.err" >&2
  return 1
}

MARKER="ts-host-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
# Runs the host runner against the host at $URL, then the reference client.
# $1: label for messages; $2: the host's log name; $3: token file for the
# reference client (- for none); the rest: runner arguments. Sets status=1
# on a failure.
check_host() {
  label=$1 log=$2 client_token=$3
  shift 3
  # In the background, so that a signal to this script is handled at once.
  "$RUNNER" host --strict --connect "$URL" --secret-marker "$MARKER" "$@" &
  RUNNER_PID=$!
  wait "$RUNNER_PID"
  rc=$?
  RUNNER_PID=""
  if [ $rc -ne 0 ]; then
    echo "[$label] runner exited $rc; host stderr:" >&2
    tail -n 50 "$WORK/$log.err" >&2
    status=1
  fi
  if ! "$HERE/../reference_client_check.sh" "$CLIENT" "$URL" "$client_token"; then
    echo "[$label] the reference client failed against this host" >&2
    status=1
  fi
}

for MODE in patch snapshot; do
  TOKEN_FILE="$WORK/token-$MODE"
  od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$TOKEN_FILE"
  if ! start_host "host-$MODE" 'http://127\.0\.0\.1:[0-9]*' --listen 127.0.0.1:0 \
    --sync "$MODE" --token-file "$TOKEN_FILE" --secret-token "$MARKER-initial"; then
    stop_host
    status=1
    continue
  fi
  echo "== sync $MODE: $RUNNER host --connect $URL --token-file $TOKEN_FILE --secret-marker $MARKER $*"
  check_host "$MODE" "host-$MODE" "$TOKEN_FILE" --token-file "$TOKEN_FILE" "$@"
  stop_host
done

# ---- framed streams over TCP (§17.3), one run per sync mode ----
for MODE in patch snapshot; do
  if ! start_host "framed-$MODE" 'tcp://127\.0\.0\.1:[0-9]*' --listen tcp://127.0.0.1:0 \
    --sync "$MODE" --secret-token "$MARKER-initial"; then
    stop_host
    status=1
    continue
  fi
  # No --token-file: framing carries no authentication (FB8).
  echo "== framed, sync $MODE: $RUNNER host --connect $URL --secret-marker $MARKER $*"
  check_host "framed $MODE" "framed-$MODE" - "$@"
  stop_host
done
exit $status
