//! Hostile input on every path into the sans-IO cores: whatever a peer sends,
//! nothing panics, errors are typed, the mirror stays a JSON object, and
//! every other session keeps getting correct service.
//!
//! Case counts are small by default so the file runs in seconds in debug
//! builds; set `PROPTEST_CASES` to raise them. The coverage-guided versions
//! of these properties live in `fuzz/`.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use cosystem_worker::client::{CallId, ClientConfig, ClientCore, ClientEvent, apply_patch};
use cosystem_worker::demo;
use cosystem_worker::host::{
    HostConfig, HostCore, HostEvent, HostLimits, InputError, PeerKey, PeerOptions, SyncMode,
};
use cosystem_worker::wire::{
    self, Call, CallResult, ClientMessage, ErrorCode, Header, HostMessage, Patch, Snapshot,
    SyncRequest, call_result, client_message, host_message,
};
use proptest::prelude::*;
use prost::Message;
use serde_json::{Value, json};

/// `cases` unless `PROPTEST_CASES` says otherwise.
fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

const SECRET: &str = "hostile-secret-token";

// ---------------------------------------------------------------------------
// Harness: a demo host with clients following it, and invariant watchers.
// ---------------------------------------------------------------------------

/// Tracks a host's publications: every commit advances the version by one.
#[derive(Default)]
struct PublishedWatch {
    commits: u64,
    last: u64,
}

impl PublishedWatch {
    fn drain(&mut self, host: &mut HostCore) {
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
    }

    fn check(&mut self, host: &mut HostCore) {
        self.drain(host);
        assert_eq!(host.version(), 1 + self.commits, "version != 1 + commits");
        let view = host.view();
        assert!(view.is_object(), "the host view is not an object: {view}");
        assert!(
            !view.to_string().contains(SECRET),
            "the private section leaked into the view"
        );
        let text: Value = serde_json::from_str(host.view_json()).expect("view_json is JSON");
        assert_eq!(text, view, "view_json and view disagree");
    }
}

/// Checks a client's invariants after every input: the mirror is `None` or a
/// JSON object, its version never goes back within an epoch, and every call
/// settles at most once.
#[derive(Default)]
struct ClientWatch {
    last: Option<(String, u64)>,
    settled: HashMap<CallId, Result<Value, wire::ErrorCode>>,
    made: HashSet<CallId>,
}

