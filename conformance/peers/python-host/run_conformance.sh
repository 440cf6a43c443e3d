#!/usr/bin/env bash
# Runs the conformance suite against the Python host.
#
#   conformance/peers/python-host/run_conformance.sh RUNNER [WORK_DIR]
#
# RUNNER is the cosystem-conformance binary. WORK_DIR (default:
# target/python-host under the repository root) receives the venv, the
# generated stubs, the logs and the bytecode cache; nothing is written to the
# source tree. Steps: install pinned grpcio into a venv, generate the stubs
# from proto/, replay the host vectors in process (check_vectors.py), then
# for each sync mode start server.py on a loopback port the system picks and run
# `RUNNER host` against it, then the reference client against it
# (../reference_client_check.sh), and finally for each sync mode start
# framed_server.py (framed streams over TCP, PROTOCOL.md §17.3) on a
# loopback port the system picks and run `RUNNER host --connect tcp://...` against it.
# Exits non-zero if any step or any case failed,
# recommended cases included: 2 for a usage error, 3 when the Python packages
# cannot be installed, 1 otherwise.
set -euo pipefail

GRPCIO_VERSION=1.85.3
GRPCIO_TOOLS_VERSION=1.85.1
PROTOBUF_VERSION=7.36.2

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 RUNNER [WORK_DIR]" >&2
    exit 2
fi
RUNNER=$1
if [[ ! -x $RUNNER ]]; then
    echo "error: runner '$RUNNER' is not an executable file" >&2
    exit 2
fi

# The reference client, checked against the server after the runner: the
# `cosystem-worker` binary beside RUNNER unless COSYSTEM_WORKER names one.
CLIENT=${COSYSTEM_WORKER:-$(dirname "$RUNNER")/cosystem-worker}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
WORK=${2:-$ROOT/target/python-host}
PYTHON=${PYTHON:-python3}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
VENV=$WORK/venv
GEN=$WORK/gen

SERVER_PID=
stop_server() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

section() {
    printf '\n==== %s ====\n' "$*"
}

FAILURES=()
START=$SECONDS

section "Python environment ($WORK)"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 9), "Python 3.9 or later is needed"'
if [[ ! -x $VENV/bin/python ]]; then
    "$PYTHON" -m venv "$VENV"
fi
# Exit status 3 says the packages could not be installed (no package index
# reachable), which a CI run may report as skipped rather than failed.
if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "grpcio==$GRPCIO_VERSION" "grpcio-tools==$GRPCIO_TOOLS_VERSION" "protobuf==$PROTOBUF_VERSION"; then
    echo "error: could not install grpcio $GRPCIO_VERSION, grpcio-tools $GRPCIO_TOOLS_VERSION, protobuf $PROTOBUF_VERSION" >&2
    exit 3
fi
"$VENV/bin/python" --version
"$VENV/bin/python" -m pip list --disable-pip-version-check 2>/dev/null | grep -E '^(grpcio|grpcio-tools|protobuf) '

section "Generating stubs from proto/ into $GEN"
rm -rf "$GEN"
mkdir -p "$GEN"
"$VENV/bin/python" -m grpc_tools.protoc -I "$ROOT/proto" --python_out="$GEN" \
    "$ROOT/proto/cosystem/worker/v1/worker.proto"
export PYTHONPATH=$GEN
export PYTHONPYCACHEPREFIX=$WORK/pycache

section "Host vectors, replayed in process (check_vectors.py)"
if ! "$VENV/bin/python" "$HERE/check_vectors.py" "$ROOT/conformance/vectors/host"; then
    FAILURES+=("host vectors")
fi

# Bearer token (§17.2) and secret marker (CONFORMANCE.md §7.1) for the run.
TOKEN_FILE=$WORK/token
"$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))' >"$TOKEN_FILE"
MARKER=python-host-secret-$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(8))')

# Starts SCRIPT (server.py or framed_server.py) with the given arguments on
# loopback port 0 and reads the address it bound from its log; sets
# SERVER_PID and URL. The system picks the port: a port chosen here and
# probed first could be taken between probe and bind, and a probe's own
# connection can even take it (a loopback connect may be handed the very
# port it dials, and then connects to itself).
start_server() {
    local script=$1 mode=$2 log=$3 pattern=$4
    shift 4
    # Emptied first: the loop below may read the log before the server's
    # redirection truncates it, and must not find an earlier run's address.
    : >"$log"
    "$VENV/bin/python" "$HERE/$script" --listen "127.0.0.1:0" --sync "$mode" \
        --secret-token "$MARKER" "$@" >"$log" 2>&1 &
    SERVER_PID=$!
    URL=
    for _ in $(seq 300); do
        URL=$(grep -o "listening.* on $pattern" "$log" 2>/dev/null | head -n1 | grep -o "$pattern" || true)
        if [[ -n $URL ]]; then
            echo "server (pid $SERVER_PID) listening on $URL"
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    stop_server
    echo "server did not start:" >&2
    tail -n 20 "$log" >&2 || true
    return 1
}

for mode in patch snapshot; do
    section "gRPC interop cases, $mode sync mode"
    log=$WORK/server-$mode.log
    report=$WORK/runner-$mode.txt
    if ! start_server server.py "$mode" "$log" 'http://127\.0\.0\.1:[0-9][0-9]*' \
        --token-file "$TOKEN_FILE"; then
        FAILURES+=("$mode: server did not start")
        continue
    fi
    status=0
    "$RUNNER" host --strict --connect "$URL" --token-file "$TOKEN_FILE" \
        --secret-marker "$MARKER" | tee "$report" || status=$?
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        FAILURES+=("$mode: server exited during the run")
    elif ! "$HERE/../reference_client_check.sh" "$CLIENT" "$URL" "$TOKEN_FILE"; then
        FAILURES+=("$mode: the reference client failed against this host")
    fi
    stop_server
    # --strict: a recommended case that fails fails the run as well.
    if [[ $status -ne 0 ]]; then
        FAILURES+=("$mode: runner exit status $status")
        echo "---- server log ($log, last 40 lines) ----"
        tail -n 40 "$log" || true
    fi
done

# Framed streams (§17.3) carry no token (FB8): the runner refuses
# --token-file for a tcp:// URL, and framed_server.py takes none.
for mode in patch snapshot; do
    section "Framed-stream interop cases (TCP), $mode sync mode"
    log=$WORK/framed-server-$mode.log
    report=$WORK/runner-framed-$mode.txt
    if ! start_server framed_server.py "$mode" "$log" 'tcp://127\.0\.0\.1:[0-9][0-9]*'; then
        FAILURES+=("framed $mode: server did not start")
        continue
    fi
    status=0
    "$RUNNER" host --strict --connect "$URL" \
        --secret-marker "$MARKER" | tee "$report" || status=$?
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        FAILURES+=("framed $mode: server exited during the run")
    elif ! "$HERE/../reference_client_check.sh" "$CLIENT" "$URL" -; then
        FAILURES+=("framed $mode: the reference client failed against this host")
    fi
    stop_server
    if [[ $status -ne 0 ]]; then
        FAILURES+=("framed $mode: runner exit status $status")
        echo "---- server log ($log, last 40 lines) ----"
        tail -n 40 "$log" || true
    fi
done

section "Summary ($(( SECONDS - START )) s)"
if [[ ${#FAILURES[@]} -gt 0 ]]; then
    printf 'FAILED: %s\n' "${FAILURES[@]}"
    exit 1
fi
echo "python-host: all host vectors, and all gRPC and framed-stream interop cases, passed in both sync modes"
