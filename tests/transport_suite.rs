//! One behaviour suite, run unchanged over every transport: calls, patch and
//! snapshot sync, watches, a lost publication healed by resync, and dispose.
//!
//! Each transport is a [`Rig`]: it starts a demo host reachable over that
//! transport and makes connectors to it. The tests see the host only through
//! clients, so the same bodies run against an in-process host and a child
//! process (the built binary serving `host --stdio`). Rigs whose host can
//! take more than one client also run the multi-client tests; a stdio child
//! serves exactly one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cosystem_worker::client::{Client, ClientConfig, ConflictReason};
use cosystem_worker::demo;
use cosystem_worker::host::{Host, SyncMode};
use cosystem_worker::transport::bus::{self, Bus, BusHostOptions};
use cosystem_worker::transport::framed::{
    self, FramedConfig, SpawnConnector, TcpConnector, UnixConnector,
};
use cosystem_worker::transport::grpc::{GrpcConnector, GrpcServer};
use cosystem_worker::transport::worker::Worker;
use cosystem_worker::transport::{ClientLink, Connector, HostInput, TransportError, memory};
use cosystem_worker::wire::{ErrorCode, host_message};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, watch};

const HOST_ID: &str = "suite-host";

/// How the host under test publishes.
#[derive(Clone, Copy)]
struct HostSpec {
    sync: SyncMode,
}

const PATCH: HostSpec = HostSpec {
    sync: SyncMode::Patch,
};
const SNAPSHOT: HostSpec = HostSpec {
    sync: SyncMode::Snapshot,
};

fn build_host(spec: HostSpec, capability: &str) -> Host {
    Host::builder(demo::app("suite-secret"))
        .sync(spec.sync)
        .sections(demo::DEFAULT_SECTIONS)
        .peer_id(HOST_ID)
        .capability(capability)
        .build()
}

/// A transport under test.
trait Rig: Sized + Send + Sync + 'static {
    /// Starts a demo host reachable over this transport.
    async fn start(spec: HostSpec) -> Self;
    /// A connector for the client `peer`.
    fn connector(&self, peer: &str) -> Box<dyn Connector>;
    /// The client settings this transport needs.
    fn config(&self, peer: &str) -> ClientConfig {
        ClientConfig {
            peer_id: peer.to_owned(),
            ..ClientConfig::default()
        }
    }
}

/// A boxed connector as a connector.
struct Boxed(Box<dyn Connector>);

impl Connector for Boxed {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        self.0.connect()
    }
}

/// A connector made of a closure, for rigs that open a session per connect.
struct Each<F>(F);

impl<F> Connector for Each<F>
where
    F: Fn() -> BoxFuture<'static, Result<ClientLink, TransportError>> + Send + Sync + 'static,
{
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        (self.0)()
    }
}

// ---------------------------------------------------------------- the rigs

/// Memory pairs, one per connect, served by an in-process host.
struct MemoryRig(Host);

impl Rig for MemoryRig {
    async fn start(spec: HostSpec) -> Self {
        Self(build_host(spec, ""))
    }
    fn connector(&self, _peer: &str) -> Box<dyn Connector> {
        let host = self.0.clone();
        Box::new(Each(move || {
            let (host_end, connector) = memory::pair();
            let host = host.clone();
            tokio::spawn(async move { host.serve(host_end).await });
            connector.connect()
        }))
    }
}

/// A broadcast bus shared by the host and every client, with a capability.
struct BusRig {
    bus: Bus,
    _host: Host,
}

const BUS_TOKEN: &str = "suite-capability";

impl Rig for BusRig {
    async fn start(spec: HostSpec) -> Self {
        let host = build_host(spec, BUS_TOKEN);
        let bus = Bus::default();
        tokio::spawn(bus::serve_host(
            host.clone(),
            bus.clone(),
            BusHostOptions::default(),
        ));
        Self { bus, _host: host }
    }
    fn connector(&self, peer: &str) -> Box<dyn Connector> {
        Box::new(self.bus.connector(&self.config(peer)).unwrap())
    }
    fn config(&self, peer: &str) -> ClientConfig {
        ClientConfig {
            peer_id: peer.to_owned(),
            host_id: HOST_ID.to_owned(),
            capability: BUS_TOKEN.to_owned(),
            ..ClientConfig::default()
        }
    }
}

/// Length-prefixed frames over TCP on the loopback interface.
struct TcpRig(String);

impl Rig for TcpRig {
    async fn start(spec: HostSpec) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(framed::serve_tcp(build_host(spec, ""), listener));
        Self(address)
    }
    fn connector(&self, _peer: &str) -> Box<dyn Connector> {
        Box::new(TcpConnector::new(self.0.clone()))
    }
}

