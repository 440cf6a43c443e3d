//! The async host and client over the in-memory transport: the seed's
//! counter example and the behaviours a user relies on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cosystem_worker::app::{App, MethodError, TypedModule};
use cosystem_worker::client::{
    CallAsError, CallOptions, Client, ClientConfig, ClientEvent, WatchOptions,
};
use cosystem_worker::demo;
use cosystem_worker::host::{Host, SyncMode};
use cosystem_worker::transport::memory;
use cosystem_worker::wire::ErrorCode;
use serde_json::{Value, json};

fn demo_host(sync: SyncMode) -> Host {
    Host::builder(demo::app("marker-5f1d0c"))
        .sync(sync)
        .sections(demo::DEFAULT_SECTIONS)
        .build()
}

fn connect(host: &Host) -> Client {
    let (host_end, connector) = memory::pair();
    let host = host.clone();
    tokio::spawn(async move { host.serve(host_end).await });
    Client::new(connector, ClientConfig::default())
}

fn count(state: &Value) -> i64 {
    state["counter"]["count"].as_i64().unwrap_or(-1)
}

#[tokio::test]
async fn seed_counter_example_call_select_watch_unsubscribe_dispose() {
    let host = demo_host(SyncMode::Patch);
    let client = connect(&host);
    client.ready().await.unwrap();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let handle = client.watch_fn(count, WatchOptions::default(), move |v| {
        sink.lock().unwrap().push(v)
    });
    let mut watch = client.watch(count);

    let value = client
        .module("counter")
        .call("increase", vec![json!(1)])
        .await
        .unwrap();
    assert_eq!(value, json!(1));
    // Read-your-writes: the mirror already shows the call's effect.
    assert_eq!(client.select(count), Some(1));
    assert_eq!(watch.changed().await, Some(1));

    handle.unsubscribe();
    client
        .call("counter", "increase", vec![json!(2)])
        .await
        .unwrap();
    assert_eq!(watch.changed().await, Some(3));
    assert!(
        seen.lock().unwrap().iter().all(|v| *v == 1),
        "listener ran after unsubscribe"
    );

    client.dispose();
    let err = client
        .call("counter", "increase", vec![json!(1)])
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Disposed);
    assert_eq!(watch.changed().await, None);
}

#[tokio::test]
async fn snapshot_mode_mirrors_every_commit() {
    let host = demo_host(SyncMode::Snapshot);
    let client = connect(&host);
    client.ready().await.unwrap();
    let id = client
        .call("todos", "add", vec![json!("milk")])
        .await
        .unwrap();
    client
        .call("todos", "toggle", vec![id.clone()])
        .await
        .unwrap();
    assert_eq!(client.state(), Some(host.view()));
    assert_eq!(
        client.select(|s| s["todos"]["items"][0]["done"].clone()),
        Some(json!(true))
    );
    assert_eq!(client.version(), Some(host.version()));
}

#[tokio::test]
async fn client_created_after_host_commits_becomes_ready_with_current_state() {
    let host = demo_host(SyncMode::Patch);
    host.invoke("counter", "increase", &[json!(5)]).unwrap();
    host.invoke("todos", "add_many", &[json!(["a", "b", "c"])])
        .unwrap();
    let late = connect(&host);
    late.ready().await.unwrap();
    assert_eq!(late.version(), Some(3));
    assert_eq!(late.state(), Some(host.view()));
}

#[tokio::test]
async fn every_client_sees_calls_made_by_another() {
    let host = demo_host(SyncMode::Patch);
    let a = connect(&host);
    let b = connect(&host);
    a.ready().await.unwrap();
    b.ready().await.unwrap();
    let mut watch = b.watch(count);
    a.call("counter", "increase", vec![json!(7)]).await.unwrap();
    assert_eq!(watch.changed().await, Some(7));
    assert_eq!(b.state(), a.state());
}

#[tokio::test]
async fn unknown_module_and_method_are_not_found() {
    let host = demo_host(SyncMode::Patch);
    let client = connect(&host);
    let err = client
        .call("nope", "increase", vec![json!(1)])
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    let err = client.call("counter", "explode", vec![]).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
}

#[tokio::test]
async fn invalid_arguments_are_rejected_without_changing_state() {
    let host = demo_host(SyncMode::Patch);
    let client = connect(&host);
    for args in [
        vec![],
        vec![json!("one")],
        vec![json!(1), json!(2)],
        vec![json!(1.5)],
    ] {
        let err = client
            .call("counter", "increase", args.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument, "args {args:?}");
    }
    assert_eq!(host.version(), 1);
    assert_eq!(client.select(count), Some(0));
}

#[tokio::test]
async fn method_error_is_delivered_after_the_mirror_caught_up() {
    let host = demo_host(SyncMode::Patch);
    let client = connect(&host);
    client.ready().await.unwrap();
    // Commit on the host behind the client's back, then fail a call: the
    // error names the current version, so the client must have caught up
    // with the host-side commit before the error is delivered.
    host.invoke("counter", "increase", &[json!(4)]).unwrap();
    let err = client
        .call("counter", "fail", vec![json!("nope")])
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Failed);
    assert_eq!(err.message, "nope");
    assert_eq!(client.select(count), Some(4));
}

