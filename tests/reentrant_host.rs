//! A method that calls back into its own host gets an error instead of
//! deadlocking it, directly or through another host's method; calling into
//! another host is fine.

use std::sync::{Arc, OnceLock};

use cosystem_worker::app::{App, Draft, JsonModule, MethodError};
use cosystem_worker::host::Host;
use cosystem_worker::wire::ErrorCode;
use serde_json::{Value, json};

/// A host whose `relay` module calls into the host in `target`: `invoke`
/// runs `counter.bump` there, `peek` reads its view.
fn relaying_host(target: Arc<OnceLock<Host>>) -> Host {
    let for_peek = target.clone();
    let for_forward = target.clone();
    let for_epoch = target.clone();
    let app = App::new()
        .with(JsonModule::new("counter", json!({"n": 0})).method(
            "bump",
            |d: &mut Draft<'_>, (): ()| {
                let n = d.get("/n").and_then(Value::as_i64).unwrap_or(0) + 1;
                d.replace("/n", n)?;
                Ok(n)
            },
        ))
        .with(
            JsonModule::new("relay", json!({}))
                .method("invoke", move |_: &mut Draft<'_>, (): ()| {
                    let host = target.get().expect("the target host is set");
                    host.invoke("counter", "bump", &[]).map_err(|e| {
                        MethodError::failed(format!("{}: {}", e.code.kebab_name(), e.message))
                    })
                })
                .method("peek", move |_: &mut Draft<'_>, (): ()| {
                    Ok(for_peek.get().expect("the target host is set").view())
                })
                .method("epoch", move |_: &mut Draft<'_>, (): ()| {
                    let host = for_epoch.get().expect("the target host is set");
                    Ok(json!([host.epoch(), host.config().peer_id]))
                })
                .method("forward", move |_: &mut Draft<'_>, (): ()| {
                    let host = for_forward.get().expect("the target host is set");
                    host.invoke("relay", "invoke", &[]).map_err(|e| {
                        MethodError::failed(format!("{}: {}", e.code.kebab_name(), e.message))
                    })
                }),
        );
    Host::builder(app).bookmark_interval(None).build()
}

#[test]
fn a_method_invoking_its_own_host_is_refused_and_the_host_keeps_serving() {
    let own = Arc::new(OnceLock::new());
    let host = relaying_host(own.clone());
    own.set(host.clone()).ok().expect("set once");
    let refused = host.invoke("relay", "invoke", &[]).unwrap_err();
    assert_eq!(refused.code, ErrorCode::Failed);
    assert!(
        refused.message.starts_with("failed-precondition"),
        "{}",
        refused.message
    );
    // Reading the host from inside its method is a panic, caught: internal.
    let peeked = host.invoke("relay", "peek", &[]).unwrap_err();
    assert_eq!(peeked.code, ErrorCode::Internal);
    assert!(
        peeked.message.contains("called back into its own host"),
        "{}",
        peeked.message
    );
    // Nothing was committed, and the host still serves.
    assert_eq!(host.invoke("counter", "bump", &[]), Ok(json!(1)));
    assert_eq!(host.version(), 2);
}

/// The epoch and configuration never change, so reading them from inside
/// a method holds nothing up and is allowed.
#[test]
fn a_method_may_read_its_own_hosts_epoch_and_config() {
    let own = Arc::new(OnceLock::new());
    let host = relaying_host(own.clone());
    own.set(host.clone()).ok().expect("set once");
    assert_eq!(
        host.invoke("relay", "epoch", &[]),
        Ok(json!([host.epoch(), "host"]))
    );
}

#[test]
fn a_method_may_invoke_another_host() {
    let other = Arc::new(OnceLock::new());
    let target = relaying_host(Arc::new(OnceLock::new()));
    other.set(target.clone()).ok().expect("set once");
    let host = relaying_host(other);
    assert_eq!(host.invoke("relay", "invoke", &[]), Ok(json!(1)));
    assert_eq!(target.view()["counter"]["n"], 1);
}

#[test]
fn a_method_calling_back_through_another_host_is_refused_and_both_keep_serving() {
    let (slot_a, slot_b) = (Arc::new(OnceLock::new()), Arc::new(OnceLock::new()));
    let a = relaying_host(slot_a.clone());
    let b = relaying_host(slot_b.clone());
    slot_a.set(b.clone()).ok().expect("set once");
    slot_b.set(a.clone()).ok().expect("set once");
    // a.relay.forward runs b.relay.invoke, which invokes a.counter.bump
    // while a's core is still held by the forward. Run apart, so that a
    // deadlock fails the test instead of hanging the suite.
    let (done, outcome) = std::sync::mpsc::channel();
    let chained = a.clone();
    std::thread::spawn(move || done.send(chained.invoke("relay", "forward", &[])));
    let refused = outcome
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the chain deadlocked its first host")
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::Failed);
    assert!(
        refused.message.contains("failed-precondition"),
        "{}",
        refused.message
    );
    assert_eq!(a.invoke("counter", "bump", &[]), Ok(json!(1)));
    assert_eq!(b.invoke("counter", "bump", &[]), Ok(json!(1)));
}
