//! The host interop cases: what each checks (the table that
//! spec/CONFORMANCE.md's host interop catalogue is generated from) and how.
//!
//! The host under test keeps one state for the whole run, and every case
//! changes it, so each case reads the state it starts from and asserts
//! relative to it. The runner must be the host's only client during a run:
//! a case counts on the versions it alone produces.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cosystem_worker::wire::{
    Call, CallResult, ClientMessage, ErrorCode, Header, HostMessage, SyncReason, SyncRequest,
    call_result, client_message, host_message,
};
use prost::Message;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tonic::Code;

use super::peer::{Peer, Read, Shared, Transport, describe, is_bookmark, is_empty_array};
use crate::vectors::Tier;
use crate::vectors::matcher::{describe_difference, json_eq};

/// What a host interop case checks, for the report and the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct HostCaseDef {
    /// Stable kebab-case name.
    pub name: &'static str,
    /// Required or recommended.
    pub tier: Tier,
    /// The one transport the case runs over, if it needs a particular one
    /// (`None`: every transport).
    pub only: Option<Transport>,
    /// Requirement ids of spec/PROTOCOL.md.
    pub spec: &'static [&'static str],
    /// One line saying what the case checks.
    pub description: &'static str,
    /// What the runner does, step by step.
    pub procedure: &'static [&'static str],
    /// What the host must have done.
    pub asserts: &'static [&'static str],
}

impl HostCaseDef {
    /// Whether the case runs over `transport`.
    pub fn runs_over(&self, transport: Transport) -> bool {
        self.only.is_none_or(|only| only == transport)
    }
}

/// An epoch no host uses: the runner's stand-in for "another host's".
pub const OTHER_EPOCH: &str = "conformance-other-epoch";

/// Bytes that do not decode as a `ClientMessage` (an unterminated varint).
pub const UNDECODABLE: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, 0x0f];

/// Why a case stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The host did something wrong (or nothing at all).
    Fail(String),
    /// The case does not apply to the run's configuration.
    Skip(String),
}

impl From<String> for Stop {
    fn from(reason: String) -> Self {
        Stop::Fail(reason)
    }
}

impl From<&str> for Stop {
    fn from(reason: &str) -> Self {
        Stop::Fail(reason.to_owned())
    }
}

/// Settings some cases depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaseOptions {
    /// The host's history window in versions (H11), for the case that
    /// outruns it.
    pub history_window: u64,
    /// The host's max message size (§15), its frame limit on framed
    /// streams (FB3), for the case that sends a length just over it.
    pub max_message_size: u32,
    /// How long a framed host may take to close a connection that sends no
    /// first envelope (FB6).
    pub first_frame_wait: Duration,
    /// The host's bookmark interval (H10, §15), for the case that waits
    /// for a bookmark.
    pub bookmark_interval: Duration,
}

