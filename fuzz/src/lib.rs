//! Shared harness for the fuzz targets: a demo host with sessions, a client
//! that follows one of them, the invariant watchers every target asserts,
//! and `Arbitrary` inputs shaped like the protocol (JSON, pointers, patches,
//! versions), so that libFuzzer's mutations land on meaningful messages.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use cosystem_worker::client::{CallId, ClientConfig, ClientCore, ClientEvent};
use cosystem_worker::demo;
use cosystem_worker::host::{
    HostConfig, HostCore, HostEvent, HostLimits, InputError, PeerKey, PeerOptions, SyncMode,
};
use cosystem_worker::wire::view::{ClientView, HostView};
use cosystem_worker::wire::{self, ClientMessage, HostMessage, call_result, host_message};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use prost::Message;
use serde_json::{Map, Value, json};

/// Decodes `bytes` with prost and with the in-place view the host reads
/// them with, asserts that the two agree (both refuse, or both accept and
/// read the same), and returns prost's result.
pub fn decode_client_both_ways(bytes: &[u8]) -> Result<ClientMessage, prost::DecodeError> {
    let decoded = ClientMessage::decode(bytes);
    let view = ClientView::decode(bytes);
    assert_eq!(
        decoded.is_ok(),
        view.is_ok(),
        "client: {decoded:?} against {view:?}"
    );
    if let (Ok(message), Ok(view)) = (&decoded, view) {
        assert_eq!(ClientView::from(message), view);
    }
    decoded
}

/// [`decode_client_both_ways`] for a `HostMessage`, as the client reads it.
pub fn decode_host_both_ways(bytes: &[u8]) -> Result<HostMessage, prost::DecodeError> {
    let decoded = HostMessage::decode(bytes);
    let view = HostView::decode(bytes);
    assert_eq!(
        decoded.is_ok(),
        view.is_ok(),
        "host: {decoded:?} against {view:?}"
    );
    if let (Ok(message), Ok(view)) = (&decoded, view) {
        assert_eq!(HostView::from(message), view);
    }
    decoded
}

/// The private section's token: it must never appear in anything published.
pub const SECRET: &str = "fuzz-secret-token";

/// The epoch every fuzzed host runs under.
pub const EPOCH: &str = "epoch-1";

/// A demo host publishing the default sections.
pub fn demo_host(patch_mode: bool, limits: HostLimits) -> HostCore {
    let config = HostConfig {
        sync: if patch_mode {
            SyncMode::Patch
        } else {
            SyncMode::Snapshot
        },
        sections: Some(demo::default_sections()),
        peer_id: "host".into(),
        limits,
        ..Default::default()
    };
    HostCore::new(config, demo::app(SECRET), EPOCH)
}

/// Small limits, so that flooding and history eviction are reachable.
pub fn small_limits() -> HostLimits {
    HostLimits {
        max_calls_in_flight: 4,
        history_entries: 4,
        history_bytes: 4096,
        max_message_bytes: 1 << 16,
        ..HostLimits::default()
    }
}

/// Opens a session that receives publications.
pub fn connect(host: &mut HostCore, peer_id: &str) -> PeerKey {
    host.connect(PeerOptions {
        peer_id: peer_id.into(),
        publications: true,
    })
    .expect("the host accepts a session")
}

/// Opens a session that receives only replies to what it sends, as a
/// shared channel's per-client session does (spec SC9).
pub fn connect_reply_only(host: &mut HostCore, peer_id: &str) -> PeerKey {
    host.connect(PeerOptions {
        peer_id: peer_id.into(),
        publications: false,
    })
    .expect("the host accepts a session")
}

/// A client with the given peer id and default settings.
pub fn client(peer_id: &str, now: Instant) -> ClientCore {
    ClientCore::new(
        ClientConfig {
            peer_id: peer_id.into(),
            ..Default::default()
        },
        now,
    )
}

/// Asserts that an error from a connected session's message is one of the
/// typed refusals a message can provoke.
pub fn assert_typed_input_error(error: &InputError) {
    assert!(
        matches!(
            error,
            InputError::Malformed(_)
                | InputError::UnknownKind
                | InputError::UnsupportedVersion(_)
                | InputError::Flooding { .. }
                | InputError::Backlog { .. }
                | InputError::MessageTooLarge { .. }
        ),
        "unexpected error for a connected session's message: {error:?}"
    );
}

