//! The views against prost: the same verdict on any bytes, and the same
//! contents whenever both accept.

use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::wire::{Call, Error, Patch, Snapshot};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z]{1,6}", any::<String>()]
}

fn header() -> impl Strategy<Value = Option<Header>> {
    proptest::option::of((any::<u32>(), text(), text(), text(), text()).prop_map(
        |(protocol_version, epoch, source, target, capability)| Header {
            protocol_version,
            epoch,
            source,
            target,
            capability,
        },
    ))
}

/// Any client envelope: also what the host's size bound is held to.
pub(crate) fn client_message() -> impl Strategy<Value = ClientMessage> {
    let call =
        (any::<u64>(), text(), text(), text()).prop_map(|(call_id, module, method, args_json)| {
            client_message::Kind::Call(Call {
                call_id,
                module,
                method,
                args_json,
            })
        });
    let sync =
        (any::<u64>(), any::<u64>(), any::<i32>()).prop_map(|(sync_id, have_version, reason)| {
            client_message::Kind::SyncRequest(SyncRequest {
                sync_id,
                have_version,
                reason,
            })
        });
    (header(), proptest::option::of(prop_oneof![call, sync]))
        .prop_map(|(header, kind)| ClientMessage { header, kind })
}

/// A number, zero (which proto3 leaves out) as often as not.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), any::<u64>()]
}

