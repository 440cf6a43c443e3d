"""A sans-IO client core for the cosystem-worker protocol, version 1.

Rule ids (K1, P5, L6, ...) refer to spec/PROTOCOL.md. The core does no I/O
and reads no clock. Its driver feeds it inputs, each with the current time in
milliseconds:

    start(now)                        L1
    handle_message(envelope, now)     a HostMessage in proto3 canonical JSON (§8.3-§8.6)
    call(...), cancel(call)           application inputs (L2, L3)
    advance(now)                      the passing of time (L4, L5, L10)
    connection_lost(), reconnected(now), envelopes_lost(count, now), dispose()
                                      transport and lifecycle inputs (L6-L9)

and takes out:

    take_outbound()   ClientMessages (canonical JSON dicts) to hand to the transport
    take_events()     reports (§8.2), in the order they were produced
    next_timer()      when the core next needs the time, or None

An envelope counts as sent (§8.7) when take_outbound() returns it, which it
does only while connected; that is when its header.epoch is stamped (§3.2, E6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jsonpatch import MAX_DEPTH, JsonTextError, PatchError, apply_patch, parse_json

PROTOCOL_VERSION = 1

# ErrorCode values (worker.proto). The short names are what reports carry.
ERROR_CODES = {
    1: "NOT_FOUND", 2: "INVALID_ARGUMENT", 3: "FAILED", 4: "UNAVAILABLE",
    5: "PERMISSION_DENIED", 6: "RESOURCE_EXHAUSTED", 7: "INTERNAL",
    8: "FAILED_PRECONDITION", 9: "DEADLINE_EXCEEDED", 10: "CANCELLED",
    11: "DISPOSED", 12: "OUTCOME_UNKNOWN",
}
SNAPSHOT_REASON_OVERFLOW = 3

DEFAULT_MAX_PENDING = 1024                # §15 max pending calls
DEFAULT_MAX_CALL_BYTES = 4 * 1024 * 1024  # §15 max call size
DEFAULT_SYNC_RETRY_MS = 2000              # §15 sync retry interval
MIN_SYNC_RETRY_MS = 100                   # §15: a client MUST NOT retry sooner

# Phases of a pending call (§11.2).
QUEUED, SENT, HELD, SETTLED = "QUEUED", "SENT", "HELD", "SETTLED"


# ---------------------------------------------------------------------------
# Reading the canonical JSON mapping (§6.7): a uint64 is a decimal string or
# a number, an enum its name or its number, and a default value may be absent.
# ---------------------------------------------------------------------------

class MalformedField(ValueError):
    """A field whose canonical JSON form cannot be read."""


def _field(obj: dict, camel: str, snake: str):
    """A member under its lowerCamelCase name or its proto field name."""
    return obj[camel] if camel in obj else obj.get(snake)


def _u64(value) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise MalformedField(f"{value!r} is not a uint64")
    try:
        number = int(value)
    except ValueError:
        raise MalformedField(f"{value!r} is not a uint64") from None
    if not 0 <= number < 1 << 64:
        raise MalformedField(f"{value!r} is out of the uint64 range")
    return number


def _enum(value, prefix: str, names: dict[int, str]) -> int:
    """An enum value as a number; -1 for a name this client does not know,
    which C3 then treats like any unknown value."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value == prefix + "UNSPECIFIED":
            return 0
        for number, name in names.items():
            if value == prefix + name:
                return number
    return -1


# ---------------------------------------------------------------------------
# Protobuf sizes, for the max-call-size check of L2 (no protobuf library).
# ---------------------------------------------------------------------------

