//! The patches a host publishes are exactly the changes its modules made.
//!
//! For random scripts of draft operations on a recording [`JsonModule`]
//! (including operations that do not fit the state, and methods that fail or
//! panic) and random mutations of a [`TypedModule`], every call:
//! - commits at most one version, and publishes exactly one patch for it;
//! - publishes a patch that, applied with [`apply_patch`] to the previously
//!   published view, yields the newly published view;
//! - leaves the state exactly as it was when the method fails or panics.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use cosystem_worker::app::{App, Draft, DraftError, JsonModule, MethodError, Module, TypedModule};
use cosystem_worker::client::apply_patch;
use cosystem_worker::host::{HostConfig, HostCore, PeerKey, PeerOptions, SyncMode};
use cosystem_worker::wire::{
    ClientMessage, ErrorCode, Header, SyncRequest, client_message, host_message,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The payload of every panic a script asks for; the panic hook stays quiet
/// about these and only these.
const SCRIPTED_PANIC: &str = "scripted panic";

fn quiet_scripted_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&SCRIPTED_PANIC) {
                default(info);
            }
        }));
    });
}

/// How a scripted method ends once its operations ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum End {
    Ok,
    Err,
    Panic,
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![4 => Just(End::Ok), 1 => Just(End::Err), 1 => Just(End::Panic)]
}

fn finish(end: End, value: Value) -> Result<Value, MethodError> {
    match end {
        End::Ok => Ok(value),
        End::Err => Err(MethodError::failed("scripted failure")),
        End::Panic => std::panic::panic_any(SCRIPTED_PANIC),
    }
}

// ---------------------------------------------------------------------------
// Recording module: scripts of draft operations.
// ---------------------------------------------------------------------------

/// One draft operation. Targets are chosen when the script runs, as an index
/// into whatever paths exist then, so that most operations fit the state.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Op {
    /// Replace any existing value, the module's root included.
    Replace { at: usize, value: Value },
    /// Add into an existing container: an object member named `key`, or an
    /// array element at `index % (len + 1)` (or `-` when `append`).
    Add {
        at: usize,
        key: String,
        index: usize,
        append: bool,
        value: Value,
    },
    /// Remove any existing value but the root.
    Remove { at: usize },
    /// Push onto an existing array.
    Push { at: usize, value: Value },
    /// An operation that does not fit the state; the method either passes
    /// the error on (and so fails) or carries on without it.
    Invalid { kind: u8, propagate: bool },
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Every path in `value`, root (`""`) first, depth first.
fn paths(value: &Value, at: String, out: &mut Vec<(String, Value)>) {
    out.push((at.clone(), value.clone()));
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                paths(v, format!("{at}/{}", escape(k)), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                paths(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn pick<T>(items: &[T], at: usize) -> Option<&T> {
    (!items.is_empty()).then(|| &items[at % items.len()])
}

/// Runs one operation. `Ok(())` also when the operation had no target.
fn run_op(d: &mut Draft<'_>, op: &Op) -> Result<(), MethodError> {
    let mut all = Vec::new();
    paths(d.root(), String::new(), &mut all);
    match op {
        Op::Replace { at, value } => {
            if let Some((path, _)) = pick(&all, *at) {
                d.replace(path, value)?;
            }
        }
        Op::Add {
            at,
            key,
            index,
            append,
            value,
        } => {
            let containers: Vec<_> = all
                .iter()
                .filter(|(_, v)| v.is_object() || v.is_array())
                .collect();
            if let Some((path, container)) = pick(&containers, *at) {
                let token = match container {
                    Value::Array(_) if *append => "-".to_owned(),
                    Value::Array(items) => (index % (items.len() + 1)).to_string(),
                    _ => escape(key),
                };
                d.add(&format!("{path}/{token}"), value)?;
            }
        }
        Op::Remove { at } => {
            if let Some((path, _)) = pick(&all[1..], *at) {
                d.remove(path)?;
            }
        }
        Op::Push { at, value } => {
            let arrays: Vec<_> = all.iter().filter(|(_, v)| v.is_array()).collect();
            if let Some((path, _)) = pick(&arrays, *at) {
                d.push(path, value)?;
            }
        }
        Op::Invalid { kind, propagate } => {
            let result = invalid_op(d, *kind, &all);
            if result.is_ok() {
                return Err(MethodError::failed(format!(
                    "BUG: invalid operation {kind} was accepted"
                )));
            }
            if *propagate {
                result?;
            }
        }
    }
    Ok(())
}

/// An operation that must fail and change nothing.
fn invalid_op(d: &mut Draft<'_>, kind: u8, all: &[(String, Value)]) -> Result<(), DraftError> {
    let leaf = all
        .iter()
        .find(|(_, v)| !v.is_object() && !v.is_array())
        .map(|(p, _)| p.clone());
    let array = all
        .iter()
        .find_map(|(p, v)| v.as_array().map(|items| (p.clone(), items.len())));
    match (kind % 7, leaf, array) {
        (1, _, _) => d.remove("/no such member/at all").map(drop),
        (2, _, _) => d.add("/no such parent/child", 1),
        (3, _, Some((array, len))) => d.add(&format!("{array}/{}", len + 1), 1),
        (4, _, Some((array, len))) => d.remove(&format!("{array}/{len}")).map(drop),
        (5, _, Some((array, _))) => d.add(&format!("{array}/01"), 1),
        (6, Some(leaf), _) => d.add(&format!("{leaf}/under a scalar"), 1),
        _ => d.replace("/no such member", 1).map(drop),
    }
}

fn scripted(name: &str, initial: Value) -> JsonModule {
    JsonModule::new(name, initial).method("run", |d: &mut Draft<'_>, (ops, end): (Vec<Op>, End)| {
        for op in &ops {
            run_op(d, op)?;
        }
        finish(end, json!(ops.len()))
    })
}

fn key() -> impl Strategy<Value = String> {
    // Keys that need escaping in a pointer, and the empty key, on purpose.
    prop::sample::select(vec!["a", "b", "items", "c/d", "e~f", "~1", ""]).prop_map(str::to_owned)
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-50i64..50).prop_map(Value::from),
        "[a-z]{0,3}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(key(), json_value(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<usize>(), json_value()).prop_map(|(at, value)| Op::Replace { at, value }),
        3 => (any::<usize>(), key(), any::<usize>(), any::<bool>(), json_value()).prop_map(
            |(at, key, index, append, value)| Op::Add { at, key, index, append, value }
        ),
        3 => any::<usize>().prop_map(|at| Op::Remove { at }),
        2 => (any::<usize>(), json_value()).prop_map(|(at, value)| Op::Push { at, value }),
        1 => (any::<u8>(), prop::bool::weighted(0.3))
            .prop_map(|(kind, propagate)| Op::Invalid { kind, propagate }),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 0..6)
}

