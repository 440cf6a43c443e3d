"""Sans-IO core of a cosystem-worker v1 host (spec/PROTOCOL.md).

No sockets and no clock: the driver opens and closes sessions, hands in
decoded ClientMessages, takes HostMessages out per session when its
transport can carry one (`poll_transmit`), and calls `tick` once per
bookmark interval (H10).

Per-session output is a queue of items in the order of the events that
produced them (H4). Publications, OVERFLOW snapshots and sync replies are
rendered only when taken out, from the current state and the history window,
so a session that is behind costs one small item per commit (bounded by the
window, H12) and a result is always preceded by what covers its version (H8).
Bookmarks are not queued: a session marked at a tick is sent one when it has
nothing else to send (H10).
"""
from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from google.protobuf.message import DecodeError

import json_util
from cosystem.worker.v1 import worker_pb2 as pb

MiB = 1024 * 1024
PEER_ID_SIZING = "x" * 64        # §15: size Snapshots and results for peer ids up to 64 bytes
PUBLICATION_OPS_LIMIT = 64 * 1024  # §15: larger operations become one `replace`
MAX_SOURCE_BYTES = 1024          # §2 (peer id), H8: longer sources are left unprocessed


def decode(data: bytes) -> pb.ClientMessage | None:
    """The ClientMessage encoded in `data`, or None if the bytes are not one.

    What to do with undecodable bytes is the transport's choice (H14): the
    state machine never sees them, and the session stays attached."""
    try:
        return pb.ClientMessage.FromString(data)
    except DecodeError:
        return None


class ErrorCode:
    """The error codes a host may send (§3.11, §14)."""
    NOT_FOUND = pb.ERROR_CODE_NOT_FOUND
    INVALID_ARGUMENT = pb.ERROR_CODE_INVALID_ARGUMENT
    FAILED = pb.ERROR_CODE_FAILED
    RESOURCE_EXHAUSTED = pb.ERROR_CODE_RESOURCE_EXHAUSTED
    INTERNAL = pb.ERROR_CODE_INTERNAL
    FAILED_PRECONDITION = pb.ERROR_CODE_FAILED_PRECONDITION
    HOST_CODES = range(1, 9)  # H9: a host sends only codes 1..8