def _varint_len(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def _len_field(number: int, payload_len: int) -> int:
    """Size of a length-delimited field: tag, length, payload."""
    return _varint_len(number << 3) + _varint_len(payload_len) + payload_len


def _str_field(number: int, text: str) -> int:
    size = len(text.encode("utf-8"))
    return _len_field(number, size) if size else 0  # proto3 omits ""


# ---------------------------------------------------------------------------
# Calls
# ---------------------------------------------------------------------------

@dataclass
class Outcome:
    """A call's single outcome (§11.1)."""
    ok: bool
    value: Any = None                # when ok
    code: str = ""                   # an ERROR_CODES name, when not ok
    message: str = ""
    details: Any = None
    state_version: int | None = None  # None for a local outcome


@dataclass(eq=False)
class Call:
    """A call (§2), and the application's handle on it."""
    seq: int                         # creation order
    call_id: int                     # 0 for a call refused at once (L2)
    module: str
    method: str
    args_json: str
    deadline: int | None
    epoch: str | None = None         # the bound epoch (E5); None while unbound
    phase: str = QUEUED
    held: Outcome | None = None      # a result waiting for its version (R5)
    held_seq: int = 0                # arrival order of the held result (RW5)
    held_after_sync: int = 0         # Q2: the last sync id created before the result
    outcome: Outcome | None = None   # once settled


@dataclass
class SyncRequest:
    """The outstanding request of the SYNC-OUTSTANDING flag (§8.1)."""
    sync_id: int
    have: int
    reason: str
    since: int
    sent: bool = False


class ClientCore:
    """One client of one host: the state machine of §8, without I/O."""

    def __init__(self, *, peer_id: str = "", host_id: str = "", capability: str = "",
                 max_pending: int = DEFAULT_MAX_PENDING,
                 max_call_bytes: int = DEFAULT_MAX_CALL_BYTES,
                 sync_retry_ms: int = DEFAULT_SYNC_RETRY_MS,
                 host_silence_ms: int | None = None,
                 max_depth: int = MAX_DEPTH):
        self.peer_id = peer_id
        self.host_id = host_id
        self.capability = capability
        self.max_pending = max_pending
        self.max_call_bytes = max_call_bytes
        self.sync_retry_ms = max(sync_retry_ms, MIN_SYNC_RETRY_MS)
        self.max_depth = max_depth
        # L10: off unless configured; counted from heard_at, the time of the
        # host's latest envelope on this link that K1 kept (None: not yet).
        self.host_silence_ms = host_silence_ms
        self.heard_at: int | None = None

        # The mirror (§8.1): EMPTY while epoch is None.
        self.mirror: dict | None = None
        self.epoch: str | None = None
        self.version = 0
        self.disposed = False
        self.connected = True
        self.ready_reported = False

        self.sync: SyncRequest | None = None   # SYNC-OUTSTANDING
        # Sync ids increase, so "made after a result" (Q2) compares ids.
        self.next_sync_id = 1
        self.next_call_id = 1
        self.next_seq = 1
        self.next_arrival = 1
        self.calls: dict[int, Call] = {}       # unsettled calls by call_id
        self.send_queue: list[Call] = []       # QUEUED calls, in creation order
        self.events: list[dict] = []

    # -- outputs --------------------------------------------------------------

    def take_events(self) -> list[dict]:
        """The reports (§8.2) produced since the last call, in order."""
        events, self.events = self.events, []
        return events

    def take_outbound(self) -> list[dict]:
        """Hand every queued envelope to the transport; nothing while
        disconnected (L6). A queued SyncRequest goes ahead of queued Calls,
        as L7 requires after a reconnection."""
        if self.disposed or not self.connected:
            return []
        out = []
        if self.sync is not None and not self.sync.sent:
            self.sync.sent = True
            out.append(self._envelope("syncRequest", self._sync_body(self.sync)))
        for c in self.send_queue:
            c.phase = SENT
            out.append(self._envelope("call", self._call_body(c)))
        self.send_queue.clear()
        return out

    def next_timer(self) -> int | None:
        """When the core next needs the time: the earliest deadline of an
        unsettled call and, only while connected, the retry time (L5)."""
        if self.disposed:
            return None
        times = [c.deadline for c in self.calls.values() if c.deadline is not None]
        if self.sync is not None and self.connected:
            times.append(self.sync.since + self.sync_retry_ms)
        silence = self._silence_due()
        if silence is not None:
            times.append(silence)
        return min(times, default=None)

    def _silence_due(self) -> int | None:
        if self.host_silence_ms is None or not self.connected or self.heard_at is None:
            return None
        return self.heard_at + self.host_silence_ms

    @property
    def pending(self) -> int:
        """The number of unsettled calls."""
        return len(self.calls)

    # -- local inputs (§8.7) ----------------------------------------------------

    def start(self, now: int):
        """L1."""
        self._request(0, "INITIAL", now)

    def call(self, module: str, method: str, args_json: str,
             deadline: int | None = None) -> Call:
        """L2. Always returns a Call; one refused at once is already settled."""
        c = Call(seq=self.next_seq, call_id=0, module=module, method=method,
                 args_json=args_json, deadline=deadline)
        self.next_seq += 1
        if self.disposed:
            self._settle_local(c, "DISPOSED", "the client is disposed")
        elif len(self.calls) >= self.max_pending:
            self._settle_local(c, "RESOURCE_EXHAUSTED", "too many pending calls")
        elif self._call_envelope_size(c) > self.max_call_bytes:
            self._settle_local(c, "RESOURCE_EXHAUSTED", "the call is too large")
        else:
            c.call_id = self.next_call_id
            self.next_call_id += 1
            c.epoch = self.epoch  # E5: bound at once if there is a mirror
            self.calls[c.call_id] = c
            self.send_queue.append(c)
        return c

    def cancel(self, c: Call):
        """L3. Cancelling a settled call does nothing."""
        if not self.disposed and c.phase != SETTLED:
            self._settle_local(c, "CANCELLED", "the call was cancelled")

    def advance(self, now: int):
        """L4, then L5, then L10: handle everything due at or before `now`."""
        if self.disposed:
            return
        due = [c for c in self.calls.values() if c.deadline is not None and now >= c.deadline]
        # L4: earliest deadline first, equal deadlines in the order made.
        for c in sorted(due, key=lambda c: (c.deadline, c.seq)):
            self._settle_local(c, "DEADLINE_EXCEEDED", "the deadline passed")
        s = self.sync
        # L5 runs only while connected; a request queued while disconnected
        # is replaced by L7 instead (L6).
        if s is not None and self.connected and now >= s.since + self.sync_retry_ms:
            if not s.sent:
                # L5: a request still queued went unsent, not unanswered: it
                # goes out as it stands, and its interval starts again.
                s.since = now
            else:
                self._request(0 if s.have == 0 else self.version, "RETRY", now)
        silence = self._silence_due()
        if silence is not None and now >= silence:
            # L10: the link is taken as lost; the driver closes it.
            self._notice("host-silent", silence_ms=str(self.host_silence_ms))
            self.connection_lost()

    def connection_lost(self):
        """L6."""
        if self.disposed or not self.connected:
            return
        self.connected = False
        self.heard_at = None
        self._settle_sent_outcome_unknown("the connection was lost")
        self.sync = None  # clears the flag and withdraws an unsent request

    def reconnected(self, now: int):
        """L7, also when no loss was reported before it."""
        if self.disposed:
            return
        self.connected = True
        self.heard_at = None
        self._request(self.version, "RECONNECT", now)

    def envelopes_lost(self, count: int, now: int):
        """L9 (shared channels, SC12)."""
        if self.disposed:
            return
        self._notice("envelopes-lost", count=str(count))
        self._settle_sent_outcome_unknown("envelopes were lost")
        if self.connected and self.epoch is not None and self.sync is None:
            self._request(self.version, "VERSION_GAP", now)

    def dispose(self):
        """L8."""
        if self.disposed:
            return
        for c in sorted(self.calls.values(), key=lambda c: c.seq):
            self._settle_local(c, "DISPOSED", "the client is disposed")
        self.sync = None
        self.disposed = True

    # -- host envelopes (§8.3-§8.6) -------------------------------------------------

    def handle_message(self, msg: dict, now: int):
        """Handle one HostMessage, given as a canonical JSON object."""
        if self.disposed:
            return
        header = msg.get("header")
        # §3.2: a missing header is a default one, whose fields are all "".
        h = header if isinstance(header, dict) else {}
        # K1 comes first, so a client configured with a host id or a token
        # ignores a header-less envelope silently (§3.2).
        if (h.get("target") or "") not in ("", self.peer_id):
            return
        if self.host_id and (h.get("source") or "") != self.host_id:
            return
        if self.capability and (h.get("capability") or "") != self.capability:
            return
        if self.connected:
            self.heard_at = now  # L10: whatever it says, the host spoke
        try:
            version = _u64(_field(h, "protocolVersion", "protocol_version"))
        except MalformedField:
            version = None
        if header is None or version != PROTOCOL_VERSION:
            self._notice("malformed-message", detail=f"protocol_version {version}, not 1")  # K2
            return
        try:
            self._dispatch(msg, h.get("epoch") or "", now)
        finally:
            # Q1's re-arm follows every envelope K1 and K2 did not ignore (§8.3).
            self._rearm_result_ahead(now)

    def _dispatch(self, msg: dict, epoch: str, now: int):
        if epoch == "" or len(epoch.encode("utf-8", "surrogatepass")) > 1024:
            self._notice("malformed-message", detail="empty or over-long epoch")  # K2a
            return
        try:
            if isinstance(msg.get("snapshot"), dict):
                self._on_snapshot(msg["snapshot"], epoch)
            elif isinstance(msg.get("patch"), dict):
                self._on_patch(msg["patch"], epoch, now)
            elif isinstance(msg.get("result"), dict):
                self._on_result(msg["result"], epoch, now)
            else:
                self._notice("malformed-message", detail="no known kind")  # K3
        except MalformedField as e:
            self._notice("malformed-message", detail=str(e))

    # Snapshots (§8.4) -------------------------------------------------------------

    def _on_snapshot(self, snap: dict, epoch: str):
        version = _u64(snap.get("version"))
        sync_id = _u64(_field(snap, "syncId", "sync_id"))
        reason = _enum(snap.get("reason"), "SNAPSHOT_REASON_", {SNAPSHOT_REASON_OVERFLOW: "OVERFLOW"})
        if version == 0:
            self._notice("malformed-message", detail="snapshot version 0")  # K4
            return
        try:
            # A state nested deeper than the mirror-depth limit is not JSON
            # text this client can read (§15): K4 too.
            state = parse_json(_field(snap, "stateJson", "state_json") or "", self.max_depth)
        except JsonTextError as e:
            self._notice("malformed-message", detail=f"snapshot state is not JSON: {e}")  # K4
            return
        if not isinstance(state, dict):
            self._notice("malformed-message", detail="snapshot state is not an object")  # K4
            return

        if self.epoch is None or epoch != self.epoch or version >= self.version:
            self._accept(state, epoch, version, reason, sync_id)  # S1, S4, S2
        else:
            self._conflict("stale-message", version)  # S3, reported even when covered
            if self._is_reply(sync_id):
                self.sync = None  # K6: a stale reply clears its request

    def _accept(self, state: dict, epoch: str, version: int, reason: int, sync_id: int):
        """ACCEPT, steps 1-9 of §8.4 in order."""
        old_epoch = self.epoch
        self.mirror, self.epoch, self.version = state, epoch, version
        if not self.ready_reported:
            self.ready_reported = True
            self._event({"type": "ready"})
        elif old_epoch != epoch:
            self._notice("epoch-changed", old=old_epoch, new=epoch)
        for c in sorted(self.calls.values(), key=lambda c: c.seq):
            if c.epoch is not None and c.epoch != epoch:
                self._settle_local(c, "OUTCOME_UNKNOWN", "the host epoch changed")
        for c in self.calls.values():
            if c.epoch is None:
                c.epoch = epoch
        if reason == SNAPSHOT_REASON_OVERFLOW:  # an unknown reason reads as COMMIT (C3)
            self._notice("overflow", version=str(version))
        self.sync = None  # every accepted Snapshot clears the flag
        self._event({"type": "state_changed", "version": str(version)})
        self._settle_eligible()
        self._settle_unreachable(sync_id)

    # Patches (§8.5) ---------------------------------------------------------------

    def _on_patch(self, p: dict, epoch: str, now: int):
        base = _u64(_field(p, "baseVersion", "base_version"))
        version = _u64(p.get("version"))
        sync_id = _u64(_field(p, "syncId", "sync_id"))
        if version < base:
            self._notice("malformed-message", detail="patch version below its base")  # K5
            return
        patch_json = _field(p, "patchJson", "patch_json") or ""
        covered = self.sync is not None

        if self.epoch is None or epoch != self.epoch:
            if not covered:  # P1, P3
                self._conflict("missing-snapshot", version)
                self._request(0, "MISSING_SNAPSHOT", now)
            elif self.sync.have != 0:  # P4: a resume cannot help, ask for a snapshot
                self._request(0, "MISSING_SNAPSHOT", now)
            return  # P2, P4 otherwise: covered, dropped

        v = self.version
        if base == v:
            try:
                if base == version and not self._is_empty_array(patch_json):
                    raise PatchError("a bookmark carries operations")  # PC4
                result = apply_patch(self.mirror, patch_json, max_depth=self.max_depth)
            except PatchError:
                # P6: reported even when covered; a request that already asks
                # for a snapshot (have = 0) is left alone.
                self._conflict("patch-apply-failed", version)
                if self.sync is None or self.sync.have != 0:
                    self._request(0, "PATCH_APPLY_FAILED", now)
                return
            # P5
            self.mirror = result
            if self._is_reply(sync_id):
                self.sync = None
            if version > v:
                self.version = version
                self._event({"type": "state_changed", "version": str(version)})
            self._settle_eligible()
            self._settle_unreachable(sync_id)
        elif base > v:
            if not covered:  # P7; P8 drops it
                self._conflict("version-gap", version)
                self._request(v, "VERSION_GAP", now)
        elif not covered:  # P9
            self._conflict("stale-message", version)
        elif self._is_reply(sync_id):  # P10: a stale reply clears its request (K6)
            self.sync = None

    @staticmethod
    def _is_empty_array(text: str) -> bool:
        try:
            return parse_json(text) == []
        except JsonTextError:
            return False

    # Call results (§8.6) ------------------------------------------------------------

    def _on_result(self, r: dict, epoch: str, now: int):
        call_id = _u64(_field(r, "callId", "call_id"))
        state_version = _u64(_field(r, "stateVersion", "state_version"))
        c = self.calls.get(call_id)
        # R1: unknown or settled, not sent yet (no host can have answered
        # it; it stays queued), or already holding a result.
        if c is None or c.phase == QUEUED or c.held is not None:
            self._notice("unexpected-result", call_id=str(call_id))
            return
        outcome = self._read_outcome(r, state_version)  # read on arrival (§8.6)
        if c.epoch is not None and c.epoch != epoch:  # R2
            self._settle_local(c, "OUTCOME_UNKNOWN", "the result is from another host epoch")
            return
        if c.epoch is None:  # R3
            c.epoch = epoch
        if self.epoch == c.epoch and self.version >= state_version:  # R4
            self._settle(c, outcome)
            return
        # R5: hold until the mirror reaches state_version (§12).
        c.held = outcome
        c.phase = HELD
        c.held_seq = self.next_arrival
        self.next_arrival += 1
        c.held_after_sync = self.next_sync_id - 1
        if self.epoch is not None and self.version < state_version and self.sync is None:
            self._request(self.version, "RESULT_AHEAD", now)  # Q1

    @staticmethod
    def _read_outcome(r: dict, state_version: int) -> Outcome:
        """The outcome of a CallResult (§3.8, §3.9, C3)."""
        if "valueJson" in r or "value_json" in r:
            try:
                value = parse_json(_field(r, "valueJson", "value_json"))
            except JsonTextError:
                return Outcome(False, code="INTERNAL", message="the result's value is not JSON",
                               state_version=state_version)
            return Outcome(True, value=value, state_version=state_version)
        err = r.get("error")
        if not isinstance(err, dict):
            return Outcome(False, code="INTERNAL", message="the result has no outcome",
                           state_version=state_version)
        code = _enum(err.get("code"), "ERROR_CODE_", ERROR_CODES)
        message = err.get("message") or ""
        details_text = _field(err, "detailsJson", "details_json") or ""
        details = None
        if details_text:
            try:
                details = parse_json(details_text)
            except JsonTextError:
                details = details_text  # §3.9: unreadable details stay text
        # C3: 0 and unknown codes read as INTERNAL, keeping the number (§14).
        # The local codes 9-12 are known values and are passed on as sent.
        if code in ERROR_CODES:
            name = ERROR_CODES[code]
        else:
            name, message = "INTERNAL", f"error code {code}: {message}"
        return Outcome(False, code=name, message=message, details=details,
                       state_version=state_version)

    # Held results (§12, Q1, Q2) ------------------------------------------------------

    def _held_below_mirror(self) -> list[Call]:
        """Held results of the mirror's epoch naming a version it has not reached."""
        return [c for c in self.calls.values()
                if c.held is not None and c.epoch == self.epoch
                and self.version < c.held.state_version]

    def _settle_eligible(self):
        """RW2, RW5: settle the held results the mirror now reaches, in arrival order."""
        ready = [c for c in self.calls.values()
                 if c.held is not None and c.epoch == self.epoch
                 and self.version >= c.held.state_version]
        for c in sorted(ready, key=lambda c: c.held_seq):
            self._settle(c, c.held)

    def _settle_unreachable(self, sync_id: int):
        """Q2: a reply to a request made after a result arrived shows the host
        at or past the result's version; a mirror still below it means the
        result is forged or corrupt. Settled INTERNAL as a local outcome."""
        if sync_id == 0 or sync_id >= self.next_sync_id:
            return  # not a reply to any request this client made
        stuck = [c for c in self._held_below_mirror() if sync_id > c.held_after_sync]
        for c in sorted(stuck, key=lambda c: c.held_seq):
            self._settle_local(c, "INTERNAL",
                               "the result names a version the host's later sync reply does not reach")

    def _rearm_result_ahead(self, now: int):
        """Q1, second paragraph: ask again while a held result is ahead."""
        if self.disposed or self.sync is not None or not self.connected or self.epoch is None:
            return
        if self._held_below_mirror():
            self._request(self.version, "RESULT_AHEAD", now)

    # -- internals ----------------------------------------------------------------------

    def _is_reply(self, sync_id: int) -> bool:
        """K6: a non-zero sync_id equal to the outstanding request's."""
        return sync_id != 0 and self.sync is not None and self.sync.sync_id == sync_id

    def _request(self, have: int, reason: str, now: int):
        """Queue a SyncRequest and set SYNC-OUTSTANDING (§8.1). It replaces
        the outstanding one, which is withdrawn if not yet sent. While
        disconnected it only waits: L5 skips it and L7 replaces it (L6)."""
        self.sync = SyncRequest(self.next_sync_id, have, reason, now)
        self.next_sync_id += 1

    def _settle_sent_outcome_unknown(self, message: str):
        """L6, L9: every sent call without a result; held ones keep waiting."""
        for c in sorted(self.calls.values(), key=lambda c: c.seq):
            if c.phase == SENT:
                self._settle_local(c, "OUTCOME_UNKNOWN", message)

    def _settle(self, c: Call, outcome: Outcome):
        if c.phase == QUEUED and c in self.send_queue:
            self.send_queue.remove(c)  # withdrawn: it is never sent (L3, L4)
        c.phase = SETTLED
        c.held = None
        c.outcome = outcome
        self.calls.pop(c.call_id, None)
        event = {"type": "settled", "call": c,
                 "state_version": None if outcome.state_version is None
                 else str(outcome.state_version)}
        if outcome.ok:
            event["ok"] = outcome.value
        else:
            event["error"] = outcome.code.lower().replace("_", "-")
            event["message"] = outcome.message
        self._event(event)

    def _settle_local(self, c: Call, code: str, message: str):
        """Settle with a local outcome (§11.1), which has no state_version."""
        self._settle(c, Outcome(False, code=code, message=message))

    def _event(self, event: dict):
        self.events.append(event)

    def _notice(self, kind: str, **members):
        self._event({"type": "notice", "kind": kind, **members})

    def _conflict(self, reason: str, incoming: int):
        self._event({"type": "conflict", "reason": reason,
                     "current_version": str(self.version),  # 0 in EMPTY
                     "incoming_version": str(incoming)})

    # -- envelopes (canonical JSON, default values omitted) ----------------------

    def _header(self) -> dict:
        header: dict = {"protocolVersion": PROTOCOL_VERSION}
        if self.epoch:
            header["epoch"] = self.epoch  # the mirror's epoch when sent; "" in EMPTY (§3.2)
        if self.peer_id:
            header["source"] = self.peer_id
        if self.host_id:
            header["target"] = self.host_id
        if self.capability:
            header["capability"] = self.capability
        return header

    def _envelope(self, kind: str, body: dict) -> dict:
        return {"header": self._header(), kind: body}

    @staticmethod
    def _sync_body(s: SyncRequest) -> dict:
        body: dict = {"syncId": str(s.sync_id)}
        if s.have:
            body["haveVersion"] = str(s.have)
        body["reason"] = "SYNC_REASON_" + s.reason
        return body

    @staticmethod
    def _call_body(c: Call) -> dict:
        body: dict = {"callId": str(c.call_id), "module": c.module, "method": c.method}
        if c.args_json:
            body["argsJson"] = c.args_json
        return body

    def _call_envelope_size(self, c: Call) -> int:
        """L2: the protobuf size of ClientMessage{header, call} as it would
        be sent now (with the mirror's epoch, "" in EMPTY)."""
        header = 2  # protocol_version = 1: tag and a one-byte varint
        header += _str_field(2, self.epoch or "") + _str_field(3, self.peer_id)
        header += _str_field(4, self.host_id) + _str_field(5, self.capability)
        body = 1 + _varint_len(self.next_call_id)
        body += _str_field(2, c.module) + _str_field(3, c.method) + _str_field(4, c.args_json)
        return _len_field(1, header) + _len_field(2, body)