impl Default for CaseOptions {
    fn default() -> Self {
        Self {
            history_window: 1024,
            max_message_size: 4 * MIB,
            first_frame_wait: Duration::from_secs(30),
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

/// One mebibyte: §15's smallest max message size allowed.
const MIB: u32 = 1024 * 1024;

use Tier::{Recommended, Required};

/// Every host interop case, in the order they run.
pub const CASES: &[HostCaseDef] = &[
    HostCaseDef {
        name: "grpc-initial-sync-gets-snapshot",
        tier: Required,
        only: None,
        spec: &["H1", "H2", "V1", "SI1", "§19"],
        description: "A first SyncRequest (have_version 0) is answered with a SYNC snapshot whose view has exactly the published sections.",
        procedure: &[
            "Open stream A and send SyncRequest{have_version=0, INITIAL} with an empty header epoch.",
        ],
        asserts: &[
            "A's first envelope is Snapshot{reason=SYNC} echoing the sync_id, version ≥ 1, protocol_version 1, a non-empty epoch.",
            "state_json is a JSON object with exactly the members `counter` and `todos`: `counter` is `{\"count\": <integer>}`, `todos` is `{\"items\": [...]}` whose items have an integer `id`, a string `text` and a boolean `done`.",
        ],
    },
    HostCaseDef {
        name: "grpc-no-publications-before-first-sync",
        tier: Required,
        only: None,
        spec: &["H3"],
        description: "A stream that has not asked to sync receives no publication; its first envelope is its sync reply.",
        procedure: &[
            "Attach stream A; open stream C without sending anything.",
            "A calls `counter.increase(1)` and reads its result (version S).",
            "C sends SyncRequest{have_version=0}.",
        ],
        asserts: &["C's first envelope is its sync reply, at version ≥ S."],
    },
    HostCaseDef {
        name: "grpc-versions-are-contiguous",
        tier: Required,
        only: None,
        spec: &["V2", "H4", "H5", "H6", "H8"],
        description: "A burst of pipelined commits produces one new version each, published in order with base = version − 1.",
        procedure: &[
            "Attach stream A (version v, count c).",
            "A sends 15 `counter.increase(1)` calls without waiting (under §15's minimum in-flight limit of 16), then reads every result.",
        ],
        asserts: &[
            "The results' state_versions are exactly v+1 … v+15.",
            "A's publications are contiguous: each live patch has base = the version last shown and version = base + 1; in snapshot mode each snapshot is newer than the last.",
            "A reaches version v+15 and its view shows count c+15.",
        ],
    },
    HostCaseDef {
        name: "grpc-results-follow-their-publication",
        tier: Required,
        only: None,
        spec: &["H8", "RW1", "§3.8"],
        description: "Every result carries a state_version and reaches the caller only, never before the publication of that version.",
        procedure: &[
            "Attach streams A and B.",
            "A sends ten calls without waiting: increases, adds, `counter.fail`, `counter.increase(0)` and an unknown method; then reads every result.",
            "B reads until it is shown A's highest state_version.",
        ],
        asserts: &[
            "A receives exactly one result per call, each with exactly one of value and error, and a state_version ≥ 1 that A had already been shown when the result arrived.",
            "B receives no result.",
        ],
    },
    HostCaseDef {
        name: "grpc-sync-reply-only-to-requester",
        tier: Required,
        only: None,
        spec: &["H1"],
        description: "A sync request is answered with a snapshot on the requesting stream only.",
        procedure: &[
            "Attach streams A and B at the same version v.",
            "A sends SyncRequest{have_version=0} again and reads its reply.",
            "A calls `counter.increase(1)` (version v+1); B reads until it is shown v+1.",
        ],
        asserts: &[
            "A receives one reply: Snapshot{reason=SYNC, version=v} carrying its sync_id.",
            "Meanwhile B receives only the publication of v+1 (and possibly bookmarks): no sync reply, no result.",
        ],
    },
    HostCaseDef {
        name: "grpc-resume-at-current-version-is-bookmark",
        tier: Required,
        only: None,
        spec: &["H2", "PA6"],
        description: "A SyncRequest of the host's epoch whose have_version is the current version is answered with an empty patch at that version.",
        procedure: &[
            "Attach stream A (version v); A sends SyncRequest{epoch=the host's, have_version=v}.",
        ],
        asserts: &["The reply is Patch{base_version=v, version=v, patch_json=[], sync_id echoed}."],
    },
    HostCaseDef {
        name: "grpc-resume-reaches-current-view",
        tier: Required,
        only: None,
        spec: &["H2", "PA5"],
        description: "A resume request within the epoch is answered with a patch that rebuilds the current view from have_version, or with a snapshot of it.",
        procedure: &[
            "Attach stream A (version v, view W).",
            "A makes three commits: `counter.increase(1)`, `todos.add`, `todos.toggle` of the new item (version v+3).",
            "Stream C sends SyncRequest{epoch=the host's, have_version=v}.",
        ],
        asserts: &[
            "The reply is Patch{base_version=v, version=v+3} whose operations turn W into A's view, or Snapshot{reason=SYNC, version=v+3} of that view.",
        ],
    },
    HostCaseDef {
        name: "grpc-resume-inside-window-is-patch",
        tier: Recommended,
        only: None,
        spec: &["H2", "H11"],
        description: "A resume from a version a few commits back is answered with a patch (it depends on the host keeping a history window).",
        procedure: &[
            "As grpc-resume-reaches-current-view: A at v makes three commits; C resumes from v.",
        ],
        asserts: &["The reply is a Patch from v to v+3 (not a snapshot)."],
    },
    HostCaseDef {
        name: "grpc-sync-from-other-epoch-gets-snapshot",
        tier: Required,
        only: None,
        spec: &["E8", "H2"],
        description: "A SyncRequest naming another epoch, or none, is not fenced: it is answered with a snapshot of the host's epoch, even when its version is the host's.",
        procedure: &[
            "Attach stream A (version v).",
            "Stream C sends SyncRequest{epoch=\"conformance-other-epoch\", have_version=1}.",
            "Stream D sends SyncRequest{epoch=\"\", have_version=v}.",
        ],
        asserts: &[
            "Each reply is Snapshot{reason=SYNC, version=v} in the host's epoch, with A's view.",
        ],
    },
    HostCaseDef {
        name: "grpc-sync-ahead-of-host-gets-snapshot",
        tier: Required,
        only: None,
        spec: &["H2"],
        description: "A SyncRequest whose have_version is above the host's version is answered with a snapshot.",
        procedure: &[
            "Attach stream A (version v).",
            "Stream C sends SyncRequest{epoch=the host's, have_version=v+1000}.",
        ],
        asserts: &["The reply is Snapshot{reason=SYNC, version=v} with A's view."],
    },
    HostCaseDef {
        name: "grpc-resume-across-the-window-edge-reaches-current-view",
        tier: Required,
        only: None,
        spec: &["H2", "PA5"],
        description: "Resumes from just outside and just inside the history window are answered with a Snapshot or a resume Patch, whichever the host's window allows, that brings the stream to the host's current view: a host that builds a resume Patch from a history missing its first versions fails here, whatever its window.",
        procedure: &[
            "Attach stream A (version v, view W).",
            "A makes window + 1 commits (`todos.add(\"edge N\")`, 15 in flight at a time, under §15's minimum in-flight limit; the window is --history-window, default 1024), noting the view W' after the first.",
            "Stream C sends SyncRequest{epoch=the host's, have_version=v} (its base W); stream D sends SyncRequest{have_version=v+1} (its base W').",
            "A calls `todos.clear()`.",
        ],
        asserts: &["C and D each reach A's version and view, whatever form their replies take."],
    },
    HostCaseDef {
        name: "grpc-resume-over-the-message-size-is-a-snapshot",
        tier: Required,
        only: None,
        spec: &["H2", "§15"],
        description: "A resume whose Patch would be over the max message size is answered with a Snapshot, though the view is small: a host that sends such a Patch ends the session, and every later resume from there would end it again.",
        procedure: &[
            "Attach stream A (version v, view W).",
            "A makes 10 commits, `todos.add(T)` and `todos.clear()` in turn, where T is a quarter of --max-message-size long (default 4 194 304): the operations since v come to more than the max message size, while the view stays small.",
            "Stream C sends SyncRequest{epoch=the host's, have_version=v} (its base W).",
        ],
        asserts: &[
            "C's reply is a Snapshot, and C reaches A's version and view.",
            "No envelope is over the max message size (as in every case).",
        ],
    },
    HostCaseDef {
        name: "grpc-sync-outside-history-gets-snapshot",
        tier: Recommended,
        only: None,
        spec: &["H2", "H11"],
        description: "A resume from a version whose successors have left the history window is answered with a snapshot.",
        procedure: &[
            "Attach stream A (version v, view W).",
            "A makes window + 1 commits (`counter.increase(1)`, 15 in flight at a time, under §15's minimum in-flight limit; the window is --history-window, default 1024).",
            "Stream C sends SyncRequest{epoch=the host's, have_version=v}.",
        ],
        asserts: &["The reply is Snapshot{reason=SYNC} at A's version, with A's view."],
    },
    HostCaseDef {
        name: "grpc-unknown-module-or-method-is-not-found",
        tier: Required,
        only: None,
        spec: &["H7", "§19.4"],
        description: "Calls to a module that does not exist, or to a method a module does not declare, are answered NOT_FOUND and commit nothing.",
        procedure: &[
            "Attach streams A and B (version v).",
            "A calls `nosuch.increase(1)`, `counter.nosuch(1)` and `secret.increase(1)`.",
            "A calls `counter.increase(1)`.",
        ],
        asserts: &[
            "Each of the first three is answered NOT_FOUND with state_version v.",
            "The last is answered with state_version v+1, which B is shown: nothing else was committed.",
        ],
    },
    HostCaseDef {
        name: "grpc-invalid-arguments-are-invalid",
        tier: Required,
        only: None,
        spec: &["J2", "J4", "H7", "§19"],
        description: "Arguments that are not a JSON array, or of the wrong arity, type or range, or holding an escaped lone surrogate, are answered INVALID_ARGUMENT and commit nothing.",
        procedure: &[
            "Attach stream A (version v, view W).",
            "A calls `counter.increase` with args_json `not json`, `{}`, `[]`, `[1,2]`, `[\"1\"]`, `[1.5]`, `[true]`, `[1.0]`, `[1e0]`, `[-0]` and ` ` (one space); `counter.decrease` with `[9223372036854775808]`; `todos.add` with `[]`; `todos.add_many` with `[[\"a\",1]]`; `todos.add` with `[\"\\ud800\"]` (an escaped lone surrogate).",
            "A calls `counter.increase(1)`.",
        ],
        asserts: &[
            "Each of the fifteen is answered INVALID_ARGUMENT with state_version v.",
            "The last is answered with state_version v+1 and the view is W with the count one higher.",
        ],
    },
    HostCaseDef {
        name: "grpc-method-failure-is-failed",
        tier: Required,
        only: None,
        spec: &["V4", "H7", "§19.1"],
        description: "counter.fail answers FAILED with exactly the given message and leaves the state unchanged.",
        procedure: &[
            "Attach stream A (version v, view W).",
            "A calls `counter.fail(\"conformance failure 7\")`, then `counter.increase(1)`.",
        ],
        asserts: &[
            "The first is answered FAILED, message exactly `conformance failure 7`, no details, state_version v.",
            "The second is answered with state_version v+1 and the view is W with the count one higher.",
        ],
    },
    HostCaseDef {
        name: "grpc-call-from-other-epoch-is-fenced",
        tier: Required,
        only: None,
        spec: &["E7", "H7"],
        description: "A call whose header names another epoch is answered FAILED_PRECONDITION and never executed; one whose header epoch is empty is not fenced.",
        procedure: &[
            "Attach stream A (version v, count c).",
            "A sends `counter.increase(1)` with header epoch `conformance-other-epoch`, then `counter.increase(1)` with an empty header epoch, then `counter.increase(1)` with the host's epoch.",
        ],
        asserts: &[
            "The first is answered FAILED_PRECONDITION with state_version v.",
            "The second is answered with state_version v+1; the third with v+2, and the count is c+2: the fenced call never ran.",
        ],
    },
    HostCaseDef {
        name: "grpc-call-id-zero-is-invalid",
        tier: Required,
        only: None,
        spec: &["H7"],
        description: "A call with call_id 0 is answered INVALID_ARGUMENT with call_id 0 and is not executed.",
        procedure: &[
            "Attach stream A (version v).",
            "A sends `counter.increase(1)` with call_id 0, then `counter.increase(1)` with a fresh id.",
        ],
        asserts: &[
            "The first is answered INVALID_ARGUMENT with call_id 0 and state_version v.",
            "The second is answered with state_version v+1.",
        ],
    },
    HostCaseDef {
        name: "grpc-call-checks-apply-in-order",
        tier: Required,
        only: None,
        spec: &["H7"],
        description: "When a call fails several of H7's checks, the first in H7's order decides the answer: call_id 0 before the epoch fence, the fence before the arguments, the arguments before the method lookup.",
        procedure: &[
            "Attach stream A (version v, count c).",
            "A sends `counter.increase(1)` with call_id 0 and header epoch `conformance-other-epoch`.",
            "A sends `counter.increase` with a fresh id, header epoch `conformance-other-epoch` and args_json `{}`.",
            "A sends `nosuchmodule.nosuchmethod` with a fresh id, the host's epoch and args_json `{}`.",
            "A calls `counter.increase(1)`.",
        ],
        asserts: &[
            "The three are answered INVALID_ARGUMENT (call_id 0), FAILED_PRECONDITION and INVALID_ARGUMENT respectively, each with state_version v.",
            "The last is answered with state_version v+1 and the count is c+1: none of the three ran.",
        ],
    },
    HostCaseDef {
        name: "grpc-envelopes-without-a-known-kind-are-ignored",
        tier: Required,
        only: None,
        spec: &["C1", "C2", "H13"],
        description: "Envelopes a later revision might send are read as v1 allows: one with no kind, or with only a kind this version does not know, is ignored without an answer and the session goes on; a Call carrying fields this version does not know is answered as if they were absent.",
        procedure: &[
            "Attach stream A (version v, count c).",
            "A sends an envelope with a header and no kind, then one whose only kind is field 15 (a length-delimited field no v1 kind has) and whose header also carries an unknown field 15.",
            "A sends `counter.increase(1)` with an unknown field 15 in the Call and another in the envelope.",
            "A calls `counter.increase(1)`.",
        ],
        asserts: &[
            "A receives no result for the first two envelopes, and its session is not closed.",
            "The two calls are answered with state_version v+1 and v+2, and the count is c+2.",
        ],
    },
    HostCaseDef {
        name: "grpc-other-protocol-versions-are-refused-or-ignored",
        tier: Required,
        only: None,
        spec: &["H7", "H7.1", "H13", "C6", "§3.2"],
        description: "A Call of another protocol version, or with no header at all (version 0), is answered FAILED_PRECONDITION in a v1 envelope and not executed; a SyncRequest of another version is ignored.",
        procedure: &[
            "Attach stream A (version v, count c).",
            "A sends `counter.increase(1)` with header protocol_version 2, then `counter.increase(1)` with no header.",
            "A sends SyncRequest{have_version=0} with header protocol_version 2.",
            "A calls `counter.increase(1)`.",
        ],
        asserts: &[
            "The first two are answered FAILED_PRECONDITION with their call ids and state_version v, in envelopes of protocol_version 1.",
            "Nothing answers the SyncRequest.",
            "The last call is answered with state_version v+1 and the count is c+1: neither refused call ran.",
        ],
    },
    HostCaseDef {
        name: "grpc-no-version-without-published-change",
        tier: Required,
        only: None,
        spec: &["V6", "§19"],
        description: "Calls that leave the published view unchanged commit no version; their results carry the current version.",
        procedure: &[
            "Attach stream A (version v).",
            "A calls `counter.increase(0)` and `todos.add_many([])`, then `counter.increase(1)`.",
        ],
        asserts: &[
            "The first two succeed (the count, `[]`) with state_version v.",
            "The last is answered with state_version v+1.",
        ],
    },
    HostCaseDef {
        name: "grpc-add-many-is-one-version",
        tier: Required,
        only: None,
        spec: &["V3", "§19.2"],
        description: "todos.add_many commits all its items as one version, returning their ids in order; ids are never reused, not even after remove or clear.",
        procedure: &[
            "Attach streams A and B at version v; B has n items.",
            "A calls `todos.add_many([\"x\", \"y\", \"z\"])`.",
            "A calls `todos.remove` of z's id, then `todos.add(\"w\")`; then `todos.clear()` and `todos.add(\"w\")`; then `todos.clear()`.",
        ],
        asserts: &[
            "The result is an array of three strictly increasing integer ids, state_version v+1.",
            "B receives exactly one publication for it, at v+1, after which its view has n+3 items ending with `{id, text: x|y|z, done: false}` in order.",
            "Each `todos.add` returns an id larger than every id returned before it.",
        ],
    },
    HostCaseDef {
        name: "grpc-integers-are-kept-exactly",
        tier: Required,
        only: None,
        spec: &["J7", "J8", "J10", "§19.1"],
        description: "Counts across the whole signed 64-bit range, including integers binary64 cannot hold, come back in results and in publications exactly and written as integers.",
        procedure: &[
            "Attach streams A and B; the count is c.",
            "A moves the count to 2^53+1, 2^63−1, −(2^53+1), −2^63, 0 and back to c with `counter.increase` and `counter.decrease`, one call per move; a move beyond the range of one argument goes through 0 with `decrease(count)`, which for −2^63 is `decrease(−2^63)`.",
        ],
        asserts: &[
            "Each call returns the new count exactly, written as an integer (no fraction part, no exponent), with a state_version one above the last.",
            "After each call, the count in the view A and B were shown is that integer, exactly and written as an integer.",
        ],
    },
    HostCaseDef {
        name: "grpc-private-section-never-sent",
        tier: Required,
        only: None,
        spec: &["SI2", "SI4", "V5", "J5", "§19.3"],
        description: "The private secret section never reaches a client, and rotating it commits no version (needs --secret-marker).",
        procedure: &[
            "Attach streams A and B (version v).",
            "A calls `secret.rotate()` twice, then `counter.increase(1)`; B reads until it is shown that version.",
        ],
        asserts: &[
            "Both rotations succeed with value null and state_version v; the increase gets v+1.",
            "No view ever has a `secret` member, and no byte received on any stream of the whole run (this case's and every earlier one's) contains the secret marker.",
        ],
    },
    HostCaseDef {
        name: "grpc-malformed-message-disturbs-no-one",
        tier: Required,
        only: None,
        spec: &["H14", "G7", "FB5"],
        description: "Undecodable bytes on one stream do not disturb other clients: their calls keep working and they keep receiving publications.",
        procedure: &[
            "Attach streams A, B and M (version v).",
            "M sends the bytes `ff ff ff ff ff 0f`, which are not a ClientMessage.",
            "A calls `counter.increase(1)`; B reads until it is shown that version; B calls `todos.add`; A reads until it is shown that version.",
        ],
        asserts: &[
            "A's call is answered with state_version v+1 and B's with v+2; each stream is shown both versions.",
            "M receives no result, only (at most) publications, bookmarks and the end of its stream: the host may close it.",
            "On gRPC, M's stream ends INVALID_ARGUMENT if the host closed it for the bytes, else OK after M's half-close (G2), or stays open (H16 lets the host keep a half-closed session it owes nothing). On framed streams the bytes are one malformed frame: the host may close M's connection, or keep it open even after M's end of input (FB5, H16). The runner reads M for one step timeout.",
        ],
    },
    HostCaseDef {
        name: "grpc-concurrent-clients-converge",
        tier: Required,
        only: None,
        spec: &["V2", "H4", "H5", "H6", "H8"],
        description: "Several streams calling concurrently all end with the same view and version as the host's latest publication.",
        procedure: &[
            "Attach four streams (the latest version v).",
            "Concurrently, each sends 15 calls without waiting (alternately `counter.increase(1)` and `todos.add`) and reads its results.",
            "Each stream reads until it is shown the highest state_version of all; then stream F attaches.",
        ],
        asserts: &[
            "The 60 results carry 60 distinct state_versions, exactly v+1 … v+60.",
            "All four streams are shown version v+60 with the same view, which is also the view F's snapshot shows at v+60.",
        ],
    },
    HostCaseDef {
        name: "grpc-half-closed-stream-is-answered",
        tier: Recommended,
        only: None,
        spec: &["H8", "H16", "G2", "FB6"],
        description: "A client that closes its sending side (a gRPC half-close; on a framed stream, the end of its input) right after sending calls is still sent every result, then the stream ends cleanly.",
        procedure: &[
            "Attach stream A.",
            "A sends 15 `counter.increase(1)` calls without waiting (the most a case keeps in flight), then closes its sending side (gRPC: half-close; framed: shuts down its write side).",
            "A reads until its stream ends.",
        ],
        asserts: &[
            "A receives exactly one result per call, each after the publication of its version.",
            "A's stream then ends, within the runner's step timeout of the last result (envelopes sent meanwhile do not extend it), with status OK (gRPC) or the host closes the connection (framed streams; a reset counts as a close).",
        ],
    },
    HostCaseDef {
        name: "grpc-quiet-session-is-sent-a-bookmark",
        tier: Recommended,
        only: None,
        spec: &["H10"],
        description: "A session that has been sent the current version and nothing since is sent a bookmark, so that a client that lost a publication can tell (the runner waits twice --bookmark-interval-ms, default 5000, the reference's interval, since a host that looks for quiet sessions once per interval may find one only at its second look, and one step timeout's grace).",
        procedure: &[
            "Attach stream A, and change nothing.",
            "A reads for twice the bookmark interval and a step timeout.",
        ],
        asserts: &[
            "A is sent `Patch{base_version=v, version=v, patch_json=\"[]\", sync_id=0}`, where v is the version A was shown, and nothing else first.",
        ],
    },
    HostCaseDef {
        name: "grpc-unauthenticated-without-token",
        tier: Required,
        only: Some(Transport::Grpc),
        spec: &["G4", "G5", "G7"],
        description: "A host configured with a token ends streams without it, or with another, with UNAUTHENTICATED before sending anything, response headers included (needs --token-file).",
        procedure: &[
            "Open a stream without authorization metadata and send SyncRequest{have_version=0}.",
            "Open a stream with `authorization: Bearer conformance-wrong-token` and do the same.",
            "Open a stream with two `authorization` entries, each `Bearer <the token>`, and do the same.",
            "Open a stream with `authorization: bearer <the token>` and attach it.",
        ],
        asserts: &[
            "Each of the first three streams ends with status UNAUTHENTICATED, is sent no response headers (the status is the whole response) and receives no envelope.",
            "The fourth is answered as any stream with the token is: the scheme name is case-insensitive.",
        ],
    },
    HostCaseDef {
        name: "grpc-response-headers-before-the-first-message",
        tier: Recommended,
        only: Some(Transport::Grpc),
        spec: &["G4"],
        description: "A host sends its response headers as soon as it accepts a stream, before the client's first envelope, so that a client that waits for them before sending is not left waiting for ever (many gRPC stacks send them only with the first message unless told otherwise).",
        procedure: &[
            "Open stream A and send nothing.",
            "Once its headers have arrived, A sends SyncRequest{have_version=0}.",
        ],
        asserts: &[
            "A's response headers arrive within the runner's step timeout, before A has sent anything.",
            "A is then answered with a SYNC snapshot, as usual.",
        ],
    },
    HostCaseDef {
        name: "grpc-view-too-large-for-a-snapshot-is-refused",
        tier: Recommended,
        only: None,
        spec: &["§15"],
        description: "A call whose commit would make the published view too large to send as one Snapshot is answered RESOURCE_EXHAUSTED and commits nothing, while one whose view still fits is taken (the runner adds 512 KiB texts until one is refused; it needs the host's max message size, `--max-message-size`).",
        procedure: &[
            "Attach stream A (version v).",
            "A calls `todos.add(t)` with a 512 KiB text t, again and again, until a call is refused or the view A mirrors is over the max message size M.",
            "Stream B attaches; then A calls `todos.clear()` and B reads until it is shown that version.",
        ],
        asserts: &[
            "Each accepted call is answered with the next version, and the view it makes is at most M bytes of JSON; no call is refused whose view would be more than 16 KiB under M; the refused one is answered RESOURCE_EXHAUSTED with the version of the last accepted call, and no publication follows it.",
            "B's snapshot, sent after the refusal, shows the same view as A at that version.",
            "`todos.clear()` succeeds with the next version, shown to both streams.",
        ],
    },
    HostCaseDef {
        name: "grpc-messages-up-to-the-limit-are-accepted",
        tier: Required,
        only: None,
        spec: &["§15", "G3", "FB3"],
        description: "A Call envelope of exactly 1 MiB (the smallest max message size §15 allows, so every host accepts it) and one of exactly the host's max message size (--max-message-size, default 4 MiB) are each read and answered: the limit includes its own size.",
        procedure: &[
            "Attach stream A (version v).",
            "A calls `counter.increase(1)` with `args_json` `[1` + spaces + `]`, padded so that the encoded ClientMessage is exactly 1 048 576 bytes, and reads the result.",
            "A does the same with a ClientMessage of exactly the host's max message size.",
        ],
        asserts: &[
            "Each call is answered with value `count + 1` and the next state_version, which A is shown.",
        ],
    },
    HostCaseDef {
        name: "framed-empty-frames-are-ignored",
        tier: Required,
        only: Some(Transport::Framed),
        spec: &["FB1", "FB2", "H13"],
        description: "Empty frames (length 0) before and between envelopes are read and ignored: nothing answers them, and the session goes on as if they had not been sent.",
        procedure: &[
            "Open connection A and write two empty frames (`00 00 00 00` twice), then SyncRequest{have_version=0}.",
            "A writes one more empty frame, then calls `counter.increase(1)`.",
        ],
        asserts: &[
            "A's first envelope is its SYNC snapshot (version v).",
            "The call is answered with state_version v+1 and A is shown v+1; no result answers anything but the call.",
        ],
    },
    HostCaseDef {
        name: "framed-oversize-frame-closes-only-that-connection",
        tier: Required,
        only: Some(Transport::Framed),
        spec: &["FB3", "FB4", "H14"],
        description: "A length prefix over the host's frame limit makes the host close that connection without waiting for the body, and nothing else is disturbed (the limit is --max-message-size, default 4 MiB, §15's default).",
        procedure: &[
            "Attach connections A, M and N (version v).",
            "M writes a length prefix of the host's limit + 1, N one of `ff ff ff ff` (4 GiB − 1); each then writes 1 KiB of zeros and nothing more.",
            "A calls `counter.increase(1)`.",
        ],
        asserts: &[
            "The host closes M's and N's connections within the runner's step timeout of each prefix (envelopes sent meanwhile, bookmarks included, do not extend it), having sent them no result and nothing but frames.",
            "A's call is answered with state_version v+1 and A is shown v+1.",
        ],
    },
    HostCaseDef {
        name: "framed-connection-without-a-first-envelope-is-closed",
        tier: Recommended,
        only: Some(Transport::Framed),
        spec: &["FB2", "FB6"],
        description: "A connection that never completes a non-empty first frame is closed within a deadline of its acceptance, however it trickles bytes (the runner waits --first-frame-wait-ms, default 30 s, FB6's bound; the reference's deadline is 10 s by default).",
        procedure: &[
            "Open connection S and attach it (SyncRequest{have 0}, read the reply).",
            "Open connections E and U.",
            "Once a second, E writes an empty frame (`00 00 00 00`), and U one more byte of a frame whose length prefix says 256 bytes and which it never finishes.",
            "Once both are closed, S sends SyncRequest{have: its version}.",
        ],
        asserts: &[
            "The host closes E and U within the wait (and the step timeout as grace), having sent them nothing.",
            "S, which sent its first envelope at once and then idled past the deadline, is still served: its request is answered.",
        ],
    },
];

/// The definition of the case named `name`.
pub fn find(name: &str) -> Option<&'static HostCaseDef> {
    CASES.iter().find(|c| c.name == name)
}

/// Runs the case named `name` against the host behind `run`.
pub async fn run_case(name: &str, run: &Arc<Shared>, options: CaseOptions) -> Result<(), Stop> {
    match name {
        "grpc-initial-sync-gets-snapshot" => initial_sync(run).await,
        "grpc-no-publications-before-first-sync" => no_publications_before_sync(run).await,
        "grpc-versions-are-contiguous" => contiguous(run).await,
        "grpc-results-follow-their-publication" => results_follow(run).await,
        "grpc-sync-reply-only-to-requester" => sync_only_to_requester(run).await,
        "grpc-resume-at-current-version-is-bookmark" => resume_bookmark(run).await,
        "grpc-resume-reaches-current-view" => resume(run, false).await,
        "grpc-resume-inside-window-is-patch" => resume(run, true).await,
        "grpc-sync-from-other-epoch-gets-snapshot" => snapshot_reply(run, true).await,
        "grpc-sync-ahead-of-host-gets-snapshot" => snapshot_reply(run, false).await,
        "grpc-sync-outside-history-gets-snapshot" => outside_window(run, options).await,
        "grpc-resume-over-the-message-size-is-a-snapshot" => oversize_resume(run, options).await,
        "grpc-resume-across-the-window-edge-reaches-current-view" => {
            window_edge(run, options).await
        }
        "grpc-unknown-module-or-method-is-not-found" => not_found(run).await,
        "grpc-invalid-arguments-are-invalid" => invalid_arguments(run).await,
        "grpc-method-failure-is-failed" => method_failure(run).await,
        "grpc-call-from-other-epoch-is-fenced" => fencing(run).await,
        "grpc-call-id-zero-is-invalid" => call_id_zero(run).await,
        "grpc-call-checks-apply-in-order" => checks_in_order(run).await,
        "grpc-envelopes-without-a-known-kind-are-ignored" => unknown_kinds(run).await,
        "grpc-other-protocol-versions-are-refused-or-ignored" => other_versions(run).await,
        "grpc-no-version-without-published-change" => no_version(run).await,
        "grpc-add-many-is-one-version" => add_many(run).await,
        "grpc-integers-are-kept-exactly" => exact_integers(run).await,
        "grpc-private-section-never-sent" => private_section(run).await,
        "grpc-malformed-message-disturbs-no-one" => malformed(run).await,
        "grpc-concurrent-clients-converge" => converge(run).await,
        "grpc-half-closed-stream-is-answered" => half_closed(run).await,
        "grpc-quiet-session-is-sent-a-bookmark" => quiet_bookmark(run, options).await,
        "grpc-unauthenticated-without-token" => unauthenticated(run).await,
        "grpc-response-headers-before-the-first-message" => headers_first(run).await,
        "grpc-view-too-large-for-a-snapshot-is-refused" => view_too_large(run, &options).await,
        "framed-empty-frames-are-ignored" => empty_frames(run).await,
        "framed-oversize-frame-closes-only-that-connection" => oversize_frame(run, options).await,
        "grpc-messages-up-to-the-limit-are-accepted" => limit_sized(run, options).await,
        "framed-connection-without-a-first-envelope-is-closed" => {
            no_first_envelope(run, options).await
        }
        other => Err(Stop::Fail(format!("no implementation for case {other}"))),
    }
}

// ------------------------------------------------------------- helpers

async fn attached(run: &Arc<Shared>, name: &str) -> Result<Peer, String> {
    let mut peer = Peer::open(run, name).await?;
    peer.attach().await?;
    Ok(peer)
}

fn view_of(peer: &Peer) -> Result<Value, String> {
    peer.view()
        .cloned()
        .ok_or_else(|| format!("stream {} has no view", peer.name))
}

fn version_of(peer: &Peer) -> Result<u64, String> {
    peer.version()
        .ok_or_else(|| format!("stream {} has no version", peer.name))
}

fn count_of(view: &Value) -> Result<i64, String> {
    view.pointer("/counter/count")
        .and_then(Value::as_i64)
        .ok_or_else(|| format!("the view has no integer /counter/count: {view}"))
}

fn items_of(view: &Value) -> Result<&Vec<Value>, String> {
    view.pointer("/todos/items")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("the view has no array /todos/items: {view}"))
}

fn what(r: &CallResult) -> String {
    describe(&HostMessage {
        header: None,
        kind: Some(host_message::Kind::Result(r.clone())),
    })
}

fn ok_value(r: &CallResult, call: &str) -> Result<Value, String> {
    match &r.outcome {
        Some(call_result::Outcome::ValueJson(v)) => {
            serde_json::from_str(v).map_err(|e| format!("{call}: value_json is not JSON: {e}"))
        }
        _ => Err(format!("{call}: expected a value, got {}", what(r))),
    }
}

fn expect_error(
    r: &CallResult,
    call: &str,
    code: ErrorCode,
    state_version: u64,
) -> Result<(), String> {
    match &r.outcome {
        Some(call_result::Outcome::Error(e)) if e.code == code as i32 => {}
        _ => {
            return Err(format!(
                "{call}: expected error {}, got {}",
                code.kebab_name(),
                what(r)
            ));
        }
    }
    expect_version(r, call, state_version)
}

fn expect_version(r: &CallResult, call: &str, state_version: u64) -> Result<(), String> {
    if r.state_version == state_version {
        Ok(())
    } else {
        Err(format!(
            "{call}: state_version {}, expected {state_version}",
            r.state_version
        ))
    }
}

/// `counter.increase(1)` from `caller`, which must commit exactly version
/// `expected`; every peer in `others` then reads until it is shown it.
async fn commit_one(
    caller: &mut Peer,
    others: &mut [&mut Peer],
    expected: u64,
) -> Result<(), String> {
    let r = caller.invoke("counter", "increase", json!([1])).await?;
    ok_value(&r, "counter.increase(1)")?;
    expect_version(
        &r,
        "counter.increase(1) (the check that nothing else committed)",
        expected,
    )?;
    caller.reach(expected).await?;
    for peer in others.iter_mut() {
        peer.reach(expected).await?;
    }
    Ok(())
}

/// The non-bookmark envelopes `peer` received since `mark`.
fn significant(peer: &Peer, mark: usize) -> Vec<&HostMessage> {
    peer.since(mark)
        .iter()
        .filter(|m| !is_bookmark(m))
        .collect()
}

/// The sync reply with `sync_id` in `peer`'s log.
fn reply_to(peer: &Peer, sync_id: u64) -> Result<HostMessage, String> {
    peer.log
        .iter()
        .find(|m| match &m.kind {
            Some(host_message::Kind::Snapshot(s)) => s.sync_id == sync_id,
            Some(host_message::Kind::Patch(p)) => p.sync_id == sync_id,
            _ => false,
        })
        .cloned()
        .ok_or_else(|| format!("stream {} has no reply to sync {sync_id}", peer.name))
}

fn same_view(a: &Peer, b: &Peer) -> Result<(), String> {
    let (va, vb) = (view_of(a)?, view_of(b)?);
    if a.version() != b.version() || !json_eq(&va, &vb) {
        // Where they differ, not the whole views, which a case that grows
        // the state would have cut to their ends (CONFORMANCE.md §8).
        let at =
            |v: Option<u64>| v.map_or_else(|| "no version".to_owned(), |v| format!("version {v}"));
        let difference = match describe_difference(&va, &vb) {
            d if d.is_empty() => "the same view".to_owned(),
            d => format!("views that differ {d}"),
        };
        return Err(format!(
            "streams {} (at {}) and {} (at {}) have {difference}",
            a.name,
            at(a.version()),
            b.name,
            at(b.version())
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- cases

async fn initial_sync(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = Peer::open(run, "A").await?;
    let sync_id = a.sync(0, "", None)?;
    let first = a.next().await?;
    let Some(host_message::Kind::Snapshot(s)) = &first.kind else {
        return Err(format!("A's first envelope is {}, not a snapshot", describe(&first)).into());
    };
    if s.sync_id != sync_id {
        return Err(format!(
            "the snapshot's sync_id is {}, expected {sync_id}",
            s.sync_id
        )
        .into());
    }
    let view = view_of(&a)?;
    let members: Vec<&String> = view
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    if members.len() != 2 || view.get("counter").is_none() || view.get("todos").is_none() {
        return Err(format!(
            "the view's members are {members:?}, expected exactly counter and todos (SI1)"
        )
        .into());
    }
    let counter = &view["counter"];
    if counter.as_object().map(|m| m.len()) != Some(1) || count_of(&view).is_err() {
        return Err(format!("counter is {counter}, expected {{\"count\": <integer>}}").into());
    }
    let todos = &view["todos"];
    if todos.as_object().map(|m| m.len()) != Some(1) {
        return Err(format!("todos is {todos}, expected {{\"items\": [...]}}").into());
    }
    for item in items_of(&view)? {
        let ok = item.as_object().is_some_and(|m| m.len() == 3)
            && item["id"].is_u64()
            && item["text"].is_string()
            && item["done"].is_boolean();
        if !ok {
            return Err(format!("a todo item {item} is not {{id, text, done}}").into());
        }
    }
    Ok(())
}

async fn no_publications_before_sync(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let mut c = Peer::open(run, "C").await?;
    let r = a.invoke("counter", "increase", json!([1])).await?;
    ok_value(&r, "counter.increase(1)")?;
    let sync_id = c.sync(0, "", None)?;
    // The stream's own checks refuse a publication before the reply (H3).
    let first = c.next().await?;
    let answered = match &first.kind {
        Some(host_message::Kind::Snapshot(s)) => s.sync_id == sync_id,
        _ => false,
    };
    if !answered {
        return Err(format!(
            "C's first envelope is {}, not its sync reply",
            describe(&first)
        )
        .into());
    }
    if version_of(&c)? < r.state_version {
        return Err(format!(
            "C's sync reply is at {}, before the commit at {} it followed",
            version_of(&c)?,
            r.state_version
        )
        .into());
    }
    Ok(())
}

/// The most calls a case keeps in flight on one stream: under the in-flight
/// limit's normative minimum of 16 (PROTOCOL.md §15), which a conforming
/// host may use, refusing the 17th and closing the session at 32.
const AT_ONCE: u64 = 15;

async fn contiguous(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let (v, c) = (version_of(&a)?, count_of(&view_of(&a)?)?);
    let ids = (0..AT_ONCE)
        .map(|_| a.call("counter", "increase", json!([1])))
        .collect::<Result<Vec<_>, _>>()?;
    let mut versions = Vec::new();
    for id in ids {
        let r = a.result(id).await?;
        ok_value(&r, "counter.increase(1)")?;
        versions.push(r.state_version);
    }
    versions.sort_unstable();
    let expected: Vec<u64> = (v + 1..=v + AT_ONCE).collect();
    if versions != expected {
        return Err(
            format!("the state_versions are {versions:?}, expected {v}+1 … {v}+{AT_ONCE}").into(),
        );
    }
    a.reach(v + AT_ONCE).await?;
    let count = count_of(&view_of(&a)?)?;
    let n = i64::try_from(AT_ONCE).unwrap_or(i64::MAX);
    if version_of(&a)? != v + AT_ONCE || count != c + n {
        return Err(format!(
            "A is at {} with count {count}, expected {} with count {}",
            version_of(&a)?,
            v + AT_ONCE,
            c + n
        )
        .into());
    }
    Ok(())
}

async fn half_closed(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    // As many calls as a case may keep in flight: more would let a host at
    // the in-flight minimum refuse some, or close the session as flooding.
    let mut ids = Vec::new();
    for _ in 0..AT_ONCE {
        ids.push(a.call("counter", "increase", json!([1]))?);
    }
    a.close();
    // The stream's own checks refuse a result before its publication.
    for id in ids {
        a.result(id).await?;
    }
    // Publications or bookmarks may still come; then the end, within one
    // step of the last result in all.
    if !a.ended_within(run.step_timeout()).await? {
        return Err(format!(
            "A's stream was not ended within {} ms of its last result after A's half-close (envelopes sent meanwhile do not extend the wait): a host MAY end a half-closed session once it has sent what it owes (H16, G2), and this recommended case expects it to, as the reference does",
            run.step_timeout().as_millis()
        )
        .into());
    }
    let clean = match (run.transport(), a.ended()) {
        (Transport::Grpc, Some(None)) => true,
        (Transport::Grpc, _) => false,
        (Transport::Framed, _) => true,
    };
    if clean {
        Ok(())
    } else {
        Err(format!(
            "A's stream ended ({}) after its results, expected status OK",
            a.ended_status()
        )
        .into())
    }
}

async fn quiet_bookmark(run: &Arc<Shared>, options: CaseOptions) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let v = version_of(&a)?;
    // A host that looks for quiet sessions once per interval may find A
    // only at its second look.
    let wait = options.bookmark_interval * 2 + run.step_timeout();
    let m = match a.read_within(wait).await? {
        Read::Message(m) => m,
        Read::Quiet => {
            return Err(format!(
                "A, shown version {v}, was sent nothing for {} ms (twice the bookmark interval and a step): a host SHOULD send a quiet session a bookmark once per bookmark interval (H10); give your host's interval with --bookmark-interval-ms",
                wait.as_millis()
            )
            .into());
        }
        Read::Ended => {
            return Err(
                format!("A's stream ended ({}) while it was quiet", a.ended_status()).into(),
            );
        }
    };
    match &m.kind {
        Some(host_message::Kind::Patch(p))
            if is_bookmark(&m) && p.version == v && is_empty_array(&p.patch_json) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "A, shown version {v} with nothing changed since, was sent {} where a bookmark Patch{{base={v}, version={v}, sync_id=0, ops=[]}} was due (H10)",
            describe(&m)
        )
        .into()),
    }
}

async fn results_follow(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let mut b = attached(run, "B").await?;
    let calls: [(&str, &str, Value); 10] = [
        ("counter", "increase", json!([1])),
        ("todos", "add", json!(["results-follow 1"])),
        ("counter", "fail", json!(["no"])),
        ("counter", "increase", json!([0])),
        ("counter", "nosuch", json!([])),
        ("counter", "increase", json!([2])),
        ("todos", "add", json!(["results-follow 2"])),
        ("counter", "decrease", json!([1])),
        ("counter", "fail", json!(["again"])),
        ("todos", "add_many", json!([["results-follow 3"]])),
    ];
    let mut ids = Vec::new();
    for (module, method, args) in calls {
        ids.push(a.call(module, method, args)?);
    }
    let mut highest = 0;
    // The stream's own checks refuse a result that names a version A has not
    // been shown, a second result, and a result with no outcome (H8).
    for id in ids {
        highest = highest.max(a.result(id).await?.state_version);
    }
    b.reach(highest).await?;
    Ok(())
}

async fn sync_only_to_requester(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let mut b = attached(run, "B").await?;
    let v = version_of(&a)?.max(version_of(&b)?);
    a.reach(v).await?;
    b.reach(v).await?;
    let mark = b.mark();
    let epoch = a.host_epoch();
    let sync_id = a.sync(0, &epoch, None)?;
    a.await_sync().await?;
    let reply = reply_to(&a, sync_id)?;
    if !matches!(&reply.kind, Some(host_message::Kind::Snapshot(s)) if s.version == v) {
        return Err(format!(
            "A's reply is {}, expected Snapshot{{version={v}}}",
            describe(&reply)
        )
        .into());
    }
    commit_one(&mut a, &mut [&mut b], v + 1).await?;
    let got = significant(&b, mark);
    let only_publication = got.len() == 1
        && match &got[0].kind {
            Some(host_message::Kind::Patch(p)) => p.sync_id == 0 && p.version == v + 1,
            Some(host_message::Kind::Snapshot(s)) => s.sync_id == 0 && s.version == v + 1,
            _ => false,
        };
    if !only_publication {
        let seen: Vec<String> = got.iter().map(|m| describe(m)).collect();
        return Err(format!(
            "B received [{}], expected only the publication of version {}",
            seen.join(", "),
            v + 1
        )
        .into());
    }
    Ok(())
}

async fn resume_bookmark(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let v = version_of(&a)?;
    let epoch = a.host_epoch();
    let sync_id = a.sync(v, &epoch, None)?;
    a.await_sync().await?;
    let reply = reply_to(&a, sync_id)?;
    match &reply.kind {
        Some(host_message::Kind::Patch(p)) if p.base_version == v && p.version == v => Ok(()),
        _ => Err(format!(
            "the reply is {}, expected Patch{{base={v}, version={v}, ops=[]}}",
            describe(&reply)
        )
        .into()),
    }
}

async fn resume(run: &Arc<Shared>, require_patch: bool) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let (v, base) = (version_of(&a)?, view_of(&a)?);
    ok_value(
        &a.invoke("counter", "increase", json!([1])).await?,
        "counter.increase(1)",
    )?;
    let id = ok_value(
        &a.invoke("todos", "add", json!(["resume"])).await?,
        "todos.add",
    )?;
    ok_value(
        &a.invoke("todos", "toggle", json!([id])).await?,
        "todos.toggle",
    )?;
    a.reach(v + 3).await?;
    let mut c = Peer::open(run, "C").await?;
    let epoch = a.host_epoch();
    let sync_id = c.sync(v, &epoch, Some(base))?;
    c.await_sync().await?;
    let reply = reply_to(&c, sync_id)?;
    let shape_ok = match &reply.kind {
        Some(host_message::Kind::Patch(p)) => p.base_version == v && p.version == v + 3,
        Some(host_message::Kind::Snapshot(s)) => !require_patch && s.version == v + 3,
        _ => false,
    };
    if !shape_ok {
        let wanted = if require_patch {
            format!("Patch{{base={v}, version={}}}", v + 3)
        } else {
            format!(
                "Patch{{base={v}, version={}}} or Snapshot{{version={}}}",
                v + 3,
                v + 3
            )
        };
        return Err(format!("the reply is {}, expected {wanted}", describe(&reply)).into());
    }
    same_view(&a, &c)?;
    Ok(())
}

async fn snapshot_reply(run: &Arc<Shared>, other_epoch: bool) -> Result<(), Stop> {
    let a = attached(run, "A").await?;
    let v = version_of(&a)?;
    let (have, epoch) = if other_epoch {
        (1, OTHER_EPOCH.to_owned())
    } else {
        (v + 1000, a.host_epoch())
    };
    let c = snapshot_reply_to(run, v, "C", (have, &epoch), "").await?;
    same_view(&a, &c)?;
    if other_epoch {
        // A version names a state only together with its epoch: with none,
        // the host cannot tell v from another epoch's v (H2).
        let why =
            ": a request naming no epoch is answered with a snapshot whatever its version (H2)";
        let d = snapshot_reply_to(run, v, "D", (v, ""), why).await?;
        same_view(&a, &d)?;
    }
    Ok(())
}

/// Opens stream `name`, sends SyncRequest{have_version, epoch} and checks
/// the reply is a Snapshot at version `v`; `why` ends the failure. The
/// stream, for its view.
async fn snapshot_reply_to(
    run: &Arc<Shared>,
    v: u64,
    name: &str,
    (have, epoch): (u64, &str),
    why: &str,
) -> Result<Peer, Stop> {
    let mut peer = Peer::open(run, name).await?;
    let sync_id = peer.sync(have, epoch, None)?;
    peer.await_sync().await?;
    let reply = reply_to(&peer, sync_id)?;
    if !matches!(&reply.kind, Some(host_message::Kind::Snapshot(s)) if s.version == v) {
        return Err(format!(
            "the reply to SyncRequest{{epoch={epoch:?}, have_version={have}}} is {}, expected Snapshot{{version={v}}}{why}",
            describe(&reply)
        )
        .into());
    }
    Ok(peer)
}

/// Makes `total` commits from `a`, the `i`th a call of `call(i)` (module,
/// method, arguments), [`AT_ONCE`] in flight at a time, and waits until `a` has seen
/// them all.
async fn commit_many(
    a: &mut Peer,
    total: u64,
    call: impl Fn(u64) -> (&'static str, &'static str, Value),
) -> Result<(), String> {
    let v = version_of(a)?;
    let mut done = 0;
    while done < total {
        let batch = (total - done).min(AT_ONCE);
        let calls: Vec<_> = (done..done + batch).map(&call).collect();
        let ids = calls
            .iter()
            .map(|(module, method, args)| a.call(module, method, args.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        for ((module, method, _), id) in calls.iter().zip(ids) {
            ok_value(&a.result(id).await?, &format!("{module}.{method}"))?;
        }
        done += batch;
    }
    a.reach(v + total).await
}

async fn window_edge(run: &Arc<Shared>, options: CaseOptions) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let (v, base) = (version_of(&a)?, view_of(&a)?);
    // Each commit appends an item: unlike replacing a count, a resume
    // Patch that misses or reorders a version's operations then shows.
    let add = |i: u64| ("todos", "add", json!([format!("edge {i}")]));
    let checked = async {
        commit_many(&mut a, 1, add).await?;
        let next = view_of(&a)?;
        commit_many(&mut a, options.history_window, add).await?;
        let epoch = a.host_epoch();
        for (name, have, view) in [("C", v, base), ("D", v + 1, next)] {
            let mut peer = Peer::open(run, name).await?;
            peer.sync(have, &epoch, Some(view))?;
            peer.await_sync().await?;
            same_view(&a, &peer).map_err(|e| format!("after a resume from version {have}: {e}"))?;
        }
        Ok::<(), Stop>(())
    }
    .await;
    // The items would otherwise weigh on every later snapshot, and on
    // every later case if this one failed partway.
    let cleared: Result<(), Stop> = match a.invoke("todos", "clear", json!([])).await {
        Ok(result) => ok_value(&result, "todos.clear()")
            .map(drop)
            .map_err(Stop::from),
        Err(error) => Err(Stop::from(error)),
    };
    checked?;
    cleared
}

async fn oversize_resume(run: &Arc<Shared>, options: CaseOptions) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let (v, base) = (version_of(&a)?, view_of(&a)?);
    // Added and cleared again at once: each add's operation is a quarter
    // of the limit, so five of them pass it, while the view stays small
    // and each Call and publication stays well within it.
    let text = Value::String("r".repeat(options.max_message_size as usize / 4));
    let call = |i: u64| match i % 2 {
        0 => ("todos", "add", json!([text])),
        _ => ("todos", "clear", json!([])),
    };
    commit_many(&mut a, 10, call).await?;
    resumed_with_a_snapshot(
        run,
        &mut a,
        v,
        base,
        "whose operations are over the max message size",
    )
    .await
}

/// A new stream C resumes from `v` (its base `base`) and must be answered
/// with a Snapshot that brings it to `a`'s version and view; `what` says
/// which resume it was, for the failure. (`a` is borrowed mutably because a
/// shared `&Peer` would not be `Send` across the awaits.)
async fn resumed_with_a_snapshot(
    run: &Arc<Shared>,
    a: &mut Peer,
    v: u64,
    base: Value,
    what: &str,
) -> Result<(), Stop> {
    let mut c = Peer::open(run, "C").await?;
    let sync_id = c.sync(v, &a.host_epoch(), Some(base))?;
    c.await_sync().await?;
    let reply = reply_to(&c, sync_id)?;
    if !matches!(&reply.kind, Some(host_message::Kind::Snapshot(_))) {
        return Err(format!(
            "the reply to a resume {what} is {}, expected a snapshot",
            describe(&reply)
        )
        .into());
    }
    same_view(a, &c)?;
    Ok(())
}

async fn outside_window(run: &Arc<Shared>, options: CaseOptions) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let (v, base) = (version_of(&a)?, view_of(&a)?);
    let total = options.history_window + 1;
    commit_many(&mut a, total, |_| ("counter", "increase", json!([1]))).await?;
    let what = format!("from {total} versions back");
    resumed_with_a_snapshot(run, &mut a, v, base, &what).await
}

