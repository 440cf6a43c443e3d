//! Helpers shared by integration tests: a method caught in flight, clients
//! over in-process links, and the built binary run as a client or as a
//! host.

// Each test crate compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::process::{Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// A hang guard for child processes, not a speed check.
const GUARD: Duration = Duration::from_secs(60);

use cosystem_worker::app::{App, Draft, JsonModule, MethodError, TypedModule};
use cosystem_worker::demo;

/// A gate the `slow.hold` method waits at until the test opens it, so a
/// call can be caught while it runs.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<(bool, bool)>, Condvar)>);

impl Gate {
    /// Called by the method: marks it entered, waits until opened.
    fn pass(&self) {
        let (lock, cvar) = &*self.0;
        let mut state = lock.lock().unwrap();
        state.0 = true;
        cvar.notify_all();
        while !state.1 {
            state = cvar.wait(state).unwrap();
        }
    }

    /// Blocks the calling thread until the method is inside the gate.
    pub fn wait_entered(&self) {
        let (lock, cvar) = &*self.0;
        let mut state = lock.lock().unwrap();
        while !state.0 {
            state = cvar.wait(state).unwrap();
        }
    }

    /// Lets the method (and any later one) through.
    pub fn open(&self) {
        let (lock, cvar) = &*self.0;
        lock.lock().unwrap().1 = true;
        cvar.notify_all();
    }
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Slow {
    runs: u64,
}

/// The demo app (with `secret` as its secret token) plus a module `slow`
/// whose method `hold` waits at `gate`, then returns how many times it ran.
pub fn app_with_gate(secret: &str, gate: Gate) -> App {
    demo::app(secret).with(TypedModule::new("slow", Slow::default()).method(
        "hold",
        move |s: &mut Slow, (): ()| {
            gate.pass();
            s.runs += 1;
            Ok::<_, MethodError>(s.runs)
        },
    ))
}

/// The built `cosystem-worker` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_cosystem-worker");

/// Runs `cosystem-worker client ARGS` and returns its output; a hang guard
/// (not a speed check) keeps a broken build from stalling the suite.
pub async fn cli_client(args: &[&str]) -> Output {
    cli_client_with_env(&[], args).await
}

/// [`cli_client`] with these environment variables set for it.
pub async fn cli_client_with_env(env: &[(&str, &str)], args: &[&str]) -> Output {
    let args: Vec<&str> = std::iter::once("client")
        .chain(args.iter().copied())
        .collect();
    cli_with_env(env, &args).await
}

/// The built binary run to completion with `args` (its first the
/// subcommand), stdin empty, within a guard that fails a hung command.
pub async fn cli(args: &[&str]) -> Output {
    cli_with_env(&[], args).await
}

/// [`cli`] with these environment variables set for it.
pub async fn cli_with_env(env: &[(&str, &str)], args: &[&str]) -> Output {
    let run = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(GUARD, run)
        .await
        .expect("the command hung")
        .expect("spawn the command")
}

/// The JSON a command that succeeded printed.
pub fn json_line(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON value on stdout")
}

/// A `cosystem-worker host` child process and its log lines (stderr,
/// at `info`).
pub struct HostProcess {
    child: Child,
    log: mpsc::UnboundedReceiver<String>,
}

impl HostProcess {
    /// Starts `cosystem-worker host ARGS`; it is killed when dropped.
    pub async fn spawn(args: &[&str]) -> Self {
        let mut command = Command::new(BIN);
        command.arg("host").args(args);
        Self::spawn_command(command)
    }

    /// Starts `command`, which runs the host (through a shell, say); it is
    /// killed when dropped.
    pub fn spawn_command(mut command: Command) -> Self {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, log) = mpsc::unbounded_channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        Self { child, log }
    }