impl ClientWatch {
    fn check(&mut self, client: &mut ClientCore) {
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

    fn call(
        &mut self,
        client: &mut ClientCore,
        module: &str,
        method: &str,
        args: &[Value],
    ) -> CallId {
        let id = client
            .call(module, method, args, None)
            .expect("client accepts the call");
        self.made.insert(id);
        id
    }

    /// Disposes the client and checks that every call made settled exactly once.
    fn finish(&mut self, client: &mut ClientCore) {
        client.dispose();
        self.check(client);
        assert_eq!(client.pending_calls(), 0);
        let settled: HashSet<CallId> = self.settled.keys().copied().collect();
        assert_eq!(settled, self.made, "some call never settled");
    }
}

fn demo_host(sync: SyncMode, limits: HostLimits) -> HostCore {
    let config = HostConfig {
        sync,
        sections: Some(demo::default_sections()),
        peer_id: "host".into(),
        limits,
        ..Default::default()
    };
    HostCore::new(config, demo::app(SECRET), "epoch-1")
}

/// A demo host whose messages are limited to `limit` bytes, with an
/// attacker's session and a bystander's (with its client).
struct Limited {
    host: HostCore,
    attacker: PeerKey,
    peer: PeerKey,
    client: ClientCore,
    watch: ClientWatch,
}

fn limited(limit: usize, now: Instant) -> Limited {
    let limits = HostLimits {
        max_message_bytes: limit,
        ..HostLimits::default()
    };
    let mut host = demo_host(SyncMode::Patch, limits);
    let (attacker, _) = connect(&mut host, "attacker", now);
    let (peer, client) = connect(&mut host, "bystander", now);
    Limited {
        host,
        attacker,
        peer,
        client,
        watch: ClientWatch::default(),
    }
}

fn connect(host: &mut HostCore, peer_id: &str, now: Instant) -> (PeerKey, ClientCore) {
    let key = host
        .connect(PeerOptions {
            peer_id: peer_id.into(),
            publications: true,
        })
        .expect("the host accepts the session");
    let client = ClientCore::new(
        ClientConfig {
            peer_id: peer_id.into(),
            ..Default::default()
        },
        now,
    );
    (key, client)
}

/// Moves messages both ways between a well-behaved client and its session
/// until both are quiet.
fn pump(
    host: &mut HostCore,
    peer: PeerKey,
    client: &mut ClientCore,
    watch: &mut ClientWatch,
    now: Instant,
) {
    let deliver = |host: &mut HostCore, client: &mut ClientCore, watch: &mut ClientWatch| {
        while let Some(frame) = host.poll_transmit(peer) {
            // Through the bytes, as a byte transport would.
            let message = HostMessage::decode(frame.encoded()).expect("host frames decode");
            client.handle_message(now, message);
            watch.check(client);
        }
    };
    // The documented order: after each input, drain the session's output.
    deliver(host, client, watch);
    while let Some(m) = client.poll_transmit() {
        host.handle_message(peer, m)
            .expect("a well-formed message is accepted");
        deliver(host, client, watch);
    }
}

/// Checks that a frame the host sent is well-formed whatever provoked it.
fn check_frame(host_epoch: &str, message: &HostMessage) {
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
        }
        host_message::Kind::Patch(p) => {
            assert!(p.version >= p.base_version);
            let v: Value = serde_json::from_str(&p.patch_json).expect("patch is JSON");
            assert!(v.is_array());
        }
        host_message::Kind::Result(r) => {
            if let Some(call_result::Outcome::ValueJson(json)) = &r.outcome {
                serde_json::from_str::<Value>(json).expect("result value is JSON");
            }
        }
    }
}

/// A well-behaved bystander makes a call and must get the right answer and a
/// mirror equal to the host's view.
fn bystander_gets_service(
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
    let id = watch.call(client, "counter", "increase", &[json!(1)]);
    pump(host, peer, client, watch, now);
    assert_eq!(watch.settled.get(&id), Some(&Ok(json!(before + 1))));
    assert_eq!(
        client.state(),
        Some(&host.view()),
        "the bystander's mirror diverged"
    );
}

// ---------------------------------------------------------------------------
// Strategies.
// ---------------------------------------------------------------------------

/// Short strings rich in the characters that matter to JSON pointers.
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("0".to_owned()),
        Just("1".to_owned()),
        Just("-".to_owned()),
        Just(String::new()),
        Just("~".to_owned()),
        Just("/".to_owned()),
        "[a-c0-2~/-]{0,3}",
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Eighths are exact in binary, so they survive the text round trip
        // whatever float parsing the JSON library uses.
        any::<i32>().prop_map(|n| Value::from(f64::from(n) / 8.0)),
        "[a-c0-9 ~/\\-]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((arb_key(), inner), 0..4)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

fn arb_object() -> impl Strategy<Value = Value> {
    prop::collection::vec((arb_key(), arb_json()), 0..4)
        .prop_map(|members| Value::Object(members.into_iter().collect()))
}

/// A JSON pointer, usually valid (escaped tokens), sometimes not.
fn arb_pointer() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec(arb_key(), 0..4).prop_map(|tokens| {
            tokens
                .iter()
                .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
                .collect()
        }),
        1 => prop::collection::vec(arb_key(), 0..4).prop_map(|tokens| {
            tokens.iter().map(|t| format!("/{t}")).collect()
        }),
        1 => "[a-c0-2~/-]{0,5}",
    ]
}

