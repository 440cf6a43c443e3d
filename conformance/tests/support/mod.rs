//! Test support: the reference host served over gRPC in process, either by
//! the reference gRPC transport ([`serve_reference`]) or, broken on purpose
//! so tests can show the host runner catching a broken host, through a small
//! adapter from the generated `HostService` server to `Host::open_session`
//! ([`serve_broken`]); or over framed streams, by the reference framed
//! transport ([`serve_framed_tcp`], [`serve_framed_unix`]) or, broken on
//! purpose, by a small framed server of its own ([`serve_framed_broken`]).

#![allow(dead_code)]

use std::sync::Arc;

use cosystem_worker::host::{Host, PeerOptions};
use cosystem_worker::transport::grpc::GrpcServer;
use cosystem_worker::wire::host_service_server::{HostService, HostServiceServer};
use cosystem_worker::wire::{ClientMessage, HostMessage, client_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// A deliberate defect of the served host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostBreakage {
    /// Calls are run whatever epoch their header names (no fencing).
    IgnoreCallEpoch,
    /// A result queued right behind a publication is sent ahead of it
    /// (read-your-writes ordering broken).
    ResultsFirst,
    /// The session ends as soon as the client half-closes, whatever it is
    /// still owed.
    EndOnHalfClose,
    /// Every patch that carries operations starts with a move of the root
    /// onto itself: a no-op that applies, but names the root (PA3).
    PatchesTheRoot,
    /// Every patch that carries operations adds a member beside the
    /// sections and removes it again: the view comes out right, but the
    /// patch names a member that is no published section (PA2).
    PatchesOutsideTheSections,
    /// Every snapshot's state starts with a member `counter` of `null`,
    /// which the real `counter` later in the text overrides for a reader
    /// that keeps the last duplicate (J3).
    DuplicatesMembersInSnapshots,
    /// Every patch's first operation names `op` twice (J3).
    DuplicatesMembersInPatches,
    /// Every error result carries details with a member named twice (J3).
    DuplicatesMembersInDetails,
    /// Every integer a result returns is written with a fraction part:
    /// `2.0` for `2` (J10).
    WritesIntegersAsFloats,
    /// Every integer a patch operation sets is written with a fraction
    /// part; results are written right (J10).
    WritesPatchIntegersAsFloats,
    /// Every envelope carries an epoch of 1025 bytes, one over E2's bound.
    LongEpoch,
    /// Reads the first `authorization` entry alone and wants the scheme
    /// spelt `Bearer` exactly (G5: case-insensitive, one entry).
    ReadsOneTokenEntryCaseSensitively,
    /// Sends response headers before it refuses a stream's token (G4).
    RefusesTokensAfterHeaders,
}

/// `patch_json` with each operation's integer `value` written as `N.0`.
fn float_values(patch_json: &str) -> String {
    use serde_json::Value;
    let Ok(Value::Array(ops)) = serde_json::from_str::<Value>(patch_json) else {
        return patch_json.to_owned();
    };
    let ops: Vec<String> = ops
        .into_iter()
        .map(|mut op| match op.get("value") {
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
                let float = format!("{n}.0");
                op["value"] = Value::from("float-placeholder");
                op.to_string().replace(r#""float-placeholder""#, &float)
            }
            _ => op.to_string(),
        })
        .collect();
    format!("[{}]", ops.join(","))
}