// ---------------------------------------------------------------------------
// Typed module: random mutations, diffed by the module.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Card {
    id: u32,
    text: String,
    done: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Board {
    title: String,
    count: i64,
    tags: Vec<String>,
    lanes: BTreeMap<String, Vec<Card>>,
    pinned: Option<Card>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Mutation {
    SetTitle(String),
    Bump(i64),
    PushTag(String),
    RemoveTag(usize),
    ClearTags,
    InsertLane(String),
    RemoveLane(usize),
    PushCard(usize, Card),
    ToggleCard(usize, usize),
    RemoveCard(usize, usize),
    Pin(Option<Card>),
}

fn lane(board: &mut Board, at: usize) -> Option<&mut Vec<Card>> {
    let n = board.lanes.len().max(1);
    board.lanes.values_mut().nth(at % n)
}

fn mutate(board: &mut Board, m: &Mutation) {
    match m {
        Mutation::SetTitle(t) => board.title = t.clone(),
        Mutation::Bump(by) => board.count += by,
        Mutation::PushTag(t) => board.tags.push(t.clone()),
        Mutation::RemoveTag(at) => {
            if !board.tags.is_empty() {
                let at = at % board.tags.len();
                board.tags.remove(at);
            }
        }
        Mutation::ClearTags => board.tags.clear(),
        Mutation::InsertLane(name) => {
            board.lanes.entry(name.clone()).or_default();
        }
        Mutation::RemoveLane(at) => {
            if let Some(k) = board
                .lanes
                .keys()
                .nth(at % board.lanes.len().max(1))
                .cloned()
            {
                board.lanes.remove(&k);
            }
        }
        Mutation::PushCard(at, card) => {
            if let Some(cards) = lane(board, *at) {
                cards.push(card.clone());
            }
        }
        Mutation::ToggleCard(at, i) => {
            if let Some(cards) = lane(board, *at).filter(|c| !c.is_empty()) {
                let i = i % cards.len();
                cards[i].done = !cards[i].done;
            }
        }
        Mutation::RemoveCard(at, i) => {
            if let Some(cards) = lane(board, *at).filter(|c| !c.is_empty()) {
                let i = i % cards.len();
                cards.remove(i);
            }
        }
        Mutation::Pin(card) => board.pinned = card.clone(),
    }
}

fn board_module(initial: Board) -> TypedModule<Board> {
    TypedModule::new("board", initial).method(
        "run",
        |b: &mut Board, (muts, end): (Vec<Mutation>, End)| {
            // Mutate first, then end as scripted: a failing method that already
            // changed its state is exactly what the module must roll back.
            for m in &muts {
                mutate(b, m);
            }
            finish(end, json!(muts.len()))
        },
    )
}

fn text() -> impl Strategy<Value = String> {
    "[a-c/~]{0,3}"
}

fn card() -> impl Strategy<Value = Card> {
    (0u32..5, text(), any::<bool>()).prop_map(|(id, text, done)| Card { id, text, done })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        text().prop_map(Mutation::SetTitle),
        (-3i64..4).prop_map(Mutation::Bump),
        text().prop_map(Mutation::PushTag),
        any::<usize>().prop_map(Mutation::RemoveTag),
        Just(Mutation::ClearTags),
        text().prop_map(Mutation::InsertLane),
        any::<usize>().prop_map(Mutation::RemoveLane),
        (any::<usize>(), card()).prop_map(|(l, c)| Mutation::PushCard(l, c)),
        (any::<usize>(), any::<usize>()).prop_map(|(l, i)| Mutation::ToggleCard(l, i)),
        (any::<usize>(), any::<usize>()).prop_map(|(l, i)| Mutation::RemoveCard(l, i)),
        prop::option::of(card()).prop_map(Mutation::Pin),
    ]
}