/// One RFC 6902 operation as JSON, sometimes with missing or unknown members.
fn arb_op() -> impl Strategy<Value = Value> {
    let op = prop_oneof![
        Just("add"),
        Just("remove"),
        Just("replace"),
        Just("move"),
        Just("copy"),
        Just("test"),
        Just("bogus"),
    ];
    (op, arb_pointer(), arb_pointer(), arb_json(), 0u8..8).prop_map(
        |(op, path, from, value, drop)| {
            let mut o = json!({"op": op, "path": path, "from": from, "value": value});
            let map = o.as_object_mut().expect("an object");
            match drop {
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
                    map.insert("path".into(), json!(7));
                }
                _ => {}
            }
            o
        },
    )
}

/// Patch text: usually an array of operations, sometimes arbitrary text.
fn arb_patch_text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec(arb_op(), 0..6).prop_map(|ops| Value::Array(ops).to_string()),
        // An add of a member always applies to an object.
        3 => (arb_key(), arb_json()).prop_map(|(key, value)| {
            let path = format!("/{}", key.replace('~', "~0").replace('/', "~1"));
            json!([{"op": "add", "path": path, "value": value}]).to_string()
        }),
        1 => arb_json().prop_map(|v| v.to_string()),
        1 => "\\PC{0,40}",
    ]
}

/// A demo module name, or not.
fn arb_module() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("counter".to_owned()),
        Just("todos".to_owned()),
        Just("secret".to_owned()),
        "[a-z]{0,8}",
    ]
}

/// A demo method name, or not.
fn arb_method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("increase".to_owned()),
        Just("decrease".to_owned()),
        Just("fail".to_owned()),
        Just("add".to_owned()),
        Just("toggle".to_owned()),
        Just("remove".to_owned()),
        Just("clear".to_owned()),
        Just("add_many".to_owned()),
        Just("rotate".to_owned()),
        "[a-z_]{0,8}",
    ]
}

/// Call arguments: usually a JSON array, sometimes another JSON value, or text.
fn arb_args_json() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::collection::vec(arb_json(), 0..3).prop_map(|a| Value::Array(a).to_string()),
        2 => prop::collection::vec(
            prop_oneof![
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                "[a-z]{0,4}".prop_map(Value::String),
                prop::collection::vec("[a-z]{0,3}".prop_map(Value::String), 0..3).prop_map(Value::Array),
            ],
            0..2,
        )
        .prop_map(|a| Value::Array(a).to_string()),
        1 => arb_json().prop_map(|v| v.to_string()),
        1 => "\\PC{0,12}",
    ]
}

fn arb_header() -> impl Strategy<Value = Option<Header>> {
    let epoch = prop_oneof![
        Just("epoch-1".to_owned()),
        Just(String::new()),
        "[a-z0-9-]{0,8}"
    ];
    let version = prop_oneof![6 => Just(1u32), 1 => any::<u32>()];
    prop_oneof![
        9 => (version, epoch, "[a-z]{0,4}", "[a-z]{0,4}", "[a-z]{0,4}").prop_map(
            |(protocol_version, epoch, source, target, capability)| Some(Header {
                protocol_version,
                epoch,
                source,
                target,
                capability,
            })
        ),
        1 => Just(None),
    ]
}

/// A structured client message with adversarial fields.
fn arb_client_message() -> impl Strategy<Value = ClientMessage> {
    let call = (
        prop_oneof![3 => 1u64..64, 1 => Just(0u64), 1 => any::<u64>()],
        arb_module(),
        arb_method(),
        arb_args_json(),
    )
        .prop_map(|(call_id, module, method, args_json)| {
            client_message::Kind::Call(Call {
                call_id,
                module,
                method,
                args_json,
            })
        });
    let sync = (
        any::<u64>(),
        prop_oneof![0u64..8, any::<u64>()],
        any::<i32>(),
    )
        .prop_map(|(sync_id, have_version, reason)| {
            client_message::Kind::SyncRequest(SyncRequest {
                sync_id,
                have_version,
                reason,
            })
        });
    let kind = prop_oneof![4 => call.prop_map(Some), 2 => sync.prop_map(Some), 1 => Just(None)];
    (arb_header(), kind).prop_map(|(header, kind)| ClientMessage { header, kind })
}