/// Asserts that a frame the host sent is well-formed whatever provoked it.
pub fn check_frame(host_epoch: &str, message: &HostMessage) {
    let header = message
        .header
        .as_ref()
        .expect("every host frame has a header");
    assert_eq!(header.protocol_version, wire::PROTOCOL_VERSION);
    assert_eq!(header.epoch, host_epoch);
    match message.kind.as_ref().expect("every host frame has a kind") {
        host_message::Kind::Snapshot(s) => {
            assert!(s.version >= 1);
            let v: Value = serde_json::from_str(&s.state_json).expect("snapshot is JSON");
            assert!(v.is_object());
            assert!(!s.state_json.contains(SECRET), "the secret was published");
        }
        host_message::Kind::Patch(p) => {
            assert!(p.version >= p.base_version);
            let v: Value = serde_json::from_str(&p.patch_json).expect("patch is JSON");
            assert!(v.is_array());
            assert!(!p.patch_json.contains(SECRET), "the secret was published");
        }
        host_message::Kind::Result(r) => {
            if let Some(call_result::Outcome::ValueJson(json)) = &r.outcome {
                serde_json::from_str::<Value>(json).expect("result value is JSON");
            }
        }
    }
}

/// Reads everything queued for a session and checks each frame.
pub fn drain_session(host: &mut HostCore, peer: PeerKey) {
    let epoch = host.epoch().to_owned();
    while let Some(frame) = host.poll_transmit(peer) {
        let message = HostMessage::decode(frame.encoded()).expect("host frames decode");
        check_frame(&epoch, &message);
    }
}

/// Tracks a host's publications: every commit advances the version by one,
/// the view is always an object, and the secret is never in it.
#[derive(Default)]
pub struct PublishedWatch {
    commits: u64,
    last: u64,
}

impl PublishedWatch {
    /// Drains the host's events and checks its invariants.
    pub fn check(&mut self, host: &mut HostCore) {
        while let Some(event) = host.poll_event() {
            if let HostEvent::Published { version } = event {
                // Bookmarks re-announce the current version; commits add one.
                if version != self.last.max(1) {
                    assert_eq!(version, self.last.max(1) + 1, "a commit skipped a version");
                    self.commits += 1;
                }
                self.last = version;
            }
        }
        assert_eq!(host.version(), 1 + self.commits, "version != 1 + commits");
        let view = host.view();
        assert!(view.is_object(), "the host view is not an object: {view}");
        let text: Value = serde_json::from_str(host.view_json()).expect("view_json is JSON");
        assert_eq!(text, view, "view_json and view disagree");
        assert!(
            !host.view_json().contains(SECRET),
            "the secret was published"
        );
    }
}

/// Checks a client's invariants after every input: the mirror is `None` or a
/// JSON object, its version never goes back within an epoch, and every call
/// settles at most once.
#[derive(Default)]
pub struct ClientWatch {
    last: Option<(String, u64)>,
    /// Each settled call's outcome (the error's code on failure).
    pub settled: HashMap<CallId, Result<Value, wire::ErrorCode>>,
    made: HashSet<CallId>,
}

impl ClientWatch {
    /// Drains the client's events and checks its invariants.
    pub fn check(&mut self, client: &mut ClientCore) {
        if let Some(state) = client.state() {
            assert!(state.is_object(), "mirror is not an object: {state}");
        }
        match (client.epoch(), client.version()) {
            (Some(epoch), Some(version)) => {
                if let Some((last_epoch, last_version)) = &self.last
                    && last_epoch == epoch
                {
                    assert!(
                        version >= *last_version,
                        "mirror version went back from {last_version} to {version} in epoch {epoch:?}"
                    );
                }
                self.last = Some((epoch.to_owned(), version));
            }
            (None, None) => assert!(self.last.is_none(), "the mirror disappeared"),
            other => panic!("epoch and version disagree: {other:?}"),
        }
        while let Some(event) = client.poll_event() {
            if let ClientEvent::Settled { call, outcome, .. } = event {
                assert!(
                    self.made.contains(&call),
                    "settled a call never made: {call:?}"
                );
                let outcome = outcome.map_err(|e| e.code);
                assert!(
                    self.settled.insert(call, outcome).is_none(),
                    "call {call:?} settled twice"
                );
            }
        }
    }

