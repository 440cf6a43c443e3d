//! The host keeps the published view's length exact from each call's
//! reported change, so a call refused for making the view too large to send
//! as one snapshot costs what the call costs, not a measurement of the whole
//! view: a client calling again and again near the limit cannot make every
//! call walk the state. A module that does not report its change still has
//! its calls judged correctly, by measuring.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cosystem_worker::app::{App, Draft, Invocation, JsonModule, MethodError, Module, TypedModule};
use cosystem_worker::host::HostCore;
use cosystem_worker::wire::ErrorCode;
use serde_json::{Value, json};

const LIMIT: usize = 4096;

/// A published section that counts how often its state is read: the host
/// reads every section only when it measures the whole view.
struct Counted {
    state: Value,
    reads: Arc<AtomicUsize>,
}

impl Module for Counted {
    fn name(&self) -> &str {
        "counted"
    }
    fn declares(&self, _: &str) -> bool {
        false
    }
    fn methods(&self) -> Vec<String> {
        Vec::new()
    }
    fn state(&self) -> &Value {
        self.reads.fetch_add(1, Ordering::Relaxed);
        &self.state
    }
    fn invoke(&mut self, method: &str, _: &[Value]) -> Result<Invocation, MethodError> {
        Err(MethodError::not_found(method))
    }
    fn rollback(&mut self) {}
}

/// A module that forwards to a [`JsonModule`] but does not report its
/// calls' size change, as a custom module need not.
struct Unreported(JsonModule);

impl Module for Unreported {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn declares(&self, method: &str) -> bool {
        self.0.declares(method)
    }
    fn methods(&self) -> Vec<String> {
        self.0.methods()
    }
    fn state(&self) -> &Value {
        self.0.state()
    }
    fn invoke(&mut self, method: &str, args: &[Value]) -> Result<Invocation, MethodError> {
        self.0.invoke(method, args)
    }
    fn rollback(&mut self) {
        self.0.rollback();
    }
    fn settle(&mut self, keep: bool) -> bool {
        self.0.settle(keep)
    }
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Text {
    text: String,
}

/// `json.set(s)`, `typed.set(s)` and `unreported.set(s)` each set their
/// section's one string; `counted` is read only.
fn host(reads: &Arc<AtomicUsize>) -> HostCore {
    let set = |d: &mut Draft<'_>, (s,): (String,)| -> Result<(), MethodError> {
        d.replace("/text", s)?;
        Ok(())
    };
    let app = App::new()
        .with(JsonModule::new("json", json!({"text": ""})).method("set", set))
        .with(TypedModule::new("typed", Text::default()).method(
            "set",
            |t: &mut Text, (s,): (String,)| {
                t.text = s;
                Ok(())
            },
        ))
        .with(Unreported(
            JsonModule::new("unreported", json!({"text": ""})).method("set", set),
        ))
        .with(Counted {
            state: json!({"filler": "f".repeat(LIMIT / 2)}),
            reads: reads.clone(),
        });
    limited(app)
}

/// A patch-mode host of `app` whose messages are at most [`LIMIT`] bytes.
fn limited(app: App) -> HostCore {
    HostCore::new(common::patch_config(LIMIT), app, "e1")
}

fn view_len(h: &HostCore) -> usize {
    let view: serde_json::Map<String, Value> = ["json", "typed", "unreported", "counted"]
        .into_iter()
        .map(|m| (m.to_owned(), h.module_state(m).cloned().unwrap_or_default()))
        .collect();
    Value::Object(view).to_string().len()
}

#[test]
fn calls_refused_near_the_limit_do_not_measure_the_whole_view() {
    for module in ["json", "typed"] {
        let reads = Arc::new(AtomicUsize::new(0));
        let mut h = host(&reads);
        // Fill the view to just under the limit, then keep asking for more.
        h.invoke(module, "set", &[json!("x".repeat(LIMIT / 3))])
            .expect("fits");
        let before = reads.load(Ordering::Relaxed);
        for _ in 0..50 {
            let error = h
                .invoke(module, "set", &[json!("y".repeat(LIMIT))])
                .expect_err("too large");
            assert_eq!(
                error.code,
                ErrorCode::ResourceExhausted,
                "{module}: {error}"
            );
        }
        // At most once: the first refusal after a call by a module that
        // reported nothing may measure; the built-in kinds never need to.
        let measured = reads.load(Ordering::Relaxed) - before;
        assert!(
            measured <= 1,
            "{module}: 50 refused calls read the untouched section {measured} times"
        );
        assert_eq!(h.version(), 2, "{module}: nothing more committed");
    }
}

