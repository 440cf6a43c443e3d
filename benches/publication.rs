//! What publishing a one-leaf change costs, and whether it depends on the
//! size of the state.
//!
//! For each shape and each state size (1 KiB … 10 MiB of JSON):
//! - `publish`: `HostCore::invoke` of a method changing one leaf, in patch
//!   mode, including the commit and the encoding of the live frame for one
//!   session (`poll_transmit` then `HostFrame::encoded`). Ratio against the
//!   same at 1 KiB; the target is ≤ 2× on the recording path.
//!   Also measured interleaved with the 1 KiB case (see
//!   `common::interleaved_ratio`), which the verdict uses.
//! - `snapshot_to_vec`: `serde_json::to_vec` of the module's state, what a
//!   snapshot publication would at least cost. Ratio against `publish` at the
//!   same size.
//! - `client_apply`: `ClientCore::handle_message` of that same patch against
//!   a mirror of that size. Ratio against the same at 1 KiB.
//! - Wire bytes of the publication in patch mode and in snapshot mode (a
//!   count, not a timing; the target is < 128 bytes for the patch).
//!
//! Shapes: `todos_draft` (an array of todo objects in a recording
//! `JsonModule`, toggling one item's `done`), `nested_draft` (a map of maps
//! in a `JsonModule`, bumping one leaf) and `nested_typed` (the same map in
//! a `TypedModule`, whose diff path costs O(state) by design).

mod common;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{BASE_SIZE, BytesRow, Summary, interleaved_ratio};
use cosystem_worker::app::{App, Draft, JsonModule, MethodError, Module, TypedModule};
use cosystem_worker::client::{ClientConfig, ClientCore};
use cosystem_worker::host::{
    HostConfig, HostCore, HostLimits, PeerKey, PeerOptions, SyncMode, new_epoch,
};
use cosystem_worker::wire::{HostFrame, HostMessage, host_message};
use criterion::{BatchSize, BenchmarkId, Criterion};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const SUITE: &str = "publication";
/// The target: publication at any size costs at most this many times the
/// same at 1 KiB.
const PUBLISH_LIMIT: f64 = 2.0;
/// The target: a one-leaf patch publication is smaller than this on the wire.
const PATCH_BYTES_LIMIT: usize = 128;

// ---------------------------------------------------------------------------
// States and modules.
// ---------------------------------------------------------------------------

/// `{"items": [{id, text, done}, …]}` of about `bytes` bytes of JSON.
fn todos_state(bytes: usize) -> Value {
    let item = |i: usize| json!({"id": i, "text": format!("todo item number {i}"), "done": false});
    let per_item = serde_json::to_vec(&item(100_000)).map_or(50, |v| v.len() + 1);
    let items: Vec<Value> = (1..=bytes.div_ceil(per_item)).map(item).collect();
    json!({ "items": items })
}

/// The recording module over `todos_state`: `toggle_at(index)` flips one
/// item's `done`, in O(depth) (the demo's `toggle(id)` also searches the
/// list for the id, which is the method's own O(n), not publication's).
fn todos_module(state: Value) -> JsonModule {
    JsonModule::new("todos", state).method("toggle_at", |d: &mut Draft<'_>, (i,): (usize,)| {
        let path = format!("/items/{i}/done");
        let done = !d.get(&path).and_then(Value::as_bool).unwrap_or(false);
        d.replace(&path, done)?;
        Ok(done)
    })
}