async fn not_found(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let mut b = attached(run, "B").await?;
    let v = version_of(&a)?;
    for (module, method) in [
        ("nosuch", "increase"),
        ("counter", "nosuch"),
        ("secret", "increase"),
    ] {
        let r = a.invoke(module, method, json!([1])).await?;
        expect_error(&r, &format!("{module}.{method}(1)"), ErrorCode::NotFound, v)?;
    }
    commit_one(&mut a, &mut [&mut b], v + 1).await?;
    Ok(())
}

async fn invalid_arguments(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let (v, before) = (version_of(&a)?, view_of(&a)?);
    let calls = [
        ("counter", "increase", "not json"),
        ("counter", "increase", "{}"),
        ("counter", "increase", "[]"),
        ("counter", "increase", "[1,2]"),
        ("counter", "increase", "[\"1\"]"),
        ("counter", "increase", "[1.5]"),
        ("counter", "increase", "[true]"),
        // Integral values not written as integers (§19).
        ("counter", "increase", "[1.0]"),
        ("counter", "increase", "[1e0]"),
        ("counter", "increase", "[-0]"),
        // Whitespace is no JSON text, unlike "" (J4).
        ("counter", "increase", " "),
        // Outside `by`'s range, whatever the count (§19).
        ("counter", "decrease", "[9223372036854775808]"),
        ("todos", "add", "[]"),
        ("todos", "add_many", "[[\"a\",1]]"),
        // An escaped lone surrogate is not text a host may store (J2).
        ("todos", "add", "[\"\\ud800\"]"),
    ];
    for (module, method, args) in calls {
        let id = a.call_text(module, method, args)?;
        let r = a.result(id).await?;
        expect_error(
            &r,
            &format!("{module}.{method} with {args}"),
            ErrorCode::InvalidArgument,
            v,
        )?;
    }
    commit_one(&mut a, &mut [], v + 1).await?;
    let mut expected = before;
    expected["counter"]["count"] = json!(count_of(&expected)? + 1);
    if !json_eq(&expected, &view_of(&a)?) {
        let view = view_of(&a)?;
        let difference = describe_difference(&view, &expected);
        return Err(
            format!("the view differs {difference}: it is {view}, expected {expected}").into(),
        );
    }
    Ok(())
}