/// Length-prefixed frames over a Unix domain socket.
struct UnixRig(std::path::PathBuf);

impl Rig for UnixRig {
    async fn start(spec: HostSpec) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "cosystem-suite-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(framed::serve_unix_listener(build_host(spec, ""), listener));
        Self(path)
    }
    fn connector(&self, _peer: &str) -> Box<dyn Connector> {
        Box::new(UnixConnector::new(self.0.clone()))
    }
}

impl Drop for UnixRig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Length-prefixed frames over an in-process byte pipe, one session per
/// connect: what a child's stdin/stdout carry, without the child.
struct PipeRig(Host);

impl Rig for PipeRig {
    async fn start(spec: HostSpec) -> Self {
        Self(build_host(spec, ""))
    }
    fn connector(&self, _peer: &str) -> Box<dyn Connector> {
        let host = self.0.clone();
        Box::new(Each(move || {
            let (host_end, connector) = framed::pipe(FramedConfig::default());
            let host = host.clone();
            tokio::spawn(async move { host.serve(host_end).await });
            connector.connect()
        }))
    }
}

/// The built binary as a child process, `host --stdio`, spoken to over its
/// stdin and stdout: a new host process per connect.
struct ChildStdioRig(HostSpec);

impl Rig for ChildStdioRig {
    async fn start(spec: HostSpec) -> Self {
        Self(spec)
    }
    fn connector(&self, _peer: &str) -> Box<dyn Connector> {
        let sync = match self.0.sync {
            SyncMode::Patch => "patch",
            SyncMode::Snapshot => "snapshot",
        };
        Box::new(
            SpawnConnector::new(
                env!("CARGO_BIN_EXE_cosystem-worker"),
                ["host", "--stdio", "--sync", sync],
            )
            .env("RUST_LOG", "off"),
        )
    }
}

/// One gRPC stream per session, on the loopback interface.
struct GrpcRig {
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Rig for GrpcRig {
    async fn start(spec: HostSpec) -> Self {
        let server = GrpcServer::builder(build_host(spec, ""))
            .bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let url = format!("http://{}", server.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Self { url, _stop: stop }
    }
    fn connector(&self, _peer: &str) -> Box<dyn Connector> {
        Box::new(GrpcConnector::new(self.url.clone()).unwrap())
    }
}

/// A host on its own thread and runtime.
struct WorkerRig(Worker);

impl Rig for WorkerRig {
    async fn start(spec: HostSpec) -> Self {
        Self(Worker::start(move || build_host(spec, "")).unwrap())
    }
    fn connector(&self, _peer: &str) -> Box<dyn Connector> {
        Box::new(self.0.connector())
    }
}

// ------------------------------------------------------------- the harness

/// What a test can observe and steer of one client's links.
struct Tap {
    /// Drop the next commit publication (a patch that moves the version).
    drop_next_publication: AtomicBool,
    /// Signalled when a publication was dropped; delivery then pauses until
    /// `resume` gets a permit.
    dropped: Notify,
    resume: Semaphore,
    /// Set once a link of this client has been dropped.
    closed: watch::Sender<bool>,
}

fn is_commit_patch(input: &HostInput) -> bool {
    let Ok(message) = input.clone().into_message() else {
        return false;
    };
    matches!(
        &message.kind,
        Some(host_message::Kind::Patch(p)) if p.sync_id == 0 && p.version > p.base_version
    )
}

/// A connector whose links report to a [`Tap`].
struct Tapped {
    inner: Box<dyn Connector>,
    tap: Arc<Tap>,
}

/// Marks the tap closed when the link's stream is dropped.
struct ClosedOnDrop(Arc<Tap>);

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        self.0.closed.send_replace(true);
    }
}

impl Connector for Tapped {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        let connecting = self.inner.connect();
        let tap = self.tap.clone();
        async move {
            let link = connecting.await?;
            let guard = ClosedOnDrop(tap.clone());
            let stream = futures::stream::unfold(
                (link.stream, tap, guard),
                |(mut stream, tap, guard)| async move {
                    loop {
                        let item = stream.next().await?;
                        if let Ok(message) = &item
                            && is_commit_patch(message)
                            && tap.drop_next_publication.swap(false, Ordering::AcqRel)
                        {
                            tap.dropped.notify_one();
                            if let Ok(permit) = tap.resume.acquire().await {
                                permit.forget();
                            }
                            continue;
                        }
                        return Some((item, (stream, tap, guard)));
                    }
                },
            );
            Ok(ClientLink {
                sink: link.sink,
                stream: Box::pin(stream),
            })
        }
        .boxed()
    }
}

impl Tap {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            drop_next_publication: AtomicBool::new(false),
            dropped: Notify::new(),
            resume: Semaphore::new(0),
            closed: watch::channel(false).0,
        })
    }
}

