//! Reconnection, resume from the host's history window, and host restarts,
//! over an in-memory connector whose links the test can cut.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cosystem_worker::client::{Client, ClientConfig, ClientEvent, Reconnect};
use cosystem_worker::demo;
use cosystem_worker::host::{Host, HostLimits, SyncMode};
use cosystem_worker::transport::{ClientLink, Connector, HostLink, TransportError, memory};
use cosystem_worker::wire::{ErrorCode, HostFrame, HostMessage, client_message, host_message};
use futures::future::BoxFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use serde_json::json;
use tokio::task::JoinHandle;

/// What one delivered frame was, and how many bytes it took encoded.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Snapshot(usize),
    Patch {
        base: u64,
        version: u64,
        bytes: usize,
    },
    Result,
}

#[derive(Clone, Default)]
struct Switch {
    host: Arc<Mutex<Option<Host>>>,
    serving: Arc<Mutex<Option<JoinHandle<()>>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    connects: Arc<AtomicUsize>,
    /// When set, links are accepted but nobody serves them: the client's
    /// first envelope is answered with an envelope of no kind (ignored, but
    /// the host has spoken, so the client sends what it held back), and
    /// nothing after it is answered.
    black_hole: Arc<Mutex<Option<Option<JoinHandle<()>>>>>,
    swallowed_calls: Arc<AtomicUsize>,
}

impl Switch {
    fn set_host(&self, host: Host) {
        *self.host.lock().unwrap() = Some(host);
    }

    /// Cuts the current link, as a network failure would.
    fn cut(&self) {
        if let Some(task) = self.serving.lock().unwrap().take() {
            task.abort();
        }
        if let Some(task) = self
            .black_hole
            .lock()
            .unwrap()
            .as_mut()
            .and_then(Option::take)
        {
            task.abort();
        }
    }

