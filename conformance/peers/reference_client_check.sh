#!/usr/bin/env bash
# Checks that the reference client works against a running host: a call
# settles, a fresh client then reads the state that call left, and a wrong
# token stops the client with a permission error instead of retrying.
#
#   reference_client_check.sh CLIENT URL TOKEN_FILE
#
# TOKEN_FILE `-` means the host takes no token (a framed host at a tcp://
# or unix: URL, PROTOCOL.md FB8): the wrong-token step is then skipped.
#
# CLIENT is the `cosystem-worker` binary. The host must serve the demo app.
# The conformance runner talks to a host through its own minimal gRPC
# client; this is the check that the reference `Client` (its connect,
# handshake and reconnect logic) interoperates with another gRPC stack.
# Exit status: 0 when every step passed, 1 otherwise, 2 on a usage error.
set -uo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 CLIENT URL TOKEN_FILE" >&2
  exit 2
fi
CLIENT=$1 URL=$2 TOKEN_FILE=$3
if [ ! -x "$CLIENT" ]; then
  echo "reference client not executable: $CLIENT" >&2
  exit 2
fi

fail() {
  echo "reference client: FAIL: $*" >&2
  exit 1
}

token=()
if [ "$TOKEN_FILE" != - ]; then
  token=(--token-file "$TOKEN_FILE")
fi

called=$("$CLIENT" client --connect "$URL" "${token[@]}" --timeout 20 \
  call counter increase 2) || fail "call counter.increase(2) exited $?"
value=$(printf '%s' "$called" | sed -n 's/^{"value":\(-\{0,1\}[0-9]*\),"version":[0-9]*}$/\1/p')
[ -n "$value" ] || fail "unexpected call output: $called"

state=$("$CLIENT" client --connect "$URL" "${token[@]}" --timeout 20 state) \
  || fail "state exited $?"
case "$state" in
  *"\"counter\":{\"count\":$value}"*) ;;
  *) fail "the state does not show the count the call returned ($value): $state" ;;
esac

if [ "$TOKEN_FILE" = - ]; then
  echo "reference client: a call (count $value) and a state read behaved (no token to refuse)"
  exit 0
fi

wrong=$(mktemp "${TMPDIR:-/tmp}/wrong-token.XXXXXX")
printf 'not-%s\n' "$(tr -d ' \n' <"$TOKEN_FILE")" >"$wrong"
refused=$("$CLIENT" client --connect "$URL" --token-file "$wrong" --timeout 20 state 2>&1)
status=$?
rm -f "$wrong"
[ "$status" -ne 0 ] || fail "a wrong token was accepted: $refused"
case "$refused" in
  *permission-denied*) ;;
  *) fail "a wrong token did not stop the client with permission-denied (exit $status): $refused" ;;
esac

echo "reference client: a call (count $value), a state read and a refused token all behaved"