/// Bytes for the host: arbitrary, a valid encoding, or a damaged one.
fn arb_client_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..64),
        3 => arb_client_message().prop_map(|m| m.encode_to_vec()),
        2 => (arb_client_message(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(m, at, byte)| {
            let mut bytes = m.encode_to_vec();
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] ^= byte | 1;
            }
            bytes
        }),
        1 => (arb_client_message(), any::<prop::sample::Index>()).prop_map(|(m, at)| {
            let mut bytes = m.encode_to_vec();
            bytes.truncate(at.index(bytes.len() + 1));
            bytes
        }),
    ]
}

/// A structured host message: snapshots, patches and results with arbitrary
/// versions, epochs and JSON.
fn arb_host_message() -> impl Strategy<Value = HostMessage> {
    let version = || prop_oneof![6 => 1u64..4, 1 => Just(0u64), 1 => any::<u64>()];
    let state_json = prop_oneof![
        4 => arb_object().prop_map(|v| v.to_string()),
        1 => arb_json().prop_map(|v| v.to_string()),
        1 => "\\PC{0,16}",
    ];
    let snapshot = (version(), state_json, 0u64..4, 0i32..6).prop_map(
        |(version, state_json, sync_id, reason)| {
            host_message::Kind::Snapshot(Snapshot {
                version,
                state_json,
                sync_id,
                reason,
            })
        },
    );
    let patch = (version(), version(), arb_patch_text(), 0u64..4).prop_map(
        |(base_version, version, patch_json, sync_id)| {
            host_message::Kind::Patch(Patch {
                base_version,
                version,
                patch_json,
                sync_id,
            })
        },
    );
    let outcome = prop_oneof![
        3 => arb_json().prop_map(|v| Some(call_result::Outcome::ValueJson(v.to_string()))),
        1 => "\\PC{0,8}".prop_map(|s| Some(call_result::Outcome::ValueJson(s))),
        2 => (any::<i32>(), "\\PC{0,8}", prop_oneof![Just(String::new()), "\\PC{0,8}"]).prop_map(
            |(code, message, details_json)| Some(call_result::Outcome::Error(wire::Error {
                code,
                message,
                details_json,
            }))
        ),
        1 => Just(None),
    ];
    let result = (0u64..6, version(), outcome).prop_map(|(call_id, state_version, outcome)| {
        host_message::Kind::Result(CallResult {
            call_id,
            state_version,
            outcome,
        })
    });
    let kind = prop_oneof![3 => snapshot.prop_map(Some), 4 => patch.prop_map(Some), 3 => result.prop_map(Some), 1 => Just(None)];
    let epoch = prop_oneof![
        6 => Just("e1".to_owned()),
        1 => Just("e2".to_owned()),
        1 => Just(String::new())
    ];
    let header = prop_oneof![
        10 => epoch.prop_map(|epoch| Some(Header::v1(epoch, "", ""))),
        1 => (any::<u32>(), "[a-z]{0,3}").prop_map(|(protocol_version, target)| Some(Header {
            protocol_version,
            target,
            ..Header::default()
        })),
        1 => Just(None),
    ];
    (header, kind).prop_map(|(header, kind)| HostMessage { header, kind })
}

/// What a client is fed: a structured message, or raw (possibly damaged) bytes.
#[derive(Debug, Clone)]
enum HostInput {
    Message(HostMessage),
    Bytes(Vec<u8>),
    /// The application makes a call (so results have something to settle).
    Call,
}