async fn method_failure(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let (v, before) = (version_of(&a)?, view_of(&a)?);
    let message = "conformance failure 7";
    let r = a.invoke("counter", "fail", json!([message])).await?;
    expect_error(&r, "counter.fail", ErrorCode::Failed, v)?;
    if let Some(call_result::Outcome::Error(e)) = &r.outcome
        && (e.message != message || !e.details_json.is_empty())
    {
        return Err(format!(
            "counter.fail: message {:?} and details {:?}, expected {message:?} and none",
            e.message, e.details_json
        )
        .into());
    }
    commit_one(&mut a, &mut [], v + 1).await?;
    let mut expected = before;
    expected["counter"]["count"] = json!(count_of(&expected)? + 1);
    if !json_eq(&expected, &view_of(&a)?) {
        let view = view_of(&a)?;
        let difference = describe_difference(&view, &expected);
        return Err(
            format!("the view differs {difference}: it is {view}, expected {expected}").into(),
        );
    }
    Ok(())
}

async fn fencing(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let (v, c) = (version_of(&a)?, count_of(&view_of(&a)?)?);
    let id = a.fresh_id();
    a.send_call(OTHER_EPOCH, id, "counter", "increase", "[1]")?;
    let r = a.result(id).await?;
    expect_error(
        &r,
        "counter.increase(1) from another epoch",
        ErrorCode::FailedPrecondition,
        v,
    )?;
    // A client with no mirror yet names no epoch: not another one (E7).
    let id = a.fresh_id();
    a.send_call("", id, "counter", "increase", "[1]")?;
    let r = a.result(id).await?;
    ok_value(
        &r,
        "counter.increase(1) with an empty header epoch (E7: not fenced)",
    )?;
    expect_version(&r, "counter.increase(1) with an empty header epoch", v + 1)?;
    a.reach(v + 1).await?;
    one_commit_and_nothing_else(&mut a, v + 1, c + 1, "the fenced call ran").await
}