    /// Reads log lines until one contains `needle`; returns it.
    pub async fn log_until(&mut self, needle: &str) -> String {
        tokio::time::timeout(GUARD, async {
            loop {
                let line = self.log.recv().await.expect("host log ended");
                if line.contains(needle) {
                    return line;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no log line containing {needle:?}"))
    }

    /// Every line the host logs from now until its log ends (it exited).
    pub async fn rest_of_log(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(line) = tokio::time::timeout(GUARD, self.log.recv())
            .await
            .expect("the host's log did not end")
        {
            lines.push(line);
        }
        lines
    }

    /// The next line the host logs.
    pub async fn next_line(&mut self) -> String {
        tokio::time::timeout(GUARD, self.log.recv())
            .await
            .expect("the host logged nothing more")
            .expect("host log ended")
    }

    /// The endpoint from the "listening on …" line.
    pub async fn endpoint(&mut self) -> String {
        let line = self.log_until("listening on ").await;
        line.split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("endpoint in the listening line")
            .to_owned()
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends SIGTERM, without waiting for anything.
    pub async fn signal_term(&mut self) {
        self.signal("TERM").await;
    }

    /// Sends `signal` (a name `kill` takes: `HUP`, `TERM`), without waiting
    /// for anything.
    pub async fn signal(&mut self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let killed = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
    }

    /// Waits for the host to exit by itself.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(GUARD, self.child.wait())
            .await
            .expect("host did not exit")
            .unwrap()
    }

    /// Sends SIGTERM and waits for the exit; the log stays readable.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_term().await;
        self.exited().await
    }
}

/// A client of `host` over an in-process pair, whose host end is served
/// on a task of its own.
pub fn memory_client(host: &cosystem_worker::host::Host) -> cosystem_worker::client::Client {
    let (host_end, connector) = cosystem_worker::transport::memory::pair();
    tokio::spawn({
        let host = host.clone();
        async move { host.serve(host_end).await }
    });
    cosystem_worker::client::Client::new(
        connector,
        cosystem_worker::client::ClientConfig::default(),
    )
}

/// Hands out links on which the host sends `says` bookmarks and then ends
/// the stream, `lasts` after it opened; counts the connects.
pub struct EndingLinks {
    /// Bookmarks sent on each link before it ends.
    pub says: usize,
    /// How long each link stays open after its bookmarks.
    pub lasts: std::time::Duration,
    /// Connects made so far.
    pub connects: Arc<std::sync::atomic::AtomicUsize>,
}

impl cosystem_worker::transport::Connector for EndingLinks {
    fn connect(
        &self,
    ) -> futures::future::BoxFuture<
        'static,
        Result<cosystem_worker::transport::ClientLink, cosystem_worker::transport::TransportError>,
    > {
        use cosystem_worker::wire::{Header, HostMessage, Patch, host_message};
        use futures::{FutureExt, SinkExt, StreamExt};
        self.connects
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let bookmark = HostMessage {
            header: Some(Header::v1("e", "h", "")),
            kind: Some(host_message::Kind::Patch(Patch {
                base_version: 1,
                version: 1,
                patch_json: "[]".into(),
                sync_id: 0,
            })),
        };
        let link = cosystem_worker::transport::ClientLink {
            sink: Box::pin(futures::sink::drain().sink_map_err(|never| match never {})),
            stream: Box::pin(
                futures::stream::iter(vec![Ok(bookmark.into()); self.says]).chain(
                    futures::stream::once(tokio::time::sleep(self.lasts))
                        .filter_map(|()| async { None }),
                ),
            ),
        };
        async move { Ok(link) }.boxed()
    }
}

/// A module whose one method answers who called it.
pub fn whoami_app() -> cosystem_worker::app::App {
    use cosystem_worker::host::caller;
    #[derive(Default, serde::Serialize, serde::Deserialize)]
    struct Nothing {}
    let whoami =
        TypedModule::new("who", Nothing::default()).method("ami", |_: &mut Nothing, (): ()| {
            let caller = caller().ok_or_else(|| MethodError::internal("no caller"))?;
            Ok::<_, MethodError>(serde_json::json!({
                "peer": &*caller.peer_id,
                "principal": caller.principal.as_deref(),
            }))
        });
    App::new().with(whoami)
}

/// A certificate authority made at test time, for mutual TLS.
pub struct TestCa(rcgen::CertifiedIssuer<'static, rcgen::KeyPair>);

/// A client certificate a [`TestCa`] issued.
pub struct ClientCert {
    /// The certificate, DER (what `peer_certs()` shows the server).
    pub der: Vec<u8>,
    /// The certificate, PEM.
    pub pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

impl TestCa {
    /// A new self-signed CA.
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    /// The CA's certificate, PEM (what the server trusts).
    pub fn pem(&self) -> String {
        self.0.pem()
    }

    /// A client-authentication certificate for `name`, signed by this CA.
    pub fn issue(&self, name: &str) -> ClientCert {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.0).unwrap();
        ClientCert {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A `GrpcServer` serving on a task of its own until stopped (or until this
/// is dropped, which stops it without waiting).
pub struct ServedGrpc {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ServedGrpc {
    /// The server's `http://` URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Tells the server to stop, without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the server and waits until it has stopped.
    pub async fn stop(mut self) {
        self.begin_stop();
        (&mut self.task).await.expect("server task");
    }
}

/// Serves `server` on a task of its own.
pub fn serve_grpc(server: cosystem_worker::transport::grpc::GrpcServer) -> ServedGrpc {
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .serve(async move {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
    });
    ServedGrpc {
        addr,
        stop: Some(stop),
        task,
    }
}

/// Binds `builder` to a free loopback port and serves it ([`serve_grpc`]).
pub async fn serve_grpc_on_loopback(
    builder: cosystem_worker::transport::grpc::GrpcServerBuilder,
) -> ServedGrpc {
    let server = builder
        .bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind");
    serve_grpc(server)
}

/// Connects to the gRPC server at `url`, opens a health `Watch` of the
/// whole server and reads its first status. The stream never ends by
/// itself, so it holds a stopping server in its grace period, and one of
/// its connections, for as long as it is kept.
pub async fn open_health_watch(
    url: String,
) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("a URL")
        .connect()
        .await
        .expect("a connection");
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("a health watch")
        .into_inner();
    assert!(watch.message().await.expect("a status").is_some());
    watch
}

/// A server reflection stream to the server at `url`, answered once and
/// left open: its client never half-closes it, so it ends only when the
/// server drops it. Dropping what is returned closes it.
pub async fn open_reflection_stream(
    url: String,
) -> (
    tokio::sync::mpsc::Sender<tonic_reflection::pb::v1::ServerReflectionRequest>,
    tonic::Streaming<tonic_reflection::pb::v1::ServerReflectionResponse>,
) {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("a URL")
        .connect()
        .await
        .expect("a connection");
    let (requests, queue) = tokio::sync::mpsc::channel(1);
    requests
        .send(ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        })
        .await
        .expect("the queue is open");
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(queue))
        .await
        .expect("a reflection stream")
        .into_inner();
    assert!(responses.message().await.expect("an answer").is_some());
    (requests, responses)
}

/// `message` as one frame of the framed transport (spec FB1): its length,
/// four bytes big-endian, then its encoding.
pub fn frame(message: &cosystem_worker::wire::ClientMessage) -> Vec<u8> {
    let body = prost::Message::encode_to_vec(message);
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    bytes
}

/// A SyncRequest from a client that has `have_version` (0 for nothing
/// yet), with the reason such a client gives.
pub fn sync_request(sync_id: u64, have_version: u64) -> cosystem_worker::wire::SyncRequest {
    use cosystem_worker::wire::SyncReason;
    cosystem_worker::wire::SyncRequest {
        sync_id,
        have_version,
        reason: if have_version == 0 {
            SyncReason::Initial
        } else {
            SyncReason::VersionGap
        } as i32,
    }
}

/// Whether the peer closes `stream` within `limit` (a liveness bound),
/// reading and dropping whatever it writes first (an HTTP/2 preface, say).
pub async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let read_to_end = async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(limit, read_to_end).await.is_ok()
}

/// A patch-mode host configuration whose max message size is
/// `max_message_bytes`, everything else default: what tests of the size
/// limits (spec §15) start from.
pub fn patch_config(max_message_bytes: usize) -> cosystem_worker::host::HostConfig {
    use cosystem_worker::host::{HostConfig, HostLimits, SyncMode};
    HostConfig {
        sync: SyncMode::Patch,
        limits: HostLimits {
            max_message_bytes,
            ..HostLimits::default()
        },
        ..HostConfig::default()
    }
}

/// A `texts` module: `add(text)` pushes onto `/items`, `clear()` empties
/// it, and `echo(text, times)` returns `text` repeated, so its value can be
/// far larger than its call. With `echo_commits`, an echo also pushes
/// `"echoed"`, so that it commits a change besides answering.
pub fn texts(echo_commits: bool) -> App {
    App::new().with(
        JsonModule::new("texts", serde_json::json!({"items": []}))
            .method("add", |d: &mut Draft<'_>, (text,): (String,)| {
                d.push("/items", text)?;
                Ok(())
            })
            .method("clear", |d: &mut Draft<'_>, (): ()| {
                d.replace("/items", serde_json::json!([]))?;
                Ok(())
            })
            .method(
                "echo",
                move |d: &mut Draft<'_>, (text, times): (String, usize)| {
                    if echo_commits {
                        d.push("/items", "echoed")?;
                    }
                    Ok(text.repeat(times))
                },
            ),
    )
}

/// With `first` holding `host`'s only client slot, makes a call on
/// `second` (which reconnects quickly), waits until `second` has been
/// refused `refusals` times, each refusal's error handed to `check`, then
/// frees the slot. The call must not have run while refused (sent behind
/// a refused SyncRequest it would settle `outcome-unknown` though the host
/// ran nothing), and must run exactly once after.
pub async fn a_call_waits_for_a_free_slot(
    host: &cosystem_worker::host::Host,
    first: cosystem_worker::client::Client,
    second: cosystem_worker::client::Client,
    refusals: u32,
    check: impl Fn(&Option<cosystem_worker::transport::TransportError>),
) {
    use cosystem_worker::client::Connection;
    let call = tokio::spawn({
        let second = second.clone();
        async move {
            second
                .call("counter", "increase", vec![serde_json::json!(5)])
                .await
        }
    });
    let mut connection = second.connection_changes();
    loop {
        if let Connection::Retrying { attempt, error, .. } = &*connection.borrow_and_update()
            && *attempt >= refusals
        {
            check(error);
            break;
        }
        connection.changed().await.unwrap();
    }
    assert_eq!(host.version(), 1, "the call ran while refused");
    first.dispose();
    assert_eq!(
        call.await.unwrap().expect("the call ran once"),
        serde_json::json!(5)
    );
    assert_eq!(host.version(), 2);
}

/// A loopback port nothing listens on, held bound (not listening) by the
/// socket returned, which the caller keeps until it is done: connecting to
/// it is refused. A port bound and released at once could be handed to
/// another listener meanwhile, or to a connection's own ephemeral port, which
/// then connects to itself.
pub fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("a loopback port");
    let port = socket.local_addr().expect("a local address").port();
    (socket, port)
}

/// A bare HTTP/2 client connection to `addr`, driven on a task of its
/// own, for requests no gRPC library would send.
pub async fn h2_client(addr: std::net::SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    client.ready().await.unwrap()
}

/// Opens a gRPC request to `method` (`/package.Service/Method`) on the
/// server at `addr`, its body left open for the caller to write.
pub fn open_grpc(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
    method: &str,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    client.send_request(request, false).unwrap()
}