    /// Makes a call through the client and remembers it.
    pub fn call(
        &mut self,
        client: &mut ClientCore,
        module: &str,
        method: &str,
        args_json: String,
    ) -> Option<CallId> {
        let id = client.call_json(module, method, args_json, None).ok()?;
        self.made.insert(id);
        Some(id)
    }

    /// Remembers a call made directly through the client.
    pub fn note_call(&mut self, id: CallId) {
        self.made.insert(id);
    }

    /// Disposes the client and checks that every call settled exactly once.
    pub fn finish(&mut self, client: &mut ClientCore) {
        client.dispose();
        self.check(client);
        assert_eq!(client.pending_calls(), 0);
        let settled: HashSet<CallId> = self.settled.keys().copied().collect();
        assert_eq!(settled, self.made, "some call never settled");
    }
}

/// Moves messages both ways between a well-behaved client and its session
/// (through their encodings) until both are quiet.
pub fn pump(
    host: &mut HostCore,
    peer: PeerKey,
    client: &mut ClientCore,
    watch: &mut ClientWatch,
    now: Instant,
) {
    let epoch = host.epoch().to_owned();
    let deliver = |host: &mut HostCore, client: &mut ClientCore, watch: &mut ClientWatch| {
        while let Some(frame) = host.poll_transmit(peer) {
            let message = HostMessage::decode(frame.encoded()).expect("host frames decode");
            check_frame(&epoch, &message);
            client.handle_message(now, message);
            watch.check(client);
        }
    };
    // The documented order: after each input, drain the session's output.
    deliver(host, client, watch);
    while let Some(m) = client.poll_transmit() {
        host.handle_bytes(peer, &m.encode_to_vec())
            .expect("a well-formed message is accepted");
        deliver(host, client, watch);
    }
}

/// A well-behaved bystander increases the counter: it must get the right
/// answer and a mirror equal to the host's view.
pub fn bystander_gets_service(
    host: &mut HostCore,
    peer: PeerKey,
    client: &mut ClientCore,
    watch: &mut ClientWatch,
    now: Instant,
) {
    pump(host, peer, client, watch, now);
    let before = host.module_state("counter").expect("counter exists")["count"]
        .as_i64()
        .expect("count is an integer");
    let Some(id) = watch.call(client, "counter", "increase", "[1]".into()) else {
        panic!("the bystander's client refused a call");
    };
    pump(host, peer, client, watch, now);
    let expected = before.checked_add(1).map(Value::from);
    match expected {
        Some(value) => assert_eq!(watch.settled.get(&id), Some(&Ok(value))),
        None => assert_eq!(
            watch.settled.get(&id),
            Some(&Err(wire::ErrorCode::InvalidArgument))
        ),
    }
    assert_eq!(
        client.state(),
        Some(&host.view()),
        "the bystander's mirror diverged"
    );
    assert_eq!(client.version(), Some(host.version()));
}

// ---------------------------------------------------------------------------
// Arbitrary inputs shaped like the protocol.
// ---------------------------------------------------------------------------

/// An object key or pointer token, biased towards the characters and forms
/// that matter to JSON pointers and array indices.
#[derive(Debug, Clone)]
pub struct Key(pub String);

impl<'a> Arbitrary<'a> for Key {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        const KEYS: [&str; 12] = [
            "a", "b", "0", "1", "2", "-", "", "~", "/", "01", "count", "items",
        ];
        Ok(Key(if u.ratio(7, 8)? {
            (*u.choose(&KEYS)?).to_owned()
        } else {
            String::arbitrary(u)?
        }))
    }
}

/// An arbitrary JSON value of bounded depth.
#[derive(Debug, Clone)]
pub struct Json(pub Value);