/// Commits `counter.increase(1)` from `a`, at version `v` with count `c`,
/// and checks that it is the only change: otherwise, `why`.
async fn one_commit_and_nothing_else(a: &mut Peer, v: u64, c: i64, why: &str) -> Result<(), Stop> {
    commit_one(a, &mut [], v + 1).await?;
    let count = count_of(&view_of(a)?)?;
    if count != c + 1 {
        return Err(format!("the count is {count}, expected {}: {why}", c + 1).into());
    }
    Ok(())
}

async fn call_id_zero(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let v = version_of(&a)?;
    let epoch = a.host_epoch();
    a.send_call(&epoch, 0, "counter", "increase", "[1]")?;
    let r = a.result(0).await?;
    expect_error(&r, "a call with call_id 0", ErrorCode::InvalidArgument, v)?;
    commit_one(&mut a, &mut [], v + 1).await?;
    Ok(())
}

async fn checks_in_order(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let (v, c) = (version_of(&a)?, count_of(&view_of(&a)?)?);
    let epoch = a.host_epoch();
    // Each pair of checks where the earlier one must decide (H7's steps 2
    // and 3, 3 and 5, 5 and 6).
    let (fenced, unknown) = (a.fresh_id(), a.fresh_id());
    let calls: [(u64, &str, &str, &str, &str, ErrorCode); 3] = [
        (
            0,
            OTHER_EPOCH,
            "counter",
            "increase",
            "[1]",
            ErrorCode::InvalidArgument,
        ),
        (
            fenced,
            OTHER_EPOCH,
            "counter",
            "increase",
            "{}",
            ErrorCode::FailedPrecondition,
        ),
        (
            unknown,
            &epoch,
            "nosuchmodule",
            "nosuchmethod",
            "{}",
            ErrorCode::InvalidArgument,
        ),
    ];
    for (id, epoch, module, method, args, _) in &calls {
        a.send_call(epoch, *id, module, method, args)?;
    }
    for (id, epoch, module, method, args, code) in calls {
        let r = a.result(id).await?;
        let what = format!(
            "{module}.{method} with call_id {id}, epoch {epoch:?} and args_json {args} \
             (H7: the first check that applies decides)"
        );
        expect_error(&r, &what, code, v)?;
    }
    one_commit_and_nothing_else(&mut a, v, c, "a refused call ran").await
}