/// `message` as a host broken by `breakage` would write it.
fn broken(mut message: HostMessage, breakage: Option<HostBreakage>) -> HostMessage {
    use cosystem_worker::wire::{call_result, host_message};
    match (breakage, &mut message.kind) {
        (Some(HostBreakage::PatchesTheRoot), Some(host_message::Kind::Patch(p)))
            if p.version > p.base_version =>
        {
            p.patch_json = p
                .patch_json
                .replacen('[', r#"[{"op":"move","from":"","path":""},"#, 1);
        }
        (Some(HostBreakage::PatchesOutsideTheSections), Some(host_message::Kind::Patch(p)))
            if p.version > p.base_version =>
        {
            p.patch_json = p.patch_json.replacen(
                '[',
                r#"[{"op":"add","path":"/extra","value":0},{"op":"remove","path":"/extra"},"#,
                1,
            );
        }
        (
            Some(HostBreakage::DuplicatesMembersInSnapshots),
            Some(host_message::Kind::Snapshot(s)),
        ) => {
            s.state_json = s.state_json.replacen('{', r#"{"counter":null,"#, 1);
        }
        (Some(HostBreakage::DuplicatesMembersInPatches), Some(host_message::Kind::Patch(p))) => {
            p.patch_json = p
                .patch_json
                .replacen(r#"{"op":"#, r#"{"op":"replace","op":"#, 1);
        }
        (Some(HostBreakage::DuplicatesMembersInDetails), Some(host_message::Kind::Result(r))) => {
            if let Some(call_result::Outcome::Error(e)) = &mut r.outcome {
                e.details_json = r#"{"why":1,"why":1}"#.to_owned();
            }
        }
        (Some(HostBreakage::WritesIntegersAsFloats), Some(host_message::Kind::Result(r))) => {
            if let Some(call_result::Outcome::ValueJson(v)) = &mut r.outcome
                && let Ok(serde_json::Value::Number(n)) = serde_json::from_str(v)
                && (n.is_i64() || n.is_u64())
            {
                *v = format!("{n}.0");
            }
        }
        (Some(HostBreakage::WritesPatchIntegersAsFloats), Some(host_message::Kind::Patch(p))) => {
            p.patch_json = float_values(&p.patch_json);
        }
        (Some(HostBreakage::LongEpoch), _) => {
            if let Some(header) = &mut message.header {
                header.epoch = "e".repeat(1025);
            }
        }
        _ => {}
    }
    message
}

struct Adapter {
    host: Host,
    token: Option<String>,
    breakage: Option<HostBreakage>,
}

#[tonic::async_trait]
impl HostService for Adapter {
    type SessionStream = ReceiverStream<Result<HostMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        if let Some(token) = &self.token {
            let entries: Vec<&str> = request
                .metadata()
                .get_all("authorization")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let admitted = match (self.breakage, entries.as_slice()) {
                (Some(HostBreakage::ReadsOneTokenEntryCaseSensitively), [first, ..]) => {
                    *first == format!("Bearer {token}")
                }
                (_, [only]) => only.split_at_checked(7).is_some_and(|(scheme, rest)| {
                    scheme.eq_ignore_ascii_case("bearer ") && rest == token
                }),
                _ => false,
            };
            if !admitted {
                let refusal = Status::unauthenticated("a valid bearer token is required");
                if self.breakage == Some(HostBreakage::RefusesTokensAfterHeaders) {
                    let (tx, rx) = mpsc::channel(1);
                    let _ = tx.send(Err(refusal)).await;
                    return Ok(Response::new(ReceiverStream::new(rx)));
                }
                return Err(refusal);
            }
        }
        let session = self
            .host
            .open_session(PeerOptions {
                peer_id: "grpc".into(),
                publications: true,
            })
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        let session = Arc::new(session);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let breakage = self.breakage;
        // Sent by the reader when the client half-closes: it is still owed
        // the answers to what it sent (H16).
        let (ended, mut end) = tokio::sync::oneshot::channel::<()>();
        let writer = tokio::spawn({
            let session = session.clone();
            async move {
                loop {
                    let frame = tokio::select! {
                        biased;
                        frame = session.next_frame() => frame,
                        drain = &mut end => {
                            if drain.is_ok() {
                                while let Some(frame) = session.next_answer().await {
                                    let message = broken(frame.message().clone(), breakage);
                                    if tx.send(Ok(message)).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            return;
                        }
                    };
                    let Some(frame) = frame else { return };
                    let mut out = vec![frame.message().clone()];
                    if breakage == Some(HostBreakage::ResultsFirst)
                        && let Some(next) = session.try_next_frame()
                    {
                        out.insert(0, next.message().clone());
                    }
                    for message in out {
                        if breakage == Some(HostBreakage::EndOnHalfClose) {
                            // Slow, so that answers are still owed at the
                            // half-close: a fast writer may have sent all of
                            // them first, like a correct host.
                            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                        }
                        if tx.send(Ok(broken(message, breakage))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        tokio::spawn(async move {
            // Undecodable input ends the stream with an error: the host may
            // close a session that sends it (H14).
            let mut clean = false;
            loop {
                let mut message = match inbound.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => {
                        clean = true;
                        break;
                    }
                    Err(_) => break,
                };
                if breakage == Some(HostBreakage::IgnoreCallEpoch)
                    && let (Some(h), Some(client_message::Kind::Call(_))) =
                        (message.header.as_mut(), &message.kind)
                {
                    h.epoch.clear();
                }
                if session.handle(message).is_err_and(|e| e.is_fatal()) {
                    break;
                }
            }
            // A half-close is answered first (H16), unless broken not to be.
            if clean && breakage != Some(HostBreakage::EndOnHalfClose) {
                let _ = ended.send(());
                let _ = writer.await;
            } else {
                writer.abort();
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A host being served on a loopback port until dropped.
pub struct Served {
    /// Where the runner reaches it: `http://127.0.0.1:PORT` (gRPC),
    /// `tcp://127.0.0.1:PORT` or `unix:PATH` (framed streams).
    pub url: String,
    /// The host itself.
    pub host: Host,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.abort();
        self.host.shutdown();
    }
}

/// Serves `host` with the reference gRPC transport on a free loopback port.
pub async fn serve_reference(host: Host, token: Option<String>) -> Served {
    let mut builder = GrpcServer::builder(host.clone());
    if let Some(token) = token {
        builder = builder.token(token);
    }
    let server = builder
        .bind("127.0.0.1:0".parse().expect("an address"))
        .await
        .expect("a loopback port");
    let url = format!("http://{}", server.local_addr());
    let server = tokio::spawn(async move {
        let _ = server.serve(std::future::pending()).await;
    });
    Served { url, host, server }
}

/// Serves `host`, broken as `breakage` says, on a free loopback port.
pub async fn serve_broken(host: Host, breakage: HostBreakage) -> Served {
    serve(host, None, Some(breakage)).await
}

/// [`serve_broken`], requiring `token` (checked as G5 says unless the
/// breakage is in the check).
pub async fn serve_broken_with_token(host: Host, token: &str, breakage: HostBreakage) -> Served {
    serve(host, Some(token.to_owned()), Some(breakage)).await
}

async fn serve(host: Host, token: Option<String>, breakage: Option<HostBreakage>) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("a local address"));
    let service = HostServiceServer::new(Adapter {
        host: host.clone(),
        token,
        breakage,
    });
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    Served { url, host, server }
}

/// Serves `host` with the reference framed transport on a free loopback
/// TCP port; the URL is `tcp://127.0.0.1:PORT`.
pub async fn serve_framed_tcp(host: Host) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let url = format!("tcp://{}", listener.local_addr().expect("a local address"));
    let server = tokio::spawn(cosystem_worker::transport::framed::serve_tcp(
        host.clone(),
        listener,
    ));
    let server = tokio::spawn(async move {
        let _ = server.await;
    });
    Served { url, host, server }
}

/// Serves `host` with the reference framed transport on a Unix socket at
/// `path`; the URL is `unix:PATH`.
pub async fn serve_framed_unix(host: Host, path: &std::path::Path) -> Served {
    let listener = cosystem_worker::transport::framed::bind_unix(path)
        .await
        .expect("a Unix socket");
    let url = format!("unix:{}", path.display());
    let server = tokio::spawn({
        let host = host.clone();
        async move {
            let _ = cosystem_worker::transport::framed::serve_unix_listener(host, listener).await;
        }
    });
    Served { url, host, server }
}

/// A deliberate defect of a framed host. Whatever its defect, the broken
/// server has no first-frame deadline (FB6): a session opens with the
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramedBreakage {
    /// Waits for the body of a frame whatever its length prefix says,
    /// rather than closing the connection (FB4).
    ReadsOversizeBodies,
    /// Writes a line of text, not a frame, before closing a connection
    /// for an oversize length prefix (FB1).
    WritesTextOnOversize,
    /// Takes an empty frame for a malformed one and closes the connection
    /// (FB2).
    ClosesOnEmptyFrames,
    /// Discards what a session is owed at the end of its input (H16).
    EndsSessionAtEndOfInput,
    /// Reads frames of at most 600 KiB, under the 1 MiB every host must
    /// accept (FB3, §15).
    SmallLimit,
    /// Measures lengths against protobuf's 2 GiB instead of its own limit
    /// (FB4).
    TwoGiBLimit,
    /// Refuses a frame of exactly its limit, which it must accept (FB3).
    OffByOneLimit,
    /// Keeps a session whose client sent a malformed frame (FB5 allows
    /// it) and never closes a connection whose input has ended (H16 only
    /// says it MAY end the session then).
    KeepsMalformedSessionsAndStaysOpen,
    /// Writes an empty frame before every envelope, which receivers drop
    /// (FB2): such a host passes.
    SendsEmptyFrames,
    /// Closes a connection for a malformed or oversize frame amid a frame
    /// of its own, as a host that writes a prefix and its body apart may
    /// (FB4, FB5 leave it open): such a host passes.
    CutsAFrameWhenClosing,
}

/// Serves `host` over framed TCP, broken as `breakage` says, with a server
/// of its own: one session per connection, opened at once.
pub async fn serve_framed_broken(host: Host, breakage: FramedBreakage) -> Served {
    use prost::Message;
    use tokio::io::AsyncWriteExt;
    use tokio_stream::StreamExt;
    use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

    /// Writes one envelope's frame, after an empty one if broken so.
    async fn write(
        writer: &mut tokio::net::tcp::OwnedWriteHalf,
        body: &[u8],
        breakage: FramedBreakage,
    ) -> std::io::Result<()> {
        if breakage == FramedBreakage::SendsEmptyFrames {
            writer.write_all(&[0; 4]).await?;
        }
        if breakage == FramedBreakage::EndsSessionAtEndOfInput {
            // A slow writer, so that answers are still owed when the input
            // ends: a fast one may have sent all 30 of the half-close
            // case's frames before its reader saw the end, and then that
            // case could not tell this host from a correct one.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let len = u32::try_from(body.len()).expect("a frame under 4 GiB");
        writer.write_all(&len.to_be_bytes()).await?;
        writer.write_all(body).await
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let url = format!("tcp://{}", listener.local_addr().expect("a local address"));
    let served = host.clone();
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let Ok(session) = served.open_session(PeerOptions {
                peer_id: "framed".into(),
                publications: true,
            }) else {
                continue;
            };
            let session = Arc::new(session);
            let (reader, mut writer) = stream.into_split();
            let limit = match breakage {
                FramedBreakage::ReadsOversizeBodies => usize::MAX,
                FramedBreakage::SmallLimit => 600 * 1024,
                FramedBreakage::TwoGiBLimit => 2 << 30,
                FramedBreakage::OffByOneLimit => (4 << 20) - 1,
                _ => 4 << 20,
            };
            let codec = LengthDelimitedCodec::builder()
                .max_frame_length(limit)
                .new_codec();
            let mut frames = FramedRead::new(reader, codec);
            // Sent by the reader at a clean end of input: the writer then
            // sends what the session is owed (H16) and closes.
            let (ended, mut end) = tokio::sync::oneshot::channel::<bool>();
            let writer = tokio::spawn({
                let session = session.clone();
                async move {
                    loop {
                        let frame = tokio::select! {
                            biased;
                            frame = session.next_frame() => frame,
                            how = &mut end => {
                                match how {
                                    // Dropped: the connection failed.
                                    Err(_) => return,
                                    Ok(true) if breakage == FramedBreakage::CutsAFrameWhenClosing => {
                                        // A prefix announcing 100 bytes, and 10 of them.
                                        let _ = writer.write_all(&[0, 0, 0, 100]).await;
                                        let _ = writer.write_all(&[0; 10]).await;
                                        return;
                                    }
                                    Ok(true) => {
                                        let _ = writer.write_all(b"error: frame too large\n").await;
                                        return;
                                    }
                                    Ok(false) => {}
                                }
                                while let Some(frame) = session.next_answer().await {
                                    if write(&mut writer, &frame.encoded(), breakage).await.is_err() {
                                        return;
                                    }
                                }
                                let _ = writer.shutdown().await;
                                return;
                            }
                        };
                        let Some(frame) = frame else { return };
                        if write(&mut writer, &frame.encoded(), breakage)
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
            tokio::spawn(async move {
                // Whether to hand the writer a clean end or a text to write;
                // otherwise the connection failed and the writer stops.
                let how = loop {
                    match frames.next().await {
                        Some(Ok(frame)) if frame.is_empty() => {
                            if breakage == FramedBreakage::ClosesOnEmptyFrames {
                                break None;
                            }
                        }
                        Some(Ok(frame)) => {
                            let Ok(message) = ClientMessage::decode(frame) else {
                                if breakage == FramedBreakage::KeepsMalformedSessionsAndStaysOpen {
                                    continue;
                                }
                                break None;
                            };
                            if session.handle(message).is_err_and(|e| e.is_fatal()) {
                                break None;
                            }
                        }
                        Some(Err(_)) => {
                            break matches!(
                                breakage,
                                FramedBreakage::WritesTextOnOversize
                                    | FramedBreakage::CutsAFrameWhenClosing
                            )
                            .then_some(true);
                        }
                        None if breakage == FramedBreakage::KeepsMalformedSessionsAndStaysOpen => {
                            // The writer goes on serving the session, and
                            // the connection stays open, for as long as the
                            // host runs.
                            std::future::pending::<()>().await;
                        }
                        None => {
                            break (breakage != FramedBreakage::EndsSessionAtEndOfInput)
                                .then_some(false);
                        }
                    }
                };
                match how {
                    Some(how) => {
                        let _ = ended.send(how);
                    }
                    None if breakage == FramedBreakage::CutsAFrameWhenClosing => {
                        let _ = ended.send(true);
                    }
                    None => writer.abort(),
                }
            });
        }
    });
    Served { url, host, server }
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