fn client<R: Rig>(rig: &R, peer: &str) -> Client {
    Client::new(Boxed(rig.connector(peer)), rig.config(peer))
}

fn tapped_client<R: Rig>(rig: &R, peer: &str) -> (Client, Arc<Tap>) {
    let tap = Tap::new();
    let connector = Tapped {
        inner: rig.connector(peer),
        tap: tap.clone(),
    };
    (Client::new(connector, rig.config(peer)), tap)
}

fn count(state: &Value) -> i64 {
    state["counter"]["count"].as_i64().unwrap_or(-1)
}

/// Fails a test that hangs instead of letting it block the run.
async fn within_a_minute(test: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the test hung");
}

// --------------------------------------------------- single-client behaviour

async fn call_settles_with_its_value_after_the_mirror_shows_it<R: Rig>() {
    let rig = R::start(PATCH).await;
    let client = client(&rig, "alice");
    client.ready().await.unwrap();
    assert_eq!(client.version(), Some(1));
    let value = client
        .call("counter", "increase", vec![json!(2)])
        .await
        .unwrap();
    assert_eq!(value, json!(2));
    assert_eq!(client.select(count), Some(2));
    assert_eq!(client.version(), Some(2));
}

async fn method_errors_arrive_with_their_codes_and_change_nothing<R: Rig>() {
    let rig = R::start(PATCH).await;
    let client = client(&rig, "alice");
    let cases = [
        ("nope", "increase", vec![json!(1)], ErrorCode::NotFound),
        ("counter", "nope", vec![], ErrorCode::NotFound),
        (
            "counter",
            "increase",
            vec![json!("one")],
            ErrorCode::InvalidArgument,
        ),
        ("counter", "fail", vec![json!("boom")], ErrorCode::Failed),
        (
            "secret",
            "rotate",
            vec![json!(1), json!(2)],
            ErrorCode::InvalidArgument,
        ),
    ];
    for (module, method, args, code) in cases {
        let error = client.call(module, method, args).await.unwrap_err();
        assert_eq!(error.code, code, "{module}.{method}");
    }
    assert_eq!(client.version(), Some(1));
    assert_eq!(client.select(count), Some(0));
}

