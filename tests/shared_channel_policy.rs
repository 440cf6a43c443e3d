//! The sans-IO policy of a host on a shared channel (spec §17.4): which
//! client envelopes it processes, and how its reply-only sessions are kept
//! and dropped. Checked for all inputs; the bus tests check the driver.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cosystem_worker::host::{MAX_PEER_ID, ReplySessions, Unaddressed, admit};
use cosystem_worker::wire::Header;
use proptest::prelude::*;

const OWN_ID: &str = "host";

fn header(source: &str, target: &str, capability: &str) -> Header {
    Header {
        source: source.to_owned(),
        target: target.to_owned(),
        capability: capability.to_owned(),
        ..Header::default()
    }
}

#[test]
fn each_unaddressed_envelope_is_refused_with_its_own_reason() {
    let cap = "token";
    assert_eq!(admit(OWN_ID, cap, None), Err(Unaddressed::NoHeader));
    assert_eq!(
        admit(OWN_ID, cap, Some(&header("c", OWN_ID, ""))),
        Err(Unaddressed::OtherCapability),
        "an empty capability is a different one (SC7)"
    );
    assert_eq!(
        admit(OWN_ID, cap, Some(&header("c", "other-host", cap))),
        Err(Unaddressed::OtherTarget)
    );
    assert_eq!(
        admit(OWN_ID, cap, Some(&header("", OWN_ID, cap))),
        Err(Unaddressed::NoSource)
    );
    let long = "x".repeat(MAX_PEER_ID + 1);
    assert_eq!(
        admit(OWN_ID, cap, Some(&header(&long, "", cap))),
        Err(Unaddressed::SourceTooLong {
            len: MAX_PEER_ID + 1
        })
    );
    let longest = "y".repeat(MAX_PEER_ID);
    assert_eq!(
        admit(OWN_ID, cap, Some(&header(&longest, "", cap))),
        Ok(longest.as_str())
    );
}

#[test]
fn a_channel_without_a_token_ignores_the_capability_field() {
    assert_eq!(
        admit(OWN_ID, "", Some(&header("c", "", "anything"))),
        Ok("c")
    );
}

fn field(own: &'static str, other: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(own.to_owned()),
        Just(other.to_owned())
    ]
}

fn source() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("c".to_owned()),
        Just("c".repeat(MAX_PEER_ID)),
        Just("c".repeat(MAX_PEER_ID + 1)),
    ]
}

proptest! {
    /// SC2, SC3, SC7 and §2's bound, read straight from the spec: an
    /// envelope is processed exactly when all of them allow it, it is then
    /// keyed by its own `source`, and a refusal names a rule it breaks.
    #[test]
    fn an_envelope_is_processed_exactly_when_every_addressing_rule_allows_it(
        channel_token in field("token", "other"),
        capability in field("token", "other"),
        target in field(OWN_ID, "other-host"),
        source in source(),
    ) {
        let header = header(&source, &target, &capability);
        let capability_ok = channel_token.is_empty() || capability == channel_token;
        let target_ok = target.is_empty() || target == OWN_ID;
        let source_ok = !source.is_empty() && source.len() <= MAX_PEER_ID;
        match admit(OWN_ID, &channel_token, Some(&header)) {
            Ok(key) => {
                prop_assert!(capability_ok && target_ok && source_ok);
                prop_assert_eq!(key, source.as_str());
            }
            Err(reason) => {
                let broken = match reason {
                    Unaddressed::OtherCapability => !capability_ok,
                    Unaddressed::OtherTarget => !target_ok,
                    Unaddressed::NoSource => source.is_empty(),
                    Unaddressed::SourceTooLong { len } => {
                        len == source.len() && len > MAX_PEER_ID
                    }
                    other => panic!("unexpected reason {other:?}"),
                };
                prop_assert!(broken, "{reason:?} names no rule the envelope breaks");
            }
        }
    }
}