/// An unknown length-delimited field 15 ("hi"), which no v1 message has.
const UNKNOWN_FIELD: &[u8] = &[0x7a, 0x02, b'h', b'i'];

async fn other_versions(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let (v, c) = (version_of(&a)?, count_of(&view_of(&a)?)?);
    let mut v2 = Header::v1(a.host_epoch(), "A", "");
    v2.protocol_version = 2;
    let increase = |call_id| {
        Some(client_message::Kind::Call(Call {
            call_id,
            module: "counter".to_owned(),
            method: "increase".to_owned(),
            args_json: "[1]".to_owned(),
        }))
    };
    let mark = a.mark();
    for (header, what) in [
        (
            Some(v2.clone()),
            "counter.increase(1) of protocol_version 2",
        ),
        (
            None,
            "counter.increase(1) with no header (protocol_version 0, §3.2)",
        ),
    ] {
        let id = a.fresh_id();
        a.send_as_call(
            &ClientMessage {
                header,
                kind: increase(id),
            },
            id,
        )?;
        let r = a.result(id).await?;
        expect_error(&r, what, ErrorCode::FailedPrecondition, v)
            .map_err(|e| format!("{e} (H7.1)"))?;
    }
    let sync_id = a.fresh_id();
    a.send(&ClientMessage {
        header: Some(v2),
        kind: Some(client_message::Kind::SyncRequest(SyncRequest {
            sync_id,
            have_version: 0,
            reason: SyncReason::Initial as i32,
        })),
    })?;
    one_commit_and_nothing_else(&mut a, v, c, "a refused call ran").await?;
    let answered: Vec<String> = a
        .since(mark)
        .iter()
        .filter(|m| match &m.kind {
            Some(host_message::Kind::Snapshot(s)) => s.sync_id == sync_id,
            Some(host_message::Kind::Patch(p)) => p.sync_id == sync_id,
            _ => false,
        })
        .map(describe)
        .collect();
    if !answered.is_empty() {
        return Err(format!(
            "the SyncRequest of protocol_version 2 was answered with [{}]: a host ignores SyncRequests of another version (H13)",
            answered.join(", ")
        )
        .into());
    }
    Ok(())
}

async fn unknown_kinds(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let (v, c) = (version_of(&a)?, count_of(&view_of(&a)?)?);
    let epoch = a.host_epoch();
    let header = Header::v1(&epoch, "A", "");
    let mark = a.mark();
    // A header and no kind.
    a.send(&ClientMessage {
        header: Some(header.clone()),
        kind: None,
    })?;
    // Field 15 as the only kind, and field 15 in the header too.
    let mut header_bytes = header.encode_to_vec();
    header_bytes.extend_from_slice(UNKNOWN_FIELD);
    let mut envelope = Vec::new();
    prost::encoding::bytes::encode(1, &header_bytes, &mut envelope);
    envelope.extend_from_slice(UNKNOWN_FIELD);
    a.send_bytes(Bytes::from(envelope))?;
    // A Call with field 15 in the Call and in the envelope.
    let id = a.fresh_id();
    let mut call = Call {
        call_id: id,
        module: "counter".to_owned(),
        method: "increase".to_owned(),
        args_json: "[1]".to_owned(),
    }
    .encode_to_vec();
    call.extend_from_slice(UNKNOWN_FIELD);
    let mut envelope = ClientMessage {
        header: Some(header),
        kind: None,
    }
    .encode_to_vec();
    prost::encoding::bytes::encode(2, &call, &mut envelope);
    envelope.extend_from_slice(UNKNOWN_FIELD);
    a.send_bytes_as_call(Bytes::from(envelope), id)?;
    let r = a.result(id).await?;
    ok_value(&r, "counter.increase(1) carrying unknown fields (C1)")?;
    expect_version(
        &r,
        "counter.increase(1) carrying unknown fields (C1)",
        v + 1,
    )?;
    commit_one(&mut a, &mut [], v + 2).await?;
    let results = a
        .since(mark)
        .iter()
        .filter(|e| matches!(e.kind, Some(host_message::Kind::Result(_))))
        .count();
    if results != 2 {
        return Err(format!(
            "A received {results} results, expected 2: an envelope with no known kind is ignored, not answered (C2, H13)"
        )
        .into());
    }
    let count = count_of(&view_of(&a)?)?;
    if count != c + 2 {
        return Err(format!("the count is {count}, expected {}", c + 2).into());
    }
    Ok(())
}

async fn no_version(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let (v, c) = (version_of(&a)?, count_of(&view_of(&a)?)?);
    let r = a.invoke("counter", "increase", json!([0])).await?;
    let value = ok_value(&r, "counter.increase(0)")?;
    if !json_eq(&value, &json!(c)) {
        return Err(format!("counter.increase(0) returned {value}, expected {c}").into());
    }
    expect_version(&r, "counter.increase(0)", v)?;
    let r = a.invoke("todos", "add_many", json!([[]])).await?;
    let value = ok_value(&r, "todos.add_many([])")?;
    if value != json!([]) {
        return Err(format!("todos.add_many([]) returned {value}, expected []").into());
    }
    expect_version(&r, "todos.add_many([])", v)?;
    commit_one(&mut a, &mut [], v + 1).await?;
    Ok(())
}

async fn add_many(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let mut b = attached(run, "B").await?;
    let v = version_of(&a)?.max(version_of(&b)?);
    a.reach(v).await?;
    b.reach(v).await?;
    let n = items_of(&view_of(&b)?)?.len();
    let mark = b.mark();
    let r = a
        .invoke("todos", "add_many", json!([["x", "y", "z"]]))
        .await?;
    let ids = ok_value(&r, "todos.add_many")?;
    expect_version(&r, "todos.add_many", v + 1)?;
    let returned = ids.clone();
    let ids: Vec<u64> = ids
        .as_array()
        .map(|a| a.iter().map_while(Value::as_u64).collect())
        .unwrap_or_default();
    if ids.len() != 3
        || returned.as_array().map(Vec::len) != Some(3)
        || !ids.windows(2).all(|w| w[0] < w[1])
    {
        return Err(format!(
            "todos.add_many returned {}, expected an array of three strictly increasing ids, each a JSON integer (§19: ids are integers, written as integers)",
            what(&r)
        )
        .into());
    }
    b.reach(v + 1).await?;
    let got = significant(&b, mark);
    if got.len() != 1 {
        let seen: Vec<String> = got.iter().map(|m| describe(m)).collect();
        return Err(format!("B received [{}], expected one publication", seen.join(", ")).into());
    }
    let view = view_of(&b)?;
    let items = items_of(&view)?;
    let tail: Vec<Value> = ["x", "y", "z"]
        .iter()
        .zip(&ids)
        .map(|(text, id)| json!({"id": id, "text": text, "done": false}))
        .collect();
    if items.len() != n + 3
        || !json_eq(
            &Value::Array(items[n..].to_vec()),
            &Value::Array(tail.clone()),
        )
    {
        return Err(format!("B's items are {items:?}, expected {n} items then {tail:?}").into());
    }
    // Ids are never reused within an epoch, not even after remove or clear
    // (§19.2): a host counting items, or taking the largest id, reuses them.
    let mut last = ids[2];
    let r = a.invoke("todos", "remove", json!([last])).await?;
    ok_value(&r, "todos.remove of the last id")?;
    for then in ["remove", "clear"] {
        if then == "clear" {
            let r = a.invoke("todos", "clear", json!([])).await?;
            ok_value(&r, "todos.clear")?;
        }
        let r = a.invoke("todos", "add", json!(["w"])).await?;
        let id = ok_value(&r, "todos.add")?;
        match id.as_u64() {
            Some(id) if id > last => last = id,
            _ => {
                return Err(format!(
                    "after a {then}, todos.add returned id {id}, expected one larger than {last}: ids are never reused within an epoch, not even after remove or clear (§19.2)"
                )
                .into());
            }
        }
    }
    let r = a.invoke("todos", "clear", json!([])).await?;
    ok_value(&r, "todos.clear")?;
    Ok(())
}