#[test]
fn a_module_that_does_not_report_its_change_is_still_judged_by_measuring() {
    let reads = Arc::new(AtomicUsize::new(0));
    let mut h = host(&reads);
    h.invoke("unreported", "set", &[json!("x".repeat(LIMIT / 3))])
        .expect("fits");
    let error = h
        .invoke("unreported", "set", &[json!("y".repeat(LIMIT))])
        .expect_err("too large");
    assert_eq!(error.code, ErrorCode::ResourceExhausted);
    assert!(reads.load(Ordering::Relaxed) > 0, "the view was measured");
    assert_eq!(
        h.module_state("unreported"),
        Some(&json!({"text": "x".repeat(LIMIT / 3)}))
    );
}

#[test]
fn a_call_s_work_stops_once_its_changes_outgrow_the_room_the_view_has_left() {
    // A method that adds items one at a time until the draft refuses one,
    // counting those it added: what a hostile `add_many` would do.
    let added = Arc::new(AtomicUsize::new(0));
    let counter = added.clone();
    let app = App::new().with(JsonModule::new("list", json!({"items": []})).method(
        "fill",
        move |d: &mut Draft<'_>, (n, text): (usize, String)| {
            for _ in 0..n {
                d.push("/items", &text)?;
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok(n)
        },
    ));
    let mut h = limited(app);
    let error = h
        .invoke("list", "fill", &[json!(1_000_000), json!("x".repeat(100))])
        .expect_err("far too large");
    assert_eq!(error.code, ErrorCode::ResourceExhausted, "{error}");
    assert_eq!(h.module_state("list"), Some(&json!({"items": []})));
    assert_eq!(h.version(), 1);
    // Each item is 103 bytes of text: the room (under 4 KiB) and the slack
    // (64 KiB) hold under 700 of them, not a million.
    let done = added.load(Ordering::Relaxed);
    assert!(
        done < 700,
        "{done} items were added before the call stopped"
    );
    // A call that fits is still taken whole.
    h.invoke("list", "fill", &[json!(10), json!("y")])
        .expect("fits");
    assert_eq!(h.version(), 2);
}

#[test]
fn floats_that_are_equal_but_written_apart_keep_the_length_exact() {
    // serde_json finds 0.0 and -0.0 equal, one byte apart: the typed diff
    // emits no operation for the change, but the text grows. Uncounted (in
    // the diff, and by the host for a call with no operation), each cycle
    // below took 300 bytes off the host's idea of the view's length, until
    // it let a call make the view too large to send.
    let app = App::new()
        .with(TypedModule::new("floats", vec![0.0f64; 300]).method(
            "fill",
            |v: &mut Vec<f64>, (x,): (f64,)| {
                v.iter_mut().for_each(|f| *f = x);
                Ok(())
            },
        ))
        .with(JsonModule::new("json", json!({"text": ""})).method(
            "set",
            |d: &mut Draft<'_>, (s,): (String,)| {
                d.replace("/text", s)?;
                Ok(())
            },
        ));
    let mut h = limited(app);
    for _ in 0..20 {
        for x in [-0.0, 1.0, 0.0] {
            h.invoke("floats", "fill", &[json!(x)]).expect("fits");
        }
    }
    // The view is ~1.2 KB; this would take it past the limit.
    let error = h
        .invoke("json", "set", &[json!("x".repeat(LIMIT - 200))])
        .expect_err("too large");
    assert_eq!(error.code, ErrorCode::ResourceExhausted);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Across any mix of calls on modules that report their change and one
    /// that does not, a call is refused exactly when it would grow the view
    /// to the same length as the largest view a call was refused at or
    /// beyond: the host's idea of the view's length never drifts from the
    /// view, so the line between committed and refused stays where it was.
    #[test]
    fn the_host_s_view_length_never_drifts_from_the_view(
        calls in proptest::collection::vec((0usize..3, 0usize..2200), 1..60),
    ) {
        let reads = Arc::new(AtomicUsize::new(0));
        let mut h = host(&reads);
        // The smallest length refused and the largest committed so far.
        let (mut refused_at, mut committed_at) = (usize::MAX, 0);
        for (module, len) in calls {
            let module = ["json", "typed", "unreported"][module];
            let old = h.module_state(module).cloned();
            let before = view_len(&h);
            let mut next = old.clone().unwrap_or_default();
            next["text"] = json!("z".repeat(len));
            let grown = before - old.map_or(0, |o| o.to_string().len()) + next.to_string().len();
            match h.invoke(module, "set", &[json!("z".repeat(len))]) {
                Ok(_) => {
                    proptest::prop_assert_eq!(view_len(&h), grown);
                    if grown > before {
                        committed_at = committed_at.max(grown);
                    }
                }
                Err(error) => {
                    proptest::prop_assert_eq!(error.code, ErrorCode::ResourceExhausted);
                    proptest::prop_assert_eq!(view_len(&h), before);
                    proptest::prop_assert!(grown > before);
                    refused_at = refused_at.min(grown);
                }
            }
            proptest::prop_assert!(
                committed_at < refused_at,
                "a view of {} bytes was committed and one of {} refused",
                committed_at,
                refused_at
            );
        }
    }
}