async fn patch_mode_mirrors_a_sequence_of_commits<R: Rig>() {
    let rig = R::start(PATCH).await;
    let client = client(&rig, "alice");
    let id = client
        .call("todos", "add", vec![json!("milk")])
        .await
        .unwrap();
    client
        .call("todos", "add", vec![json!("eggs")])
        .await
        .unwrap();
    client.call("todos", "toggle", vec![id]).await.unwrap();
    client
        .call("counter", "increase", vec![json!(-3)])
        .await
        .unwrap();
    let state = client.state().unwrap();
    assert_eq!(state["counter"], json!({"count": -3}));
    let items = state["todos"]["items"].as_array().unwrap();
    let summary: Vec<(String, bool)> = items
        .iter()
        .map(|i| {
            (
                i["text"].as_str().unwrap().to_owned(),
                i["done"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![("milk".to_owned(), true), ("eggs".to_owned(), false)]
    );
    assert_eq!(client.version(), Some(5));
    assert!(state.get("secret").is_none(), "a private section leaked");
}

async fn snapshot_mode_mirrors_every_commit<R: Rig>() {
    let rig = R::start(SNAPSHOT).await;
    let client = client(&rig, "alice");
    client.ready().await.unwrap();
    client
        .call("todos", "add_many", vec![json!(["a", "b"])])
        .await
        .unwrap();
    client
        .call("counter", "increase", vec![json!(4)])
        .await
        .unwrap();
    assert_eq!(client.version(), Some(3));
    assert_eq!(client.select(count), Some(4));
    assert_eq!(
        client.select(|s| s["todos"]["items"].as_array().map(Vec::len)),
        Some(Some(2))
    );
}

async fn watch_yields_each_new_value<R: Rig>() {
    let rig = R::start(PATCH).await;
    let client = client(&rig, "alice");
    client.ready().await.unwrap();
    let mut watch = client.watch(count);
    client
        .call("counter", "increase", vec![json!(1)])
        .await
        .unwrap();
    assert_eq!(watch.changed().await, Some(1));
    // A commit that leaves the watched value alone yields nothing; the next
    // one that changes it does.
    client.call("todos", "add", vec![json!("x")]).await.unwrap();
    client
        .call("counter", "increase", vec![json!(5)])
        .await
        .unwrap();
    assert_eq!(watch.changed().await, Some(6));
}

async fn lost_publication_is_a_version_gap_the_client_heals<R: Rig>() {
    let rig = R::start(PATCH).await;
    let (client, tap) = tapped_client(&rig, "alice");
    client.ready().await.unwrap();
    let mut conflicts = client.conflicts();

    // The first call's publication is dropped. Delivery pauses there, so the
    // call can be cancelled before its result arrives: the result is then
    // unexpected and cannot start a resync of its own.
    tap.drop_next_publication.store(true, Ordering::Release);
    let first = client.call("counter", "increase", vec![json!(1)]);
    tap.dropped.notified().await;
    drop(first);
    tap.resume.add_permits(1);

    // The next publication starts after a version the mirror never saw.
    let value = client
        .call("counter", "increase", vec![json!(10)])
        .await
        .unwrap();
    assert_eq!(value, json!(11));
    let conflict = conflicts.recv().await.unwrap();
    assert_eq!(conflict.reason, ConflictReason::VersionGap);
    assert_eq!(conflict.current_version, Some(1));
    // Healed: the mirror holds both commits.
    assert_eq!(client.select(count), Some(11));
    assert_eq!(client.version(), Some(3));
}

async fn dispose_rejects_calls_ends_watches_and_closes_the_link<R: Rig>() {
    let rig = R::start(PATCH).await;
    let (client, tap) = tapped_client(&rig, "alice");
    client.ready().await.unwrap();
    let mut watch = client.watch(count);
    client.dispose();
    let error = client
        .call("counter", "increase", vec![json!(1)])
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::Disposed);
    assert_eq!(watch.changed().await, None);
    let mut closed = tap.closed.subscribe();
    closed.wait_for(|closed| *closed).await.unwrap();
}

// ---------------------------------------------------- multi-client behaviour

async fn every_client_sees_the_calls_of_another<R: Rig>() {
    let rig = R::start(PATCH).await;
    let alice = client(&rig, "alice");
    let bob = client(&rig, "bob");
    alice.ready().await.unwrap();
    bob.ready().await.unwrap();
    let mut watch = bob.watch(count);
    alice
        .call("counter", "increase", vec![json!(7)])
        .await
        .unwrap();
    assert_eq!(watch.changed().await, Some(7));
    assert_eq!(bob.state(), alice.state());
}

async fn a_late_client_starts_from_the_current_state<R: Rig>() {
    let rig = R::start(SNAPSHOT).await;
    let early = client(&rig, "early");
    early
        .call("todos", "add_many", vec![json!(["a", "b", "c"])])
        .await
        .unwrap();
    let late = client(&rig, "late");
    late.ready().await.unwrap();
    assert_eq!(late.version(), Some(2));
    assert_eq!(late.state(), early.state());
}

async fn a_disposed_client_leaves_the_others_served<R: Rig>() {
    let rig = R::start(PATCH).await;
    let (gone, tap) = tapped_client(&rig, "gone");
    let staying = client(&rig, "staying");
    gone.ready().await.unwrap();
    gone.dispose();
    tap.closed
        .subscribe()
        .wait_for(|closed| *closed)
        .await
        .unwrap();
    let value = staying
        .call("counter", "increase", vec![json!(3)])
        .await
        .unwrap();
    assert_eq!(value, json!(3));
}

macro_rules! suite {
    (@tests $rig:ty; $($test:ident),*) => {
        $(
            #[tokio::test]
            async fn $test() {
                within_a_minute(super::$test::<$rig>()).await
            }
        )*
    };
    (@single $rig:ty) => {
        suite!(@tests $rig;
            call_settles_with_its_value_after_the_mirror_shows_it,
            method_errors_arrive_with_their_codes_and_change_nothing,
            patch_mode_mirrors_a_sequence_of_commits,
            snapshot_mode_mirrors_every_commit,
            watch_yields_each_new_value,
            lost_publication_is_a_version_gap_the_client_heals,
            dispose_rejects_calls_ends_watches_and_closes_the_link
        );
    };
    ($name:ident: $rig:ty, one_client_per_host) => {
        mod $name {
            use super::*;
            suite!(@single $rig);
        }
    };
    ($name:ident: $rig:ty) => {
        mod $name {
            use super::*;
            suite!(@single $rig);
            suite!(@tests $rig;
                every_client_sees_the_calls_of_another,
                a_late_client_starts_from_the_current_state,
                a_disposed_client_leaves_the_others_served
            );
        }
    };
}

suite!(memory_pair: MemoryRig);
suite!(broadcast_bus: BusRig);
suite!(tcp_frames: TcpRig);
suite!(unix_frames: UnixRig);
suite!(pipe_frames: PipeRig);
suite!(child_stdio: ChildStdioRig, one_client_per_host);
suite!(worker_thread: WorkerRig);
suite!(grpc: GrpcRig);