fn arb_host_input() -> impl Strategy<Value = HostInput> {
    prop_oneof![
        6 => arb_host_message().prop_map(HostInput::Message),
        1 => prop::collection::vec(any::<u8>(), 0..48).prop_map(HostInput::Bytes),
        1 => (arb_host_message(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(m, at, byte)| {
            let mut bytes = m.encode_to_vec();
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] ^= byte | 1;
            }
            HostInput::Bytes(bytes)
        }),
        2 => Just(HostInput::Call),
    ]
}

// ---------------------------------------------------------------------------
// Host: arbitrary bytes from one session.
// ---------------------------------------------------------------------------

fn assert_typed_input_error(error: &InputError) {
    assert!(
        matches!(
            error,
            InputError::Malformed(_)
                | InputError::UnknownKind
                | InputError::UnsupportedVersion(_)
                | InputError::Flooding { .. }
        ),
        "unexpected error for a connected session's message: {error:?}"
    );
}

fn arb_sync_mode() -> impl Strategy<Value = SyncMode> {
    prop_oneof![Just(SyncMode::Snapshot), Just(SyncMode::Patch)]
}

proptest! {
    #![proptest_config(config(48))]

    /// Arbitrary, valid and damaged encodings from one session never panic
    /// the host, fail only with typed errors, every frame the host answers
    /// with is well-formed, and a second session keeps correct service;
    /// whether the first receives publications or only replies (a shared
    /// channel's reply-only session, SC9).
    #[test]
    fn arbitrary_client_bytes_leave_other_sessions_served(
        sync in arb_sync_mode(),
        reply_only in any::<bool>(),
        inputs in prop::collection::vec((arb_client_bytes(), any::<bool>()), 1..24),
    ) {
        let now = Instant::now();
        let limits = HostLimits { max_calls_in_flight: 4, history_entries: 4, ..HostLimits::default() };
        let mut host = demo_host(sync, limits);
        let mut published = PublishedWatch::default();
        let attacker = host
            .connect(PeerOptions { peer_id: "attacker".into(), publications: !reply_only })
            .expect("the host accepts the session");
        let (peer, mut client) = connect(&mut host, "bystander", now);
        let mut watch = ClientWatch::default();
        pump(&mut host, peer, &mut client, &mut watch, now);
        let epoch = host.epoch().to_owned();
        for (bytes, read) in &inputs {
            if let Err(error) = host.handle_bytes(attacker, bytes) {
                assert_typed_input_error(&error);
            }
            // A session that does not read is how flooding happens.
            if *read {
                while let Some(frame) = host.poll_transmit(attacker) {
                    let message = HostMessage::decode(frame.encoded()).expect("host frames decode");
                    check_frame(&epoch, &message);
                }
            }
            published.check(&mut host);
        }
        bystander_gets_service(&mut host, peer, &mut client, &mut watch, now);
        published.check(&mut host);
        watch.finish(&mut client);
    }

    /// Every message over the size limit is refused as `MessageTooLarge`
    /// before it is decoded, and the session and its neighbours carry on.
    /// (Limits start where the demo's view still fits one snapshot; below
    /// that the host refuses to commit at all, spec §15.)
    #[test]
    fn oversize_messages_are_refused_before_decoding(
        limit in 400usize..464,
        extra in 1usize..64,
        message in arb_client_message(),
    ) {
        let now = Instant::now();
        let Limited { mut host, attacker, peer, mut client, mut watch } = limited(limit, now);
        let mut bytes = message.encode_to_vec();
        bytes.resize(limit + extra, 0);
        let size = bytes.len();
        prop_assert_eq!(
            host.handle_bytes(attacker, &bytes),
            Err(InputError::MessageTooLarge { size, limit })
        );
        prop_assert!(host.poll_transmit(attacker).is_none(), "nothing answers a refused message");
        prop_assert_eq!(host.version(), 1);
        // Exactly at the limit is still decoded (and, being padding, may be malformed).
        bytes.truncate(limit);
        let at_limit = host.handle_bytes(attacker, &bytes);
        prop_assert!(!matches!(at_limit, Err(InputError::MessageTooLarge { .. })), "{:?}", at_limit);
        // The session and its neighbour are still served.
        prop_assert_eq!(host.peer_count(), 2);
        bystander_gets_service(&mut host, peer, &mut client, &mut watch, now);
    }

    /// The same limit holds for envelopes handed over undecoded, as
    /// in-process and shared channels do: over it nothing runs, a Call is
    /// at most answered with an error, anything else is refused, and the
    /// session and its neighbours carry on.
    #[test]
    fn oversize_envelopes_never_encoded_run_nothing(
        limit in 400usize..464,
        extra in 1usize..64,
        message in arb_client_message(),
        version in prop_oneof![3 => Just(1u32), 1 => 0u32..4],
    ) {
        let now = Instant::now();
        let Limited { mut host, attacker, peer, mut client, mut watch } = limited(limit, now);
        let mut message = message;
        let header = message.header.get_or_insert_with(Default::default);
        header.protocol_version = version;
        let pad = (limit + extra).saturating_sub(message.encoded_len());
        if let Some(header) = message.header.as_mut() {
            header.capability.push_str(&"c".repeat(pad));
        }
        let size = message.encoded_len();
        prop_assert!(size > limit);
        let long_source = message.header.as_ref().is_some_and(|h| h.source.len() > 1024);
        let call_id = match &message.kind {
            Some(client_message::Kind::Call(call)) => Some(call.call_id),
            _ => None,
        };
        let outcome = host.handle_message(attacker, message);
        let answers: Vec<wire::HostFrame> = std::iter::from_fn(|| host.poll_transmit(attacker)).collect();
        match (call_id, outcome) {
            (_, Err(InputError::PeerIdTooLong { .. })) => {
                prop_assert!(long_source);
                prop_assert!(answers.is_empty());
            }
            // A Call is answered resource-exhausted, whatever else is wrong
            // with it (H7: the size comes first).
            (Some(id), outcome) => {
                prop_assert!(matches!(outcome, Ok(()) | Err(InputError::UnsupportedVersion(_))), "{:?}", outcome);
                prop_assert_eq!(answers.len(), 1, "{:?}", answers);
                let Some(host_message::Kind::Result(result)) = &answers[0].message().kind else {
                    panic!("a result answers a call: {:?}", answers[0].message());
                };
                prop_assert_eq!(result.call_id, id);
                let code = match &result.outcome {
                    Some(call_result::Outcome::Error(e)) => e.code,
                    other => panic!("an error answers it: {other:?}"),
                };
                prop_assert_eq!(code, ErrorCode::ResourceExhausted as i32);
            }
            (None, outcome) => {
                prop_assert_eq!(outcome, Err(InputError::MessageTooLarge { size, limit }));
                prop_assert!(answers.is_empty());
            }
        }
        prop_assert_eq!(host.version(), 1);
        prop_assert_eq!(host.peer_count(), 2);
        bystander_gets_service(&mut host, peer, &mut client, &mut watch, now);
    }

    /// Arbitrary JSON arguments (and non-arguments) to every demo method, and
    /// to names that are not methods, end in a typed result: the state stays
    /// consistent, the version counts the commits, the secret stays private,
    /// and a following client converges on the host's view.
    #[test]
    fn arbitrary_arguments_to_demo_methods_give_typed_errors(
        sync in arb_sync_mode(),
        calls in prop::collection::vec((arb_module(), arb_method(), arb_args_json()), 1..24),
    ) {
        let now = Instant::now();
        let mut host = demo_host(sync, HostLimits::default());
        let mut published = PublishedWatch::default();
        let (peer, mut client) = connect(&mut host, "client", now);
        let mut watch = ClientWatch::default();
        pump(&mut host, peer, &mut client, &mut watch, now);
        let mut ids = Vec::new();
        for (module, method, args_json) in &calls {
            let before = host.view();
            let version = host.version();
            let id = client
                .call_json(module, method, args_json.clone(), None)
                .expect("client accepts the call");
            watch.made.insert(id);
            pump(&mut host, peer, &mut client, &mut watch, now);
            published.check(&mut host);
            let outcome = watch.settled.get(&id).cloned().expect("the call settled");
            match &outcome {
                Ok(_) => {}
                Err(code) => {
                    prop_assert!(
                        matches!(code, ErrorCode::InvalidArgument | ErrorCode::NotFound | ErrorCode::Failed),
                        "{}.{}({}) failed with {:?}", module, method, args_json, code
                    );
                    prop_assert_eq!(host.version(), version, "a failed call committed");
                    prop_assert_eq!(&host.view(), &before, "a failed call changed the view");
                }
            }
            if host.view() == before {
                prop_assert_eq!(host.version(), version, "an unchanged view got a new version");
            } else {
                prop_assert_eq!(host.version(), version + 1, "a change took more than one version");
            }
            prop_assert_eq!(client.state(), Some(&host.view()));
            ids.push(id);
        }
        // The todos section always has the shape the demo documents.
        let view = host.view();
        let items = view["todos"]["items"].as_array().expect("items is an array");
        for item in items {
            prop_assert!(item["id"].is_u64() && item["text"].is_string() && item["done"].is_boolean(), "{}", item);
        }
        prop_assert!(view["counter"]["count"].is_i64());
        watch.finish(&mut client);
    }
}