/// Members per inner map of the nested shape.
const KEYS_PER_GROUP: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Leaf {
    value: i64,
    label: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Nested {
    groups: BTreeMap<String, BTreeMap<String, Leaf>>,
}

fn group_key(g: usize) -> String {
    format!("g{g:06}")
}

fn leaf_key(k: usize) -> String {
    format!("k{k:02}")
}

/// `{"groups": {"g000001": {"k00": {value, label}, …}, …}}` of about `bytes`.
fn nested_state(bytes: usize) -> Nested {
    let group = |g: usize| -> BTreeMap<String, Leaf> {
        (0..KEYS_PER_GROUP)
            .map(|k| {
                let label = format!("label {g}/{k}");
                (leaf_key(k), Leaf { value: 0, label })
            })
            .collect()
    };
    let per_group = serde_json::to_vec(&group(100_000)).map_or(600, |v| v.len() + 12);
    let groups = (0..bytes.div_ceil(per_group))
        .map(|g| (group_key(g), group(g)))
        .collect();
    Nested { groups }
}

fn nested_draft_module(state: Value) -> JsonModule {
    JsonModule::new("nested", state).method(
        "bump",
        |d: &mut Draft<'_>, (g, k): (String, String)| {
            let path = format!("/groups/{g}/{k}/value");
            let value = d.get(&path).and_then(Value::as_i64).unwrap_or(0) + 1;
            d.replace(&path, value)?;
            Ok(value)
        },
    )
}

fn nested_typed_module(state: Nested) -> TypedModule<Nested> {
    TypedModule::new("nested", state).method("bump", |s: &mut Nested, (g, k): (String, String)| {
        let leaf = s
            .groups
            .get_mut(&g)
            .and_then(|group| group.get_mut(&k))
            .ok_or_else(|| MethodError::not_found(format!("no leaf {g}/{k}")))?;
        leaf.value += 1;
        Ok(leaf.value)
    })
}

/// The middle leaf of a nested state: the call's arguments.
fn nested_args(state: &Nested) -> Vec<Value> {
    let g = state.groups.len() / 2;
    vec![json!(group_key(g)), json!(leaf_key(KEYS_PER_GROUP / 2))]
}

// ---------------------------------------------------------------------------
// A host with one attached session, and a client mirroring it.
// ---------------------------------------------------------------------------

struct Fixture {
    host: HostCore,
    peer: PeerKey,
    module: &'static str,
    method: &'static str,
    args: Vec<Value>,
}

impl Fixture {
    fn new(mode: SyncMode, module: impl Module, method: &'static str, args: Vec<Value>) -> Fixture {
        let module_name = if module.name() == "todos" {
            "todos"
        } else {
            "nested"
        };
        let config = HostConfig {
            sync: mode,
            peer_id: "host".into(),
            // A 10 MiB view needs snapshots over the default 4 MiB message
            // limit; under it the host would refuse to grow such a view.
            limits: HostLimits {
                max_message_bytes: 64 * 1024 * 1024,
                ..HostLimits::default()
            },
            ..Default::default()
        };
        // A real epoch (32 hex digits), so the wire sizes are the real ones.
        let mut host = HostCore::new(config, App::new().with(module), new_epoch());
        let peer = host
            .connect(PeerOptions {
                peer_id: "client-1".into(),
                publications: true,
            })
            .expect("the host accepts one session");
        let mut fixture = Fixture {
            host,
            peer,
            module: module_name,
            method,
            args,
        };
        // Attach the session, so that commits are published to it.
        fixture.client();
        fixture
    }

    /// A client whose mirror is the host's current view, over this session.
    fn client(&mut self) -> ClientCore {
        let now = Instant::now();
        let mut client = ClientCore::new(
            ClientConfig {
                peer_id: "client-1".into(),
                ..Default::default()
            },
            now,
        );
        while let Some(m) = client.poll_transmit() {
            self.host
                .handle_message(self.peer, m)
                .expect("the host accepts the sync request");
        }
        while let Some(frame) = self.host.poll_transmit(self.peer) {
            client.handle_message(now, frame.message().clone());
        }
        while client.poll_event().is_some() {}
        assert!(client.is_ready(), "the client mirrors the host");
        client
    }

