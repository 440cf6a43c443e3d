//! Input prepared before the core is locked (`PreparedInput`) has exactly
//! the effect of the core working the same envelope out itself: the same
//! answers, the same errors, the same state, whatever limit it was prepared
//! against.

mod common;

use cosystem_worker::demo;
use cosystem_worker::host::{
    ArgsBudget, HostCore, InputError, MAX_PREPARSED_ARGS, PeerKey, PeerOptions, PreparedInput,
};
use cosystem_worker::wire::{Call, ClientMessage, Header, SyncRequest, client_message};
use proptest::prelude::*;
use prost::Message;

/// Small, so that envelopes near and over it are easy to draw.
const LIMIT: usize = 600;
const EPOCH: &str = "e1";

fn core() -> (HostCore, PeerKey) {
    core_with_limit(LIMIT)
}

fn core_with_limit(limit: usize) -> (HostCore, PeerKey) {
    let mut core = HostCore::new(common::patch_config(limit), demo::app("secret"), EPOCH);
    let peer = core
        .connect(PeerOptions {
            peer_id: "c1".into(),
            publications: true,
        })
        .expect("a session");
    (core, peer)
}

/// Everything the core has for `peer`, as bytes on the wire.
fn output(core: &mut HostCore, peer: PeerKey) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| core.poll_transmit(peer))
        .map(|frame| frame.encoded().to_vec())
        .collect()
}

fn args_json() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("[1]".to_owned()),
        Just("[-3]".to_owned()),
        Just("[\"x\"]".to_owned()),
        Just("{}".to_owned()),
        Just(" ".to_owned()),
        Just("[1,".to_owned()),
        (0..700usize).prop_map(|n| format!("[\"{}\"]", "a".repeat(n))),
        "[\\[\\]0-9,\" a-z{}:]{0,40}",
    ]
}

fn call() -> impl Strategy<Value = ClientMessage> {
    (
        1..20u64,
        prop_oneof![Just("counter"), Just("todos"), Just("secret"), Just("nope")],
        prop_oneof![
            Just("increase"),
            Just("add"),
            Just("toggle"),
            Just("fail"),
            Just("nope")
        ],
        args_json(),
        prop_oneof![Just(EPOCH), Just(""), Just("other")],
        prop_oneof![Just(1u32), Just(2u32)],
    )
        .prop_map(|(call_id, module, method, args_json, epoch, version)| {
            let mut header = Header::v1(epoch, "c1", "");
            header.protocol_version = version;
            ClientMessage {
                header: Some(header),
                kind: Some(client_message::Kind::Call(Call {
                    call_id,
                    module: module.to_owned(),
                    method: method.to_owned(),
                    args_json,
                })),
            }
        })
}

fn envelope() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        4 => call(),
        1 => (1..5u64).prop_map(|sync_id| ClientMessage {
            header: Some(Header::v1("", "c1", "")),
            kind: Some(client_message::Kind::SyncRequest(SyncRequest {
                sync_id,
                have_version: 0,
                reason: 0,
            })),
        }),
        1 => Just(ClientMessage::default()),
    ]
}

/// The limits a driver might prepare against: the core's, and others.
fn prepared_limit() -> impl Strategy<Value = usize> {
    prop_oneof![
        2 => Just(LIMIT),
        1 => Just(LIMIT / 4),
        1 => Just(LIMIT * 4),
    ]
}

/// What one input did: its answer, and everything sent after it.
type Effect = (Result<(), InputError>, Vec<Vec<u8>>);