fn board() -> impl Strategy<Value = Board> {
    (
        text(),
        -5i64..5,
        prop::collection::vec(text(), 0..3),
        prop::collection::btree_map(text(), prop::collection::vec(card(), 0..3), 0..3),
        prop::option::of(card()),
    )
        .prop_map(|(title, count, tags, lanes, pinned)| Board {
            title,
            count,
            tags,
            lanes,
            pinned,
        })
}

// ---------------------------------------------------------------------------
// Host-level property: calls on a recording module, a typed module and a
// private recording module, interleaved.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Call {
    Doc(Vec<Op>, End),
    Board(Vec<Mutation>, End),
    Private(Vec<Op>, End),
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        3 => (ops(), end()).prop_map(|(o, e)| Call::Doc(o, e)),
        2 => (prop::collection::vec(mutation(), 0..5), end()).prop_map(|(m, e)| Call::Board(m, e)),
        1 => (ops(), end()).prop_map(|(o, e)| Call::Private(o, e)),
    ]
}

/// What outcome a script must have, judged from the script alone.
fn expected_error(ops: &[Op], end: End) -> Option<ErrorCode> {
    let propagates = ops.iter().any(|op| {
        matches!(
            op,
            Op::Invalid {
                propagate: true,
                ..
            }
        )
    });
    if propagates {
        return Some(ErrorCode::Internal);
    }
    match end {
        End::Ok => None,
        End::Err => Some(ErrorCode::Failed),
        End::Panic => Some(ErrorCode::Internal),
    }
}