    /// One publication: the call, its commit, and the encoding of the frame
    /// for this session. Returns the frame.
    fn publish(&mut self) -> HostFrame {
        self.host
            .invoke(self.module, self.method, &self.args)
            .expect("the bench's call succeeds");
        let frame = self
            .host
            .poll_transmit(self.peer)
            .expect("the commit is published to the session");
        black_box(frame.encoded());
        while self.host.poll_event().is_some() {}
        frame
    }

    /// `n` publications, timed.
    fn publish_n(&mut self, n: u64) -> Duration {
        let started = Instant::now();
        for _ in 0..n {
            black_box(self.publish());
        }
        started.elapsed()
    }

    fn state(&self) -> &Value {
        self.host
            .module_state(self.module)
            .expect("the module exists")
    }
}

/// A client mirroring a fixture's host, and the patch a publication sent it,
/// replayed on top of whatever version the mirror is at.
struct Mirror {
    client: ClientCore,
    patch: HostMessage,
    now: Instant,
}

impl Mirror {
    fn new(fixture: &mut Fixture) -> Mirror {
        let client = fixture.client();
        let patch = fixture.publish().message().clone();
        Mirror {
            client,
            patch,
            now: Instant::now(),
        }
    }

    fn version(&self) -> u64 {
        self.client.version().expect("the client is ready")
    }

    /// `n` patches applied, timed (building them is not).
    fn apply_n(&mut self, n: u64) -> Duration {
        let first = self.version();
        let messages: Vec<_> = (first..first + n)
            .map(|v| restamped(&self.patch, v))
            .collect();
        let before = self.client.version();
        let started = Instant::now();
        for message in messages {
            apply(&mut self.client, self.now, message);
        }
        let elapsed = started.elapsed();
        assert_eq!(
            self.client.version(),
            before.map(|v| v + n),
            "every patch applied"
        );
        elapsed
    }
}

/// `patch` re-stamped to apply on top of `version`.
fn restamped(patch: &HostMessage, version: u64) -> HostMessage {
    let mut message = patch.clone();
    if let Some(host_message::Kind::Patch(patch)) = &mut message.kind {
        patch.base_version = version;
        patch.version = version + 1;
    }
    message
}

fn apply(client: &mut ClientCore, now: Instant, message: HostMessage) {
    client.handle_message(now, message);
    while client.poll_event().is_some() {}
}

// ---------------------------------------------------------------------------
// The measurements.
// ---------------------------------------------------------------------------

/// One shape of state, measured at every size.
struct Shape<'a> {
    group: &'a str,
    /// Whether to also measure snapshot serialisation and client apply
    /// (the same for both nested shapes, so measured once).
    full: bool,
    limit: Option<f64>,
    note: &'a str,
    build: &'a dyn Fn(SyncMode, usize) -> Fixture,
}

