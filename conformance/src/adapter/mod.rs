//! The adapter protocol: how the conformance runner drives a client
//! implementation written in any language.
//!
//! An *adapter* is a small program that wraps one client library. The
//! runner starts it once per case and talks to it in JSON lines: one
//! [`Command`] per line on the adapter's stdin, exactly one [`Reply`] per
//! line on its stdout, in order. The runner plays a scripted host by
//! replaying the client vectors, so the adapter never opens a socket: it
//! hands the library the host envelopes it is given and reports what the
//! library sent and what it reported. Time is virtual: the adapter keeps a
//! clock that starts at 0 and moves only on [`Command::Advance`].
//!
//! spec/CONFORMANCE.md §6 is the normative description, with an example of
//! every command and reply. This module is its Rust reading:
//! [`Command::to_json`]/[`Command::from_json`] and
//! [`Reply::to_json`]/[`Reply::from_json`] are the wire format, and
//! [`ClientUnderTest`] is what the vector runner drives, whether the client
//! is in this process ([`reference::ReferenceClient`]) or behind a pipe
//! ([`process::AdapterProcess`]).

mod groups;
pub mod process;
pub mod reference;
pub mod runner;

pub use groups::{kill_adapters_on_signal, writing_reports};

use base64::Engine;
use cosystem_worker::wire::{ClientMessage, HostMessage};
use prost::Message;
use serde_json::{Map, Value, json};

use crate::vectors::u64_of;
use crate::wirejson::{
    client_message_from_json, client_message_to_json, host_message_from_json, host_message_to_json,
};

/// How the client under test is configured (the `config` of `start`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterConfig {
    /// The client's peer id (`header.source` of what it sends).
    pub peer_id: String,
    /// The host's peer id; when non-empty, envelopes from other sources are
    /// ignored.
    pub host_id: String,
    /// Capability token; empty for none.
    pub capability: String,
    /// Local limit of pending calls.
    pub max_calls_in_flight: u64,
    /// Sync retry interval in milliseconds.
    pub sync_retry_ms: u64,
    /// Host silence in milliseconds (L10); `None` for off.
    pub host_silence_ms: Option<u64>,
    /// The client's max call size (PROTOCOL.md §15, a local limit with no
    /// normative minimum): a Call whose envelope would be larger is refused
    /// `RESOURCE_EXHAUSTED` and never sent (L2). A vector may set it to a
    /// few hundred bytes, so that a call over it stays small.
    pub max_call_bytes: u64,
}

/// §15's default max call size.
pub const DEFAULT_MAX_CALL_BYTES: u64 = 4 * 1024 * 1024;

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            peer_id: "c1".to_owned(),
            host_id: String::new(),
            capability: String::new(),
            max_calls_in_flight: 1024,
            sync_retry_ms: 2000,
            host_silence_ms: None,
            max_call_bytes: DEFAULT_MAX_CALL_BYTES,
        }
    }
}

/// Arguments of a call: a JSON array, or raw text when a vector wants to
/// send something that is not one.
#[derive(Debug, Clone, PartialEq)]
pub enum CallArgs {
    /// Positional arguments.
    List(Vec<Value>),
    /// `args_json` exactly as the application passes it.
    Text(String),
}

/// A length-delimited field 15 (`"v2"`), which no v1 message has: what
/// [`with_unknown_fields`] adds.
const UNKNOWN_FIELD: &[u8] = &[0x7a, 0x02, b'v', b'2'];

