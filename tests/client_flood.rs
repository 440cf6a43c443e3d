//! A host that keeps the link full cannot keep the client's driver from its
//! other duties: however fast envelopes arrive, deadlines still fire.
//! Before, the driver drained whatever was buffered before doing anything
//! else, and over HTTP/2 (which takes no part in tokio's cooperative
//! budget) a flooding host kept it draining for good: events piled up
//! without bound and no call ever timed out.

use std::time::Duration;

use cosystem_worker::client::{CallOptions, Client, ClientConfig};
use cosystem_worker::transport::{ClientLink, Connector, TransportError};
use cosystem_worker::wire::{
    ClientMessage, Header, HostMessage, Snapshot, SnapshotReason, host_message,
};
use futures::future::BoxFuture;
use futures::{FutureExt, SinkExt, StreamExt};

/// A link whose host sends one snapshot, then envelopes of no kind (which a
/// client ignores, spec C2) for as long as anyone reads them, each ready at
/// once.
struct Flood;

impl Connector for Flood {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        let header = || Some(Header::v1("e1", "host", ""));
        let snapshot = HostMessage {
            header: header(),
            kind: Some(host_message::Kind::Snapshot(Snapshot {
                version: 1,
                state_json: r#"{"counter":{"count":0}}"#.to_owned(),
                sync_id: 0,
                reason: SnapshotReason::Commit as i32,
            })),
        };
        let flood = futures::stream::repeat_with(move || {
            Ok(HostMessage {
                header: header(),
                kind: None,
            }
            .into())
        });
        let stream = futures::stream::once(async move { Ok(snapshot.into()) }).chain(flood);
        let sink = futures::sink::drain::<ClientMessage>().sink_map_err(|never| match never {});
        async move {
            Ok(ClientLink {
                sink: Box::pin(sink),
                stream: Box::pin(stream),
            })
        }
        .boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_times_out_while_the_host_floods_the_link() {
    let client = Client::new(Flood, ClientConfig::default());
    let settled = tokio::time::timeout(Duration::from_secs(30), async {
        client.ready().await.expect("the snapshot arrives");
        client
            .module("counter")
            .call_with(
                "increase",
                vec![serde_json::json!(1)],
                CallOptions {
                    timeout: Some(Duration::from_millis(200)),
                },
            )
            .await
    })
    .await
    .expect("the call's deadline fired while the host kept sending");
    let error = settled.expect_err("no result ever comes");
    assert_eq!(
        error.code,
        cosystem_worker::wire::ErrorCode::DeadlineExceeded,
        "{error}"
    );
    client.dispose();
}