fn measure(c: &mut Criterion, summary: &mut Summary, shape: &Shape<'_>) {
    let mut group = common::group(c, shape.group);
    let name = |f: &str, l: &str| format!("{}/{f}/{l}", shape.group);
    // The 1 KiB fixture and mirror, kept for the interleaved ratios.
    let mut base: Option<(Fixture, Option<Mirror>)> = None;
    for &(label, size) in common::sizes() {
        let mut fixture = (shape.build)(SyncMode::Patch, size);
        let state_bytes = serde_json::to_vec(fixture.state()).map_or(0, |v| v.len());

        // Sizes on the first publication of a fresh host (version 1 → 2), so
        // they do not depend on how many iterations criterion chose to run.
        let patch = fixture.publish();
        let snapshot_bytes = (shape.build)(SyncMode::Snapshot, size)
            .publish()
            .encoded()
            .len();
        let payload = match &patch.message().kind {
            Some(host_message::Kind::Patch(p)) => Some(p.patch_json.len()),
            _ => None,
        };
        summary.bytes(BytesRow {
            name: &name("wire_patch", label),
            bytes: patch.encoded().len(),
            baseline: &name("wire_snapshot", label),
            baseline_bytes: snapshot_bytes,
            limit_bytes: Some(PATCH_BYTES_LIMIT),
            payload_bytes: payload,
            state_bytes: Some(state_bytes),
            note: "encoded publication of the first one-leaf change (version 1 → 2), patch mode vs snapshot mode",
        });

        group.bench_function(BenchmarkId::new("publish", label), |b| {
            b.iter(|| black_box(fixture.publish()));
        });
        let interleaved = match &mut base {
            _ if !common::selected(&name("publish", label)) => None,
            Some((b, _)) => Some(interleaved_ratio(
                |n| b.publish_n(n),
                |n| fixture.publish_n(n),
            )),
            None => Some(1.0),
        };
        summary.time(
            &name("publish", label),
            Some(&name("publish", BASE_SIZE)),
            interleaved,
            shape.limit,
            Some(state_bytes),
            shape.note,
        );

        let mirror = if shape.full {
            let state = fixture.state();
            group.bench_function(BenchmarkId::new("snapshot_to_vec", label), |b| {
                b.iter(|| black_box(serde_json::to_vec(state).map_or(0, |v| v.len())));
            });
            summary.time(
                &name("snapshot_to_vec", label),
                Some(&name("publish", label)),
                None,
                None,
                Some(state_bytes),
                "serde_json::to_vec of the state vs a patch publication of the same size",
            );

            let mut mirror = Mirror::new(&mut fixture);
            group.bench_function(BenchmarkId::new("client_apply", label), |b| {
                let mut next = mirror.version();
                let Mirror { client, patch, now } = &mut mirror;
                b.iter_batched(
                    || {
                        next += 1;
                        restamped(patch, next - 1)
                    },
                    |message| apply(client, *now, message),
                    BatchSize::SmallInput,
                );
            });
            let interleaved = match &mut base {
                _ if !common::selected(&name("client_apply", label)) => None,
                Some((_, Some(b))) => {
                    Some(interleaved_ratio(|n| b.apply_n(n), |n| mirror.apply_n(n)))
                }
                _ => Some(1.0),
            };
            summary.time(
                &name("client_apply", label),
                Some(&name("client_apply", BASE_SIZE)),
                interleaved,
                None,
                Some(state_bytes),
                "ClientCore::handle_message of the same one-leaf patch",
            );
            Some(mirror)
        } else {
            None
        };
        if base.is_none() {
            base = Some((fixture, mirror));
        }
    }
    group.finish();
}

fn main() {
    let mut c = common::criterion();
    let mut summary = Summary::new(SUITE);

    measure(
        &mut c,
        &mut summary,
        &Shape {
            group: "todos_draft",
            full: true,
            limit: Some(PUBLISH_LIMIT),
            note: "recording path (JsonModule + Draft): toggle one item's done",
            build: &|mode, size| {
                let state = todos_state(size);
                let middle = state["items"].as_array().map_or(0, Vec::len) / 2;
                Fixture::new(mode, todos_module(state), "toggle_at", vec![json!(middle)])
            },
        },
    );
    measure(
        &mut c,
        &mut summary,
        &Shape {
            group: "nested_draft",
            full: true,
            limit: Some(PUBLISH_LIMIT),
            note: "recording path (JsonModule + Draft): bump one leaf of a map of maps",
            build: &|mode, size| {
                let state = nested_state(size);
                let args = nested_args(&state);
                let json = serde_json::to_value(&state).expect("the state is JSON");
                Fixture::new(mode, nested_draft_module(json), "bump", args)
            },
        },
    );
    measure(
        &mut c,
        &mut summary,
        &Shape {
            group: "nested_typed",
            full: false,
            limit: None,
            note: "diff path (TypedModule): serialises and diffs the whole module per call, O(state) by design",
            build: &|mode, size| {
                let state = nested_state(size);
                let args = nested_args(&state);
                Fixture::new(mode, nested_typed_module(state), "bump", args)
            },
        },
    );

    c.final_summary();
    summary.write();
}