/// `message` encoded with an unknown field added to the envelope, to its
/// header and to its kind's message, where a later revision of v1 might add
/// fields (PROTOCOL.md C4): a receiver skips all three (C1).
pub fn with_unknown_fields(message: &HostMessage) -> Vec<u8> {
    use cosystem_worker::wire::host_message::Kind;
    let mut out = Vec::new();
    if let Some(header) = &message.header {
        let mut bytes = header.encode_to_vec();
        bytes.extend_from_slice(UNKNOWN_FIELD);
        prost::encoding::bytes::encode(1, &bytes, &mut out);
    }
    let kind = match &message.kind {
        Some(Kind::Snapshot(m)) => Some((2, m.encode_to_vec())),
        Some(Kind::Patch(m)) => Some((3, m.encode_to_vec())),
        Some(Kind::Result(m)) => Some((4, m.encode_to_vec())),
        None => None,
    };
    if let Some((field, mut bytes)) = kind {
        bytes.extend_from_slice(UNKNOWN_FIELD);
        prost::encoding::bytes::encode(field, &bytes, &mut out);
    }
    out.extend_from_slice(UNKNOWN_FIELD);
    out
}

/// One command from the runner to the adapter.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Create the client at virtual time 0, connected. It sends its initial
    /// SyncRequest.
    Start(AdapterConfig),
    /// Hand the client one host envelope.
    Deliver(HostMessage),
    /// Hand the client one host envelope whose bytes also carry fields no
    /// v1 message has ([`with_unknown_fields`]), as a later revision may
    /// add them (PROTOCOL.md C1, C4). Its JSON cannot show them: the
    /// canonical mapping has no place for unknown fields.
    DeliverWithUnknownFields(HostMessage),
    /// The application calls a method. `call` labels the call in later
    /// commands and in events.
    Call {
        /// The label.
        call: String,
        /// Module name.
        module: String,
        /// Method name.
        method: String,
        /// Arguments.
        args: CallArgs,
        /// Deadline relative to the current virtual time; `None` for none.
        timeout_ms: Option<u64>,
    },
    /// The application cancels the call with this label.
    Cancel(String),
    /// Virtual time moves forward by this many ms; timers that are due run.
    Advance(u64),
    /// The transport broke.
    ConnectionLost,
    /// The shared channel reports this many envelopes lost (SC12, L9).
    EnvelopesLost(u64),
    /// The transport is back.
    Reconnected,
    /// The application disposes of the client.
    Dispose,
    /// Report the client's state.
    Report,
}

/// The client's state, as reported in answer to [`Command::Report`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClientState {
    /// The mirrored view; `None` while the client has no mirror.
    pub mirror: Option<Value>,
    /// The mirror's version; `None` while the client has no mirror.
    pub version: Option<u64>,
    /// The mirror's epoch; `None` while the client has no mirror.
    pub epoch: Option<String>,
    /// Unsettled calls, when the library can tell (otherwise not checked).
    pub pending: Option<u64>,
    /// When the client next needs the time, in ms of virtual time
    /// (`Some(None)`: never); `None` when the library cannot tell (then not
    /// checked).
    pub timer_ms: Option<Option<u64>>,
}

/// How a call settled.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// The method's value.
    Ok(Value),
    /// An error, host or local.
    Error {
        /// Kebab-case code name (`not-found`, `outcome-unknown`, …).
        code: String,
        /// The error's message.
        message: String,
    },
}

/// Something the client reported.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The first snapshot was accepted.
    Ready,
    /// The mirror changed; its version now.
    StateChanged(u64),
    /// A conflict (`stale-message`, `missing-snapshot`, `version-gap`,
    /// `patch-apply-failed`).
    Conflict {
        /// The reason, kebab-case.
        reason: String,
        /// The mirror's version (0 with no mirror).
        current_version: u64,
        /// The incoming message's version.
        incoming_version: u64,
    },
    /// A notice: `{"kind": "epoch-changed", "old", "new"}`,
    /// `{"kind": "unexpected-result", "call_id"}`,
    /// `{"kind": "malformed-message"}`, `{"kind": "overflow", "version"}`,
    /// `{"kind": "envelopes-lost", "count"}`,
    /// `{"kind": "host-silent", "silence_ms"}`; members other than these are dropped when read.
    Notice(Value),
    /// A call settled.
    Settled {
        /// The call's label.
        call: String,
        /// Its outcome.
        outcome: Settlement,
        /// The state version the host's answer named; `None` for a local
        /// outcome.
        state_version: Option<u64>,
    },
}