// ---------------------------------------------------------------------------
// Client: arbitrary host messages.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// Whatever the host sends (structured or raw bytes), the client never
    /// panics, its mirror is `None` or an object whose version never goes
    /// back within an epoch, and each call settles at most once (exactly once
    /// by the time it is disposed).
    #[test]
    fn arbitrary_host_messages_keep_client_invariants(
        inputs in prop::collection::vec(arb_host_input(), 1..32),
    ) {
        let now = Instant::now();
        let mut client = ClientCore::new(ClientConfig::default(), now);
        let mut watch = ClientWatch::default();
        for input in inputs {
            match input {
                HostInput::Message(message) => {
                    let is_patch = matches!(message.kind, Some(host_message::Kind::Patch(_)));
                    let before = (client.epoch().map(str::to_owned), client.version(), client.state().cloned());
                    client.handle_message(now, message);
                    // A patch changes the mirror only together with its version.
                    if is_patch && (client.epoch().map(str::to_owned), client.version()) == (before.0, before.1) {
                        prop_assert_eq!(client.state(), before.2.as_ref());
                    }
                }
                HostInput::Bytes(bytes) => {
                    if let Ok(message) = HostMessage::decode(bytes.as_slice()) {
                        client.handle_message(now, message);
                    }
                }
                HostInput::Call => {
                    watch.call(&mut client, "counter", "increase", &[json!(1)]);
                }
            }
            while client.poll_transmit().is_some() {}
            watch.check(&mut client);
        }
        watch.finish(&mut client);
    }
}