#[tokio::test]
async fn panicking_method_is_internal_error_and_host_keeps_serving() {
    #[derive(serde::Serialize, serde::Deserialize, Default)]
    struct Boom {
        n: i64,
    }
    let app =
        App::new()
            .with(demo::counter())
            .with(TypedModule::new("boom", Boom::default()).method(
                "explode",
                |s: &mut Boom, (): ()| {
                    s.n = 99;
                    if s.n == 99 {
                        panic!("kaboom");
                    }
                    Ok::<_, MethodError>(())
                },
            ));
    let host = Host::builder(app).sync(SyncMode::Patch).build();
    let client = connect(&host);
    let err = client.call("boom", "explode", vec![]).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal);
    assert_eq!(host.module_state("boom"), Some(json!({"n": 0})));
    assert_eq!(
        client
            .call("counter", "increase", vec![json!(1)])
            .await
            .unwrap(),
        json!(1)
    );
}

/// A client whose host never answers, so calls stay pending.
fn silent_client() -> (Client, cosystem_worker::transport::HostLink) {
    let (host_end, connector) = memory::pair();
    (Client::new(connector, ClientConfig::default()), host_end)
}

#[tokio::test(start_paused = true)]
async fn pending_call_times_out_with_deadline_exceeded() {
    let (client, _host_end) = silent_client();
    let err = client
        .call_with(
            "counter",
            "increase",
            vec![json!(1)],
            CallOptions {
                timeout: Some(Duration::from_secs(3)),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::DeadlineExceeded);
}

#[tokio::test]
async fn dropping_a_pending_call_cancels_it() {
    let (client, _host_end) = silent_client();
    let mut events = client.events();
    let call = client.call("counter", "increase", vec![json!(1)]);
    let id = call.id().unwrap();
    drop(call);
    loop {
        match events.recv().await.unwrap() {
            ClientEvent::Settled { call, outcome, .. } if call == id => {
                assert_eq!(outcome.unwrap_err().code, ErrorCode::Cancelled);
                break;
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn dispose_rejects_every_pending_call() {
    let (client, _host_end) = silent_client();
    let a = client.call("counter", "increase", vec![json!(1)]);
    let b = client.call("todos", "add", vec![json!("x")]);
    client.dispose();
    assert_eq!(a.await.unwrap_err().code, ErrorCode::Disposed);
    assert_eq!(b.await.unwrap_err().code, ErrorCode::Disposed);
    assert_eq!(client.ready().await.unwrap_err().code, ErrorCode::Disposed);
}

#[tokio::test]
async fn typed_module_calls_serialise_tuples_and_deserialise_results() {
    let host = demo_host(SyncMode::Patch);
    let client = connect(&host);
    let todos = client.module("todos");
    let ids: Vec<u64> = todos.call_as("add_many", (vec!["a", "b"],)).await.unwrap();
    assert_eq!(ids, vec![1, 2]);
    let cleared: usize = todos.call_as("clear", ()).await.unwrap();
    assert_eq!(cleared, 2);
    let wrong = todos.call_as::<_, String>("add", ("c",)).await.unwrap_err();
    // The method ran and committed: the error must not read as a refusal.
    match wrong {
        CallAsError::UnexpectedValue { value, .. } => assert_eq!(value, json!(3)),
        other => panic!("expected an unexpected value, got {other:?}"),
    }
    let items = client.select(|s| s["todos"]["items"].as_array().map(Vec::len));
    assert_eq!(items, Some(Some(1)), "the add was committed and mirrored");
    let refused = todos.call_as::<_, u64>("toggle", (999,)).await.unwrap_err();
    assert_eq!(
        refused.method_error().map(|e| e.code),
        Some(ErrorCode::NotFound)
    );
}

#[tokio::test]
async fn typed_call_arguments_with_no_json_form_are_refused_unsent() {
    let host = demo_host(SyncMode::Patch);
    let client = connect(&host);
    let counter = client.module("counter");
    for number in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        // serde_json alone would send `[null]`, which the method reads as
        // another argument than the one given.
        let refused = counter
            .call_as::<_, i64>("increase", (Some(number),))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, CallAsError::Arguments { .. }),
            "{number}: {refused:?}"
        );
    }
    assert_eq!(host.version(), 1, "no call reached the host");
}

/// A call sent at once on a link that has room (not by the driver) must
/// still have its deadline enforced.
#[tokio::test(start_paused = true)]
async fn a_call_sent_on_a_ready_link_still_times_out() {
    use cosystem_worker::host::{HostConfig, HostCore, PeerOptions};
    use futures::{SinkExt, StreamExt};

    let (mut host_end, connector) = memory::pair();
    let client = Client::new(connector, ClientConfig::default());
    // A host that answers the sync request and nothing else.
    let mut core = HostCore::new(HostConfig::default(), demo::app("s"), "epoch");
    let peer = core
        .connect(PeerOptions {
            peer_id: "client".into(),
            publications: true,
        })
        .unwrap();
    let sync = host_end.stream.next().await.unwrap().unwrap();
    core.handle_message(peer, sync).unwrap();
    while let Some(frame) = core.poll_transmit(peer) {
        host_end.sink.send(frame).await.unwrap();
    }
    client.ready().await.unwrap();

    let call = client.call_with(
        "counter",
        "increase",
        vec![json!(1)],
        CallOptions {
            timeout: Some(Duration::from_secs(3)),
        },
    );
    let outcome = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the call's own deadline fires first");
    assert_eq!(outcome.unwrap_err().code, ErrorCode::DeadlineExceeded);
}
