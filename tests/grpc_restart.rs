//! A host restarted on the same port: clients reconnect by themselves, see
//! the new epoch, converge on the new host's state, and a call in flight
//! when the old host went away ends `outcome-unknown`.

mod common;

use common::{Gate, app_with_gate, serve_grpc, serve_grpc_on_loopback};

use std::time::Duration;

use cosystem_worker::client::{Client, ClientConfig, ClientEvent, Reconnect};
use cosystem_worker::host::{Host, SyncMode};
use cosystem_worker::transport::grpc::{GrpcConnector, GrpcServer};
use cosystem_worker::wire::ErrorCode;
use serde_json::json;
use tokio::sync::broadcast;

async fn epoch_changed_to(events: &mut broadcast::Receiver<ClientEvent>, epoch: &str) {
    loop {
        if let ClientEvent::EpochChanged { new, .. } = events.recv().await.expect("events")
            && new == epoch
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn clients_follow_a_host_restarted_on_the_same_port() {
    let gate = Gate::default();
    let first = Host::builder(app_with_gate("restart-secret", gate.clone()))
        .sync(SyncMode::Patch)
        .sections(["counter", "todos"])
        .bookmark_interval(None)
        .build();
    let mut server = serve_grpc_on_loopback(GrpcServer::builder(first.clone())).await;
    let addr = server.addr;
    let url = format!("http://{addr}");
    let reconnect = Reconnect {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
        ..Reconnect::default()
    };
    let clients: Vec<Client> = (0..3)
        .map(|_| {
            Client::with_reconnect(
                GrpcConnector::new(&url).unwrap(),
                ClientConfig::default(),
                reconnect.clone(),
            )
        })
        .collect();
    let mut events: Vec<_> = clients.iter().map(Client::events).collect();
    for c in &clients {
        c.ready().await.unwrap();
    }
    clients[0]
        .call("counter", "increase", vec![json!(41)])
        .await
        .unwrap();
    let old_epoch = first.epoch();

    // A call the first host has started and will never answer.
    let in_flight = tokio::spawn({
        let c = clients[1].clone();
        async move { c.call("slow", "hold", vec![]).await }
    });
    let entered = gate.clone();
    tokio::task::spawn_blocking(move || entered.wait_entered())
        .await
        .unwrap();
    server.begin_stop();
    let outcome = in_flight.await.unwrap();
    assert_eq!(outcome.unwrap_err().code, ErrorCode::OutcomeUnknown);
    gate.open();
    server.stop().await;

    let second = Host::builder(app_with_gate("restart-secret", Gate::default()))
        .sync(SyncMode::Patch)
        .sections(["counter", "todos"])
        .bookmark_interval(None)
        .build();
    second
        .invoke("todos", "add", &[json!("after restart")])
        .unwrap();
    let new_epoch = second.epoch();
    assert_ne!(new_epoch, old_epoch);
    let bound = GrpcServer::builder(second.clone())
        .bind(addr)
        .await
        .expect("bind");
    let _restarted = serve_grpc(bound);

    for (c, events) in clients.iter().zip(&mut events) {
        epoch_changed_to(events, &new_epoch).await;
        assert_eq!(c.epoch().as_deref(), Some(new_epoch.as_str()));
    }
    // Converge: a call through one client shows up in all of them, and the
    // old host's count is gone.
    let settled = clients[2]
        .call("counter", "increase", vec![json!(1)])
        .with_version()
        .await;
    assert_eq!(settled.outcome, Ok(json!(1)));
    let version = settled.state_version.unwrap();
    for c in &clients {
        // Subscribed before checking, so no change slips between the two.
        let mut changes = c.watch(|s| s.clone());
        while c.version() < Some(version) {
            changes.changed().await.expect("client stopped");
        }
        assert_eq!(c.state(), Some(second.view()));
    }
    assert_eq!(second.view()["todos"]["items"][0]["text"], "after restart");
}