// ---------------------------------------------------------------------------
// apply_patch: atomic, object-preserving.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// On error the document is exactly as it was; on success it is an object.
    #[test]
    fn apply_patch_is_atomic(doc in arb_object(), patch in arb_patch_text()) {
        let mut patched = doc.clone();
        match apply_patch(&mut patched, &patch) {
            Ok(()) => {
                prop_assert!(patched.is_object(), "{} made {}", patch, patched);
                // Whatever a patch builds can be sent and read back as a snapshot.
                let round: Value = serde_json::from_str(&patched.to_string()).expect("the mirror is JSON");
                prop_assert_eq!(round, patched);
            }
            Err(_) => prop_assert_eq!(&patched, &doc, "a failed patch changed the mirror: {}", patch),
        }
    }

    /// Operations aimed at what the document actually contains (so that most
    /// succeed) are applied all-or-nothing too, and the successful result is
    /// what the operations, applied one by one to a copy, produce.
    #[test]
    fn apply_patch_matches_stepwise_application(
        doc in arb_object(),
        ops in prop::collection::vec((0usize..6, any::<prop::sample::Index>(), any::<prop::sample::Index>(), arb_json()), 1..6),
    ) {
        let names = ["add", "remove", "replace", "move", "copy", "test"];
        let mut pointers = Vec::new();
        collect_pointers(&doc, String::new(), &mut pointers);
        let ops: Vec<Value> = ops
            .into_iter()
            .map(|(op, path, from, value)| {
                let path = &pointers[path.index(pointers.len())];
                let from = &pointers[from.index(pointers.len())];
                json!({"op": names[op], "path": path, "from": from, "value": value})
            })
            .collect();
        let text = Value::Array(ops.clone()).to_string();
        let mut patched = doc.clone();
        let result = apply_patch(&mut patched, &text);
        if result.is_err() {
            prop_assert_eq!(&patched, &doc, "a failed patch changed the mirror: {}", text);
        }
        // With the root untouched every intermediate document is an object,
        // so the whole patch succeeds exactly when every step does, with the
        // same result.
        let touches_root = ops.iter().any(|op| op["path"] == "" || op["from"] == "" && op["op"] == "move");
        if !touches_root {
            let mut stepwise = Some(doc.clone());
            for op in &ops {
                let one = Value::Array(vec![op.clone()]).to_string();
                if let Some(doc) = stepwise.as_mut()
                    && apply_patch(doc, &one).is_err()
                {
                    stepwise = None;
                }
            }
            match &result {
                Ok(()) => prop_assert_eq!(Some(&patched), stepwise.as_ref(), "{}", text),
                Err(_) => prop_assert!(stepwise.is_none(), "the steps succeed but the patch fails: {}", text),
            }
        }
    }
}

