"""Replays the host vectors (conformance/vectors/host/*.json, CONFORMANCE.md
§3.3) against the sans-IO core in process, as the reference runner does for
the reference core.

    python3 check_vectors.py VECTOR_DIR [--case SUBSTRING]

The generated protobuf modules (package `cosystem.worker.v1`) must be
importable, e.g. through PYTHONPATH; run_conformance.sh generates them.
Exits non-zero if any case fails, whatever its tier.
"""
from __future__ import annotations

import argparse
import base64
import copy
import glob
import json
import os
import sys

from google.protobuf import json_format

import demo
import json_util
from cosystem.worker.v1 import worker_pb2 as pb
from host_core import HostConfig, HostCore, decode

# CONFORMANCE.md §3.3 defaults of the `host` member.
DEFAULT_PEER_ID = "h"
DEFAULT_SECRET = "conformance-secret-token-1b7e"
# Values a pattern may name that proto3 JSON omits from the actual message.
DEFAULTS = ("0", "", 0, False)


class Mismatch(Exception):
    """The host's output differs from what the vector expects."""


def match(pattern, actual, bindings: dict, key: str = "") -> None:
    """Match a vector pattern against a message in proto3 JSON form: `"any"`
    matches anything, `"$name"` binds on first use, members ending in `Json`
    compare as JSON values (§6.5)."""
    if isinstance(pattern, str) and pattern == "any":
        return
    if isinstance(pattern, str) and pattern.startswith("$"):
        if pattern in bindings:
            if bindings[pattern] != actual:
                raise Mismatch(f"{key}: {actual!r} != bound {pattern}={bindings[pattern]!r}")
        else:
            bindings[pattern] = actual
        return
    if key.endswith("Json") and isinstance(pattern, str):
        if pattern == "" or actual == "":
            if pattern != actual:
                raise Mismatch(f"{key}: {actual!r} != {pattern!r}")
            return
        try:
            if not json_util.equal(json_util.loads(pattern), json_util.loads(actual)):
                raise Mismatch(f"{key}: {actual} != {pattern}")
        except json_util.NotJson as e:
            raise Mismatch(f"{key}: not JSON: {actual!r} ({e})") from None
        return
    if isinstance(pattern, dict):
        if not isinstance(actual, dict):
            raise Mismatch(f"{key}: expected object, got {actual!r}")
        for name, sub in pattern.items():
            if name not in actual:
                if sub in DEFAULTS or (isinstance(sub, str) and sub.endswith("_UNSPECIFIED")):
                    continue
                raise Mismatch(f"{key}.{name}: missing")
            match(sub, actual[name], bindings, name)
        for name in actual:
            # A host may add details to any error (spec §3.9); a pattern
            # that says "detailsJson": "" requires none.
            optional = name == "detailsJson" and key == "error"
            if optional and name not in pattern:
                try:
                    json_util.loads(actual[name])
                except json_util.NotJson as e:
                    raise Mismatch(f"{key}.{name}: not JSON: {actual[name]!r} ({e})") from None
            if name not in pattern and not optional and not (name == "header" and key == ""):
                raise Mismatch(f"{key}.{name}: unexpected member {actual[name]!r}")
        return
    if isinstance(pattern, list):
        if not isinstance(actual, list) or len(pattern) != len(actual):
            raise Mismatch(f"{key}: expected {len(pattern)} items, got {actual!r}")
        for p, a in zip(pattern, actual):
            match(p, a, bindings, key)
        return
    if pattern != actual:
        raise Mismatch(f"{key}: {actual!r} != {pattern!r}")


def resolve(message, bindings: dict):
    """Substitute bound `$name` values into a message to send."""
    if isinstance(message, dict):
        return {k: resolve(v, bindings) for k, v in message.items()}
    if isinstance(message, list):
        return [resolve(v, bindings) for v in message]
    if isinstance(message, str) and message in bindings:
        return bindings[message]
    return message


def apply_patch(view, ops):
    """Apply add/remove/replace operations (PA1) to a copy of `view`."""
    view = copy.deepcopy(view)
    for op in ops:
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]]
        parent = view
        for t in tokens[:-1]:
            parent = parent[int(t)] if isinstance(parent, list) else parent[t]
        last = tokens[-1]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if op["op"] == "add":
                parent.insert(index, op["value"])
            elif op["op"] == "remove":
                del parent[index]
            else:
                parent[index] = op["value"]
        elif op["op"] == "remove":
            del parent[last]
        else:
            parent[last] = op["value"]
    return view


