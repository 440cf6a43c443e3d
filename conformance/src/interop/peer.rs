//! One raw client of the host under test: a gRPC `Session` stream, or a
//! framed connection, that the runner writes envelopes (or arbitrary bytes)
//! to and reads host envelopes from, checking every envelope it reads
//! against the rules that hold for all of them.
//!
//! Every envelope read is checked before a case sees it:
//! - it is a protobuf `HostMessage` of protocol version 1 with an epoch of
//!   1 to 1024 bytes that never changes during the run (E2, E3, C5);
//! - it does not contain the private section's marker (SI2);
//! - a sync reply answers the request this stream has outstanding (H1);
//! - no publication arrives before the stream's first sync reply (H3);
//! - a live patch starts at the version this stream was last shown and its
//!   operations apply to the view it was shown (H5, PA4); a commit
//!   snapshot is newer than anything shown before (H6); a bookmark names the
//!   version last shown (H10);
//! - a result answers a call this stream sent and that has no answer yet,
//!   carries exactly one outcome, a non-zero `state_version`, no local-only
//!   error code, and names a version this stream has already been shown
//!   (H8, H9);
//! - its header's `target` is this stream's name on a reply and empty on a
//!   publication (§3.2, FB8);
//! - its state, patch and value texts are JSON (J1), and no object in
//!   them or in an error's details has two members of one name (J3);
//! - every operation of a patch names a section of the view it applies to,
//!   and never the root (PA2, PA3).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cosystem_worker::client::apply_patch;
use cosystem_worker::wire::{
    Call, CallResult, ClientMessage, ErrorCode, Header, HostMessage, SnapshotReason, SyncReason,
    SyncRequest, call_result, client_message, host_message,
};
use prost::Message;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codec::Streaming;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

use super::codec::RawCodec;
use super::framed::{self, FrameReader, FramedAddress};
use super::json_rules;

/// The rules the checks of every envelope enforce, wholly or in part,
/// which the rule coverage table shows beside the cases citing them: those
/// the list above names, and V7 (no version 0), H2 (a resume reply starts
/// at the version asked for), PA6 (a bookmark carries no operations), H15
/// (the marker and the sections a patch names) and H17 (the epoch and the
/// order of versions). spec/CONFORMANCE.md §9 says which are checked only
/// in part.
pub const CHECKED_ON_EVERY_ENVELOPE: &[&str] = &[
    "C5", "E2", "E3", "V7", "J1", "J3", "PA2", "PA3", "PA4", "PA6", "H1", "H2", "H3", "H5", "H6",
    "H8", "H9", "H10", "H15", "H17", "SI2", "G9", "FB8",
];

/// The message of the status a framed connection that was reset ends with.
const RESET: &str = "the connection was reset";

/// The message of the status a framed connection closed amid a frame
/// ends with.
const CUT: &str = "the connection was closed amid a frame";

/// Long enough to stand for "no time limit" in a wait.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// What one read of a stream brought, within a wait.
#[derive(Debug)]
pub enum Read {
    /// An envelope, checked like every other.
    Message(Box<HostMessage>),
    /// The stream ended (how: [`Peer::ended`]).
    Ended,
    /// Nothing arrived within the wait.
    Quiet,
}

/// The gRPC method every stream calls (spec/PROTOCOL.md §17.2).
pub const SESSION_PATH: &str = "/cosystem.worker.v1.HostService/Session";

/// The transports the runner speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// gRPC (spec/PROTOCOL.md §17.2): one `Session` call per stream.
    Grpc,
    /// Framed byte streams (§17.3): one connection per stream.
    Framed,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Grpc => "gRPC",
            Self::Framed => "framed streams",
        })
    }
}

/// Where the host under test is, and how to reach it.
#[derive(Debug, Clone)]
pub enum Target {
    /// A gRPC host.
    Grpc(Box<Endpoint>),
    /// A host serving framed streams on a listener.
    Framed(FramedAddress),
}

impl Target {
    /// The transport this target is reached by.
    pub fn transport(&self) -> Transport {
        match self {
            Self::Grpc(_) => Transport::Grpc,
            Self::Framed(_) => Transport::Framed,
        }
    }
}

/// What every stream of one run shares.
pub struct Shared {
    target: Target,
    token: Option<String>,
    marker: Option<Vec<u8>>,
    step_timeout: Duration,
    next_id: AtomicU64,
    epoch: Mutex<Option<String>>,
    leak: Mutex<Option<String>>,
    /// The waits under way, by a number of their own, for the failure of a
    /// case that runs out of time: it says what each stream was waiting
    /// for (a case may read several streams at once).
    waiting: Mutex<BTreeMap<u64, String>>,
    next_wait: AtomicU64,
    /// The host's max message size: no envelope it sends may be larger
    /// (PROTOCOL.md §15).
    max_message: usize,
}