class CallError(Exception):
    """A method's own error (H7.8). `code` should be one of 1..8."""

    def __init__(self, code: int, message: str, details_json: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.details_json = code, message, details_json


class Module:
    """A named unit of state (`state`, the section value, JSON) plus declared
    methods. `internal` holds host-internal data that is never published but
    is rolled back with the state (V4)."""

    def __init__(self, state, internal: dict | None = None) -> None:
        self.state = state
        self.internal = internal or {}
        self.methods: dict[str, Callable[[list], object]] = {}

    def save(self):
        return copy.deepcopy((self.state, self.internal))

    def restore(self, saved) -> None:
        self.state, self.internal = saved


@dataclass
class HostConfig:
    epoch: str
    sync_mode: str = "patch"                      # "patch" (H5) or "snapshot" (H6)
    sections: tuple[str, ...] = ("counter", "todos")
    peer_id: str = "host"
    history_entries: int = 1024                   # §15 history window
    history_bytes: int = 8 * MiB
    max_calls_in_flight: int = 1024               # §15, H7.4
    max_message_size: int = 4 * MiB               # §15
    max_unread_result_bytes: int = 32 * MiB       # §15: 8 x max message size
    max_clients: int = 10_000                     # §15


class Close(NamedTuple):
    """The core's decision to end a session (H7 flooding, H14): the driver
    ends the stream with this status (§17.2) and then calls close_session."""
    status: str       # a grpc.StatusCode name
    detail: str


# ---- per-session queue items -------------------------------------------------

class _Pub(NamedTuple):
    version: int


class _Overflow(NamedTuple):
    pass


class _Reply(NamedTuple):
    sync_id: int
    have_version: int
    resumable: bool       # H2 conditions judged when the request arrived
    target: str


class _Result(NamedTuple):
    message: pb.HostMessage
    size: int


@dataclass
class _Session:
    queue: deque = field(default_factory=deque)
    pending_pubs: deque = field(default_factory=deque)  # versions of queued _Pub items
    attached: bool = False          # H3: its first SyncRequest has been answered (queued)
    sent_version: int = 0           # the newest version taken out for it
    last_source: str = ""           # §3.2, H12: target of an OVERFLOW snapshot
    half_closed: bool = False
    in_flight: int = 0              # §15: calls whose result is not yet handed out
    result_bytes: int = 0           # §15: unread results, encoded bytes
    owed: int = 0                   # queued results and sync replies (H16)
    overflow_pending: bool = False
    snapshot_pending: bool = False
    bookmark_marked: bool = False   # H10: marked at a tick, not yet sent a bookmark


class _HistoryEntry(NamedTuple):
    version: int
    ops_json: str
    size: int


class HostCore:
    """The protocol state machine of one host: its modules, version, history
    window and point-to-point sessions. Not thread-safe: the driver enters
    it from one thread or event loop only, which also serialises commits (V2)."""

    def __init__(self, config: HostConfig, modules: dict[str, Module]) -> None:
        if not config.epoch:
            raise ValueError("E2: the epoch must be non-empty")
        if config.sync_mode not in ("patch", "snapshot"):
            raise ValueError("sync mode must be patch or snapshot")
        self.config = config
        self.modules = modules
        self.sections = tuple(s for s in config.sections if s in modules)
        self.version = 1                                   # V1
        self._history: deque[_HistoryEntry] = deque()
        self._history_size = 0
        self._section_json = {name: json_util.dumps(modules[name].state) for name in self.sections}
        self._view_json: str | None = None
        self._sessions: dict[int, _Session] = {}
        self._next_sid = 1
        self._dirty: set[int] = set()

    # ---- sessions -------------------------------------------------------------

    def open_session(self) -> int | None:
        """A new point-to-point session, or None at the client limit (§15)."""
        if len(self._sessions) >= self.config.max_clients:
            return None
        sid = self._next_sid
        self._next_sid += 1
        self._sessions[sid] = _Session()
        return sid

    def close_session(self, sid: int) -> None:
        """H16: everything queued for it is discarded."""
        self._sessions.pop(sid, None)
        self._dirty.discard(sid)

    def half_close(self, sid: int) -> None:
        """H16, §17.2: the client closed its sending side."""
        self._sessions[sid].half_closed = True
        self._dirty.add(sid)

    def finished(self, sid: int) -> bool:
        """True when a half-closed session has been sent every result and sync
        reply it is owed, so the driver may end it with status OK (H16)."""
        s = self._sessions.get(sid)
        return s is None or (s.half_closed and s.owed == 0)

    def take_dirty(self) -> set[int]:
        """Sessions that may have new output since the last call."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    # ---- input ----------------------------------------------------------------

    def receive(self, sid: int, message: pb.ClientMessage) -> Close | None:
        """Process one envelope from the session. A Close means the session
        is to be ended (H7 flooding); otherwise None."""
        s = self._sessions[sid]
        if len(message.header.source.encode()) > MAX_SOURCE_BYTES:
            # §2 (peer id), H8: a host MAY leave such an envelope unprocessed,
            # since every reply would repeat it as `target`; a Call is then not
            # answered, and the source is not kept for OVERFLOW snapshots.
            return None
        if message.header.source:
            # §3.2: an OVERFLOW snapshot goes to the latest non-empty source of
            # any envelope decoded on the session, whatever its kind or version.
            s.last_source = message.header.source
        kind = message.WhichOneof("kind")
        if kind == "call":
            return self._on_call(sid, s, message)
        if kind == "sync_request":
            self._on_sync(sid, s, message)
        return None  # H13, C2: no known kind: ignored

    def tick(self) -> None:
        """The bookmark interval has elapsed (H10); the driver calls this once
        per interval. Every attached session is marked, whatever it was sent
        since the last tick; a marked session is sent one bookmark once it has
        been sent the current version, unless a publication or sync reply is
        sent to it first, which takes the bookmark's place. So a session that
        keeps up hears from the host at least once per interval."""
        for sid, s in self._sessions.items():
            if s.attached:
                s.bookmark_marked = True
                self._dirty.add(sid)

    # ---- sync requests (H1, H2, H3) -----------------------------------------

    def _on_sync(self, sid: int, s: _Session, message: pb.ClientMessage) -> None:
        header, request = message.header, message.sync_request
        if header.protocol_version != 1:
            return  # H13, C6: ignored, and the session stays unattached
        # H2: judged against the version when the request arrives; E8: a
        # foreign or empty epoch is not fenced, it gets a Snapshot.
        resumable = (header.epoch == self.config.epoch
                     and 0 < request.have_version <= self.version)
        reply = _Reply(request.sync_id, request.have_version, resumable, header.source)
        if not self._supersede_reply(s, reply):
            s.queue.append(reply)
            s.owed += 1
        s.attached = True  # H3: attached once the answer is queued
        self._dirty.add(sid)

    @staticmethod
    def _supersede_reply(s: _Session, reply: _Reply) -> bool:
        """H1 exception: an unsent reply is superseded by the later one, which
        takes its place in the queue (so nothing it covers precedes it, H3)
        unless a result follows it, which a reply must not overtake (H4)."""
        for index in range(len(s.queue) - 1, -1, -1):
            item = s.queue[index]
            if isinstance(item, _Result):
                return False
            if isinstance(item, _Reply):
                s.queue[index] = reply
                return True
        return False

    # ---- calls (H7, H8) ---------------------------------------------------------

    def _on_call(self, sid: int, s: _Session, message: pb.ClientMessage) -> Close | None:
        header, call = message.header, message.call
        limit = self.config.max_calls_in_flight
        unread_limit = self.config.max_unread_result_bytes
        # H7 flooding, §15: at twice either limit the session is closed and
        # the Call neither run nor answered. Refused calls' results count as
        # in flight too, so a client that calls without reading gets here.
        if s.in_flight >= 2 * limit:
            return Close("RESOURCE_EXHAUSTED", "too many calls in flight")
        if s.result_bytes > 2 * unread_limit:
            return Close("RESOURCE_EXHAUSTED", "too many unread results")
        error: tuple[int, str] | None = None
        if header.protocol_version != 1:                                   # H7.1, C6
            error = (ErrorCode.FAILED_PRECONDITION, "unsupported protocol version")
        elif call.call_id == 0:                                            # H7.2
            error = (ErrorCode.INVALID_ARGUMENT, "call_id must be non-zero")
        elif header.epoch and header.epoch != self.config.epoch:          # H7.3, E7
            error = (ErrorCode.FAILED_PRECONDITION, "call from another epoch")
        elif s.in_flight >= limit:                                         # H7.4
            error = (ErrorCode.RESOURCE_EXHAUSTED, "too many calls in flight")
        elif s.result_bytes > unread_limit:                                # §15, after H7.4
            error = (ErrorCode.RESOURCE_EXHAUSTED, "too many unread results")
        if error is None:
            result = self._execute(call)
        else:
            result = pb.CallResult(call_id=call.call_id, state_version=self.version,
                                   error=pb.Error(code=error[0], message=error[1]))
        reply = pb.HostMessage(header=self._header(header.source), result=result)
        size = reply.ByteSize()
        s.queue.append(_Result(reply, size))
        # §15: every queued result counts until it is handed out, refused or not.
        s.in_flight += 1
        s.result_bytes += size
        s.owed += 1
        self._dirty.add(sid)
        return None

    def _execute(self, call: pb.Call) -> pb.CallResult:
        """H7.5-H7.8, then commit per §4."""
        def failure(code: int, text: str, details: str = "") -> pb.CallResult:
            return pb.CallResult(call_id=call.call_id, state_version=self.version,
                                 error=pb.Error(code=code, message=text, details_json=details))

        if call.args_json == "":                       # J4: "" means []
            args = []
        else:
            try:
                args = json_util.loads(call.args_json)
            except json_util.NotJson:                  # J2, J4: includes what we could not publish back
                return failure(ErrorCode.INVALID_ARGUMENT, "args_json is not JSON")
            if not isinstance(args, list):             # H7.5
                return failure(ErrorCode.INVALID_ARGUMENT, "args_json is not a JSON array")
        module = self.modules.get(call.module)
        method = module.methods.get(call.method) if module else None
        if method is None:                             # H7.6, §19.4
            return failure(ErrorCode.NOT_FOUND, f"no method {call.module}.{call.method}"[:1024])

        saved = module.save()
        try:
            value = method(args)
            value_json = json_util.dumps(value)                    # J6
            section_json = json_util.dumps(module.state)           # J6
        except CallError as exc:
            module.restore(saved)
            code = exc.code if exc.code in ErrorCode.HOST_CODES else ErrorCode.INTERNAL  # H9
            return self._bounded_error(call, code, exc.message, exc.details_json)
        except Exception as exc:  # a panic/throw, or unrepresentable JSON (J6)
            module.restore(saved)
            return failure(ErrorCode.INTERNAL, f"method failed: {type(exc).__name__}")

        # §15 / H7.8: a value too large for one CallResult is refused, reverted.
        result = pb.CallResult(call_id=call.call_id, state_version=self.version + 1,
                               value_json=value_json)
        if self._sized(result=result) > self.config.max_message_size:
            module.restore(saved)
            return failure(ErrorCode.RESOURCE_EXHAUSTED, "return value too large for one message")

        if call.module in self.sections and not self._publish(call.module, saved[0], section_json):
            module.restore(saved)
            return failure(ErrorCode.RESOURCE_EXHAUSTED,
                           "the published view would be too large for one Snapshot")
        # V5 / SI4: a change confined to private sections produces no version.
        result.state_version = self.version
        return result

    def _publish(self, name: str, old_state, section_json: str) -> bool:
        """Commit a change of published section `name`, if any (V2, V6).
        False if the view would be too large for one Snapshot (§15, H7.8)."""
        path = "/" + json_util.pointer_token(name)
        ops = json_util.diff(old_state, self.modules[name].state, path)
        if not ops:
            return True  # V6: JSON-equal view, no version
        old_section = self._section_json[name]
        self._section_json[name] = section_json
        view_json = self._render_view()
        section_size = len(section_json.encode())
        # Refused only when the call made the view larger, as the reference does.
        if section_size > len(old_section.encode()) and self._sized(
                snapshot=pb.Snapshot(version=self.version + 1, state_json=view_json,
                                     reason=pb.SNAPSHOT_REASON_SYNC, sync_id=2**64 - 1)
        ) > self.config.max_message_size:
            self._section_json[name] = old_section
            return False
        self._view_json = view_json
        ops_json = json_util.dumps(ops)
        ops_size = len(ops_json.encode())
        if ops_size > PUBLICATION_OPS_LIMIT and ops_size > section_size:
            # §15: a publication whose operations are over 64 KiB and longer
            # than the new section is one `replace` of the whole section.
            ops_json = json_util.dumps([{"op": "replace", "path": path,
                                         "value": self.modules[name].state}])
        self._commit(ops_json)
        return True

    def _bounded_error(self, call: pb.Call, code: int, message: str, details: str) -> pb.CallResult:
        """§15: errors should stay short enough to send; §19.1 asks for the exact
        message, so it is cut only when the result would not fit otherwise."""
        result = pb.CallResult(call_id=call.call_id, state_version=self.version,
                               error=pb.Error(code=code, message=message, details_json=details))
        if self._sized(result=result) > self.config.max_message_size:
            result.error.message = message[:1024] + " [message truncated]"
            result.error.details_json = ""
        return result

    def _sized(self, **kind) -> int:
        return pb.HostMessage(header=self._header(PEER_ID_SIZING), **kind).ByteSize()

    # ---- commits, history, publications (V2, H5, H6, H11, H12) ----------------

    def _commit(self, ops_json: str) -> None:
        self.version += 1                                                  # V2
        factor = 2 if self.config.sync_mode == "patch" else 1             # H11 accounting
        entry = _HistoryEntry(self.version, ops_json, factor * len(ops_json.encode()) + 64)
        self._history.append(entry)
        self._history_size += entry.size
        # H11: bounded in count and bytes; the newest version is always kept.
        while len(self._history) > 1 and (len(self._history) > self.config.history_entries
                                          or self._history_size > self.config.history_bytes):
            self._history_size -= self._history.popleft().size
        for sid, s in self._sessions.items():
            if s.attached:                                                 # H3
                self._enqueue_publication(s)
                self._dirty.add(sid)

    def _enqueue_publication(self, s: _Session) -> None:
        if self.config.sync_mode == "snapshot":
            # H6: a session that is behind may be sent only the newest snapshot;
            # one queued item is rendered at the version current when sent.
            if not s.snapshot_pending:
                s.snapshot_pending = True
                s.queue.append(_Pub(self.version))
            return
        if s.overflow_pending:
            return  # the queued OVERFLOW snapshot will cover this version
        if s.pending_pubs and s.pending_pubs[0] < self._oldest_history_version():
            # H12: a publication the session still needs is no longer kept:
            # drop its unsent publications; an OVERFLOW snapshot takes the
            # place of the first, so it precedes every later result.
            items, s.queue = s.queue, deque()
            for item in items:
                if isinstance(item, _Pub):
                    if not s.overflow_pending:
                        s.queue.append(_Overflow())
                        s.overflow_pending = True
                else:
                    s.queue.append(item)
            s.pending_pubs.clear()
            return
        s.queue.append(_Pub(self.version))
        s.pending_pubs.append(self.version)

    def _oldest_history_version(self) -> int:
        return self._history[0].version if self._history else self.version + 1

    def _history_ops(self, base: int, version: int) -> str | None:
        """PA5: the concatenated operations of (base, version], or None if a
        version is missing from the window (H2)."""
        if base == version:
            return "[]"
        if not self._history or self._history[0].version > base + 1:
            return None
        start = base + 1 - self._history[0].version
        parts = [self._history[i].ops_json[1:-1] for i in range(start, start + version - base)]
        return "[" + ",".join(parts) + "]"

    def _render_view(self) -> str:
        members = (json_util.dumps(name) + ":" + self._section_json[name] for name in self.sections)
        return "{" + ",".join(members) + "}"

    def view_json(self) -> str:
        """The published view (SI1): exactly the published sections."""
        if self._view_json is None:
            self._view_json = self._render_view()
        return self._view_json

    # ---- output -------------------------------------------------------------

    def poll_transmit(self, sid: int) -> pb.HostMessage | None:
        """The next envelope for the session, rendered now; None if none.
        Returning it is handing it to the transport (§2 "sent", §15)."""
        s = self._sessions.get(sid)
        if s is None:
            return None
        while s.queue:
            item = s.queue.popleft()
            message = self._render(s, item)
            if message is not None:
                if not isinstance(item, _Result):
                    s.bookmark_marked = False  # H10: it takes the bookmark's place
                return message
        if s.bookmark_marked and s.sent_version == self.version:
            s.bookmark_marked = False
            return self._patch(self.version, self.version, "[]")             # H10, PA6
        return None

    def _render(self, s: _Session, item) -> pb.HostMessage | None:
        """The envelope for a queue item, built now; None when what the
        session was sent already covers it."""
        if isinstance(item, _Result):
            s.in_flight -= 1
            s.result_bytes -= item.size
            s.owed -= 1
            return item.message
        if isinstance(item, _Reply):
            s.owed -= 1
            return self._render_reply(s, item)
        if isinstance(item, _Overflow):
            s.overflow_pending = False
            return self._snapshot_if_newer(s, pb.SNAPSHOT_REASON_OVERFLOW, s.last_source)
        # _Pub
        if self.config.sync_mode == "snapshot":
            s.snapshot_pending = False
            return self._snapshot_if_newer(s, pb.SNAPSHOT_REASON_COMMIT, "")  # H6
        s.pending_pubs.popleft()
        if item.version <= s.sent_version:
            return None  # already covered by a snapshot or resume reply
        ops_json = self._history_ops(item.version - 1, item.version)
        if ops_json is None:  # H12: no longer kept: OVERFLOW instead
            return self._snapshot_if_newer(s, pb.SNAPSHOT_REASON_OVERFLOW, s.last_source)
        s.sent_version = item.version
        return self._patch(item.version - 1, item.version, ops_json)          # H5

    def _render_reply(self, s: _Session, reply: _Reply) -> pb.HostMessage:
        """H2: built when sent, at the version current then, and publications
        queued for versions it covers are skipped, so the session is sent no
        publication in between. Building replies late is also what H12 asks of
        a host whose OVERFLOW snapshots are built when sent: a reply can never
        be older than a snapshot sent before it."""
        current = self.version
        s.sent_version = current
        if reply.resumable:
            ops_json = self._history_ops(reply.have_version, current)
            if ops_json is not None:
                message = self._patch(reply.have_version, current, ops_json,
                                      reply.sync_id, reply.target)
                if message.ByteSize() <= self.config.max_message_size:
                    return message
        return self._snapshot(pb.SNAPSHOT_REASON_SYNC, reply.target, reply.sync_id)

    def _snapshot_if_newer(self, s: _Session, reason: int, target: str) -> pb.HostMessage | None:
        if self.version <= s.sent_version:
            return None
        s.sent_version = self.version
        return self._snapshot(reason, target)

    def _header(self, target: str) -> pb.Header:
        # §3.2: replies are addressed to the request's source; publications to "".
        return pb.Header(protocol_version=1, epoch=self.config.epoch,
                         source=self.config.peer_id, target=target)

    def _snapshot(self, reason: int, target: str = "", sync_id: int = 0) -> pb.HostMessage:
        return pb.HostMessage(header=self._header(target),
                              snapshot=pb.Snapshot(version=self.version, state_json=self.view_json(),
                                                   sync_id=sync_id, reason=reason))

    def _patch(self, base: int, version: int, ops_json: str, sync_id: int = 0,
               target: str = "") -> pb.HostMessage:
        return pb.HostMessage(header=self._header(target),
                              patch=pb.Patch(base_version=base, version=version,
                                             patch_json=ops_json, sync_id=sync_id))