/// Any host envelope: also what the frame tests hold frames to.
pub(crate) fn host_message() -> impl Strategy<Value = HostMessage> {
    let snapshot = (number(), text(), number(), any::<i32>()).prop_map(
        |(version, state_json, sync_id, reason)| {
            host_message::Kind::Snapshot(Snapshot {
                version,
                state_json,
                sync_id,
                reason,
            })
        },
    );
    let patch = (number(), number(), text(), number()).prop_map(
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
        text().prop_map(call_result::Outcome::ValueJson),
        (any::<i32>(), text(), text()).prop_map(|(code, message, details_json)| {
            call_result::Outcome::Error(Error {
                code,
                message,
                details_json,
            })
        }),
    ];
    let result = (number(), number(), proptest::option::of(outcome)).prop_map(
        |(call_id, state_version, outcome)| {
            host_message::Kind::Result(CallResult {
                call_id,
                state_version,
                outcome,
            })
        },
    );
    (
        header(),
        proptest::option::of(prop_oneof![snapshot, patch, result]),
    )
        .prop_map(|(header, kind)| HostMessage { header, kind })
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// One field of any number and wire type, well formed or not.
#[derive(Debug, Clone)]
enum Field {
    Varint(u32, u64),
    /// Raw bytes after a key: a malformed varint, a truncated fixed field…
    Raw(u32, u8, Vec<u8>),
    /// A length-delimited field; `slack` is added to the true length.
    Delimited(u32, Vec<Field>, i8),
    Bytes(u32, Vec<u8>),
    Group(u32, Vec<Field>, Option<u32>),
}

fn encode(fields: &[Field], out: &mut Vec<u8>) {
    for field in fields {
        match field {
            Field::Varint(tag, value) => {
                varint(u64::from(*tag) << 3, out);
                varint(*value, out);
            }
            Field::Raw(tag, wire, bytes) => {
                varint(u64::from(*tag) << 3 | u64::from(*wire), out);
                out.extend_from_slice(bytes);
            }
            Field::Delimited(tag, inner, slack) => {
                varint(u64::from(*tag) << 3 | 2, out);
                let mut body = Vec::new();
                encode(inner, &mut body);
                varint((body.len() as i64 + i64::from(*slack)).max(0) as u64, out);
                out.extend_from_slice(&body);
            }
            Field::Bytes(tag, bytes) => {
                varint(u64::from(*tag) << 3 | 2, out);
                varint(bytes.len() as u64, out);
                out.extend_from_slice(bytes);
            }
            Field::Group(tag, inner, end) => {
                varint(u64::from(*tag) << 3 | 3, out);
                encode(inner, out);
                varint(u64::from(end.unwrap_or(*tag)) << 3 | 4, out);
            }
        }
    }
}

/// Field soup: the schema's field numbers (and a few beyond), every wire
/// type, strings that are and are not UTF-8, nesting, merging, groups.
fn fields() -> impl Strategy<Value = Vec<Field>> {
    let tag = prop_oneof![6 => 0u32..7, 1 => Just(1 << 28), 1 => any::<u32>()];
    let string = prop_oneof![
        "[a-z]{0,4}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..4),
    ];
    let leaf = prop_oneof![
        (tag.clone(), prop_oneof![0u64..300, any::<u64>()]).prop_map(|(t, v)| Field::Varint(t, v)),
        (
            tag.clone(),
            0u8..8,
            proptest::collection::vec(any::<u8>(), 0..11)
        )
            .prop_map(|(t, w, b)| Field::Raw(t, w, b)),
        (tag.clone(), string).prop_map(|(t, b)| Field::Bytes(t, b)),
        // A ten-byte varint: its last byte may hold only the 64th bit.
        (tag.clone(), 0u8..4).prop_map(|(t, last)| {
            let mut bytes = vec![0xff; 9];
            bytes.push(last);
            Field::Raw(t, 0, bytes)
        }),
    ];
    let field = leaf.prop_recursive(4, 48, 6, move |inner| {
        let many = proptest::collection::vec(inner, 0..6);
        prop_oneof![
            4 => (tag.clone(), many.clone(), prop_oneof![8 => Just(0i8), 1 => -2i8..3])
                .prop_map(|(t, f, s)| Field::Delimited(t, f, s)),
            1 => (tag.clone(), many, proptest::option::of(0u32..7))
                .prop_map(|(t, f, e)| Field::Group(t, f, e)),
        ]
    });
    proptest::collection::vec(field, 0..6)
}

fn soup() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(fields(), 1..4).prop_map(|parts| {
            let mut out = Vec::new();
            for part in parts {
                encode(&part, &mut out);
            }
            out
        }),
        // Whole envelopes, concatenated: prost merges them.
        (client_message(), host_message(), any::<bool>()).prop_map(|(c, h, first)| {
            let (mut a, b) = (c.encode_to_vec(), h.encode_to_vec());
            if first {
                a.extend_from_slice(&b);
                a
            } else {
                let mut b = b;
                b.extend_from_slice(&a);
                b
            }
        }),
        proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

/// Groups nested `depth` deep inside an unknown top-level field.
fn nested_groups(depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..depth {
        varint(9 << 3 | 3, &mut out);
    }
    for _ in 0..depth {
        varint(9 << 3 | 4, &mut out);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn a_client_view_reads_back_what_prost_encoded(message in client_message()) {
        let bytes = message.encode_to_vec();
        prop_assert_eq!(ClientView::decode(&bytes), Ok(ClientView::from(&message)));
    }

    #[test]
    fn a_host_view_reads_back_what_prost_encoded(message in host_message()) {
        let bytes = message.encode_to_vec();
        prop_assert_eq!(HostView::decode(&bytes), Ok(HostView::from(&message)));
    }

    #[test]
    fn views_and_prost_agree_on_any_bytes(bytes in soup()) {
        let prost = ClientMessage::decode(bytes.as_slice());
        let view = ClientView::decode(&bytes);
        prop_assert_eq!(prost.is_ok(), view.is_ok(), "client: prost {:?}, view {:?}", prost, view);
        if let (Ok(prost), Ok(view)) = (&prost, view) {
            prop_assert_eq!(ClientView::from(prost), view);
        }
        let prost = HostMessage::decode(bytes.as_slice());
        let view = HostView::decode(&bytes);
        prop_assert_eq!(prost.is_ok(), view.is_ok(), "host: prost {:?}, view {:?}", prost, view);
        if let (Ok(prost), Ok(view)) = (&prost, view) {
            prop_assert_eq!(HostView::from(prost), view);
        }
    }
}

#[test]
fn groups_nest_exactly_as_deep_as_prost_allows() {
    let mut limit = None;
    for depth in 95..105 {
        let bytes = nested_groups(depth);
        let prost = ClientMessage::decode(bytes.as_slice()).is_ok();
        assert_eq!(ClientView::decode(&bytes).is_ok(), prost, "depth {depth}");
        assert_eq!(HostView::decode(&bytes).is_ok(), prost, "depth {depth}");
        if !prost && limit.is_none() {
            limit = Some(depth);
        }
    }
    // Both refuse somewhere in the range, so the boundary was tested.
    assert!(limit.is_some());
}

#[test]
fn a_repeated_header_merges_field_by_field() {
    let first = ClientMessage {
        header: Some(Header::v1("e1", "client", "")),
        kind: None,
    };
    let second = ClientMessage {
        header: Some(Header {
            protocol_version: 0,
            epoch: String::new(),
            source: "other".into(),
            target: String::new(),
            capability: String::new(),
        }),
        kind: None,
    };
    let mut bytes = first.encode_to_vec();
    bytes.extend_from_slice(&second.encode_to_vec());
    let view = ClientView::decode(&bytes).expect("a valid envelope");
    let header = view.header.expect("a header");
    assert_eq!((header.epoch, header.source), ("e1", "other"));
    assert_eq!(header.protocol_version, 1);
}