def run_case(case: dict) -> None:
    """Run one case; raise Mismatch at the first difference."""
    host = case["host"]
    sections = tuple(host.get("sections", demo.DEFAULT_SECTIONS))
    secret = host.get("secret_token", DEFAULT_SECRET)
    config = HostConfig(epoch=host["epoch"], sync_mode=host["sync"], sections=sections,
                        peer_id=host.get("peer_id", DEFAULT_PEER_ID))
    if "history_entries" in host:
        config.history_entries = host["history_entries"]
    if "max_calls_in_flight" in host:
        config.max_calls_in_flight = host["max_calls_in_flight"]
    core = HostCore(config, demo.demo_modules(secret))
    sessions: dict[str, int] = {}
    paused: set[str] = set()
    mirrors: dict[str, tuple[int, object]] = {}
    shown: dict[int, object] = {}
    bindings: dict = {}
    for number, step in enumerate(case["steps"]):
        closed_here = []
        if "connect" in step:
            sessions[step["connect"]["session"]] = core.open_session()
        elif "send" in step:
            send = step["send"]
            for message in send.get("messages", [send.get("message")]):
                parsed = json_format.ParseDict(resolve(message, bindings), pb.ClientMessage())
                if core.receive(sessions[send["session"]], parsed):
                    closed_here.append(send["session"])  # H7 flooding: the session ends
                    break
        elif "send_bytes" in step:
            # H14: undecodable bytes are the transport's to act on; the state
            # machine never sees them and the session stays attached.
            message = decode(base64.b64decode(step["send_bytes"]["base64"]))
            if message is not None and core.receive(sessions[step["send_bytes"]["session"]], message):
                closed_here.append(step["send_bytes"]["session"])
        elif "disconnect" in step:
            core.close_session(sessions.pop(step["disconnect"]))
        elif "bookmark" in step:
            core.tick()  # H10: one bookmark interval elapses
        elif "pause" in step:
            paused.add(step["pause"])
        elif "resume" in step:
            paused.discard(step["resume"])
        for label in closed_here:
            core.close_session(sessions.pop(label))
        received: dict[str, list] = {}
        for label, sid in sessions.items():
            if label in paused:
                continue
            while (message := core.poll_transmit(sid)) is not None:
                data = message.SerializeToString()
                if "secret" not in sections and secret.encode() in data:
                    raise Mismatch(f"step {number}: secret token sent to {label}")
                received.setdefault(label, []).append(json_format.MessageToDict(message))
                track(label, message, mirrors, shown)
        expect = step.get("expect", {})
        expected_sent = expect.get("sent", {})
        for label in set(received) | set(expected_sent):
            try:
                match(expected_sent.get(label, []), received.get(label, []), bindings)
            except Mismatch as exc:
                raise Mismatch(f"step {number}: session {label}: {exc}\n    got {received.get(label)}")
        for label, want in expect.get("mirror", {}).items():
            version, view = mirrors.get(label, (None, None))
            if str(version) != want["version"] or not json_util.equal(view, want["view"]):
                raise Mismatch(f"step {number}: mirror of {label} is {view} at {version}")


def track(label, message, mirrors, shown) -> None:
    """Rebuild the session's mirror from what it received (§3.3 `mirror`); a
    resume patch with no mirror yet starts from the view shown at its base."""
    kind = message.WhichOneof("kind")
    if kind == "snapshot":
        view = json.loads(message.snapshot.state_json)
        mirrors[label] = (message.snapshot.version, view)
        shown[message.snapshot.version] = view
    elif kind == "patch":
        p = message.patch
        base_view = mirrors[label][1] if label in mirrors else shown.get(p.base_version)
        view = apply_patch(base_view, json.loads(p.patch_json))
        mirrors[label] = (p.version, view)
        shown[p.version] = view


def main() -> int:
    parser = argparse.ArgumentParser(description="replay the host vectors against host_core")
    parser.add_argument("vectors", help="directory of host vector files (conformance/vectors/host)")
    parser.add_argument("--case", default="", help="run only cases whose name contains this")
    args = parser.parse_args()
    paths = sorted(glob.glob(os.path.join(args.vectors, "*.json")))
    if not paths:
        print(f"no vector files in {args.vectors}", file=sys.stderr)
        return 2
    passed = failed = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            cases = json.load(f)["cases"]
        for case in cases:
            if args.case not in case["name"]:
                continue
            try:
                run_case(case)
                passed += 1
                print(f"PASS {case['name']}")
            except Mismatch as exc:
                failed += 1
                print(f"FAIL {case['name']} ({case['tier']}): {exc}")
            except (KeyError, TypeError) as exc:
                # What the host did not produce, or produced in another
                # shape: a bare KeyError prints only the missing key.
                failed += 1
                print(f"FAIL {case['name']} ({case['tier']}): the host's output lacks or misshapes "
                      f"what the vector expects ({type(exc).__name__}: {exc!r})")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