/// `message` handled with nothing worked out ahead: prepared against a
/// limit of 0, which no call fits, the core sizes it and parses a call's
/// arguments itself, as it did before input was prepared outside it.
fn unprepared(core: &mut HostCore, peer: PeerKey, message: ClientMessage) -> Effect {
    let answer = core.handle_input(peer, &PreparedInput::message(message, 0));
    (answer, output(core, peer))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Bytes decoded, and a call's arguments parsed, before the core is
    /// locked act as the core working it all out itself.
    #[test]
    fn prepared_bytes_act_as_the_core_reading_them_itself(
        inputs in prop::collection::vec((envelope(), prepared_limit()), 1..12),
    ) {
        let (mut reference, a) = core();
        let (mut prepared, b) = core();
        for (message, limit) in inputs {
            let bytes = message.encode_to_vec();
            let answer = PreparedInput::decode(&bytes, limit)
                .and_then(|input| prepared.handle_input(b, &input));
            let got: Effect = (answer, output(&mut prepared, b));
            if bytes.len() > LIMIT.min(limit) {
                // Refused unread, however far it got: bytes over the limit
                // are never answered.
                let refused = matches!(got.0, Err(InputError::MessageTooLarge { .. }));
                prop_assert!(refused, "refused as too large: {:?}", got.0);
                prop_assert!(got.1.is_empty());
                continue;
            }
            prop_assert_eq!(&got, &unprepared(&mut reference, a, message));
        }
        prop_assert_eq!(reference.view(), prepared.view());
        prop_assert_eq!(reference.version(), prepared.version());
    }

    /// Envelopes never encoded, sized and with a call's arguments parsed
    /// before the core is locked, act as the core working it all out
    /// itself, whatever limit they were prepared against.
    #[test]
    fn prepared_messages_act_as_the_core_reading_them_itself(
        inputs in prop::collection::vec((envelope(), prepared_limit()), 1..12),
    ) {
        let (mut reference, a) = core();
        let (mut prepared, b) = core();
        for (message, limit) in inputs {
            let input = PreparedInput::message(message.clone(), limit);
            let got: Effect = (prepared.handle_input(b, &input), output(&mut prepared, b));
            prop_assert_eq!(&got, &unprepared(&mut reference, a, message));
        }
        prop_assert_eq!(reference.view(), prepared.view());
        prop_assert_eq!(reference.version(), prepared.version());
    }
}

#[test]
fn a_call_over_the_limit_is_answered_unrun_when_prepared_as_a_message() {
    let (mut core, peer) = core();
    let message = ClientMessage {
        header: Some(Header::v1(EPOCH, "c1", "")),
        kind: Some(client_message::Kind::Call(Call {
            call_id: 1,
            module: "counter".into(),
            method: "increase".into(),
            args_json: format!("[1{}]", " ".repeat(LIMIT)),
        })),
    };
    let input = PreparedInput::message(message, LIMIT);
    core.handle_input(peer, &input).expect("answered");
    let frames: Vec<_> = std::iter::from_fn(|| core.poll_transmit(peer)).collect();
    let text = format!("{:?}", frames.last().map(|f| f.message()));
    assert!(
        text.contains("message limit"),
        "answered resource-exhausted: {text}"
    );
    assert_eq!(core.version(), 1, "not run");
}

/// Arguments longer than the unbudgeted bound, parsed ahead within a budget
/// or left to the core, act the same; the budget's room comes back.
#[test]
fn long_arguments_parsed_ahead_or_by_the_core_act_the_same() {
    let limit = 4 * MAX_PREPARSED_ARGS;
    let args_json = format!("[1{}]", " ".repeat(MAX_PREPARSED_ARGS));
    let call = ClientMessage {
        header: Some(Header::v1(EPOCH, "c1", "")),
        kind: Some(client_message::Kind::Call(Call {
            call_id: 1,
            module: "counter".into(),
            method: "increase".into(),
            args_json,
        })),
    };
    let bytes = call.encode_to_vec();
    let budget = ArgsBudget::new(limit);
    let (mut ahead, a) = core_with_limit(limit);
    let mut input = PreparedInput::decode(&bytes, limit).expect("a call");
    input.parse_ahead(&budget);
    assert!(budget.held() > MAX_PREPARSED_ARGS, "parsed ahead");
    let got: Effect = (ahead.handle_input(a, &input), output(&mut ahead, a));
    drop(input);
    assert_eq!(budget.held(), 0);
    let (mut by_core, b) = core_with_limit(limit);
    let input = PreparedInput::decode(&bytes, limit).expect("a call");
    let want: Effect = (by_core.handle_input(b, &input), output(&mut by_core, b));
    assert_eq!(got, want);
    assert_eq!(ahead.view(), by_core.view());
    assert_eq!(ahead.version(), 2);
}