/// What a driver does with the table.
#[derive(Debug, Clone)]
enum Op {
    /// An admitted envelope from peer `n`: its session is used, or opened.
    Hear(usize),
    /// Time passes.
    Advance(u64),
    /// The periodic sweep.
    Expire,
    /// The session's core reported a fatal error.
    Remove(usize),
    /// The host is full elsewhere and this table gives up a session.
    DropLeastRecent,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..8).prop_map(Op::Hear),
        3 => (0u64..40).prop_map(Op::Advance),
        2 => Just(Op::Expire),
        1 => (0usize..8).prop_map(Op::Remove),
        1 => Just(Op::DropLeastRecent),
    ]
}

/// The model: peer → (when last heard, in ms; the session opened for it).
type Model = BTreeMap<String, (u64, u64)>;

fn least_recent(model: &Model) -> Option<String> {
    model
        .iter()
        .min_by_key(|(peer, (heard, _))| (*heard, (*peer).clone()))
        .map(|(peer, _)| peer.clone())
}

proptest! {
    /// SC10's bound and the table's own guarantees, against a model: never
    /// more than the limit; making room drops the peer heard from least
    /// recently; a sweep keeps exactly those heard within the timeout; a
    /// known peer keeps its session rather than getting a new one.
    #[test]
    fn reply_sessions_stay_bounded_and_drop_the_least_recently_heard(
        max in 1usize..5,
        timeout_ms in 1u64..60,
        ops in proptest::collection::vec(op(), 0..80),
    ) {
        let start = Instant::now();
        let mut table = ReplySessions::new(Duration::from_millis(timeout_ms), max);
        let mut model = Model::new();
        let mut now_ms = 0u64;
        let mut opened = 0u64;
        for op in ops {
            let now = start + Duration::from_millis(now_ms);
            match op {
                Op::Hear(n) => {
                    let peer = format!("c{n}");
                    match table.heard(&peer, now) {
                        Some(session) => {
                            let (heard, expected) = model.get_mut(&peer).expect("the model knows it");
                            prop_assert_eq!(*session, *expected);
                            *heard = now_ms;
                        }
                        None => {
                            prop_assert!(!model.contains_key(&peer));
                            opened += 1;
                            let dropped = table.insert(&peer, opened, now);
                            let expected = (model.len() >= max).then(|| least_recent(&model)).flatten();
                            let expected = expected.map(|p| {
                                let (_, session) = model.remove(&p).expect("present");
                                (p, session)
                            });
                            prop_assert_eq!(dropped, expected);
                            model.insert(peer, (now_ms, opened));
                        }
                    }
                }
                Op::Advance(ms) => now_ms += ms,
                Op::Expire => {
                    let before = model.len();
                    model.retain(|_, (heard, _)| now_ms - *heard < timeout_ms);
                    prop_assert_eq!(table.expire(now), before - model.len());
                }
                Op::Remove(n) => {
                    let peer = format!("c{n}");
                    prop_assert_eq!(table.remove(&peer), model.remove(&peer).map(|(_, s)| s));
                }
                Op::DropLeastRecent => {
                    let expected = least_recent(&model).map(|p| {
                        let (_, session) = model.remove(&p).expect("present");
                        (p, session)
                    });
                    prop_assert_eq!(table.drop_least_recent(), expected);
                }
            }
            prop_assert!(table.len() <= max);
            prop_assert_eq!(table.len(), model.len());
            for n in 0..8 {
                let peer = format!("c{n}");
                prop_assert_eq!(table.contains(&peer), model.contains_key(&peer));
            }
        }
    }
}

#[test]
fn a_session_is_kept_until_exactly_its_idle_timeout() {
    let start = Instant::now();
    let mut table = ReplySessions::new(Duration::from_secs(60), 4);
    table.insert("alice", (), start);
    assert_eq!(table.expire(start + Duration::from_millis(59_999)), 0);
    assert_eq!(table.expire(start + Duration::from_secs(60)), 1);
    assert!(table.is_empty());
}