fn arbitrary_json(u: &mut Unstructured<'_>, depth: u32) -> arbitrary::Result<Value> {
    let kinds = if depth == 0 { 5 } else { 7 };
    Ok(match u.int_in_range(0..=kinds)? {
        0 => Value::Null,
        1 => Value::Bool(bool::arbitrary(u)?),
        2 => Value::from(i64::arbitrary(u)?),
        3 => Value::from(u64::arbitrary(u)?),
        // Eighths are exact in binary, so they survive a round trip through
        // text whatever float parsing the JSON library uses.
        4 => Value::from(f64::from(i32::arbitrary(u)?) / 8.0),
        5 => Value::String(String::arbitrary(u)?),
        6 => {
            let n = u.int_in_range(0..=4)?;
            Value::Array(
                (0..n)
                    .map(|_| arbitrary_json(u, depth - 1))
                    .collect::<Result<_, _>>()?,
            )
        }
        _ => Value::Object(arbitrary_members(u, depth - 1)?),
    })
}

fn arbitrary_members(
    u: &mut Unstructured<'_>,
    depth: u32,
) -> arbitrary::Result<Map<String, Value>> {
    let n = u.int_in_range(0..=4)?;
    let mut map = Map::new();
    for _ in 0..n {
        map.insert(Key::arbitrary(u)?.0, arbitrary_json(u, depth)?);
    }
    Ok(map)
}

impl<'a> Arbitrary<'a> for Json {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        arbitrary_json(u, 4).map(Json)
    }
}

/// An arbitrary JSON object of bounded depth.
#[derive(Debug, Clone)]
pub struct JsonObject(pub Value);

impl<'a> Arbitrary<'a> for JsonObject {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        arbitrary_members(u, 3).map(|m| JsonObject(Value::Object(m)))
    }
}

/// A JSON pointer: usually a sequence of escaped tokens, sometimes raw text
/// or unescaped tokens.
#[derive(Debug, Clone)]
pub struct Pointer(pub String);

impl<'a> Arbitrary<'a> for Pointer {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let escape = u.ratio(9, 10)?;
        if u.ratio(1, 16)? {
            return Ok(Pointer(String::arbitrary(u)?));
        }
        // Sometimes deep: one token many times, to reach nesting limits.
        let n = if u.ratio(1, 16)? {
            u.int_in_range(0..=255)?
        } else {
            u.int_in_range(0..=4)?
        };
        let mut out = String::new();
        for _ in 0..n {
            let key = Key::arbitrary(u)?.0;
            out.push('/');
            if escape {
                out.push_str(&key.replace('~', "~0").replace('/', "~1"));
            } else {
                out.push_str(&key);
            }
        }
        Ok(Pointer(out))
    }
}

/// The six RFC 6902 operations and one that is not.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum OpName {
    /// `add`
    Add,
    /// `remove`
    Remove,
    /// `replace`
    Replace,
    /// `move`
    Move,
    /// `copy`
    Copy,
    /// `test`
    Test,
    /// Not an operation.
    Bogus,
}

/// One patch operation, possibly missing members.
#[derive(Debug, Clone, Arbitrary)]
pub struct Op {
    /// The operation.
    pub op: OpName,
    /// Its `path`.
    pub path: Pointer,
    /// Its `from`.
    pub from: Pointer,
    /// Its `value`.
    pub value: Json,
    /// Which member to drop or spoil (most values keep them all).
    pub spoil: u8,
}

impl Op {
    /// The operation as JSON.
    pub fn to_json(&self) -> Value {
        let op = match self.op {
            OpName::Add => "add",
            OpName::Remove => "remove",
            OpName::Replace => "replace",
            OpName::Move => "move",
            OpName::Copy => "copy",
            OpName::Test => "test",
            OpName::Bogus => "bogus",
        };
        let mut o =
            json!({"op": op, "path": self.path.0, "from": self.from.0, "value": self.value.0});
        if let Some(map) = o.as_object_mut() {
            match self.spoil {
                0 => {
                    map.remove("path");
                }
                1 => {
                    map.remove("from");
                }
                2 => {
                    map.remove("value");
                }
                3 => {
                    map.insert("path".into(), json!(3));
                }
                4 => {
                    map.remove("op");
                }
                _ => {}
            }
        }
        o
    }
}