/// The adapter's answer to one command.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reply {
    /// The envelopes the client handed to its transport while handling the
    /// command, in order.
    pub sent: Vec<ClientMessage>,
    /// What the client reported while handling it, in order.
    pub events: Vec<Event>,
    /// For `call`: the call id the client assigned, if the library exposes
    /// it (the runner otherwise learns it from the Call envelope).
    pub call_id: Option<u64>,
    /// For `report`: the client's state.
    pub state: Option<ClientState>,
}

/// A client the vector runner can drive: one command in, one reply out.
pub trait ClientUnderTest {
    /// Performs `command`. An `Err` means the adapter could not do it at all
    /// (it crashed, timed out, or refused the command); it fails the case.
    fn command(&mut self, command: &Command) -> Result<Reply, String>;
}

fn string_member<'a>(map: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    map.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{key:?} must be a string"))
}

fn opt_u64(map: &Map<String, Value>, key: &str) -> Result<Option<u64>, String> {
    match map.get(key) {
        None => Ok(None),
        Some(v) if is_unset(v) => Ok(None),
        Some(v) => u64_of(v).map(Some).map_err(|e| format!("{key}: {e}")),
    }
}

fn version_text(v: u64) -> Value {
    Value::String(v.to_string())
}

impl Command {
    /// The command's JSON line (without the newline).
    pub fn to_json(&self) -> Value {
        match self {
            Command::Start(c) => json!({"op": "start", "config": {
                "peer_id": c.peer_id,
                "host_id": c.host_id,
                "capability": c.capability,
                "max_calls_in_flight": c.max_calls_in_flight,
                "sync_retry_ms": c.sync_retry_ms,
                "host_silence_ms": c.host_silence_ms,
                "max_call_bytes": c.max_call_bytes,
            }}),
            Command::Deliver(m) => json!({
                "op": "deliver",
                "message": host_message_to_json(m),
                "bytes": base64::engine::general_purpose::STANDARD.encode(m.encode_to_vec()),
            }),
            Command::DeliverWithUnknownFields(m) => json!({
                "op": "deliver",
                "message": host_message_to_json(m),
                "bytes": base64::engine::general_purpose::STANDARD.encode(with_unknown_fields(m)),
            }),
            Command::Call {
                call,
                module,
                method,
                args,
                timeout_ms,
            } => {
                let mut v = json!({"op": "call", "call": call, "module": module, "method": method});
                match args {
                    CallArgs::List(list) => v["args"] = Value::Array(list.clone()),
                    CallArgs::Text(text) => v["args_json"] = json!(text),
                }
                if let Some(t) = timeout_ms {
                    v["timeout_ms"] = json!(t);
                }
                v
            }
            Command::Cancel(call) => json!({"op": "cancel", "call": call}),
            Command::Advance(ms) => json!({"op": "advance", "ms": ms}),
            Command::ConnectionLost => json!({"op": "connection_lost"}),
            Command::EnvelopesLost(count) => json!({"op": "envelopes_lost", "count": count}),
            Command::Reconnected => json!({"op": "reconnected"}),
            Command::Dispose => json!({"op": "dispose"}),
            Command::Report => json!({"op": "report"}),
        }
    }

