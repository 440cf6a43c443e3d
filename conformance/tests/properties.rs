//! Model-based property tests: random sequences of demo-app calls from
//! several clients, interleaved with fault-schedule changes, pumping, time
//! and reconnections, run through the deterministic simulation
//! (`cosystem_conformance::sim`) and checked against a reference model of
//! the demo app.
//!
//! One test per property; each runs the same state machine and checks its
//! property after every transition and once more after a final quiesce.
//! Cases default to a CI-sized count; set `COSYSTEM_PROPTEST_CASES` for
//! more. A failure prints the minimal sequence of transitions that
//! reproduces it (proptest shrinks it); the simulation is deterministic,
//! so that sequence replays exactly.

use std::collections::BTreeMap;
use std::time::Duration;

use cosystem_conformance::sim::{Fault, Sim, SimConfig};
use cosystem_conformance::vectors::matcher::json_eq;
use cosystem_worker::client::{CallId, ClientEvent, ConflictReason};
use cosystem_worker::host::SyncMode;
use cosystem_worker::wire::{ErrorCode, host_message};
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(30);
const QUIESCE_ROUNDS: usize = 64;

fn cases() -> u32 {
    std::env::var("COSYSTEM_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

// ---------------------------------------------------------------- model

/// A demo-app method call.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    Increase(i64),
    Decrease(i64),
    Fail,
    Add(String),
    Toggle(u64),
    Remove(u64),
    Clear,
    AddMany(Vec<String>),
    Rotate,
    Unknown,
}

impl Op {
    fn call(&self) -> (&'static str, &'static str, Vec<Value>) {
        match self {
            Op::Increase(by) => ("counter", "increase", vec![json!(by)]),
            Op::Decrease(by) => ("counter", "decrease", vec![json!(by)]),
            Op::Fail => ("counter", "fail", vec![json!("no")]),
            Op::Add(text) => ("todos", "add", vec![json!(text)]),
            Op::Toggle(id) => ("todos", "toggle", vec![json!(id)]),
            Op::Remove(id) => ("todos", "remove", vec![json!(id)]),
            Op::Clear => ("todos", "clear", vec![]),
            Op::AddMany(texts) => ("todos", "add_many", vec![json!(texts)]),
            Op::Rotate => ("secret", "rotate", vec![]),
            Op::Unknown => ("todos", "explode", vec![]),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum FaultSpec {
    Pass,
    Drop,
    Duplicate,
    Delay(u64),
    Reorder,
}

impl FaultSpec {
    fn fault(self) -> Fault {
        match self {
            FaultSpec::Pass => Fault::Pass,
            FaultSpec::Drop => Fault::Drop,
            FaultSpec::Duplicate => Fault::Duplicate,
            FaultSpec::Delay(ms) => Fault::Delay(Duration::from_millis(ms)),
            FaultSpec::Reorder => Fault::Reorder,
        }
    }
}

#[derive(Debug, Clone)]
enum Transition {
    /// A client calls; the call leaves at the next pump.
    Call { client: usize, op: Op },
    /// Replace a client's channel fault schedule.
    Faults {
        client: usize,
        schedule: Vec<FaultSpec>,
    },
    /// Move messages until nothing moves.
    Pump,
    /// Let time pass (ms).
    Advance(u64),
    /// A client's connection breaks and comes back.
    Reconnect(usize),
    /// Stop faults and bring everything to rest.
    Quiesce,
}

/// What the model says a call returns and at which version.
#[derive(Debug, Clone, PartialEq)]
struct Predicted {
    outcome: Result<Value, ErrorCode>,
    state_version: u64,
}

#[derive(Debug, Clone)]
struct Model {
    clients: usize,
    sync: SyncMode,
    history: usize,
    count: i64,
    items: Vec<(u64, String, bool)>,
    next_id: u64,
    version: u64,
    /// Calls made and not yet run by the host, per client, with their seq.
    queued: Vec<Vec<(u64, Op)>>,
    next_seq: u64,
    predicted: BTreeMap<u64, Predicted>,
}

impl Model {
    fn view(&self) -> Value {
        let items: Vec<Value> = self
            .items
            .iter()
            .map(|(id, text, done)| json!({"id": id, "text": text, "done": done}))
            .collect();
        json!({"counter": {"count": self.count}, "todos": {"items": items}})
    }

    fn commit(&mut self) {
        self.version += 1;
    }

    fn run(&mut self, op: &Op) -> Result<Value, ErrorCode> {
        match op {
            Op::Increase(by) | Op::Decrease(by) => {
                let next = if matches!(op, Op::Increase(_)) {
                    self.count.checked_add(*by)
                } else {
                    self.count.checked_sub(*by)
                };
                let next = next.ok_or(ErrorCode::InvalidArgument)?;
                if next != self.count {
                    self.count = next;
                    self.commit();
                }
                Ok(json!(next))
            }
            Op::Fail => Err(ErrorCode::Failed),
            Op::Add(text) => {
                let id = self.next_id;
                self.next_id += 1;
                self.items.push((id, text.clone(), false));
                self.commit();
                Ok(json!(id))
            }
            Op::Toggle(id) => {
                let item = self
                    .items
                    .iter_mut()
                    .find(|i| i.0 == *id)
                    .ok_or(ErrorCode::NotFound)?;
                item.2 = !item.2;
                let done = item.2;
                self.commit();
                Ok(json!(done))
            }
            Op::Remove(id) => {
                let at = self
                    .items
                    .iter()
                    .position(|i| i.0 == *id)
                    .ok_or(ErrorCode::NotFound)?;
                self.items.remove(at);
                self.commit();
                Ok(json!(true))
            }
            Op::Clear => {
                let n = self.items.len();
                if n > 0 {
                    self.items.clear();
                    self.commit();
                }
                Ok(json!(n))
            }
            Op::AddMany(texts) => {
                let ids: Vec<u64> = texts
                    .iter()
                    .map(|t| {
                        let id = self.next_id;
                        self.next_id += 1;
                        self.items.push((id, t.clone(), false));
                        id
                    })
                    .collect();
                if !ids.is_empty() {
                    self.commit();
                }
                Ok(json!(ids))
            }
            Op::Rotate => Ok(Value::Null),
            Op::Unknown => Err(ErrorCode::NotFound),
        }
    }

    /// The host runs every queued call: client by client, each in order
    /// (the order the simulation's pump hands them over).
    fn run_queued(&mut self) {
        for c in 0..self.clients {
            for (seq, op) in std::mem::take(&mut self.queued[c]) {
                let outcome = self.run(&op);
                let state_version = self.version;
                self.predicted.insert(
                    seq,
                    Predicted {
                        outcome,
                        state_version,
                    },
                );
            }
        }
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let text = "[a-c]{1,3}";
    prop_oneof![
        4 => (-3i64..=3).prop_map(Op::Increase),
        2 => (-3i64..=3).prop_map(Op::Decrease),
        1 => Just(Op::Increase(i64::MAX)),
        1 => Just(Op::Fail),
        4 => text.prop_map(Op::Add),
        2 => (1u64..=6).prop_map(Op::Toggle),
        2 => (1u64..=6).prop_map(Op::Remove),
        1 => Just(Op::Clear),
        2 => proptest::collection::vec(text, 0..3).prop_map(Op::AddMany),
        2 => Just(Op::Rotate),
        1 => Just(Op::Unknown),
    ]
}

fn fault_strategy() -> impl Strategy<Value = FaultSpec> {
    prop_oneof![
        3 => Just(FaultSpec::Pass),
        3 => Just(FaultSpec::Drop),
        2 => Just(FaultSpec::Duplicate),
        2 => (1u64..4000).prop_map(FaultSpec::Delay),
        2 => Just(FaultSpec::Reorder),
    ]
}

struct DemoMachine;

impl ReferenceStateMachine for DemoMachine {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        (
            1usize..=3,
            prop_oneof![Just(SyncMode::Patch), Just(SyncMode::Snapshot)],
            prop_oneof![Just(2usize), Just(4), Just(1024)],
        )
            .prop_map(|(clients, sync, history)| Model {
                clients,
                sync,
                history,
                count: 0,
                items: Vec::new(),
                next_id: 1,
                version: 1,
                queued: vec![Vec::new(); clients],
                next_seq: 0,
                predicted: BTreeMap::new(),
            })
            .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Transition> {
        let n = state.clients;
        prop_oneof![
            8 => (0..n, op_strategy()).prop_map(|(client, op)| Transition::Call { client, op }),
            3 => (0..n, proptest::collection::vec(fault_strategy(), 1..8))
                .prop_map(|(client, schedule)| Transition::Faults { client, schedule }),
            3 => Just(Transition::Pump),
            2 => (1u64..3000).prop_map(Transition::Advance),
            1 => (0..n).prop_map(Transition::Reconnect),
            1 => Just(Transition::Quiesce),
        ]
        .boxed()
    }

    fn preconditions(state: &Model, transition: &Transition) -> bool {
        match transition {
            Transition::Call { client, .. }
            | Transition::Faults { client, .. }
            | Transition::Reconnect(client) => *client < state.clients,
            _ => true,
        }
    }

    fn apply(mut state: Model, transition: &Transition) -> Model {
        match transition {
            Transition::Call { client, op } => {
                let seq = state.next_seq;
                state.next_seq += 1;
                state.queued[*client].push((seq, op.clone()));
            }
            Transition::Faults { .. } => {}
            Transition::Pump
            | Transition::Advance(_)
            | Transition::Reconnect(_)
            | Transition::Quiesce => state.run_queued(),
        }
        state
    }
}

// ---------------------------------------------------------------- system

struct System {
    sim: Sim,
    /// Model seq of each call → (client, call id).
    calls: BTreeMap<u64, (usize, CallId)>,
}

/// Which property a test checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Property {
    Ordering,
    GapDetection,
    SectionIsolation,
    ReadYourWrites,
    ExactlyOneOutcome,
}

impl Property {
    fn from_index(i: u8) -> Self {
        match i {
            0 => Property::Ordering,
            1 => Property::GapDetection,
            2 => Property::SectionIsolation,
            3 => Property::ReadYourWrites,
            _ => Property::ExactlyOneOutcome,
        }
    }
}

struct Harness<const P: u8>;

impl<const P: u8> StateMachineTest for Harness<P> {
    type SystemUnderTest = System;
    type Reference = DemoMachine;

    fn init_test(model: &Model) -> System {
        System {
            sim: Sim::new(SimConfig {
                clients: model.clients,
                sync: model.sync,
                history_entries: model.history,
                ..SimConfig::default()
            }),
            calls: BTreeMap::new(),
        }
    }

    fn apply(mut sys: System, model: &Model, transition: Transition) -> System {
        match transition {
            Transition::Call { client, op } => {
                let (module, method, args) = op.call();
                let id = sys
                    .sim
                    .call(client, module, method, &args, DEADLINE)
                    .expect("calls stay under the local limit");
                sys.calls.insert(model.next_seq - 1, (client, id));
            }
            Transition::Faults { client, schedule } => sys
                .sim
                .set_faults(client, schedule.into_iter().map(FaultSpec::fault).collect()),
            Transition::Pump => sys.sim.pump(),
            Transition::Advance(ms) => sys.sim.advance(Duration::from_millis(ms)),
            Transition::Reconnect(client) => sys.sim.reconnect(client),
            Transition::Quiesce => {
                sys.sim.quiesce(QUIESCE_ROUNDS);
                check(Property::from_index(P), &sys, model, true);
            }
        }
        sys
    }

    fn check_invariants(sys: &System, model: &Model) {
        check(Property::from_index(P), sys, model, false);
    }

    fn teardown(mut sys: System, model: Model) {
        let mut model = model;
        model.run_queued();
        sys.sim.quiesce(QUIESCE_ROUNDS);
        check(Property::from_index(P), &sys, &model, true);
    }
}

fn check(property: Property, sys: &System, model: &Model, quiesced: bool) {
    let result = match property {
        Property::Ordering => check_ordering(sys, model),
        Property::GapDetection => check_gap_detection(sys, quiesced),
        Property::SectionIsolation => check_section_isolation(sys),
        Property::ReadYourWrites => check_read_your_writes(sys),
        Property::ExactlyOneOutcome => check_exactly_one_outcome(sys, model, quiesced),
    };
    if let Err(why) = result {
        panic!("{property:?} violated: {why}");
    }
}

fn patch_of(m: &cosystem_worker::wire::HostMessage) -> Option<&cosystem_worker::wire::Patch> {
    match &m.kind {
        Some(host_message::Kind::Patch(p)) => Some(p),
        _ => None,
    }
}

fn snapshot_version(m: &cosystem_worker::wire::HostMessage) -> Option<u64> {
    match &m.kind {
        Some(host_message::Kind::Snapshot(s)) => Some(s.version),
        _ => None,
    }
}

/// Ordering: the host's published versions go up by exactly one per commit
/// (and agree with the model); each client applies versions in increasing
/// order, a patch only onto its own base, and never the same patch twice.
fn check_ordering(sys: &System, model: &Model) -> Result<(), String> {
    let t = &sys.sim.trace;
    for (i, v) in t.published.iter().enumerate() {
        if *v != i as u64 + 2 {
            return Err(format!(
                "publication #{i} is version {v}: {:?}",
                t.published
            ));
        }
    }
    if model.queued.iter().all(Vec::is_empty)
        && (sys.sim.host.version() != model.version
            || !json_eq(&sys.sim.host.view(), &model.view()))
    {
        return Err(format!(
            "host at version {} with {}, model at {} with {}",
            sys.sim.host.version(),
            sys.sim.host.view(),
            model.version,
            model.view()
        ));
    }
    for d in &t.deliveries {
        let before = d.version_before.unwrap_or(0);
        let after = d.version_after.unwrap_or(0);
        if after < before {
            return Err(format!(
                "client {} went back from {before} to {after}",
                d.client
            ));
        }
        for e in &d.events {
            let ClientEvent::StateChanged { version } = e else {
                continue;
            };
            if let Some(p) = patch_of(&d.message) {
                if !(p.base_version == before && *version == p.version && *version > before) {
                    return Err(format!(
                        "client {} applied patch {}..{} at version {before}",
                        d.client, p.base_version, p.version
                    ));
                }
            } else if snapshot_version(&d.message).is_some_and(|v| v < before) {
                return Err(format!("client {} applied an older snapshot", d.client));
            }
        }
    }
    Ok(())
}

fn has_conflict(events: &[ClientEvent], reasons: &[ConflictReason]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, ClientEvent::Conflict(c) if reasons.contains(&c.reason)))
}

/// Gap detection: a patch that does not fit is reported (version-gap or
/// missing-snapshot) unless a sync is already outstanding; every loss that
/// left a client behind is detected (reported, covered by a sync request,
/// or superseded by a snapshot); after quiesce every mirror is the host's
/// published view at the host's version.
fn check_gap_detection(sys: &System, quiesced: bool) -> Result<(), String> {
    let t = &sys.sim.trace;
    for d in &t.deliveries {
        let Some(p) = patch_of(&d.message) else {
            continue;
        };
        if d.syncing_before || p.version < p.base_version {
            continue;
        }
        let reported = match d.version_before {
            None => has_conflict(&d.events, &[ConflictReason::MissingSnapshot]),
            Some(v) if p.base_version > v => has_conflict(&d.events, &[ConflictReason::VersionGap]),
            Some(_) => true,
        };
        if !reported {
            return Err(format!(
                "client {} at {:?} silently ignored patch {}..{}",
                d.client, d.version_before, p.base_version, p.version
            ));
        }
    }
    if !quiesced {
        return Ok(());
    }
    let host_view = sys.sim.host.view();
    for c in 0..sys.sim.client_count() {
        let client = sys.sim.client(c);
        if client.version() != Some(sys.sim.host.version())
            || !client.state().is_some_and(|s| json_eq(s, &host_view))
        {
            return Err(format!(
                "client {c} rests at {:?} with {:?}; host at {} with {host_view}",
                client.version(),
                client.state(),
                sys.sim.host.version()
            ));
        }
    }
    for loss in &t.losses {
        let lost = match (&loss.message.kind, patch_of(&loss.message)) {
            (_, Some(p)) => p.version,
            (Some(host_message::Kind::Snapshot(s)), _) => s.version,
            _ => continue,
        };
        if lost <= loss.version_at_loss.unwrap_or(0) || loss.syncing_at_loss {
            continue;
        }
        let c = loss.client;
        let reported = t.deliveries[loss.next_delivery..].iter().any(|d| {
            d.client == c
                && (has_conflict(
                    &d.events,
                    &[ConflictReason::VersionGap, ConflictReason::MissingSnapshot],
                ) || (snapshot_version(&d.message).is_some_and(|v| v >= lost)
                    && d.version_after.unwrap_or(0) >= lost))
        });
        let asked = t.sent[loss.next_sent..].iter().any(|(who, m)| {
            *who == c
                && matches!(
                    m.kind,
                    Some(cosystem_worker::wire::client_message::Kind::SyncRequest(_))
                )
        });
        if !reported && !asked {
            return Err(format!(
                "client {c} lost version {lost} at {:?} and never noticed",
                loss.version_at_loss
            ));
        }
    }
    Ok(())
}

/// Section isolation: the private section's marker is in no frame.
fn check_section_isolation(sys: &System) -> Result<(), String> {
    match sys.sim.trace.marker_leaks {
        0 => Ok(()),
        n => Err(format!("{n} frame(s) carried the secret marker")),
    }
}

/// Read-your-writes: a call never settles with the host's answer while the
/// client's mirror is below the version that answer names.
fn check_read_your_writes(sys: &System) -> Result<(), String> {
    for (c, events) in sys.sim.trace.events.iter().enumerate() {
        let mut version = None;
        for e in events {
            match e {
                ClientEvent::StateChanged { version: v } => version = Some(*v),
                ClientEvent::Settled {
                    call,
                    state_version: Some(sv),
                    ..
                } if version.is_none_or(|v| v < *sv) => {
                    return Err(format!(
                        "client {c} settled call {} (state_version {sv}) at mirror {version:?}",
                        call.0
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// How often a call settled, with what, and at which state version.
type Settlement = (usize, Option<Result<Value, ErrorCode>>, Option<u64>);

/// Exactly one outcome per call: no call settles twice; after quiesce every
/// call has settled; and a call answered by the host settles with what the
/// model predicts, at the predicted version.
fn check_exactly_one_outcome(sys: &System, model: &Model, quiesced: bool) -> Result<(), String> {
    let mut outcomes: BTreeMap<(usize, CallId), Settlement> = BTreeMap::new();
    for (c, events) in sys.sim.trace.events.iter().enumerate() {
        for e in events {
            if let ClientEvent::Settled {
                call,
                outcome,
                state_version,
                ..
            } = e
            {
                let entry = outcomes.entry((c, *call)).or_insert((0, None, None));
                entry.0 += 1;
                entry.1 = Some(outcome.clone().map_err(|e| e.code));
                entry.2 = *state_version;
            }
        }
    }
    if let Some(((c, call), _)) = outcomes.iter().find(|(_, (n, _, _))| *n > 1) {
        return Err(format!("client {c} call {} settled more than once", call.0));
    }
    for (seq, (c, call)) in &sys.calls {
        match outcomes.get(&(*c, *call)) {
            None if quiesced => {
                return Err(format!("client {c} call {} never settled", call.0));
            }
            Some((_, Some(outcome), Some(sv))) => {
                let want = model
                    .predicted
                    .get(seq)
                    .ok_or_else(|| format!("call #{seq} settled but the model never ran it"))?;
                let same = match (&want.outcome, outcome) {
                    (Ok(a), Ok(b)) => json_eq(a, b),
                    (Err(a), Err(b)) => a == b,
                    _ => false,
                };
                if !same || want.state_version != *sv {
                    return Err(format!(
                        "client {c} call {} settled {outcome:?} at {sv}; model: {want:?}",
                        call.0
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn ordering_holds(sequential 1..40 => Harness<0>);

    #[test]
    fn gap_detection_holds(sequential 1..40 => Harness<1>);

    #[test]
    fn section_isolation_holds(sequential 1..40 => Harness<2>);

    #[test]
    fn read_your_writes_holds(sequential 1..40 => Harness<3>);

    #[test]
    fn exactly_one_outcome_holds(sequential 1..40 => Harness<4>);
}