/// Patch text: a JSON array of operations, or arbitrary text.
#[derive(Debug, Clone, Arbitrary)]
pub enum PatchText {
    /// Structured operations.
    Ops(Vec<Op>),
    /// Operations repeated `times` times, so that growth that compounds
    /// (a copy doubling a subtree, nesting below the last nesting) is
    /// reachable from a short input.
    Repeated {
        /// The operations.
        ops: Vec<Op>,
        /// How many times.
        times: u8,
    },
    /// Any text.
    Raw(String),
}

impl PatchText {
    /// The text a host would send.
    pub fn render(&self) -> String {
        match self {
            PatchText::Ops(ops) => Value::Array(ops.iter().map(Op::to_json).collect()).to_string(),
            PatchText::Repeated { ops, times } => {
                let ops = ops.iter().map(Op::to_json);
                let all: Vec<Value> = (0..*times).flat_map(|_| ops.clone()).collect();
                Value::Array(all).to_string()
            }
            PatchText::Raw(text) => text.clone(),
        }
    }
}

/// A version: usually small so sequences line up, sometimes anything.
#[derive(Debug, Clone, Copy)]
pub struct Version(pub u64);

impl<'a> Arbitrary<'a> for Version {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Version(if u.ratio(7, 8)? {
            u.int_in_range(0..=8)?
        } else {
            u64::arbitrary(u)?
        }))
    }
}

/// A demo module name, or another name.
#[derive(Debug, Clone)]
pub struct ModuleName(pub String);

impl<'a> Arbitrary<'a> for ModuleName {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        const NAMES: [&str; 3] = ["counter", "todos", "secret"];
        Ok(ModuleName(if u.ratio(7, 8)? {
            (*u.choose(&NAMES)?).to_owned()
        } else {
            String::arbitrary(u)?
        }))
    }
}

/// A demo method name, or another name.
#[derive(Debug, Clone)]
pub struct MethodName(pub String);

impl<'a> Arbitrary<'a> for MethodName {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        const NAMES: [&str; 9] = [
            "increase", "decrease", "fail", "add", "toggle", "remove", "clear", "add_many",
            "rotate",
        ];
        Ok(MethodName(if u.ratio(7, 8)? {
            (*u.choose(&NAMES)?).to_owned()
        } else {
            String::arbitrary(u)?
        }))
    }
}

/// Whether call arguments carry the [`SECRET`] marker, as written or as the
/// host would publish their values (escapes could spell it too).
pub fn spells_secret(args_json: &str) -> bool {
    args_json.contains(SECRET)
        || serde_json::from_str::<Value>(args_json)
            .is_ok_and(|value| value.to_string().contains(SECRET))
}

/// Call arguments: usually a JSON array of plausible values, sometimes any
/// JSON or any text. Never the [`SECRET`] marker: the checks look for it in
/// everything published, and a client that sends it itself (libFuzzer learns
/// it from those very checks) would have it published as its own data.
#[derive(Debug, Clone)]
pub struct Args(pub String);

impl<'a> Arbitrary<'a> for Args {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let text = Self::any(u)?;
        Ok(Args(if spells_secret(&text) {
            "[]".to_owned()
        } else {
            text
        }))
    }
}

impl Args {
    fn any(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
        Ok(match u.int_in_range(0..=7)? {
            0..=3 => {
                let n = u.int_in_range(0..=2)?;
                let mut args = Vec::new();
                for _ in 0..n {
                    args.push(match u.int_in_range(0..=4)? {
                        0 => Value::from(u.int_in_range(-3i64..=3)?),
                        1 => Value::from(i64::arbitrary(u)?),
                        2 => Value::from(u.int_in_range(0u64..=8)?),
                        3 => Value::String(String::arbitrary(u)?),
                        _ => Value::Array(vec![Value::String(String::arbitrary(u)?)]),
                    });
                }
                Value::Array(args).to_string()
            }
            4 | 5 => {
                let n = u.int_in_range(0..=3)?;
                let args = (0..n)
                    .map(|_| arbitrary_json(u, 2))
                    .collect::<Result<_, _>>()?;
                Value::Array(args).to_string()
            }
            6 => Json::arbitrary(u)?.0.to_string(),
            _ => String::arbitrary(u)?,
        })
    }
}