/// The calls that take the count from `from` to `to`, each with the count
/// it leaves: one call when the difference is a valid argument, else
/// `decrease(from)` to 0 and, unless `to` is 0, `increase(to)`.
fn moves(from: i64, to: i64) -> Vec<(&'static str, i64, i64)> {
    match i64::try_from(i128::from(to) - i128::from(from)) {
        Ok(0) => vec![],
        Ok(by) => vec![("increase", by, to)],
        Err(_) if to == 0 => vec![("decrease", from, 0)],
        Err(_) => vec![("decrease", from, 0), ("increase", to, to)],
    }
}

/// Fails unless `value` is the integer `expected`, written as one (J10;
/// §19.1 makes the count a signed 64-bit integer). `text` is what the host
/// wrote, quoted in the failure beside the runner's reading of it, in which
/// a number with a fraction or an exponent, or an integer beyond 64 bits,
/// is a binary64 value.
fn exact_integer(value: &Value, text: &str, expected: i64, what: &str) -> Result<(), String> {
    if value.as_i64() == Some(expected) {
        return Ok(());
    }
    Err(format!(
        "{what} was written as {}, which reads as {value}, not as the integer {expected} (J10, §19.1)",
        clip(text)
    ))
}

/// The text of a result's value as the host wrote it; empty for an error.
fn value_text(r: &CallResult) -> &str {
    match &r.outcome {
        Some(call_result::Outcome::ValueJson(text)) => text,
        _ => "",
    }
}

/// `text`, cut to a length a failure message can quote.
fn clip(text: &str) -> String {
    const MAX: usize = 240;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// The text of the last publication or sync reply `peer` received that
/// carries state: a snapshot's state or a patch's operations.
fn last_state_text(peer: &Peer) -> String {
    peer.log
        .iter()
        .rev()
        .find_map(|m| match &m.kind {
            Some(host_message::Kind::Snapshot(s)) => Some(s.state_json.clone()),
            Some(host_message::Kind::Patch(p)) if p.version > p.base_version => {
                Some(p.patch_json.clone())
            }
            _ => None,
        })
        .unwrap_or_default()
}

async fn exact_integers(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let mut b = attached(run, "B").await?;
    let v = version_of(&a)?.max(version_of(&b)?);
    a.reach(v).await?;
    b.reach(v).await?;
    let start = count_of(&view_of(&a)?)?;
    let walked = walk_the_range(&mut a, &mut b, start).await;
    if walked.is_err() {
        // Later cases add to the count: left near 2^63−1 by a host that
        // failed here, it would make them fail too, for no fault of theirs.
        restore_count(run, start).await;
    }
    Ok(walked?)
}

/// The calls of `grpc-integers-are-kept-exactly`, from and back to `start`.
async fn walk_the_range(a: &mut Peer, b: &mut Peer, start: i64) -> Result<(), String> {
    const BEYOND_BINARY64: i64 = (1 << 53) + 1;
    let targets = [
        BEYOND_BINARY64,
        i64::MAX,
        -BEYOND_BINARY64,
        i64::MIN,
        0,
        start,
    ];
    let mut count = start;
    for target in targets {
        for (method, by, after) in moves(count, target) {
            let call = format!("counter.{method}({by}) from {count}");
            let v = version_of(a)?;
            let r = a.invoke("counter", method, json!([by])).await?;
            let value = ok_value(&r, &call)?;
            exact_integer(
                &value,
                value_text(&r),
                after,
                &format!("{call}: the result"),
            )?;
            expect_version(&r, &call, v + 1)?;
            b.reach(v + 1).await?;
            for peer in [&*a, &*b] {
                let view = view_of(peer)?;
                let shown = view.pointer("/counter/count").unwrap_or(&Value::Null);
                exact_integer(
                    shown,
                    &last_state_text(peer),
                    after,
                    &format!("after {call}, stream {}'s count", peer.name),
                )?;
            }
            count = after;
        }
    }
    Ok(())
}

/// Puts the count back to `start` from wherever a failed walk left it, as
/// well as the host lets a fresh stream read and change it; gives up
/// quietly at the first thing that goes wrong (the case has failed anyway).
async fn restore_count(run: &Arc<Shared>, start: i64) {
    let Ok(mut c) = attached(run, "C").await else {
        return;
    };
    let Some(count) = c.view().and_then(|v| v.pointer("/counter/count")) else {
        return;
    };
    let Some(count) = count.as_i64().or_else(|| {
        // A count the host wrote in another form still says about where it
        // is (the cast saturates at the ends of the range).
        count.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)
    }) else {
        return;
    };
    for (method, by, _) in moves(count, start) {
        match c.invoke("counter", method, json!([by])).await {
            Ok(CallResult {
                outcome: Some(call_result::Outcome::ValueJson(_)),
                ..
            }) => {}
            _ => return,
        }
    }
}

async fn private_section(run: &Arc<Shared>) -> Result<(), Stop> {
    if !run.has_marker() {
        return Err(Stop::Fail(
            "run with --secret-marker M, where M is contained in every token of the host's secret module (spec/CONFORMANCE.md §7.1)".into(),
        ));
    }
    let mut a = attached(run, "A").await?;
    let mut b = attached(run, "B").await?;
    let v = version_of(&a)?.max(version_of(&b)?);
    a.reach(v).await?;
    b.reach(v).await?;
    for _ in 0..2 {
        let r = a.invoke("secret", "rotate", json!([])).await?;
        let value = ok_value(&r, "secret.rotate()")?;
        if !value.is_null() {
            return Err(format!("secret.rotate() returned {value}, expected null").into());
        }
        expect_version(&r, "secret.rotate()", v)?;
    }
    commit_one(&mut a, &mut [&mut b], v + 1).await?;
    for peer in [&a, &b] {
        if view_of(peer)?.get("secret").is_some() {
            return Err(format!("stream {}'s view has a secret member", peer.name).into());
        }
    }
    match run.leak() {
        Some(leak) => Err(leak.into()),
        None => Ok(()),
    }
}

async fn malformed(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let mut b = attached(run, "B").await?;
    let mut m = attached(run, "M").await?;
    let v = version_of(&a)?.max(version_of(&b)?).max(version_of(&m)?);
    a.reach(v).await?;
    b.reach(v).await?;
    let mark = m.mark();
    m.send_bytes(Bytes::from_static(UNDECODABLE))?;
    commit_one(&mut a, &mut [&mut b], v + 1).await?;
    let r = b
        .invoke("todos", "add", json!(["after malformed bytes"]))
        .await?;
    ok_value(&r, "todos.add from B")?;
    expect_version(&r, "todos.add from B", v + 2)?;
    b.reach(v + 2).await?;
    a.reach(v + 2).await?;
    // M may have been closed, or may still be served: either way it must
    // not have been sent anything but publications.
    m.close();
    // A host may keep M's session after the bytes (FB5 on framed streams)
    // and, with nothing owed, need not end it after M's half-close (H16
    // says MAY): reading for a step's time, publications and bookmarks
    // included, is enough to see any result it was wrongly sent.
    m.ended_within(run.step_timeout()).await?;
    if m.since(mark)
        .iter()
        .any(|e| matches!(e.kind, Some(host_message::Kind::Result(_))))
    {
        return Err("M received a result for bytes that were not a call".into());
    }
    // A host that closed M for the bytes ends it INVALID_ARGUMENT (G7);
    // one that kept serving it ends it OK after the half-close, or keeps
    // it (H16). gRPC stacks that decode for the host end it INTERNAL. A
    // framed connection has no status: the host may close it however it
    // does (FB5).
    match m.ended() {
        _ if run.transport() == Transport::Framed => Ok(()),
        None | Some(None) => Ok(()),
        Some(Some(status)) if status.code() == Code::InvalidArgument => Ok(()),
        Some(Some(status)) => Err(format!(
            "M's stream ended with status {:?} ({}); a host that closes a stream for bytes that are not a ClientMessage ends it INVALID_ARGUMENT (spec G7), and one that keeps serving it ends it OK after the half-close",
            status.code(),
            status.message()
        )
        .into()),
    }
}

async fn converge(run: &Arc<Shared>) -> Result<(), Stop> {
    const STREAMS: usize = 4;
    const CALLS: usize = 15;
    let mut peers = Vec::new();
    for i in 0..STREAMS {
        peers.push(attached(run, &format!("P{i}")).await?);
    }
    let v = peers.iter().filter_map(Peer::version).max().unwrap_or(0);
    let mut tasks = JoinSet::new();
    for (i, mut peer) in peers.into_iter().enumerate() {
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for k in 0..CALLS {
                let id = if k % 2 == 0 {
                    peer.call("counter", "increase", json!([1]))
                } else {
                    peer.call("todos", "add", json!([format!("converge {i}-{k}")]))
                };
                match id {
                    Ok(id) => ids.push(id),
                    Err(e) => return (peer, Err(e)),
                }
            }
            let mut versions = Vec::new();
            for id in ids {
                match peer.result(id).await {
                    Ok(r) => versions.push(r.state_version),
                    Err(e) => return (peer, Err(e)),
                }
            }
            (peer, Ok(versions))
        });
    }
    let mut peers = Vec::new();
    let mut versions = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (peer, result) = joined.map_err(|e| format!("a stream's task failed: {e}"))?;
        versions.extend(result?);
        peers.push(peer);
    }
    versions.sort_unstable();
    let total = (STREAMS * CALLS) as u64;
    let expected: Vec<u64> = (v + 1..=v + total).collect();
    if versions != expected {
        return Err(format!(
            "the {total} results carry state_versions {versions:?}, expected {} … {}",
            v + 1,
            v + total
        )
        .into());
    }
    for peer in &mut peers {
        peer.reach(v + total).await?;
    }
    let mut fresh = attached(run, "F").await?;
    fresh.reach(v + total).await?;
    for peer in &peers {
        same_view(peer, &fresh)?;
    }
    Ok(())
}

async fn unauthenticated(run: &Arc<Shared>) -> Result<(), Stop> {
    if !run.has_token() {
        return Err(Stop::Skip("needs --token-file".into()));
    }
    for (name, token) in [
        ("anonymous", None),
        ("wrong-token", Some("conformance-wrong-token")),
    ] {
        let mut peer = Peer::open_with(run, name, token).await?;
        peer.sync(0, "", None)?;
        let headers = peer.sent_headers().await?;
        let code = peer.end_code().await?;
        if code != Code::Unauthenticated {
            return Err(
                format!("stream {name} ended with {code:?}, expected Unauthenticated").into(),
            );
        }
        if headers {
            return Err(format!(
                "stream {name} was sent response headers, then ended Unauthenticated: a host sends headers only once the token and client-limit checks have passed, so that headers always mean the stream is accepted; a refusal is the call's status alone (G4)"
            )
            .into());
        }
    }
    let token = run.token().unwrap_or_default();
    // Two entries, the right token in each: which one a host reads is
    // not to be left to its metadata library (G5).
    let twice = [format!("Bearer {token}"), format!("Bearer {token}")];
    let mut peer = Peer::open_authorized(run, "two-entries", &twice).await?;
    peer.sync(0, "", None)?;
    let code = peer
        .end_code()
        .await
        .map_err(|e| format!("{e}; it had two authorization entries, which a host refuses (G5)"))?;
    if code != Code::Unauthenticated {
        return Err(format!(
            "stream two-entries, with two authorization entries, ended with {code:?}, expected Unauthenticated (G5: a request with more than one authorization entry is refused)"
        )
        .into());
    }
    let mut peer = Peer::open_authorized(run, "lowercase", &[format!("bearer {token}")]).await?;
    peer.attach().await.map_err(|e| {
        format!("{e}; its authorization was `bearer <the token>`: the scheme name is case-insensitive (G5)")
    })?;
    Ok(())
}