/// Every pointer into `value`, plus an append pointer for each array.
fn collect_pointers(value: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match value {
        Value::Object(map) => {
            out.push(format!("{at}/new"));
            for (k, v) in map {
                collect_pointers(
                    v,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(items) => {
            out.push(format!("{at}/-"));
            out.push(format!("{at}/{}", items.len()));
            for (i, v) in items.iter().enumerate() {
                collect_pointers(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// A host sending a patch whose undo json-patch cannot perform (a move to
/// an ancestor, then a failing operation) used to panic the client; now it
/// is a patch-apply-failed conflict, the mirror keeps its last good state,
/// and the client asks for a snapshot.
#[test]
fn unundoable_patch_from_host_is_a_conflict_not_a_panic() {
    use cosystem_worker::client::ConflictReason;
    let now = Instant::now();
    let mut client = ClientCore::new(ClientConfig::default(), now);
    while client.poll_transmit().is_some() {}
    let header = Some(Header::v1("e1", "", ""));
    client.handle_message(
        now,
        HostMessage {
            header: header.clone(),
            kind: Some(host_message::Kind::Snapshot(Snapshot {
                version: 1,
                state_json: r#"{"a":{"b":{"c":1}}}"#.into(),
                sync_id: 1,
                reason: 2,
            })),
        },
    );
    client.handle_message(
        now,
        HostMessage {
            header,
            kind: Some(host_message::Kind::Patch(Patch {
                base_version: 1,
                version: 2,
                patch_json: r#"[{"op":"move","from":"/a/b","path":"/a"},{"op":"test","path":"/x","value":0}]"#.into(),
                sync_id: 0,
            })),
        },
    );
    assert_eq!(client.state(), Some(&json!({"a": {"b": {"c": 1}}})));
    assert_eq!(client.version(), Some(1));
    let events: Vec<_> = std::iter::from_fn(|| client.poll_event()).collect();
    assert!(
        events.iter().any(|e| matches!(e, ClientEvent::Conflict(c) if c.reason == ConflictReason::PatchApplyFailed)),
        "{events:?}"
    );
    let resync = client.poll_transmit().expect("the client asks to resync");
    assert!(matches!(
        resync.kind,
        Some(client_message::Kind::SyncRequest(SyncRequest {
            have_version: 0,
            ..
        }))
    ));
}