    /// Reads a command line.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let map = value.as_object().ok_or("a command must be a JSON object")?;
        Ok(match string_member(map, "op")? {
            "start" => {
                let d = AdapterConfig::default();
                let empty = Map::new();
                let c = map
                    .get("config")
                    .and_then(Value::as_object)
                    .unwrap_or(&empty);
                let text = |k: &str, default: &str| {
                    c.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or(default)
                        .to_owned()
                };
                Command::Start(AdapterConfig {
                    peer_id: text("peer_id", &d.peer_id),
                    host_id: text("host_id", &d.host_id),
                    capability: text("capability", &d.capability),
                    max_calls_in_flight: opt_u64(c, "max_calls_in_flight")?
                        .unwrap_or(d.max_calls_in_flight),
                    sync_retry_ms: opt_u64(c, "sync_retry_ms")?.unwrap_or(d.sync_retry_ms),
                    host_silence_ms: opt_u64(c, "host_silence_ms")?,
                    max_call_bytes: opt_u64(c, "max_call_bytes")?.unwrap_or(d.max_call_bytes),
                })
            }
            "deliver" => {
                let bytes = match map.get("bytes") {
                    Some(Value::String(b)) => Some(
                        base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .map_err(|e| format!("bytes: {e}"))?,
                    ),
                    _ => None,
                };
                let message = match (map.get("message"), &bytes) {
                    (Some(m), _) => host_message_from_json(m).map_err(|e| e.to_string())?,
                    (None, Some(bytes)) => {
                        HostMessage::decode(bytes.as_slice()).map_err(|e| e.to_string())?
                    }
                    _ => return Err("deliver needs message or bytes".into()),
                };
                // Bytes that say more than the message are the message
                // with the fields a later revision might add.
                match bytes {
                    Some(bytes) if bytes == with_unknown_fields(&message) => {
                        Command::DeliverWithUnknownFields(message)
                    }
                    _ => Command::Deliver(message),
                }
            }
            "call" => {
                let args = match (map.get("args"), map.get("args_json")) {
                    (Some(Value::Array(list)), _) => CallArgs::List(list.clone()),
                    (None, Some(Value::String(text))) => CallArgs::Text(text.clone()),
                    (None, None) => CallArgs::List(Vec::new()),
                    _ => return Err("call: args must be an array, args_json a string".into()),
                };
                Command::Call {
                    call: string_member(map, "call")?.to_owned(),
                    module: string_member(map, "module")?.to_owned(),
                    method: string_member(map, "method")?.to_owned(),
                    args,
                    timeout_ms: opt_u64(map, "timeout_ms")?,
                }
            }
            "cancel" => Command::Cancel(string_member(map, "call")?.to_owned()),
            "advance" => Command::Advance(opt_u64(map, "ms")?.ok_or("advance needs ms")?),
            "connection_lost" => Command::ConnectionLost,
            "envelopes_lost" => {
                Command::EnvelopesLost(opt_u64(map, "count")?.ok_or("envelopes_lost needs count")?)
            }
            "reconnected" => Command::Reconnected,
            "dispose" => Command::Dispose,
            "report" => Command::Report,
            other => return Err(format!("unknown op {other:?}")),
        })
    }
}

impl Event {
    /// The event as it appears in a reply's `events`.
    pub fn to_json(&self) -> Value {
        match self {
            Event::Ready => json!({"type": "ready"}),
            Event::StateChanged(v) => json!({"type": "state_changed", "version": version_text(*v)}),
            Event::Conflict {
                reason,
                current_version,
                incoming_version,
            } => json!({
                "type": "conflict",
                "reason": reason,
                "current_version": version_text(*current_version),
                "incoming_version": version_text(*incoming_version),
            }),
            Event::Notice(notice) => {
                let mut v = notice.clone();
                if let Some(m) = v.as_object_mut() {
                    m.insert("type".into(), json!("notice"));
                }
                v
            }
            Event::Settled {
                call,
                outcome,
                state_version,
            } => {
                let mut v = json!({"type": "settled", "call": call});
                match outcome {
                    Settlement::Ok(value) => v["ok"] = value.clone(),
                    Settlement::Error { code, message } => {
                        v["error"] = json!(code);
                        v["message"] = json!(message);
                    }
                }
                v["state_version"] = state_version.map_or(Value::Null, version_text);
                v
            }
        }
    }