impl Shared {
    /// A run against `target`, authenticating with `token` (gRPC only),
    /// that fails any stream receiving `marker`, and waits at most
    /// `step_timeout` for any single thing.
    pub fn new(
        target: Target,
        token: Option<String>,
        marker: Option<String>,
        step_timeout: Duration,
    ) -> Self {
        Self {
            target,
            token,
            marker: marker.filter(|m| !m.is_empty()).map(String::into_bytes),
            step_timeout,
            next_id: AtomicU64::new(1),
            epoch: Mutex::new(None),
            leak: Mutex::new(None),
            waiting: Mutex::default(),
            next_wait: AtomicU64::new(0),
            max_message: framed::MAX_READ_FRAME,
        }
    }

    /// Fails any stream receiving an envelope over `bytes`, the host's max
    /// message size (default: only the runner's own read limit, 64 MiB).
    pub fn with_max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// The waits under way, in words, joined by `; ` (`None` if there is
    /// none); forgets them.
    pub fn take_waiting(&self) -> Option<String> {
        let waits = std::mem::take(&mut *self.waits());
        (!waits.is_empty()).then(|| waits.into_values().collect::<Vec<_>>().join("; "))
    }

    fn waits(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, String>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a secret marker was given.
    pub fn has_marker(&self) -> bool {
        self.marker.is_some()
    }

    /// The transport every stream of the run uses.
    pub fn transport(&self) -> Transport {
        self.target.transport()
    }

    /// Whether a bearer token was given.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The bearer token given, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The first leak of the marker seen on any stream of the run, if any.
    pub fn leak(&self) -> Option<String> {
        self.leak.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The host's epoch, once any stream has seen it.
    pub fn epoch(&self) -> Option<String> {
        self.epoch.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How long one wait may last.
    pub fn step_timeout(&self) -> Duration {
        self.step_timeout
    }

    /// A call or sync id no other stream of the run uses, so that a reply or
    /// result delivered to the wrong stream cannot pass for its own.
    fn fresh_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// One wait under way, noted in [`Shared`] until dropped.
struct Waiting {
    shared: Arc<Shared>,
    id: u64,
}

impl Waiting {
    fn begin(shared: &Arc<Shared>, what: String) -> Self {
        let id = shared.next_wait.fetch_add(1, Ordering::Relaxed);
        shared.waits().insert(id, what);
        Self {
            shared: shared.clone(),
            id,
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.shared.waits().remove(&self.id);
    }
}

/// How the stream's response side stands.
enum Response {
    /// The call is being set up; some servers send response headers only
    /// with their first message, so the runner never waits for them before
    /// writing.
    Pending(JoinHandle<Result<Streaming<Bytes>, Status>>),
    /// Messages can be read.
    Open(Box<Streaming<Bytes>>),
    /// Frames can be read (framed streams have no response to wait for).
    Frames(Box<FrameReader>),
    /// The host ended the stream, with this status (`None`: OK, or on a
    /// framed stream the end of the connection; a framed connection that
    /// breaks ends `UNAVAILABLE`).
    Ended(Option<Status>),
}

/// The request outstanding on a stream and the view a resume patch applies to.
struct Outstanding {
    sync_id: u64,
    have: u64,
    base: Option<Value>,
}

/// One `Session` stream.
pub struct Peer {
    /// The stream's name in reports (`A`, `B`, …) and its `header.source`.
    pub name: String,
    shared: Arc<Shared>,
    tx: Option<mpsc::UnboundedSender<Bytes>>,
    response: Response,
    attached: bool,
    version: Option<u64>,
    view: Option<Value>,
    outstanding: Option<Outstanding>,
    open_calls: BTreeSet<u64>,
    /// Calls sent with a `source` other than the stream's name (none, for
    /// a header-less one): their results are addressed to that source.
    foreign_sources: BTreeMap<u64, String>,
    results: BTreeMap<u64, CallResult>,
    /// Every envelope received, in order.
    pub log: Vec<HostMessage>,
    /// What the stream reads for, while [`Peer::result`] or
    /// [`Peer::reach`] reads: named when a case runs out of time.
    purpose: Option<String>,
}

impl Peer {
    /// Opens a stream on a connection of its own (clients under test are
    /// separate programs: a host may not couple them through one
    /// connection), with the run's token.
    pub async fn open(shared: &Arc<Shared>, name: &str) -> Result<Self, String> {
        let token = shared.token.clone();
        Self::open_with(shared, name, token.as_deref()).await
    }

    /// Opens a stream presenting `token` (or none; framed streams carry
    /// none, FB8).
    pub async fn open_with(
        shared: &Arc<Shared>,
        name: &str,
        token: Option<&str>,
    ) -> Result<Self, String> {
        let bearer = token.map(|token| format!("Bearer {token}"));
        Self::open_authorized(shared, name, bearer.as_slice()).await
    }

    /// Opens a stream whose request carries each of `authorization` as an
    /// `authorization` metadata entry, in order (framed streams carry
    /// none, FB8).
    pub async fn open_authorized(
        shared: &Arc<Shared>,
        name: &str,
        authorization: &[String],
    ) -> Result<Self, String> {
        let (tx, response) = match &shared.target {
            Target::Grpc(endpoint) => {
                Self::open_grpc(shared, endpoint, name, authorization).await?
            }
            Target::Framed(address) => {
                let (tx, frames) =
                    tokio::time::timeout(shared.step_timeout, framed::connect(address))
                        .await
                        .map_err(|_| format!("stream {name}: connecting timed out"))?
                        .map_err(|e| format!("stream {name}: cannot connect to {address}: {e}"))?;
                (tx, Response::Frames(Box::new(frames)))
            }
        };
        Ok(Self {
            name: name.to_owned(),
            shared: shared.clone(),
            tx: Some(tx),
            response,
            attached: false,
            version: None,
            view: None,
            outstanding: None,
            open_calls: BTreeSet::new(),
            foreign_sources: BTreeMap::new(),
            results: BTreeMap::new(),
            log: Vec::new(),
            purpose: None,
        })
    }

    async fn open_grpc(
        shared: &Shared,
        endpoint: &Endpoint,
        name: &str,
        authorization: &[String],
    ) -> Result<(mpsc::UnboundedSender<Bytes>, Response), String> {
        let channel = tokio::time::timeout(shared.step_timeout, endpoint.connect())
            .await
            .map_err(|_| format!("stream {name}: connecting timed out"))?
            .map_err(|e| format!("stream {name}: cannot connect: {e}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut request = tonic::Request::new(UnboundedReceiverStream::new(rx));
        for value in authorization {
            let value = value
                .parse()
                .map_err(|e| format!("the token cannot be sent as metadata: {e}"))?;
            request.metadata_mut().append("authorization", value);
        }
        let task = tokio::spawn(async move {
            // tonic's default of 4 MiB would end the stream at the first
            // larger message of a host whose limit is larger (§15 allows
            // it, and --max-message-size says so), as OUT_OF_RANGE.
            let mut grpc =
                tonic::client::Grpc::new(channel).max_decoding_message_size(framed::MAX_READ_FRAME);
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(SESSION_PATH);
            grpc.streaming(request, path, RawCodec)
                .await
                .map(tonic::Response::into_inner)
        });
        Ok((tx, Response::Pending(task)))
    }

    /// The version of the last state this stream was shown.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// The view rebuilt from what this stream received (`None` before its
    /// first sync reply).
    pub fn view(&self) -> Option<&Value> {
        self.view.as_ref()
    }

    /// How many envelopes this stream has received so far (a mark for
    /// [`Peer::since`]).
    pub fn mark(&self) -> usize {
        self.log.len()
    }

    /// The envelopes received since `mark`.
    pub fn since(&self, mark: usize) -> &[HostMessage] {
        self.log.get(mark..).unwrap_or(&[])
    }

    fn epoch_header(&self) -> String {
        self.shared.epoch().unwrap_or_default()
    }

    /// Writes `bytes` as one message: one gRPC message, or one frame.
    pub fn send_bytes(&mut self, bytes: Bytes) -> Result<(), String> {
        let bytes = match self.shared.transport() {
            Transport::Grpc => bytes,
            Transport::Framed => framed::frame(&bytes),
        };
        self.send_raw(bytes)
    }

    /// Writes `bytes` exactly as given: on a framed stream, bytes that need
    /// not be a frame; on gRPC, one message.
    pub fn send_raw(&mut self, bytes: Bytes) -> Result<(), String> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(bytes).ok())
            .ok_or_else(|| match self.shared.transport() {
                Transport::Grpc => format!("stream {}: the request stream is closed", self.name),
                // The writer stops at the first write the host refuses.
                Transport::Framed => format!(
                    "stream {}: cannot write: the host closed the connection",
                    self.name
                ),
            })
    }

    /// Writes one envelope.
    pub fn send(&mut self, message: &ClientMessage) -> Result<(), String> {
        self.send_bytes(Bytes::from(message.encode_to_vec()))
    }

    /// Sends SyncRequest{have} with `header.epoch = epoch`. A resume reply
    /// is checked against `base`, or against this stream's own view when it
    /// is at `have`. Returns the sync id.
    pub fn sync(&mut self, have: u64, epoch: &str, base: Option<Value>) -> Result<u64, String> {
        let sync_id = self.shared.fresh_id();
        let base = base.or_else(|| {
            (self.version == Some(have))
                .then(|| self.view.clone())
                .flatten()
        });
        let reason = if have == 0 {
            SyncReason::Initial
        } else {
            SyncReason::Reconnect
        };
        self.send(&ClientMessage {
            header: Some(Header::v1(epoch, self.name.clone(), "")),
            kind: Some(client_message::Kind::SyncRequest(SyncRequest {
                sync_id,
                have_version: have,
                reason: reason as i32,
            })),
        })?;
        self.outstanding = Some(Outstanding {
            sync_id,
            have,
            base,
        });
        Ok(sync_id)
    }

    /// Sends a Call exactly as given; returns nothing (the caller chose the
    /// id).
    pub fn send_call(
        &mut self,
        epoch: &str,
        call_id: u64,
        module: &str,
        method: &str,
        args_json: &str,
    ) -> Result<(), String> {
        self.send(&ClientMessage {
            header: Some(Header::v1(epoch, self.name.clone(), "")),
            kind: Some(client_message::Kind::Call(Call {
                call_id,
                module: module.to_owned(),
                method: method.to_owned(),
                args_json: args_json.to_owned(),
            })),
        })?;
        self.open_calls.insert(call_id);
        Ok(())
    }

    /// Sends `message`, a Call whose id is `call_id`, exactly as given, and
    /// expects its result.
    pub fn send_as_call(&mut self, message: &ClientMessage, call_id: u64) -> Result<(), String> {
        self.send(message)?;
        self.open_calls.insert(call_id);
        let source = message.header.as_ref().map_or("", |h| h.source.as_str());
        if source != self.name {
            self.foreign_sources.insert(call_id, source.to_owned());
        }
        Ok(())
    }

    /// Writes `bytes`, the encoding of a Call whose id is `call_id` (with
    /// whatever else the case added), as one message, and expects its
    /// result.
    pub fn send_bytes_as_call(&mut self, bytes: Bytes, call_id: u64) -> Result<(), String> {
        self.send_bytes(bytes)?;
        self.open_calls.insert(call_id);
        Ok(())
    }

    /// A call id no stream of the run has used.
    pub fn fresh_id(&self) -> u64 {
        self.shared.fresh_id()
    }

    /// The host's epoch as seen so far (`""` before any envelope arrived).
    pub fn host_epoch(&self) -> String {
        self.epoch_header()
    }

    /// Sends a call of the host's epoch with `args_json` as given; returns
    /// its call id.
    pub fn call_text(
        &mut self,
        module: &str,
        method: &str,
        args_json: &str,
    ) -> Result<u64, String> {
        let id = self.shared.fresh_id();
        let epoch = self.epoch_header();
        self.send_call(&epoch, id, module, method, args_json)?;
        Ok(id)
    }

    /// Sends a call of the host's epoch; returns its call id.
    pub fn call(&mut self, module: &str, method: &str, args: Value) -> Result<u64, String> {
        self.call_text(module, method, &args.to_string())
    }

    /// Calls and waits for the result.
    pub async fn invoke(
        &mut self,
        module: &str,
        method: &str,
        args: Value,
    ) -> Result<CallResult, String> {
        let id = self.call(module, method, args)?;
        self.result(id).await
    }

    /// Sends SyncRequest{have 0} and waits for the reply; returns the version.
    pub async fn attach(&mut self) -> Result<u64, String> {
        self.sync(0, "", None)?;
        self.await_sync().await
    }

    /// Reads until the outstanding sync request is answered; returns the
    /// version the stream was shown.
    pub async fn await_sync(&mut self) -> Result<u64, String> {
        self.purpose = Some("the reply to its sync request".to_owned());
        let read = self.read_while_outstanding().await;
        self.purpose = None;
        read?;
        self.version
            .ok_or_else(|| format!("stream {}: no version after the sync reply", self.name))
    }

    async fn read_while_outstanding(&mut self) -> Result<(), String> {
        while let Some(o) = &self.outstanding {
            let waiting = format!(
                " (waiting for the reply to SyncRequest{{sync_id={}, have_version={}}}: a host answers every SyncRequest, echoing its sync_id, H1)",
                o.sync_id, o.have
            );
            self.next().await.map_err(|e| format!("{e}{waiting}"))?;
        }
        Ok(())
    }

    /// Reads until the result of `call_id` arrives.
    pub async fn result(&mut self, call_id: u64) -> Result<CallResult, String> {
        self.purpose = Some(format!("the result of call {call_id}"));
        let result = self.read_until_result(call_id).await;
        self.purpose = None;
        result
    }

    async fn read_until_result(&mut self, call_id: u64) -> Result<CallResult, String> {
        loop {
            if let Some(r) = self.results.remove(&call_id) {
                return Ok(r);
            }
            if !self.open_calls.contains(&call_id) {
                return Err(format!(
                    "stream {}: call {call_id} was never sent",
                    self.name
                ));
            }
            self.next()
                .await
                .map_err(|e| format!("{e} (waiting for the result of call {call_id})"))?;
        }
    }

    /// Reads until this stream has been shown `version` (or later).
    pub async fn reach(&mut self, version: u64) -> Result<(), String> {
        self.purpose = Some(format!("version {version}"));
        let read = self.read_until_version(version).await;
        self.purpose = None;
        read
    }

    async fn read_until_version(&mut self, version: u64) -> Result<(), String> {
        while self.version.is_none_or(|v| v < version) {
            self.next()
                .await
                .map_err(|e| format!("{e} (waiting to be shown version {version})"))?;
        }
        Ok(())
    }

    /// Closes the request side: the host should end the session.
    pub fn close(&mut self) {
        self.tx = None;
    }

    /// Waits, having sent nothing, for the host to answer the Session call
    /// with its response headers (spec G4), or to end it; an
    /// error if it has done neither within the step timeout.
    pub async fn answered_before_sending(&mut self) -> Result<(), String> {
        self.response().await
    }

    /// Waits for the host's answer to the Session call: whether it sent
    /// response headers (accepted the stream) rather than end the call at
    /// once with a status (a refusal in trailers only).
    pub async fn sent_headers(&mut self) -> Result<bool, String> {
        self.response().await?;
        Ok(matches!(self.response, Response::Open(_)))
    }

    /// Waits for a gRPC response stream to open, without reading any
    /// message.
    async fn response(&mut self) -> Result<(), String> {
        if let Response::Pending(task) = &mut self.response {
            let opened = tokio::time::timeout(self.shared.step_timeout, task)
                .await
                .map_err(|_| {
                    format!(
                        "stream {}: the host did not answer the Session call within {} ms",
                        self.name,
                        self.shared.step_timeout.as_millis()
                    )
                })?
                .map_err(|e| format!("stream {}: {e}", self.name))?;
            self.response = match opened {
                Ok(streaming) => Response::Open(Box::new(streaming)),
                Err(status) => Response::Ended(Some(status)),
            };
        }
        Ok(())
    }

    /// The next message's bytes, or `None` once the stream has ended (how:
    /// [`Peer::ended`]).
    async fn next_bytes(&mut self, timeout: Duration) -> Result<Option<Bytes>, String> {
        // Forgotten when the wait ends, however it ends: a case stopped
        // while doing something else was not waiting for this.
        let _waiting = Waiting::begin(
            &self.shared,
            format!(
                "stream {} was waiting for {}, having received {} envelope(s){}{}",
                self.name,
                self.purpose.as_deref().unwrap_or("its next envelope"),
                self.log.len(),
                self.log
                    .last()
                    .map(|m| format!(", the last {}", headline(m)))
                    .unwrap_or_default(),
                match &self.outstanding {
                    Some(o) => format!(", with sync request {} unanswered", o.sync_id),
                    None => String::new(),
                },
            ),
        );
        self.response().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let waited = |_| {
            format!(
                "stream {}: nothing received within {} ms",
                self.name,
                timeout.as_millis()
            )
        };
        // What came of a frame the host left unfinished, checked for the
        // marker as whole envelopes are.
        let mut cut = None;
        let end = match &mut self.response {
            Response::Open(streaming) => {
                match tokio::time::timeout(timeout, streaming.message())
                    .await
                    .map_err(waited)?
                {
                    Ok(Some(bytes)) => return Ok(Some(bytes)),
                    Ok(None) => None,
                    Err(status) => Some(status),
                }
            }
            // One deadline for the whole wait: a host that sends nothing
            // but empty frames must not keep the wait open for ever.
            Response::Frames(frames) => loop {
                match tokio::time::timeout_at(deadline, frames.next())
                    .await
                    .map_err(waited)?
                {
                    // FB2: a receiver ignores an empty frame.
                    Some(Ok(frame)) if frame.is_empty() => continue,
                    Some(Ok(frame)) => return Ok(Some(frame.freeze())),
                    None => break None,
                    // A host that closes with bytes of ours unread makes
                    // the kernel reset the connection: a close all the same.
                    Some(Err(e))
                        if matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset
                                | io::ErrorKind::ConnectionAborted
                                | io::ErrorKind::BrokenPipe
                        ) =>
                    {
                        break Some(Status::unavailable(RESET));
                    }
                    Some(Err(e)) => {
                        // Amid a frame: a host may leave the frame it was
                        // writing unfinished when it closes (FB5, §7.3).
                        if let Some(c) = framed::cut_frame(&e) {
                            cut = Some(c.got.clone());
                            break Some(Status::unavailable(CUT));
                        }
                        // Bytes that cannot begin a frame within the
                        // runner's limit, such as text, cut short: not a
                        // close (§7.3).
                        if e.kind() == io::ErrorKind::UnexpectedEof {
                            return Err(format!(
                                "stream {}: the host closed the connection after bytes that cannot begin a frame ({e}): they are not a close (CONFORMANCE.md §7.3)",
                                self.name
                            ));
                        }
                        // A length over the runner's limit: the host wrote
                        // something other than frames, which no case may
                        // take for a close either.
                        return Err(format!(
                            "stream {}: the host wrote bytes that are not frames of envelopes (FB1): {e}",
                            self.name
                        ));
                    }
                }
            },
            Response::Pending(_) | Response::Ended(_) => return Ok(None),
        };
        self.response = Response::Ended(end);
        if let Some(got) = cut {
            self.check_marker(&got)?;
        }
        Ok(None)
    }

    /// Fails the run, and this read, if `bytes` hold the private section's
    /// marker (SI2).
    fn check_marker(&self, bytes: &[u8]) -> Result<(), String> {
        let Some(marker) = &self.shared.marker else {
            return Ok(());
        };
        if !contains(bytes, marker) {
            return Ok(());
        }
        let leak = format!(
            "stream {} received the private section's marker (SI2) in {} bytes",
            self.name,
            bytes.len()
        );
        self.shared
            .leak
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| leak.clone());
        Err(leak)
    }

    /// Reads the next envelope, or how the stream ended: `Ok(None)` with the
    /// final status in [`Peer::ended`].
    pub async fn next_or_end(&mut self) -> Result<Option<HostMessage>, String> {
        self.next_or_end_within(self.shared.step_timeout).await
    }

    /// [`Peer::next_or_end`], waiting at most `timeout` rather than the
    /// step timeout.
    pub async fn next_or_end_within(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<HostMessage>, String> {
        let Some(bytes) = self.next_bytes(timeout).await? else {
            return Ok(None);
        };
        let name = self.name.clone();
        self.check_marker(&bytes)?;
        if bytes.len() > self.shared.max_message {
            return Err(format!(
                "stream {name}: the host sent an envelope of {} bytes, over its max message size of {} (--max-message-size): a host MUST NOT send one (PROTOCOL.md §15), since its clients refuse it",
                bytes.len(),
                self.shared.max_message
            ));
        }
        let message = HostMessage::decode(bytes.as_ref()).map_err(|e| {
            format!("stream {name}: the host sent bytes that are not a HostMessage: {e}")
        })?;
        // Said, since such a failure ends whichever case is running and
        // its name may have nothing to do with the rule broken.
        self.track(&message).map_err(|e| {
            format!(
                "stream {name}: {e} (a check made on every envelope, CONFORMANCE.md §7.2, not this case's own); in {}",
                describe(&message)
            )
        })?;
        self.log.push(message.clone());
        Ok(Some(message))
    }

    /// Reads for at most `wait`, which passing without anything arriving is
    /// not an error ([`Read::Quiet`]). Nothing is lost if the wait runs
    /// out while an envelope is arriving: the stream keeps what it has read.
    pub async fn read_within(&mut self, wait: Duration) -> Result<Read, String> {
        match tokio::time::timeout(wait, self.next_or_end_within(FOREVER)).await {
            Err(_) => Ok(Read::Quiet),
            Ok(Ok(Some(m))) => Ok(Read::Message(Box::new(m))),
            Ok(Ok(None)) => Ok(Read::Ended),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Reads envelopes (each checked and kept, as [`Peer::read_within`]
    /// does) until the stream ends or `wait` has passed in all; whether it
    /// ended. Envelopes that arrive meanwhile (publications, bookmarks) do
    /// not extend the wait: it is for a close, which they do not bring
    /// nearer, and a host sending bookmarks more often than `wait` would
    /// otherwise hold the case until its own timeout.
    pub async fn ended_within(&mut self, wait: Duration) -> Result<bool, String> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match self.read_within(left).await? {
                Read::Message(_) => {}
                Read::Ended => return Ok(true),
                Read::Quiet => return Ok(false),
            }
        }
    }

    /// Reads the next envelope; the stream ending is an error.
    pub async fn next(&mut self) -> Result<HostMessage, String> {
        match self.next_or_end().await? {
            Some(m) => Ok(m),
            None => Err(format!(
                "stream {}: the stream ended ({})",
                self.name,
                self.ended_status()
            )),
        }
    }

    /// How the host ended the stream, if it did.
    pub fn ended(&self) -> Option<Option<&Status>> {
        match &self.response {
            Response::Ended(status) => Some(status.as_ref()),
            _ => None,
        }
    }

    /// How the stream ended, in the transport's words.
    pub fn ended_status(&self) -> String {
        match (self.ended(), self.shared.transport()) {
            (Some(Some(s)), Transport::Framed) if s.message() == RESET => {
                "the host reset the connection".to_owned()
            }
            (Some(Some(s)), Transport::Framed) if s.message() == CUT => {
                "the host closed the connection amid a frame".to_owned()
            }
            (Some(Some(s)), _) => format!("status {:?}: {}", s.code(), s.message()),
            (Some(None), Transport::Grpc) => "status OK".to_owned(),
            (Some(None), Transport::Framed) => "the host closed the connection".to_owned(),
            (None, _) => "still open".to_owned(),
        }
    }

    /// Waits for the stream to end and returns its status code (`Ok` for a
    /// clean end), failing if a message arrives first.
    pub async fn end_code(&mut self) -> Result<Code, String> {
        match self.next_or_end().await? {
            Some(m) => Err(format!(
                "stream {}: received {} where the stream should have ended",
                self.name,
                describe(&m)
            )),
            None => Ok(self
                .ended()
                .and_then(|s| s.map(Status::code))
                .unwrap_or(Code::Ok)),
        }
    }

    fn track(&mut self, m: &HostMessage) -> Result<(), String> {
        let header = m.header.as_ref().ok_or("an envelope without a header")?;
        if header.protocol_version != 1 {
            return Err(format!(
                "protocol_version {} (expected 1, C5)",
                header.protocol_version
            ));
        }
        if header.epoch.is_empty() {
            return Err("an empty epoch (E2)".into());
        }
        if header.epoch.len() > 1024 {
            return Err(format!(
                "an epoch of {} bytes, over 1024 (E2)",
                header.epoch.len()
            ));
        }
        {
            let mut epoch = self.shared.epoch.lock().unwrap_or_else(|e| e.into_inner());
            match epoch.as_deref() {
                None => *epoch = Some(header.epoch.clone()),
                Some(e) if e == header.epoch => {}
                Some(e) => {
                    return Err(format!(
                        "epoch {:?}, but the host's epoch was {e:?} (E3; did the host restart?)",
                        header.epoch
                    ));
                }
            }
        }
        // Every request of this stream carries its name as `source`, so a
        // reply, and an OVERFLOW snapshot, is addressed to it; a commit
        // publication or a bookmark to every session ("").
        let addressed = match &m.kind {
            Some(host_message::Kind::Snapshot(s)) => {
                s.sync_id != 0 || s.reason == SnapshotReason::Overflow as i32
            }
            Some(host_message::Kind::Patch(p)) => p.sync_id != 0,
            Some(host_message::Kind::Result(_)) => true,
            None => false,
        };
        let expected = match &m.kind {
            Some(host_message::Kind::Result(r)) => self
                .foreign_sources
                .get(&r.call_id)
                .map_or(self.name.as_str(), String::as_str),
            _ if addressed => self.name.as_str(),
            _ => "",
        };
        if header.target != expected {
            // A reply whose sync_id was left out reads as a publication
            // addressed to this stream: say so, as that is the likelier bug.
            let hint = if !addressed && header.target == self.name && self.outstanding.is_some() {
                "; a sync reply must carry its request's sync_id (H1, H2), and this one has none"
            } else {
                ""
            };
            return Err(format!(
                "target {:?} on a {}, expected {expected:?} (§3.2){hint}",
                header.target,
                if addressed { "reply" } else { "publication" }
            ));
        }
        match &m.kind {
            Some(host_message::Kind::Snapshot(s)) => {
                if s.version == 0 {
                    return Err("a snapshot of version 0 (V7, §3.5)".into());
                }
                let view: Value = serde_json::from_str(&s.state_json)
                    .map_err(|e| format!("state_json is not JSON (J1): {e}"))?;
                json_rules::no_duplicate_members(&s.state_json)
                    .map_err(|e| format!("state_json: {e}"))?;
                if !view.is_object() {
                    return Err("state_json is not a JSON object (§3.5)".into());
                }
                let reason = SnapshotReason::try_from(s.reason).ok();
                if s.sync_id != 0 {
                    self.answer(s.sync_id, s.version)?;
                    if reason != Some(SnapshotReason::Sync) {
                        return Err("a sync reply whose reason is not SYNC (§3.5)".into());
                    }
                } else {
                    if !self.attached {
                        return Err(format!(
                            "a publication before the first sync reply (H3){}",
                            unlabelled_reply_hint(self.outstanding.is_some())
                        ));
                    }
                    if !matches!(
                        reason,
                        Some(SnapshotReason::Commit | SnapshotReason::Overflow)
                    ) {
                        return Err(format!(
                            "a snapshot publication with reason {} (§3.5)",
                            reason.map_or_else(
                                || s.reason.to_string(),
                                |r| r.as_str_name().to_owned()
                            )
                        ));
                    }
                    if self.version.is_some_and(|v| s.version <= v) {
                        return Err(format!(
                            "a publication of version {} after version {} was shown (H3, H6)",
                            s.version,
                            self.version.unwrap_or(0)
                        ));
                    }
                }
                self.version = Some(s.version);
                self.view = Some(view);
            }
            Some(host_message::Kind::Patch(p)) => {
                if p.base_version == 0 || p.version < p.base_version {
                    return Err("a malformed patch (V7, §3.6)".into());
                }
                json_rules::no_duplicate_members(&p.patch_json)
                    .map_err(|e| format!("patch_json: {e}"))?;
                let bookmark = p.version == p.base_version;
                if bookmark && !is_empty_array(&p.patch_json) {
                    return Err("a patch with base = version that carries operations (PA6)".into());
                }
                let base = if p.sync_id != 0 {
                    let have = self.outstanding.as_ref().map(|o| o.have);
                    let base = self.outstanding.as_mut().and_then(|o| o.base.take());
                    self.answer(p.sync_id, p.version)?;
                    if have != Some(p.base_version) {
                        return Err(format!(
                            "a resume patch from {} to a request with have_version {} (H2)",
                            p.base_version,
                            have.unwrap_or(0)
                        ));
                    }
                    base
                } else {
                    if !self.attached {
                        return Err(format!(
                            "a publication before the first sync reply (H3){}",
                            unlabelled_reply_hint(self.outstanding.is_some())
                        ));
                    }
                    let shown = self.version.unwrap_or(0);
                    if bookmark && p.version != shown {
                        return Err(format!(
                            "a bookmark at {} when version {shown} was the last shown (H10)",
                            p.version
                        ));
                    }
                    if !bookmark && (p.base_version != shown || p.version != shown + 1) {
                        return Err(format!(
                            "a live patch {}→{} when version {shown} was the last shown (H3, H5)",
                            p.base_version, p.version
                        ));
                    }
                    self.view.take()
                };
                let sections = base.as_ref().and_then(json_rules::sections_of);
                json_rules::patch_names_sections(&p.patch_json, sections.as_ref())?;
                self.view = match base {
                    Some(mut view) => {
                        apply_patch(&mut view, &p.patch_json).map_err(|e| {
                            format!(
                                "its operations do not apply to the view at {} (PA4): {e}",
                                p.base_version
                            )
                        })?;
                        Some(view)
                    }
                    None => None,
                };
                self.version = Some(p.version);
            }
            Some(host_message::Kind::Result(r)) => {
                if !self.open_calls.remove(&r.call_id) {
                    return Err(format!(
                        "a result for call {}, which this stream did not send as a Call or had been answered already: a host answers each Call once (H8) and nothing but Calls (an envelope with no known kind is ignored, H13)",
                        r.call_id
                    ));
                }
                if r.state_version == 0 {
                    return Err("a result with state_version 0 (§3.8)".into());
                }
                match &r.outcome {
                    None => return Err("a result with neither value nor error (§3.8)".into()),
                    Some(call_result::Outcome::ValueJson(v)) => {
                        serde_json::from_str::<Value>(v)
                            .map_err(|e| format!("value_json is not JSON (J1): {e}"))?;
                        json_rules::no_duplicate_members(v)
                            .map_err(|e| format!("value_json: {e}"))?;
                    }
                    Some(call_result::Outcome::Error(e)) => {
                        json_rules::no_duplicate_members(&e.details_json)
                            .map_err(|e| format!("details_json: {e}"))?;
                        let local = matches!(
                            ErrorCode::try_from(e.code),
                            Ok(ErrorCode::Unspecified
                                | ErrorCode::DeadlineExceeded
                                | ErrorCode::Cancelled
                                | ErrorCode::Disposed
                                | ErrorCode::OutcomeUnknown)
                        );
                        if local {
                            return Err(format!(
                                "a result with the local-only code {} (H9)",
                                e.code
                            ));
                        }
                    }
                }
                if self.attached && self.version.is_none_or(|v| r.state_version > v) {
                    return Err(format!(
                        "a result naming version {} before that version was sent (H8; last shown {})",
                        r.state_version,
                        self.version.unwrap_or(0)
                    ));
                }
                self.results.insert(r.call_id, r.clone());
            }
            // A later revision may add kinds (C4); there is nothing to check.
            None => {}
        }
        Ok(())
    }

    fn answer(&mut self, sync_id: u64, version: u64) -> Result<(), String> {
        match &self.outstanding {
            Some(o) if o.sync_id == sync_id => {}
            _ => {
                return Err(format!(
                    "a sync reply with sync_id {sync_id}, which this stream has not asked for (H1)"
                ));
            }
        }
        if self.version.is_some_and(|v| version < v) {
            return Err(format!(
                "a sync reply at version {version} after version {} was shown (H3)",
                self.version.unwrap_or(0)
            ));
        }
        self.outstanding = None;
        self.attached = true;
        Ok(())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Response::Pending(task) = &self.response {
            task.abort();
        }
    }
}

/// Whether `text` is the JSON of an empty array (`[]`, however spaced).
pub fn is_empty_array(text: &str) -> bool {
    matches!(serde_json::from_str::<Value>(text), Ok(Value::Array(a)) if a.is_empty())
}

/// Whether a message is a bookmark publication (H10), which a host may send
/// at any time and which cases therefore skip over.
pub fn is_bookmark(m: &HostMessage) -> bool {
    matches!(&m.kind, Some(host_message::Kind::Patch(p))
        if p.sync_id == 0 && p.base_version == p.version)
}

/// An envelope's kind and versions, without its ops or value: cheap to
/// make for every envelope, and short whatever the envelope holds.
fn headline(m: &HostMessage) -> String {
    match &m.kind {
        Some(host_message::Kind::Snapshot(s)) => {
            format!("Snapshot{{version={}, sync_id={}}}", s.version, s.sync_id)
        }
        Some(host_message::Kind::Patch(p)) => format!(
            "Patch{{base={}, version={}, sync_id={}}}",
            p.base_version, p.version, p.sync_id
        ),
        Some(host_message::Kind::Result(r)) => format!(
            "CallResult{{call_id={}, state_version={}}}",
            r.call_id, r.state_version
        ),
        None => "an envelope with no known kind".to_owned(),
    }
}

/// A short description of an envelope for failure messages.
pub fn describe(m: &HostMessage) -> String {
    match &m.kind {
        Some(host_message::Kind::Snapshot(s)) => format!(
            "Snapshot{{version={}, reason={}, sync_id={}}}",
            s.version, s.reason, s.sync_id
        ),
        Some(host_message::Kind::Patch(p)) => format!(
            "Patch{{base={}, version={}, sync_id={}, ops={}}}",
            p.base_version, p.version, p.sync_id, p.patch_json
        ),
        Some(host_message::Kind::Result(r)) => {
            let outcome = match &r.outcome {
                Some(call_result::Outcome::ValueJson(v)) => format!("value={v}"),
                Some(call_result::Outcome::Error(e)) => {
                    let code = ErrorCode::try_from(e.code)
                        .map_or_else(|_| e.code.to_string(), |c| c.kebab_name().to_owned());
                    format!("error={code} {:?}", e.message)
                }
                None => "no outcome".to_owned(),
            };
            format!(
                "CallResult{{call_id={}, state_version={}, {outcome}}}",
                r.call_id, r.state_version
            )
        }
        None => "an envelope with no known kind".to_owned(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// What to add when a stream still waiting for its sync reply is sent a
/// publication: a reply without its sync_id and target reads as one, and
/// is the likelier bug.
fn unlabelled_reply_hint(waiting: bool) -> &'static str {
    if waiting {
        "; if it was meant as the reply to this stream's SyncRequest, a reply carries the request's sync_id (H1) and targets the stream (§3.2)"
    } else {
        ""
    }
}
