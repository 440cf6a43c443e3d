#!/usr/bin/env python3
"""Conformance adapter (spec/CONFORMANCE.md §6) for cosystem_client.ClientCore.

Reads one command per line on stdin and writes one reply per line on stdout.
Time is virtual (§6.1): a clock in milliseconds that starts at 0 and moves
only on `advance`. The transport is a fake: whatever the core hands it while
handling a command is that command's `sent`. Being sans-IO, the core keeps
what it cannot send while disconnected, so the fake transport never buffers.

    python3 adapter.py        (run by `cosystem-conformance client -- ...`)
"""

import json
import sys
import traceback

from cosystem_client import ClientCore
from jsonpatch import dumps


class Adapter:
    """One client under test, driven by the commands of §6.2."""

    def __init__(self):
        self.core: ClientCore | None = None
        self.now = 0
        self.calls = {}    # label -> Call, refused calls included (§6.2 cancel)
        self.labels = {}   # id(Call) -> label

    def handle(self, cmd: dict) -> dict:
        """One command, one reply (§6.3)."""
        op = cmd.get("op")
        method = getattr(self, "op_" + str(op), None)
        if method is None:
            return {"error": f"unknown op {op!r}"}
        if self.core is None and op != "start":
            return {"error": "the first command must be start"}
        extra = method(cmd) or {}
        if "error" in extra:
            return extra
        return {"sent": self.core.take_outbound(), "events": self._events(), **extra}

    def _events(self) -> list:
        events = []
        for event in self.core.take_events():
            if event["type"] == "settled":
                event = {**event, "call": self.labels[id(event["call"])]}
            events.append(event)
        return events

    # -- commands (§6.2) --------------------------------------------------------

    def op_start(self, cmd):
        config = cmd.get("config") or {}
        self.now = 0
        self.core = ClientCore(
            peer_id=config.get("peer_id", "c1") or "",
            host_id=config.get("host_id") or "",
            capability=config.get("capability") or "",
            max_pending=int(config.get("max_calls_in_flight", 1024)),
            sync_retry_ms=int(config.get("sync_retry_ms", 2000)),
            host_silence_ms=None if config.get("host_silence_ms") is None
            else int(config["host_silence_ms"]),
            max_call_bytes=int(config.get("max_call_bytes", 4 * 1024 * 1024)),
        )
        self.core.start(self.now)

    def op_deliver(self, cmd):
        self.core.handle_message(cmd["message"], self.now)

    def op_call(self, cmd):
        if cmd.get("args_json") is not None:
            args_json = cmd["args_json"]
        else:
            args_json = dumps(cmd.get("args", []))
        timeout = cmd.get("timeout_ms")
        deadline = None if timeout is None else self.now + int(timeout)
        c = self.core.call(cmd["module"], cmd["method"], args_json, deadline)
        self.calls[cmd["call"]] = c
        self.labels[id(c)] = cmd["call"]
        return {"call_id": str(c.call_id)} if c.call_id else {}

    def op_cancel(self, cmd):
        c = self.calls.get(cmd["call"])
        if c is None:
            return  # a label no call gave: nothing to cancel (CONFORMANCE §6.2)
        self.core.cancel(c)

    def op_advance(self, cmd):
        self.now += int(cmd.get("ms", 0))
        self.core.advance(self.now)

    def op_connection_lost(self, cmd):
        self.core.connection_lost()

    def op_reconnected(self, cmd):
        self.core.reconnected(self.now)

    def op_envelopes_lost(self, cmd):
        self.core.envelopes_lost(int(cmd.get("count", 0)), self.now)

    def op_dispose(self, cmd):
        self.core.dispose()

    def op_report(self, cmd):
        core = self.core
        empty = core.epoch is None
        return {"state": {
            "mirror": None if empty else core.mirror,
            "version": None if empty else str(core.version),
            "epoch": None if empty else core.epoch,
            "pending": core.pending,
            "timer_ms": core.next_timer(),
        }}


def main():
    # The adapter protocol is UTF-8 whatever the locale (§6.1).
    sys.stdin.reconfigure(encoding="utf-8")
    sys.stdout.reconfigure(encoding="utf-8")
    adapter = Adapter()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = adapter.handle(json.loads(line))
        except Exception as e:
            # A failure is this command's error reply (§6.1); details go to
            # stderr, which the runner quotes when a case fails.
            traceback.print_exc(file=sys.stderr)
            reply = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