    /// Reads an event.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let map = value.as_object().ok_or("an event must be a JSON object")?;
        let version = |k: &str| opt_u64(map, k)?.ok_or_else(|| format!("{k} is missing"));
        Ok(match string_member(map, "type")? {
            "ready" => Event::Ready,
            "state_changed" => Event::StateChanged(version("version")?),
            "conflict" => Event::Conflict {
                reason: string_member(map, "reason")?.to_owned(),
                current_version: version("current_version")?,
                incoming_version: version("incoming_version")?,
            },
            "notice" => {
                let kind = string_member(map, "kind")?;
                // Only the members the vectors check are kept: an adapter may
                // add details (a malformed message's reason) for its logs.
                let keep: &[&str] = match kind {
                    "epoch-changed" => &["old", "new"],
                    "unexpected-result" => &["call_id"],
                    "overflow" => &["version"],
                    "envelopes-lost" => &["count"],
                    "host-silent" => &["silence_ms"],
                    _ => &[],
                };
                let mut notice = Map::new();
                notice.insert("kind".into(), json!(kind));
                for k in keep {
                    let v = map
                        .get(*k)
                        .ok_or_else(|| format!("notice {kind} needs {k}"))?;
                    // Ids and versions as decimal strings, whichever way sent.
                    let v = match v {
                        Value::Number(n) => Value::String(n.to_string()),
                        other => other.clone(),
                    };
                    notice.insert((*k).to_owned(), v);
                }
                Event::Notice(Value::Object(notice))
            }
            "settled" => {
                // A member set to null, or an `error` set to "", is absent
                // (what a struct without `omitempty` writes); `ok` may
                // itself be the value null, unless an error is given.
                let error = map.get("error").filter(|e| !is_unset(e));
                let ok = map.get("ok").filter(|v| error.is_none() || !v.is_null());
                let outcome = match (ok, error) {
                    (Some(v), None) => Settlement::Ok(v.clone()),
                    (None, Some(Value::String(code))) => Settlement::Error {
                        code: code.clone(),
                        message: map
                            .get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                    },
                    _ => return Err("settled needs exactly one of ok and error (a string)".into()),
                };
                Event::Settled {
                    call: string_member(map, "call")?.to_owned(),
                    outcome,
                    state_version: opt_u64(map, "state_version")?,
                }
            }
            other => return Err(format!("unknown event type {other:?}")),
        })
    }
}

impl ClientState {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "mirror": self.mirror.clone().unwrap_or(Value::Null),
            "version": self.version.map_or(Value::Null, version_text),
            "epoch": self.epoch.clone().map_or(Value::Null, Value::String),
        });
        if let Some(p) = self.pending {
            v["pending"] = json!(p);
        }
        if let Some(t) = self.timer_ms {
            v["timer_ms"] = t.map_or(Value::Null, |t| json!(t));
        }
        v
    }

    fn from_json(value: &Value) -> Result<Self, String> {
        let map = value.as_object().ok_or("state must be a JSON object")?;
        let mirror = match map.get("mirror") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.clone()),
        };
        Ok(Self {
            mirror,
            version: opt_u64(map, "version")?,
            epoch: map.get("epoch").and_then(Value::as_str).map(str::to_owned),
            pending: opt_u64(map, "pending")?,
            timer_ms: match map.get("timer_ms") {
                None => None,
                Some(Value::Null) => Some(None),
                Some(v) => Some(Some(u64_of(v).map_err(|e| format!("timer_ms: {e}"))?)),
            },
        })
    }
}

/// An optional member a reply leaves unset: `null`, or the empty string a
/// struct without `omitempty` writes for a string member.
fn is_unset(value: &Value) -> bool {
    value.is_null() || value.as_str() == Some("")
}