    fn seen(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn record(frame: &HostFrame) -> Seen {
    let bytes = frame.encoded().len();
    match frame.message().kind.as_ref() {
        Some(host_message::Kind::Snapshot(_)) => Seen::Snapshot(bytes),
        Some(host_message::Kind::Patch(p)) => Seen::Patch {
            base: p.base_version,
            version: p.version,
            bytes,
        },
        _ => Seen::Result,
    }
}

impl Connector for Switch {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        let this = self.clone();
        async move {
            let swallowed = this.black_hole.lock().unwrap().as_mut().map(|slot| {
                let (host_end, connector) = memory::pair();
                let calls = this.swallowed_calls.clone();
                *slot = Some(tokio::spawn(async move {
                    let HostLink {
                        mut sink,
                        mut stream,
                        ..
                    } = host_end;
                    let mut spoken = false;
                    while let Some(Ok(message)) = stream.next().await {
                        if !spoken {
                            spoken = true;
                            let _ = sink.send(HostFrame::new(HostMessage::default())).await;
                        }
                        if matches!(message.kind, Some(client_message::Kind::Call(_))) {
                            calls.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }));
                connector
            });
            if let Some(connector) = swallowed {
                return connector.connect().await;
            }
            let host = this
                .host
                .lock()
                .unwrap()
                .clone()
                .ok_or_else(|| TransportError::Connection("no host".into()))?;
            let (host_end, connector) = memory::pair();
            let seen = this.seen.clone();
            let HostLink {
                peer_id,
                sink,
                stream,
            } = host_end;
            let sink = Box::pin(sink.with(move |frame: HostFrame| {
                seen.lock().unwrap().push(record(&frame));
                futures::future::ready(Ok::<_, TransportError>(frame))
            }));
            let link = HostLink {
                peer_id,
                sink,
                stream,
            };
            let task = tokio::spawn(async move {
                let _ = host.serve(link).await;
            });
            *this.serving.lock().unwrap() = Some(task);
            this.connects.fetch_add(1, Ordering::SeqCst);
            connector.connect().await
        }
        .boxed()
    }
}

fn host(history: usize) -> Host {
    Host::builder(demo::app("marker"))
        .sync(SyncMode::Patch)
        .sections(demo::DEFAULT_SECTIONS)
        .limits(HostLimits {
            history_entries: history,
            ..Default::default()
        })
        .bookmark_interval(None)
        .build()
}

fn client(switch: &Switch) -> Client {
    Client::with_reconnect(
        switch.clone(),
        ClientConfig::default(),
        Reconnect {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
            ..Reconnect::default()
        },
    )
}

async fn until(mut condition: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn reconnecting_client_inside_the_window_resumes_with_only_the_missing_patches() {
    let switch = Switch::default();
    let h = host(64);
    switch.set_host(h.clone());
    let c = client(&switch);
    c.ready().await.unwrap();
    let texts: Vec<String> = (0..200).map(|i| format!("item number {i}")).collect();
    h.invoke("todos", "add_many", &[json!(texts)]).unwrap();
    until(|| c.version() == Some(2)).await;
    switch.seen();

    switch.cut();
    until(|| !c.is_connected()).await;
    for _ in 0..5 {
        h.invoke("counter", "increase", &[json!(1)]).unwrap();
    }
    until(|| c.version() == Some(7)).await;
    assert_eq!(c.state(), Some(h.view()));
    let resumed = switch.seen();
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    let Seen::Patch {
        base,
        version,
        bytes,
    } = resumed[0]
    else {
        panic!("expected a resume patch, saw {resumed:?}");
    };
    assert_eq!((base, version), (2, 7));
    // What resuming saved against the snapshot a relist would have cost.
    let snapshot = h.view().to_string().len();
    println!("resume: {bytes} bytes; a snapshot: at least {snapshot} bytes");
    assert!(
        bytes * 10 < snapshot,
        "resume {bytes} B vs snapshot {snapshot} B"
    );
}

#[tokio::test]
async fn reconnecting_client_beyond_the_window_gets_a_snapshot() {
    let switch = Switch::default();
    let h = host(4);
    switch.set_host(h.clone());
    let c = client(&switch);
    c.ready().await.unwrap();
    switch.cut();
    until(|| !c.is_connected()).await;
    // Hold the reconnect off until the host has moved past the window.
    *switch.host.lock().unwrap() = None;
    for _ in 0..10 {
        h.invoke("counter", "increase", &[json!(1)]).unwrap();
    }
    switch.seen();
    switch.set_host(h.clone());
    until(|| c.version() == Some(11)).await;
    let seen = switch.seen();
    assert!(matches!(seen.as_slice(), [Seen::Snapshot(_)]), "{seen:?}");
    assert_eq!(c.state(), Some(h.view()));
}

#[tokio::test]
async fn restarted_host_is_recognised_by_its_new_epoch_and_the_mirror_converges() {
    let switch = Switch::default();
    let old = host(64);
    switch.set_host(old.clone());
    let c = client(&switch);
    c.ready().await.unwrap();
    c.call("counter", "increase", vec![json!(3)]).await.unwrap();
    let mut events = c.events();

    // The host dies with no reconnect possible until the new one is up; a
    // call made meanwhile is sent on the dead link or queued.
    *switch.host.lock().unwrap() = None;
    switch.cut();
    until(|| !c.is_connected()).await;
    let new = host(64);
    new.invoke("todos", "add", &[json!("after restart")])
        .unwrap();
    switch.set_host(new.clone());

    until(|| c.epoch().as_deref() == Some(new.epoch().as_str())).await;
    assert_eq!(c.state(), Some(new.view()));
    assert_eq!(c.select(|s| s["counter"]["count"].clone()), Some(json!(0)));
    let mut epoch_changes = 0;
    while let Ok(event) = events.try_recv() {
        if let ClientEvent::EpochChanged { old: o, new: n } = event {
            assert_eq!((o, n), (old.epoch(), new.epoch()));
            epoch_changes += 1;
        }
    }
    assert_eq!(epoch_changes, 1);
}

#[tokio::test]
async fn call_sent_when_the_link_breaks_ends_outcome_unknown_and_is_not_retried() {
    let switch = Switch::default();
    let h = host(64);
    switch.set_host(h.clone());
    let c = client(&switch);
    c.ready().await.unwrap();
    // Reconnect into a link that swallows everything: the call is sent and
    // never answered.
    *switch.black_hole.lock().unwrap() = Some(None);
    switch.cut();
    until(|| {
        switch
            .black_hole
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(Option::is_some)
    })
    .await;
    // The black hole speaks once, with nothing: the client takes the link
    // as accepted and sends the call on it.
    let call = c.call("counter", "increase", vec![json!(1)]);
    let id = call.id().unwrap();
    let mut events = c.events();
    let pending = tokio::spawn(call);
    // Once the call is on the link, break it.
    until(|| switch.swallowed_calls.load(Ordering::SeqCst) == 1).await;
    switch.cut();
    *switch.black_hole.lock().unwrap() = None;
    let outcome = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the call settled")
        .unwrap();
    assert_eq!(outcome.unwrap_err().code, ErrorCode::OutcomeUnknown);
    // Back on the real host: it never saw the call, and nothing retried it.
    until(|| c.is_connected() && c.version() == Some(h.version())).await;
    assert_eq!(h.view()["counter"]["count"], json!(0));
    let mut settled = 0;
    while let Ok(event) = events.try_recv() {
        if matches!(event, ClientEvent::Settled { call, .. } if call == id) {
            settled += 1;
        }
    }
    assert_eq!(settled, 1);
}
