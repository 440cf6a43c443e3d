//! Sequences of structured host messages (snapshots, patches and results
//! with arbitrary versions, epochs and JSON), interleaved with the
//! application's calls, cancellations, timeouts and reconnections, fed to a
//! `ClientCore`.
//!
//! The input also chooses the client's host silence (L10), in seconds, or
//! none.
//!
//! Invariants: no panic; the mirror is `None` or a JSON object; its version
//! never goes back within an epoch; every call settles at most once, and
//! exactly once by the time the client is disposed; after a timeout nothing
//! is due at or before its time; a link host silence took down sends
//! nothing until reconnected.
#![no_main]

use std::time::{Duration, Instant};

use cosystem_worker::client::{CallId, ClientConfig, ClientCore};
use cosystem_worker::wire::{
    self, CallResult, Header, HostMessage, Patch, Snapshot, call_result, host_message,
};
use fuzz_support::{ClientWatch, Json, JsonObject, PatchText, Version};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Epoch {
    First,
    Second,
    Empty,
}

impl Epoch {
    fn name(self) -> &'static str {
        match self {
            Epoch::First => "e1",
            Epoch::Second => "e2",
            Epoch::Empty => "",
        }
    }
}

#[derive(Debug, Arbitrary)]
enum State {
    Object(JsonObject),
    Any(Json),
    Text(String),
}

#[derive(Debug, Arbitrary)]
enum Outcome {
    Value(Json),
    Text(String),
    Error {
        code: i32,
        message: String,
        details: String,
    },
    None,
}

#[derive(Debug, Arbitrary)]
enum Step {
    Snapshot {
        epoch: Epoch,
        version: Version,
        state: State,
        sync_id: u8,
        reason: i32,
    },
    Patch {
        epoch: Epoch,
        base: Version,
        version: Version,
        patch: PatchText,
        sync_id: u8,
    },
    Result {
        epoch: Epoch,
        call_id: u8,
        state_version: Version,
        outcome: Outcome,
    },
    /// Anything with another protocol version, target or no header.
    Foreign {
        protocol_version: u32,
        target: String,
        headerless: bool,
    },
    Call {
        deadline_ms: Option<u16>,
    },
    Cancel(u8),
    Advance(u16),
    ConnectionLost,
    Reconnected,
}

fn message(epoch: Epoch, kind: host_message::Kind) -> HostMessage {
    HostMessage {
        header: Some(Header::v1(epoch.name(), "host", "")),
        kind: Some(kind),
    }
}

fuzz_target!(|input: (Option<u8>, Vec<Step>)| {
    let (silence_s, steps) = input;
    let start = Instant::now();
    let mut now = start;
    let config = ClientConfig {
        peer_id: "client".into(),
        host_silence: silence_s.map(|s| Duration::from_secs(u64::from(s) + 1)),
        ..Default::default()
    };
    let mut core = ClientCore::new(config, now);
    let mut watch = ClientWatch::default();
    for step in steps {
        match step {
            Step::Snapshot {
                epoch,
                version,
                state,
                sync_id,
                reason,
            } => {
                let state_json = match state {
                    State::Object(o) => o.0.to_string(),
                    State::Any(v) => v.0.to_string(),
                    State::Text(t) => t,
                };
                let kind = host_message::Kind::Snapshot(Snapshot {
                    version: version.0,
                    state_json,
                    sync_id: u64::from(sync_id),
                    reason,
                });
                core.handle_message(now, message(epoch, kind));
            }
            Step::Patch {
                epoch,
                base,
                version,
                patch,
                sync_id,
            } => {
                let kind = host_message::Kind::Patch(Patch {
                    base_version: base.0,
                    version: version.0,
                    patch_json: patch.render(),
                    sync_id: u64::from(sync_id),
                });
                let before = (
                    core.epoch().map(str::to_owned),
                    core.version(),
                    core.state().cloned(),
                );
                core.handle_message(now, message(epoch, kind));
                // A patch changes the mirror only together with its version.
                if (core.epoch().map(str::to_owned), core.version()) == (before.0, before.1) {
                    assert_eq!(
                        core.state(),
                        before.2.as_ref(),
                        "a patch changed the mirror but not its version"
                    );
                }
            }
            Step::Result {
                epoch,
                call_id,
                state_version,
                outcome,
            } => {
                let outcome = match outcome {
                    Outcome::Value(v) => Some(call_result::Outcome::ValueJson(v.0.to_string())),
                    Outcome::Text(t) => Some(call_result::Outcome::ValueJson(t)),
                    Outcome::Error {
                        code,
                        message,
                        details,
                    } => Some(call_result::Outcome::Error(wire::Error {
                        code,
                        message,
                        details_json: details,
                    })),
                    Outcome::None => None,
                };
                let kind = host_message::Kind::Result(CallResult {
                    call_id: u64::from(call_id),
                    state_version: state_version.0,
                    outcome,
                });
                core.handle_message(now, message(epoch, kind));
            }
            Step::Foreign {
                protocol_version,
                target,
                headerless,
            } => {
                let header = (!headerless).then(|| Header {
                    protocol_version,
                    target,
                    ..Header::v1("e1", "host", "")
                });
                let kind = host_message::Kind::Snapshot(Snapshot {
                    version: 1,
                    state_json: "{}".into(),
                    sync_id: 0,
                    reason: 0,
                });
                core.handle_message(
                    now,
                    HostMessage {
                        header,
                        kind: Some(kind),
                    },
                );
            }
            Step::Call { deadline_ms } => {
                let deadline = deadline_ms.map(|ms| now + Duration::from_millis(u64::from(ms)));
                if let Ok(id) = core.call("counter", "increase", &[1.into()], deadline) {
                    watch.note_call(id);
                }
            }
            Step::Cancel(id) => {
                core.cancel(CallId(u64::from(id)));
            }
            Step::Advance(ms) => {
                now += Duration::from_millis(u64::from(ms) * 16);
                core.handle_timeout(now);
                assert!(
                    core.poll_timeout().is_none_or(|due| due > now),
                    "a timeout left something due"
                );
                if core.is_host_silent() {
                    assert!(
                        core.poll_transmit().is_none(),
                        "sent on a link host silence took down"
                    );
                }
            }
            Step::ConnectionLost => core.connection_lost(),
            Step::Reconnected => core.reconnected(now),
        }
        while core.poll_transmit().is_some() {}
        watch.check(&mut core);
    }
    watch.finish(&mut core);
});