async fn headers_first(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = Peer::open(run, "A").await?;
    a.answered_before_sending().await?;
    a.attach().await?;
    Ok(())
}

async fn view_too_large(run: &Arc<Shared>, options: &CaseOptions) -> Result<(), Stop> {
    const TEXT_BYTES: usize = 512 * 1024;
    // Room for the snapshot's own fields and an item's members: a refusal
    // within this much of the limit is the host's to make.
    const SLACK: usize = 16 * 1024;
    let max = options.max_message_size as usize;
    let mut a = attached(run, "A").await?;
    let text = "t".repeat(TEXT_BYTES);
    let mut v = version_of(&a)?;
    let mut refused = None;
    // Enough texts to pass the limit: a host taking them all publishes a
    // view no snapshot within it can carry.
    for _ in 0..=max / TEXT_BYTES + 1 {
        let before = view_of(&a)?.to_string().len();
        let r = a.invoke("todos", "add", json!([text])).await?;
        if let Some(call_result::Outcome::Error(_)) = &r.outcome {
            if before + TEXT_BYTES + SLACK < max {
                let _ = a.invoke("todos", "clear", json!([])).await;
                return Err(format!(
                    "todos.add of a {TEXT_BYTES}-byte text was refused with the view at {before} bytes, though the view it makes fits the {max}-byte max message size (§15 refuses only a view that does not fit; §19; if the host's limit is smaller, give it to the runner with --max-message-size): {}",
                    what(&r)
                )
                .into());
            }
            refused = Some(r);
            break;
        }
        ok_value(&r, "todos.add")?;
        expect_version(&r, "todos.add", v + 1)?;
        v += 1;
        a.reach(v).await?;
        let after = view_of(&a)?.to_string().len();
        if after > max {
            let _ = a.invoke("todos", "clear", json!([])).await;
            return Err(format!(
                "the host committed a view of {after} bytes of JSON, too large for one snapshot within the {max}-byte max message size (§15, H7.8: the call must be refused RESOURCE_EXHAUSTED; if the host's limit is larger, give it to the runner with --max-message-size)"
            )
            .into());
        }
    }
    let Some(r) = refused else {
        return Err(Stop::Fail(
            "unreachable: the loop passes the limit or returns".to_owned(),
        ));
    };
    expect_error(
        &r,
        "the todos.add that would not fit",
        ErrorCode::ResourceExhausted,
        v,
    )?;
    let mark = a.mark();
    let mut b = attached(run, "B").await?;
    if version_of(&b)? != v || !json_eq(&view_of(&b)?, &view_of(&a)?) {
        return Err(format!(
            "after the refusal B's snapshot is at version {:?}, A at {v}, or their views differ",
            b.version()
        )
        .into());
    }
    let r = a.invoke("todos", "clear", json!([])).await?;
    ok_value(&r, "todos.clear")?;
    expect_version(&r, "todos.clear", v + 1)?;
    a.reach(v + 1).await?;
    b.reach(v + 1).await?;
    let after: Vec<String> = significant(&a, mark)
        .iter()
        .filter(|m| match &m.kind {
            Some(host_message::Kind::Patch(p)) => p.version <= v,
            Some(host_message::Kind::Snapshot(s)) => s.version <= v,
            _ => false,
        })
        .map(|m| describe(m))
        .collect();
    if !after.is_empty() {
        return Err(format!("A received [{}] for the refused call", after.join(", ")).into());
    }
    Ok(())
}

// ---------------------------------------------------- framed streams only

async fn empty_frames(run: &Arc<Shared>) -> Result<(), Stop> {
    let mut a = Peer::open(run, "A").await?;
    a.send_raw(Bytes::from_static(&[0; 8]))?;
    // The stream's own checks refuse any envelope before the sync reply.
    let v = a.attach().await?;
    a.send_raw(Bytes::from_static(&[0; 4]))?;
    commit_one(&mut a, &mut [], v + 1).await?;
    Ok(())
}

async fn oversize_frame(run: &Arc<Shared>, options: CaseOptions) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let mut m = attached(run, "M").await?;
    let mut n = attached(run, "N").await?;
    let v = version_of(&a)?.max(version_of(&m)?).max(version_of(&n)?);
    a.reach(v).await?;
    for (peer, length) in [
        (&mut m, options.max_message_size.saturating_add(1)),
        (&mut n, u32::MAX),
    ] {
        let mut bytes = length.to_be_bytes().to_vec();
        bytes.resize(4 + 1024, 0);
        peer.send_raw(Bytes::from(bytes))?;
        let mark = peer.mark();
        if !peer.ended_within(run.step_timeout()).await? {
            return Err(format!(
                "the host did not close {}'s connection within {} ms of a length prefix of {length} bytes, over its limit of {} (FB4)",
                peer.name,
                run.step_timeout().as_millis(),
                options.max_message_size
            )
            .into());
        }
        if peer
            .since(mark)
            .iter()
            .any(|e| matches!(e.kind, Some(host_message::Kind::Result(_))))
        {
            return Err(format!("{} received a result after an oversize frame", peer.name).into());
        }
    }
    commit_one(&mut a, &mut [], v + 1).await?;
    Ok(())
}

async fn limit_sized(run: &Arc<Shared>, options: CaseOptions) -> Result<(), Stop> {
    let mut a = attached(run, "A").await?;
    let mut sizes = vec![MIB as usize, options.max_message_size as usize];
    sizes.dedup();
    for size in sizes {
        let v = version_of(&a)?;
        let count = a
            .view()
            .and_then(|view| view.pointer("/counter/count"))
            .and_then(Value::as_i64)
            .ok_or("A's view has no integer /counter/count")?;
        let id = a.fresh_id();
        let epoch = a.host_epoch();
        let call = |padding: usize| ClientMessage {
            header: Some(Header::v1(&epoch, "A", "")),
            kind: Some(client_message::Kind::Call(Call {
                call_id: id,
                module: "counter".into(),
                method: "increase".into(),
                args_json: format!("[1{}]", " ".repeat(padding)),
            })),
        };
        // Padding also lengthens the length varints, so a step may
        // overshoot by a few bytes; it settles within a few steps unless
        // the size sits right at a varint's boundary.
        let mut padding = 0;
        for _ in 0..8 {
            let len = call(padding).encoded_len();
            if len == size {
                break;
            }
            padding = (padding + size).saturating_sub(len);
        }
        let message = call(padding);
        if message.encoded_len() != size {
            return Err(Stop::Skip(format!(
                "the runner cannot make a call of exactly {size} bytes (got {})",
                message.encoded_len()
            )));
        }
        let what = format!("counter.increase in a call of {size} bytes");
        a.send_as_call(&message, id)?;
        let r = a.result(id).await?;
        let value = ok_value(&r, &what)?;
        exact_integer(
            &value,
            value_text(&r),
            count + 1,
            &format!("{what}: the result"),
        )?;
        expect_version(&r, &what, v + 1)?;
        a.reach(v + 1).await?;
    }
    Ok(())
}

async fn no_first_envelope(run: &Arc<Shared>, options: CaseOptions) -> Result<(), Stop> {
    /// What each connection writes: once, then once a second.
    struct Trickle {
        peer: Peer,
        first: &'static [u8],
        then: &'static [u8],
        what: &'static str,
        ended: bool,
    }
    impl Trickle {
        /// Reads for `wait`: the connection may end, and must not be sent
        /// anything.
        async fn read(&mut self, wait: Duration) -> Result<(), String> {
            match self.peer.read_within(wait).await? {
                Read::Quiet => Ok(()),
                Read::Ended => {
                    self.ended = true;
                    Ok(())
                }
                Read::Message(m) => Err(format!(
                    "{} was sent {} before it had sent an envelope",
                    self.peer.name,
                    describe(&m)
                )),
            }
        }
    }
    // A connection whose first envelope came is a session, which the
    // deadline does not end: a host closing every connection must not pass.
    let mut settled = Peer::open(run, "S").await?;
    settled.attach().await?;
    let mut trickles = [
        Trickle {
            peer: Peer::open(run, "E").await?,
            first: &[0; 4],
            then: &[0; 4],
            what: "only empty frames, one a second (an empty frame does not count as the first)",
            ended: false,
        },
        Trickle {
            peer: Peer::open(run, "U").await?,
            // A 256-byte frame, one byte a second: never finished in time.
            first: &[0, 0, 1, 0],
            then: &[0],
            what: "an unfinished first frame, one byte a second",
            ended: false,
        },
    ];
    let started = tokio::time::Instant::now();
    let mut round = 0u32;
    while trickles.iter().any(|t| !t.ended) {
        if started.elapsed() > options.first_frame_wait {
            // A close that came in the last round is read now, with a
            // step's grace, so that a deadline of exactly the wait passes.
            for t in trickles.iter_mut().filter(|t| !t.ended) {
                t.read(run.step_timeout()).await?;
            }
            let open: Vec<String> = trickles
                .iter()
                .filter(|t| !t.ended)
                .map(|t| format!("{} ({})", t.peer.name, t.what))
                .collect();
            if open.is_empty() {
                break;
            }
            return Err(format!(
                "after {} s and a step's grace the host still held {}: it SHOULD close a connection whose first envelope has not arrived within a deadline of its acceptance (FB6)",
                options.first_frame_wait.as_secs(),
                open.join(" and ")
            )
            .into());
        }
        for t in trickles.iter_mut().filter(|t| !t.ended) {
            let bytes = if round == 0 { t.first } else { t.then };
            // Once the host has closed, writes fail: the read says so.
            let _ = t.peer.send_raw(Bytes::from_static(bytes));
            t.read(Duration::from_millis(500)).await?;
        }
        round += 1;
    }
    let (version, base) = (settled.version(), settled.view().cloned());
    let epoch = settled.host_epoch();
    settled.sync(version.unwrap_or(0), &epoch, base)?;
    settled.await_sync().await.map_err(|e| {
        format!(
            "{e}: S sent its first envelope at once and then idled, so its session SHOULD outlast the first-frame deadline (FB6: such a peer holds its session like any idle client)"
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn walk(from: i64, to: i64) -> i64 {
        let mut count = from;
        for (method, by, after) in moves(from, to) {
            assert_ne!(by, 0, "a move of 0 commits nothing");
            let next = match method {
                "increase" => count.checked_add(by),
                _ => count.checked_sub(by),
            };
            assert_eq!(next, Some(after), "{method}({by}) from {count}");
            count = after;
        }
        count
    }

    #[test]
    fn moves_between_the_ends_of_the_range_go_through_zero() {
        assert_eq!(walk(i64::MIN, 0), 0);
        assert_eq!(moves(i64::MIN, 0), [("decrease", i64::MIN, 0)]);
        assert_eq!(walk(i64::MAX, i64::MIN), i64::MIN);
        assert_eq!(walk(i64::MIN, i64::MAX), i64::MAX);
        assert!(moves(7, 7).is_empty());
    }

    proptest! {
        #[test]
        fn moves_reach_any_count_from_any_count_with_valid_arguments(from: i64, to: i64) {
            prop_assert_eq!(walk(from, to), to);
        }
    }
}