fn attached_host(doc: Value, board: Board, private: Value) -> (HostCore, PeerKey, Value) {
    let config = HostConfig {
        sync: SyncMode::Patch,
        sections: Some(vec!["doc".into(), "board".into()]),
        ..Default::default()
    };
    let app = App::new()
        .with(scripted("doc", doc))
        .with(board_module(board))
        .with(scripted("private", private));
    let mut host = HostCore::new(config, app, "epoch-1");
    let peer = host
        .connect(PeerOptions {
            peer_id: "c1".into(),
            publications: true,
        })
        .expect("a first session is accepted");
    let sync = ClientMessage {
        header: Some(Header::v1("", "c1", "")),
        kind: Some(client_message::Kind::SyncRequest(SyncRequest {
            sync_id: 1,
            have_version: 0,
            reason: 0,
        })),
    };
    host.handle_message(peer, sync).expect("sync is accepted");
    let frame = host.poll_transmit(peer).expect("the sync is answered");
    let Some(host_message::Kind::Snapshot(snapshot)) = &frame.message().kind else {
        panic!("a first sync is answered with a snapshot: {frame:?}");
    };
    let mirror: Value = serde_json::from_str(&snapshot.state_json).expect("snapshot is JSON");
    assert!(host.poll_transmit(peer).is_none());
    (host, peer, mirror)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_call_publishes_at_most_one_patch_that_takes_the_old_view_to_the_new(
        doc in json_object(),
        board in board(),
        private in json_object(),
        calls in prop::collection::vec(call(), 1..8),
    ) {
        quiet_scripted_panics();
        // What the typed module must hold: only successful calls' mutations.
        let mut model = board.clone();
        let (mut host, peer, mut mirror) = attached_host(doc, board, private);
        prop_assert_eq!(&mirror, &host.view());
        for call in calls {
            let before_view = host.view();
            let before_version = host.version();
            let before_private = host.module_state("private").cloned();
            let (module, args, expected) = match &call {
                Call::Doc(ops, end) => ("doc", vec![json!(ops), json!(end)], expected_error(ops, *end)),
                Call::Private(ops, end) => ("private", vec![json!(ops), json!(end)], expected_error(ops, *end)),
                Call::Board(muts, end) => ("board", vec![json!(muts), json!(end)], expected_error(&[], *end)),
            };
            let outcome = host.invoke(module, "run", &args);
            prop_assert_eq!(outcome.as_ref().err().map(|e| e.code), expected, "{:?}", outcome);
            let frames: Vec<_> = std::iter::from_fn(|| host.poll_transmit(peer)).collect();
            let bumped = host.version() - before_version;
            prop_assert!(bumped <= 1, "one call produced {} versions", bumped);
            prop_assert_eq!(frames.len() as u64, bumped, "one publication per version");
            if outcome.is_err() {
                prop_assert_eq!(bumped, 0, "a failed call committed a version");
                prop_assert_eq!(&host.view(), &before_view);
                prop_assert_eq!(host.module_state("private").cloned(), before_private);
            }
            if module == "private" {
                prop_assert_eq!(bumped, 0, "a private change published a version");
            }
            if host.view() != before_view {
                prop_assert_eq!(bumped, 1, "a changed view needs a version");
            }
            for frame in frames {
                let Some(host_message::Kind::Patch(patch)) = &frame.message().kind else {
                    panic!("patch mode publishes patches: {frame:?}");
                };
                prop_assert_eq!((patch.base_version, patch.version), (before_version, before_version + 1));
                let applied = apply_patch(&mut mirror, &patch.patch_json);
                prop_assert!(applied.is_ok(), "{:?} applying {}", applied, patch.patch_json);
            }
            prop_assert_eq!(&mirror, &host.view());
            if let (Call::Board(muts, _), Ok(_)) = (&call, &outcome) {
                muts.iter().for_each(|m| mutate(&mut model, m));
            }
            prop_assert_eq!(host.module_state("board"), Some(&serde_json::to_value(&model).unwrap()));
        }
    }

    #[test]
    fn a_draft_whose_method_fails_or_panics_restores_the_exact_previous_state(
        initial in json_object(),
        ops in ops(),
        end in prop_oneof![Just(End::Err), Just(End::Panic)],
    ) {
        quiet_scripted_panics();
        let mut module = scripted("doc", initial);
        let before = module.state().clone();
        let args = [json!(ops), json!(end)];
        let outcome = catch_unwind(AssertUnwindSafe(|| module.invoke("run", &args)));
        match outcome {
            Ok(result) => prop_assert!(result.is_err(), "{:?}", result),
            Err(_) => {
                prop_assert_eq!(end, End::Panic);
                module.rollback();
            }
        }
        prop_assert_eq!(module.state(), &before);
    }

    #[test]
    fn recorded_operations_take_the_module_state_before_to_the_state_after(
        initial in json_object(),
        ops in ops(),
    ) {
        let mut module = scripted("doc", initial);
        let mut replay = module.state().clone();
        let args = [json!(ops), json!(End::Ok)];
        if let Ok(invocation) = module.invoke("run", &args) {
            json_patch::patch(&mut replay, &invocation.ops).expect("recorded ops apply");
        }
        prop_assert_eq!(&replay, module.state());
    }

    #[test]
    fn a_typed_method_that_fails_after_mutating_leaves_the_state_unchanged(
        initial in board(),
        muts in prop::collection::vec(mutation(), 0..5),
        end in prop_oneof![Just(End::Err), Just(End::Panic)],
    ) {
        quiet_scripted_panics();
        let mut module = board_module(initial.clone());
        let args = [json!(muts), json!(end)];
        if catch_unwind(AssertUnwindSafe(|| module.invoke("run", &args))).is_err() {
            module.rollback();
        }
        prop_assert_eq!(module.typed_state(), &initial);
        prop_assert_eq!(module.state(), &serde_json::to_value(&initial).unwrap());
    }
}