impl Reply {
    /// The reply's JSON line (without the newline). Sent envelopes are
    /// written in canonical JSON.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "sent": self.sent.iter().map(client_message_to_json).collect::<Vec<_>>(),
            "events": self.events.iter().map(Event::to_json).collect::<Vec<_>>(),
        });
        if let Some(id) = self.call_id {
            v["call_id"] = version_text(id);
        }
        if let Some(state) = &self.state {
            v["state"] = state.to_json();
        }
        v
    }

    /// Reads a reply. An `{"error": "..."}` reply becomes `Err`. Each sent
    /// envelope may be canonical JSON or a string of base64 protobuf bytes.
    /// `sent` and `events` are required; an optional member set to null is
    /// absent; any other member is refused, so that a stray line on the
    /// adapter's stdout is not taken for a reply.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let map = value.as_object().ok_or("a reply must be a JSON object")?;
        if let Some(error) = map.get("error").filter(|e| !is_unset(e)) {
            return Err(format!(
                "the adapter refused the command: {}",
                error
                    .as_str()
                    .map_or_else(|| error.to_string(), str::to_owned)
            ));
        }
        if let Some(other) = map
            .keys()
            .find(|k| !["sent", "events", "call_id", "state", "error"].contains(&k.as_str()))
        {
            return Err(format!(
                "a reply has no member {other:?} (is something else printing to stdout?): {value}"
            ));
        }
        let list = |k: &str| match map.get(k) {
            None => Err(format!(
                "a reply must have {k:?} (an array, maybe empty): {value}"
            )),
            // What a Go slice left nil writes.
            Some(Value::Null) => Ok(&[][..]),
            Some(Value::Array(items)) => Ok(items.as_slice()),
            Some(_) => Err(format!("{k} must be an array")),
        };
        let sent = list("sent")?
            .iter()
            .map(|m| match m {
                Value::String(b64) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| format!("sent: {e}"))
                    .and_then(|bytes| {
                        ClientMessage::decode(bytes.as_slice()).map_err(|e| format!("sent: {e}"))
                    }),
                other => client_message_from_json(other).map_err(|e| format!("sent: {e}")),
            })
            .collect::<Result<_, _>>()?;
        let events = list("events")?
            .iter()
            .map(Event::from_json)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            sent,
            events,
            call_id: match map.get("call_id") {
                Some(v) if is_unset(v) => None,
                _ => opt_u64(map, "call_id")?,
            },
            state: map
                .get("state")
                .filter(|s| !s.is_null())
                .map(ClientState::from_json)
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use cosystem_worker::wire::{Header, SyncReason, SyncRequest, client_message};

    use super::*;

    #[test]
    fn commands_round_trip_through_their_json_lines() {
        let commands = [
            Command::Start(AdapterConfig::default()),
            Command::Call {
                call: "a".into(),
                module: "counter".into(),
                method: "increase".into(),
                args: CallArgs::List(vec![json!(1)]),
                timeout_ms: Some(500),
            },
            Command::Call {
                call: "b".into(),
                module: "m".into(),
                method: "x".into(),
                args: CallArgs::Text("{".into()),
                timeout_ms: None,
            },
            Command::Cancel("a".into()),
            Command::Advance(0),
            Command::ConnectionLost,
            Command::EnvelopesLost(3),
            Command::Reconnected,
            Command::Dispose,
            Command::Report,
        ];
        for c in commands {
            assert_eq!(Command::from_json(&c.to_json()), Ok(c));
        }
    }

    #[test]
    fn an_envelope_with_unknown_fields_decodes_as_itself_and_round_trips_as_such() {
        use cosystem_worker::wire::{CallResult, call_result, host_message};
        let message = HostMessage {
            header: Some(Header::v1("e1", "h", "c1")),
            kind: Some(host_message::Kind::Result(CallResult {
                call_id: 7,
                state_version: 2,
                outcome: Some(call_result::Outcome::ValueJson("1".into())),
            })),
        };
        let extended = with_unknown_fields(&message);
        assert_ne!(extended, message.encode_to_vec());
        assert_eq!(
            HostMessage::decode(extended.as_slice()),
            Ok(message.clone())
        );
        for c in [
            Command::Deliver(message.clone()),
            Command::DeliverWithUnknownFields(message),
        ] {
            assert_eq!(Command::from_json(&c.to_json()), Ok(c));
        }
    }

    #[test]
    fn replies_round_trip_and_accept_numbers_and_base64() {
        let sync = ClientMessage {
            header: Some(Header::v1("", "c1", "")),
            kind: Some(client_message::Kind::SyncRequest(SyncRequest {
                sync_id: 1,
                have_version: 0,
                reason: SyncReason::Initial as i32,
            })),
        };
        let reply = Reply {
            sent: vec![sync.clone()],
            events: vec![
                Event::Ready,
                Event::StateChanged(u64::MAX),
                Event::Settled {
                    call: "a".into(),
                    outcome: Settlement::Error {
                        code: "cancelled".into(),
                        message: "m".into(),
                    },
                    state_version: None,
                },
            ],
            call_id: Some(3),
            state: Some(ClientState {
                mirror: Some(json!({})),
                version: Some(1),
                epoch: Some("e1".into()),
                pending: None,
                timer_ms: Some(None),
            }),
        };
        assert_eq!(Reply::from_json(&reply.to_json()), Ok(reply));
        let loose = json!({
            "sent": [base64::engine::general_purpose::STANDARD.encode(sync.encode_to_vec())],
            "events": [{"type": "notice", "kind": "unexpected-result", "call_id": 7, "extra": 1}],
        });
        let read = Reply::from_json(&loose).unwrap();
        assert_eq!(read.sent, vec![sync]);
        assert_eq!(
            read.events,
            vec![Event::Notice(
                json!({"kind": "unexpected-result", "call_id": "7"})
            )]
        );
    }

    #[test]
    fn an_error_reply_is_an_error() {
        assert!(Reply::from_json(&json!({"error": "unsupported"})).is_err());
    }

    #[test]
    fn optional_members_set_to_null_are_absent() {
        let reply = Reply::from_json(&json!({
            "sent": [], "events": [
                {"type": "settled", "call": "a", "ok": null, "error": null}
            ],
            "error": null, "call_id": null, "state": null
        }))
        .unwrap();
        assert_eq!(reply.call_id, None);
        assert!(reply.state.is_none());
        assert!(matches!(
            &reply.events[0],
            Event::Settled {
                outcome: Settlement::Ok(Value::Null),
                ..
            }
        ));
    }

    #[test]
    fn the_zero_values_of_a_struct_without_omitempty_are_absent() {
        let reply = Reply::from_json(&json!({
            "sent": null, "events": [
                {"type": "settled", "call": "a", "ok": null, "error": "cancelled", "message": "", "state_version": ""},
                {"type": "settled", "call": "b", "ok": 3, "error": ""}
            ],
            "error": "", "call_id": ""
        }))
        .unwrap();
        assert!(reply.sent.is_empty());
        assert_eq!(reply.call_id, None);
        assert!(matches!(
            &reply.events[0],
            Event::Settled { outcome: Settlement::Error { code, .. }, .. } if code == "cancelled"
        ));
        assert!(matches!(
            &reply.events[1],
            Event::Settled { outcome: Settlement::Ok(v), .. } if *v == json!(3)
        ));
    }

    #[test]
    fn a_reply_without_its_arrays_or_with_other_members_is_refused() {
        let missing = Reply::from_json(&json!({"events": []})).unwrap_err();
        assert!(missing.contains("\"sent\""), "{missing}");
        let stray = Reply::from_json(&json!({"level": "info", "msg": "connected"})).unwrap_err();
        assert!(stray.contains("stdout"), "{stray}");
    }
}
