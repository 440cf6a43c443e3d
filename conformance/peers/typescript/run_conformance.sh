#!/usr/bin/env bash
# Usage: run_conformance.sh RUNNER
#   RUNNER: path of the cosystem-conformance binary.
# Installs (npm ci), builds (tsc), runs every client case through dist/adapter.js, then
# the differential test against the reference adapter (200 sessions, seed 1).
# Exit status: 0 all good; 1 a check failed; 2 usage; 3 npm registry unreachable.
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 RUNNER" >&2
  exit 2
fi
RUNNER=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIFFTEST="$DIR/../python/difftest.py"
cd "$DIR"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! npm ci --no-audit --no-fund >"$log" 2>&1; then
  cat "$log" >&2
  # Only npm's own network failures count as "unreachable": a word like
  # "proxy" also appears in warnings about settings, and a real failure
  # (a lockfile mismatch) must fail the run, not skip it.
  if grep -qE 'code (ENOTFOUND|ECONNREFUSED|ECONNRESET|ETIMEDOUT|EAI_AGAIN)|network request to .* failed' "$log"; then
    echo "npm registry unreachable" >&2
    exit 3
  fi
  exit 1
fi

npx --no-install tsc -p tsconfig.json || exit 1

status=0
"$RUNNER" client --strict -- node "$DIR/dist/adapter.js" || status=1

python3 "$DIFFTEST" --runner "$RUNNER" --candidate "node $DIR/dist/adapter.js" \
  --sessions 200 --seed 1 || status=1

exit $status
