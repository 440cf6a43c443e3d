#!/usr/bin/env python3
"""Differential test of two client adapters (spec/CONFORMANCE.md §6).

Plays random sessions (a misbehaving host, application calls, time, loss of
the connection) against a reference adapter and a candidate adapter, and
compares their replies after every command, and their reported state after
every step. Each session stops at its first divergence, which is printed
with the session's seed; `--seed SEED --sessions 1` replays it.

    python3 difftest.py [--sessions N] [--seed S] [--steps K]
                        [--runner PATH] [--reference CMD] [--candidate CMD]

The reference defaults to `cosystem-conformance adapter`, the runner taken
from --runner, else $COSYSTEM_CONFORMANCE, else target/release/ (then debug/) of the
repository, else PATH. The candidate defaults to adapter.py beside this file.
CMD is a command line, split like a shell's (shlex). Exit status: 0 when no
session diverged, 1 when one did, 2 on a usage error.

Only what §6.3 defines is compared: envelopes in any proto3 JSON form or as
base64 protobuf; events with their defined members (a local outcome's
message is free text, and so is the message of an INTERNAL the client
made); `pending` and `timer_ms` when both adapters report them. Ids the
client chooses are free, so each adapter's sync and call ids are compared
by the order in which they first appear ("$S2" is the second sync id an
adapter sent), and host envelopes name them the same way.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import queue
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

from jsonpatch import json_equal

HERE = os.path.dirname(os.path.abspath(__file__))

SYNC_REASONS = ["UNSPECIFIED", "INITIAL", "MISSING_SNAPSHOT", "VERSION_GAP",
                "PATCH_APPLY_FAILED", "RESULT_AHEAD", "RECONNECT", "RETRY"]
SNAPSHOT_REASONS = ["UNSPECIFIED", "COMMIT", "SYNC", "OVERFLOW", "ANNOUNCE"]
ERROR_CODES = ["UNSPECIFIED", "NOT_FOUND", "INVALID_ARGUMENT", "FAILED", "UNAVAILABLE",
               "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "INTERNAL", "FAILED_PRECONDITION",
               "DEADLINE_EXCEEDED", "CANCELLED", "DISPOSED", "OUTCOME_UNKNOWN"]

# Message schemas of worker.proto: field number -> (JSON name, type).
HEADER = {1: ("protocolVersion", "uint"), 2: ("epoch", "str"), 3: ("source", "str"),
          4: ("target", "str"), 5: ("capability", "str")}
ERROR = {1: ("code", ("enum", "ERROR_CODE_", ERROR_CODES)), 2: ("message", "str"),
         3: ("detailsJson", "str")}
HOST_MESSAGE = {
    1: ("header", HEADER),
    2: ("snapshot", {1: ("version", "u64"), 2: ("stateJson", "str"), 3: ("syncId", "u64"),
                     4: ("reason", ("enum", "SNAPSHOT_REASON_", SNAPSHOT_REASONS))}),
    3: ("patch", {1: ("baseVersion", "u64"), 2: ("version", "u64"), 3: ("patchJson", "str"),
                  4: ("syncId", "u64")}),
    4: ("result", {1: ("callId", "u64"), 2: ("stateVersion", "u64"), 3: ("valueJson", "str"),
                   4: ("error", ERROR)}),
}
CLIENT_MESSAGE = {
    1: ("header", HEADER),
    2: ("call", {1: ("callId", "u64"), 2: ("module", "str"), 3: ("method", "str"),
                 4: ("argsJson", "str")}),
    3: ("syncRequest", {1: ("syncId", "u64"), 2: ("haveVersion", "u64"),
                        3: ("reason", ("enum", "SYNC_REASON_", SYNC_REASONS))}),
}


# ---------------------------------------------------------------------------
# Protobuf binary encoding, for `deliver`'s `bytes` and base64 `sent` (§6.2, §6.3)
# ---------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode(msg: dict, schema: dict) -> bytes:
    """A canonical JSON message (as this test writes them) in protobuf binary."""
    out = bytearray()
    for number, (name, kind) in sorted(schema.items()):
        if name not in msg:
            continue
        value = msg[name]
        if isinstance(kind, dict):
            payload = encode(value, kind)
        elif kind == "str":
            payload = value.encode("utf-8", "surrogatepass")
        else:
            if isinstance(kind, tuple):
                value = value if isinstance(value, int) else kind[2].index(value[len(kind[1]):])
            out += _varint(number << 3) + _varint(int(value))
            continue
        out += _varint(number << 3 | 2) + _varint(len(payload)) + payload
    return bytes(out)


def decode(data: bytes, schema: dict) -> dict:
    """Protobuf binary to canonical JSON; unknown fields are dropped."""
    msg, i = {}, 0

    def varint():
        nonlocal i
        n = shift = 0
        while True:
            byte = data[i]
            i += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return n

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 2:
            size = varint()
            value, i = data[i:i + size], i + size
        else:
            raise ValueError(f"unexpected wire type {wire}")
        if number not in schema:
            continue
        name, kind = schema[number]
        if isinstance(kind, dict):
            msg[name] = decode(value, kind)
        elif kind == "str":
            msg[name] = value.decode("utf-8")
        elif isinstance(kind, tuple):
            msg[name] = kind[1] + kind[2][value] if value < len(kind[2]) else value
        else:
            msg[name] = str(value) if kind == "u64" else value
    return msg


# ---------------------------------------------------------------------------
# Normalising replies to what §6.3 defines
# ---------------------------------------------------------------------------

def _camel(name: str) -> str:
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)


def normal_envelope(env, schema: dict = CLIENT_MESSAGE) -> dict:
    """Any proto3 JSON form (or base64 protobuf) to one form: lowerCamelCase
    names, uint64 as strings, enums by name, default values omitted."""
    if isinstance(env, str):
        env = decode(base64.b64decode(env), schema)
    fields = {name: kind for name, kind in schema.values()}
    out = {}
    for key, value in env.items():
        name = _camel(key)
        kind = fields.get(name)
        if kind is None:
            out[name] = value
        elif isinstance(kind, dict):
            out[name] = normal_envelope(value or {}, kind)
        elif isinstance(kind, tuple):
            if isinstance(value, int) and 0 <= value < len(kind[2]):
                value = kind[1] + kind[2][value]
            if value not in (0, kind[1] + "UNSPECIFIED"):
                out[name] = value
        elif kind == "str":
            if value:
                out[name] = value
        elif str(value) != "0":
            out[name] = str(value) if kind == "u64" else int(value)
    return out


EVENT_MEMBERS = {
    "ready": (), "state_changed": ("version",),
    "conflict": ("reason", "current_version", "incoming_version"),
    "notice": ("kind", "old", "new", "call_id", "version", "count"),
    "settled": ("call", "ok", "error", "message", "state_version"),
}
NUMERIC_MEMBERS = {"version", "current_version", "incoming_version", "call_id", "count",
                   "state_version"}


def normal_event(event: dict) -> dict:
    kind = event.get("type")
    out = {"type": kind}
    for member in EVENT_MEMBERS.get(kind, event.keys()):
        if member in event:
            value = event[member]
            if member in NUMERIC_MEMBERS and isinstance(value, int):
                value = str(value)
            out[member] = value
    if kind == "settled":
        out.setdefault("state_version", None)
        # Local outcomes, and INTERNALs the client made itself, carry free text.
        if out["state_version"] is None or out.get("error") == "internal":
            out.pop("message", None)
    return out


def normal_reply(reply: dict) -> dict:
    if "error" in reply:
        return {"error": True}
    out = {"sent": [normal_envelope(e) for e in reply.get("sent", [])],
           "events": [normal_event(e) for e in reply.get("events", [])]}
    state = reply.get("state")
    if isinstance(state, dict):
        # mirror, version and epoch are null in EMPTY; pending and timer_ms
        # may be absent (not reported), which is not null (timer_ms: never).
        out["state"] = {k: state.get(k) for k in ("mirror", "version", "epoch")}
        out["state"].update({k: state[k] for k in ("pending", "timer_ms") if k in state})
        if isinstance(out["state"]["version"], int):
            out["state"]["version"] = str(out["state"]["version"])
    return out


def same(a: dict, b: dict) -> bool:
    """Equal under §6.5, leaving out a state member only one side reports."""
    sa, sb = a.get("state"), b.get("state")
    if sa is not None and sb is not None:
        for key in ("pending", "timer_ms"):
            if (key in sa) != (key in sb):
                sa.pop(key, None)
                sb.pop(key, None)
    return json_equal(a, b)


# ---------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------

# How long an adapter may take to answer one command (the first includes its
# start-up); --reply-timeout sets it.
REPLY_TIMEOUT = 10.0


class Adapter:
    """One adapter process, in a process group of its own. Knows its sync and
    call ids by order of first appearance, to translate "$S<n>" / "$C<n>" both
    ways. Its replies are read by a thread, so that one that never answers is
    timed out rather than hanging the run, and its last stderr lines are kept
    for the report."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, encoding="utf-8",
                                     errors="replace", start_new_session=True)
        self.ids = {"S": [], "C": []}
        self.lines: queue.Queue = queue.Queue()
        self.stderr: collections.deque = collections.deque(maxlen=8)
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append),
                         daemon=True).start()

    @staticmethod
    def _pump(stream, sink):
        for line in stream:
            sink(line.rstrip("\n"))
        sink(None)

    def _failed(self, why: str) -> dict:
        """A reply for an adapter that broke: why, and its last stderr lines
        (a divergence, unless the other adapter broke the same way)."""
        self.kill()
        time.sleep(0.1)
        # list() copies the deque in one step; iterating it while the pump
        # thread appends could raise.
        return {"error": why, "stderr": [l for l in list(self.stderr) if l is not None]}

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
        self.proc.wait()

    def _learn(self, tag: str, value):
        if value is not None and str(value) != "0" and str(value) not in self.ids[tag]:
            self.ids[tag].append(str(value))

    def _to_ids(self, obj):
        if isinstance(obj, dict):
            return {k: self._to_ids(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._to_ids(v) for v in obj]
        match = re.fullmatch(r"\$([SC])([0-9]+)", obj) if isinstance(obj, str) else None
        if match:
            known = self.ids[match.group(1)]
            n = int(match.group(2))
            return known[n - 1] if n <= len(known) else str(9_000_000_000 + n)
        return obj

    def _to_ordinal(self, tag: str, value):
        value = str(value)
        return f"${tag}{self.ids[tag].index(value) + 1}" if value in self.ids[tag] else value

    def ask(self, cmd: dict) -> dict:
        """Send one command; the reply normalised, with ids as ordinals."""
        cmd = self._to_ids(cmd)
        if cmd["op"] == "deliver":
            cmd["bytes"] = base64.b64encode(encode(cmd["message"], HOST_MESSAGE)).decode()
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except OSError as e:
            return self._failed(f"cannot write {cmd['op']}: {e}")
        try:
            line = self.lines.get(timeout=REPLY_TIMEOUT)
        except queue.Empty:
            return self._failed(f"no reply to {cmd['op']} within {REPLY_TIMEOUT:g} s")
        if line is None:
            return self._failed(f"the adapter exited before replying to {cmd['op']}")
        try:
            raw = json.loads(line)
        except ValueError:
            return self._failed(f"the reply to {cmd['op']} is not JSON: {line[:200]}")
        self._learn("C", raw.get("call_id"))
        reply = normal_reply(raw)
        for env in reply.get("sent", []):
            if "syncRequest" in env:
                self._learn("S", env["syncRequest"].get("syncId"))
                env["syncRequest"]["syncId"] = self._to_ordinal("S", env["syncRequest"].get("syncId"))
            if "call" in env:
                self._learn("C", env["call"].get("callId"))
                env["call"]["callId"] = self._to_ordinal("C", env["call"].get("callId"))
        for event in reply.get("events", []):
            if event.get("kind") == "unexpected-result":
                event["call_id"] = self._to_ordinal("C", event.get("call_id"))
        return reply

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        # Whatever a wrapper (go run, a shell script) left running goes too.
        self.kill()


# ---------------------------------------------------------------------------
# Random sessions
# ---------------------------------------------------------------------------

STATES = [
    '{"counter":{"count":0},"todos":{"items":[]}}',
    '{"counter":{"count":1},"todos":{"items":[{"id":1,"text":"a","done":false}]}}',
    '{"counter":{"count":2}}',
    ' {"counter":{"count":5}} ',
    '{"a":1,"a":2}',
    '{"counter":',
    '[1,2]',
    '',
    '{"a":-0,"b":1e400}',
    '{"counter":{"count":985.6906946328695},"m":212.91890726713459}',
    '{"a":NaN}',
    '{"a":"\\ud800"}',
]
PATCHES = [
    '[]',
    '[] ',
    '[{"op":"replace","path":"/counter/count","value":7}]',
    '[{"op":"add","path":"/todos/items/-","value":{"id":2}}]',
    '[{"op":"replace","path":"","value":{"counter":{"count":9}}}]',
    '[{"op":"copy","from":"/counter","path":"/c2"}]',
    '[{"op":"move","from":"/counter","path":"/counter"}]',
    '[{"op":"add","path":"/x","value":-0}]',
    '[{"op":"replace","path":"/counter/count","value":1.5e300}]',
    '[{"op":"test","path":"/counter/count","value":0.0},{"op":"replace","path":"/counter/count","value":1}]',
    '[{"op":"test","path":"/counter","value":{"count":false}}]',
    # Adjacent binary64 values: a parser 1 ulp off reads both alike (J9).
    '[{"op":"test","path":"/counter/count","value":985.6906946328696},{"op":"replace","path":"/counter/count","value":1}]',
    '[{"op":"replace","path":"/counter/count","value":441.66130716816645}]',
    '[{"op":"remove","path":"/nothing"}]',
    '[{"op":"replace","path":"","value":[1]}]',
    '[{"op":"move","from":"/nothing","path":"/nothing"}]',
    '[{"op":"add","path":"/counter/count","value":1e400}]',
    '[{"op":"add","path":"/x","value":"\\ud800"}]',
    '{"op":"add"}',
    '',
]
VALUES = ["1", "null", "-0", "[1,2]", "{oops", "", "1e400", "985.6906946328695"]
ERROR_CODE_CHOICES = ["ERROR_CODE_NOT_FOUND", "ERROR_CODE_FAILED", "ERROR_CODE_DEADLINE_EXCEEDED",
                      "ERROR_CODE_UNSPECIFIED", 99]
FORGED_CALL_IDS = ["0", "4242424242", "18446744073709551615"]


class Session:
    """Generates one session's commands; all randomness comes from its seed."""

    def __init__(self, seed: int):
        self.rnd = random.Random(seed)
        r = self.rnd
        self.config = {"peer_id": r.choice(["c1", "c1", ""]), "host_id": r.choice(["", "", "h"]),
                       "capability": r.choice(["", "", "tok"]),
                       "max_calls_in_flight": r.choice([1024, 1024, 2]), "sync_retry_ms": 2000,
                       "host_silence_ms": r.choice([None, None, None, 2500, 5000])}
        self.version = 0      # the mirror's version, as the reference reports it
        self.syncs = 0        # sync ids the reference has sent
        self.calls = 0        # call ids the reference has revealed
        self.labels: list[str] = []
        self.connected = True

    def _header(self):
        r = self.rnd
        if r.random() < 0.05:
            return None
        header = {"protocolVersion": 2 if r.random() < 0.03 else 1,
                  "epoch": r.choice(["e1"] * 8 + ["e2"] * 2 + [""]),
                  "source": r.choice(["h"] * 9 + ["x"])}
        if r.random() < 0.9:
            header["capability"] = r.choice(["tok"] * 9 + ["bad"])
        if r.random() < 0.5:
            header["target"] = r.choice(["c1"] * 9 + ["c2"])
        return header

    def _version(self) -> int:
        return max(0, max(self.version, 1) + self.rnd.choice([-2, -1, 0, 0, 1, 1, 2, 3]))

    def _sync_id(self) -> str:
        r = self.rnd
        if self.syncs and r.random() < 0.7:
            latest = r.random() < 0.7
            return f"$S{self.syncs if latest else r.randint(1, self.syncs)}"
        return "0"

    def _message(self) -> dict:
        r = self.rnd
        msg = {}
        header = self._header()
        if header is not None:
            msg["header"] = header
        kind = r.choice(["snapshot"] * 3 + ["patch"] * 5 + ["result"] * 4 + ["none"])
        if kind == "snapshot":
            msg["snapshot"] = {"version": str(self._version()), "stateJson": r.choice(STATES),
                               "syncId": self._sync_id()}
            reason = r.choice(["SNAPSHOT_REASON_SYNC", "SNAPSHOT_REASON_COMMIT",
                               "SNAPSHOT_REASON_OVERFLOW", "SNAPSHOT_REASON_ANNOUNCE", None, 9])
            if reason is not None:
                msg["snapshot"]["reason"] = reason
        elif kind == "patch":
            base = self._version()
            msg["patch"] = {"baseVersion": str(base),
                            "version": str(max(0, base + r.choice([-1, 0, 1, 1, 1, 2]))),
                            "patchJson": r.choice(PATCHES), "syncId": self._sync_id()}
        elif kind == "result":
            if self.calls and r.random() < 0.85:
                call_id = f"$C{r.randint(1, self.calls)}"
            else:
                call_id = r.choice(FORGED_CALL_IDS)
            result = {"callId": call_id,
                      "stateVersion": str(self._version() if r.random() < 0.9 else 1000)}
            x = r.random()
            if x < 0.6:
                result["valueJson"] = r.choice(VALUES)
            elif x < 0.9:
                result["error"] = {"code": r.choice(ERROR_CODE_CHOICES), "message": "m",
                                   "detailsJson": r.choice(["", "{x", "{}"])}
            msg["result"] = result
        return msg

    def command(self) -> dict:
        r = self.rnd
        x = r.random()
        if x < 0.55:
            return {"op": "deliver", "message": self._message()}
        if x < 0.70:
            label = f"c{len(self.labels) + 1}"
            self.labels.append(label)
            cmd = {"op": "call", "call": label, "module": "counter", "method": "increase"}
            if r.random() < 0.05:
                cmd["args_json"] = r.choice(["", "{", "[1", "7"])
            else:
                cmd["args"] = [r.randint(0, 3)]
            if r.random() < 0.4:
                cmd["timeout_ms"] = r.choice([0, 1, 100, 500, 500, 3000])
            return cmd
        if x < 0.75 and self.labels:
            return {"op": "cancel", "call": r.choice(self.labels)}
        if x < 0.87:
            return {"op": "advance", "ms": r.choice([0, 1, 99, 100, 500, 1999, 2000, 2001, 5000])}
        if x < 0.97:
            # Mostly alternating; now and then a "reconnected" with no loss before it (L7).
            self.connected = not self.connected or r.random() < 0.1
            return {"op": "reconnected" if self.connected else "connection_lost"}
        if x < 0.99:
            return {"op": "envelopes_lost", "count": r.randint(1, 5)}
        return {"op": "dispose"}

    def learn(self, reference: Adapter, state: dict | None):
        self.syncs = len(reference.ids["S"])
        self.calls = len(reference.ids["C"])
        if state and state.get("version") is not None:
            self.version = int(state["version"])


def run_session(seed: int, steps: int, reference_cmd, candidate_cmd):
    """None, or (commands so far, reference reply, candidate reply) at the
    first divergence."""
    session = Session(seed)
    ref, cand = Adapter(reference_cmd), Adapter(candidate_cmd)
    log = []
    try:
        for i in range(steps):
            cmd = {"op": "start", "config": session.config} if i == 0 else session.command()
            for c in (cmd, {"op": "report"}):
                log.append(c)
                a, b = ref.ask(c), cand.ask(c)
                if not same(a, b):
                    return log, a, b
            session.learn(ref, a.get("state"))
        return None
    finally:
        ref.close()
        cand.close()


def default_reference(runner: str | None) -> list[str] | None:
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(HERE, "..", "..", "..", "target")
    candidates = [runner, os.environ.get("COSYSTEM_CONFORMANCE"),
                  os.path.join(target, "release", "cosystem-conformance"),
                  os.path.join(target, "debug", "cosystem-conformance"),
                  shutil.which("cosystem-conformance")]
    for path in candidates:
        if path and os.path.isfile(path):
            return [path, "adapter"]
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=200, help="sessions to play (200)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first session (1)")
    parser.add_argument("--steps", type=int, default=40, help="commands per session (40)")
    parser.add_argument("--runner", help="path of cosystem-conformance (reference: its adapter)")
    parser.add_argument("--reference", help="reference adapter command line")
    parser.add_argument("--candidate", help="candidate adapter command line (default: adapter.py here)")
    parser.add_argument("--context", type=int, default=6,
                        help="commands shown before a divergence (6; 0 for all)")
    parser.add_argument("--reply-timeout", type=float, default=10.0,
                        help="seconds an adapter may take to answer one command (10)")
    args = parser.parse_args()
    global REPLY_TIMEOUT
    REPLY_TIMEOUT = args.reply_timeout

    reference = shlex.split(args.reference) if args.reference else default_reference(args.runner)
    if reference is None:
        parser.error("no reference adapter: give --runner, --reference or COSYSTEM_CONFORMANCE")
    candidate = (shlex.split(args.candidate) if args.candidate
                 else [sys.executable, os.path.join(HERE, "adapter.py")])

    started = time.monotonic()
    failed = 0
    for seed in range(args.seed, args.seed + args.sessions):
        divergence = run_session(seed, args.steps, reference, candidate)
        if divergence is None:
            continue
        failed += 1
        log, a, b = divergence
        print(f"seed {seed}: divergence at command {len(log) - 1} "
              f"(replay: --seed {seed} --sessions 1 --steps {args.steps})")
        for cmd in log[-args.context:] if args.context else log:
            print("   >", json.dumps(cmd))
        print("   reference:", json.dumps(a))
        print("   candidate:", json.dumps(b))
    print(f"{failed} of {args.sessions} sessions diverged ({time.monotonic() - started:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
