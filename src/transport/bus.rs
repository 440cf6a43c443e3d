//! A shared broadcast bus: every peer on it sees every envelope, like a
//! browser's `BroadcastChannel` shared by several tabs.
//!
//! Many clients and possibly several hosts share one [`Bus`]. Routing is
//! done with the envelope header (spec §17.4):
//!
//! - **Publications are broadcast once.** A host on the bus ([`serve_host`])
//!   keeps one pseudo-session that receives publications; each of its frames
//!   goes on the bus once, with `target` `""`, for every client at once.
//! - **Replies go to their requester.** Each client peer that sends something
//!   gets a reply-only session of its own (publications off), keyed by its
//!   `source`; its results and sync answers carry `target` = that id, and
//!   every other client's link drops them unread.
//! - **Sources are bounded.** A client envelope whose `source` is longer
//!   than [`MAX_PEER_ID`](crate::host::MAX_PEER_ID) is dropped before any
//!   session is opened for it: the host would never answer it (spec §2),
//!   and a session keyed by it would hold the oversized id and take a place
//!   among the bounded sessions.
//! - **Capability token.** A host with a capability ignores client envelopes
//!   that do not carry it, and a client with one ignores host envelopes that
//!   do not.
//! - **Late joiners.** A client asks for a snapshot when it starts and the
//!   host answers it alone; a host announces its view (`ANNOUNCE`) when it
//!   starts, so a client that joined first becomes ready too. Neither
//!   depends on who subscribed first.
//! - **Loss.** A receiver that falls more than the bus capacity behind loses
//!   the oldest envelopes. That is loss, not a broken link: the client's
//!   link reports it ([`TransportError::Lost`]), and the client settles its
//!   unanswered calls `outcome-unknown` and resyncs at once.
//!
//! What the host answers and which sessions it keeps are decided by the
//! sans-IO policy in [`crate::host::admit`] and [`crate::host::ReplySessions`];
//! this module only moves envelopes and passes the time in.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::CancellationToken;

use super::{ClientLink, Connector, HostInput, TransportError};
use crate::client::ClientConfig;
use crate::host::{Host, HostConfig, InputError, PeerOptions, ReplySessions, Session, admit};
use crate::wire::{
    ClientMessage, Header, HostFrame, PROTOCOL_VERSION, SnapshotReason, SyncReason, SyncRequest,
    client_message, host_message,
};

/// Envelopes a bus buffers for its slowest receiver, by default.
pub const DEFAULT_CAPACITY: usize = 1024;

/// How long a host keeps the session of a client it has not heard from, by
/// default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How many client sessions a host keeps on one bus at most, by default.
pub const DEFAULT_MAX_SESSIONS: usize = 1024;

/// One envelope on a bus, as every subscriber receives it.
#[derive(Clone, Debug)]
pub enum BusMessage {
    /// Sent by a host; shared, never copied per receiver until read.
    Host(HostFrame),
    /// Sent by a client.
    Client(Arc<ClientMessage>),
}

/// Why a bus peer could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// Peers on a shared channel need an id: replies are addressed by it.
    #[error("a peer on a bus needs a non-empty peer id")]
    MissingPeerId,
    /// Another connector or host of this process holds the peer id on the
    /// bus. Two peers sharing an id would each take the other's replies
    /// (spec SC2): a client would settle its calls with another's results.
    #[error("peer id {0:?} is already in use on this bus")]
    PeerIdInUse(String),
    /// The host refused the publication session (shut down, or full).
    #[error("the host refused the bus: {0}")]
    Host(#[from] InputError),
}

/// An in-process broadcast channel shared by hosts and clients. Cloning
/// gives another handle to the same bus.
#[derive(Clone, Debug)]
pub struct Bus {
    sender: broadcast::Sender<BusMessage>,
    peer_ids: Arc<Mutex<HashSet<String>>>,
}

/// A peer id held on a bus by one connector or host, given back when that
/// ends.
#[derive(Debug)]
struct PeerIdClaim {
    peer_ids: Arc<Mutex<HashSet<String>>>,
    peer_id: String,
}

impl Drop for PeerIdClaim {
    fn drop(&mut self) {
        let mut peer_ids = self.peer_ids.lock().unwrap_or_else(|e| e.into_inner());
        peer_ids.remove(&self.peer_id);
    }
}

impl Default for Bus {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl Bus {
    /// A bus whose receivers may fall `capacity` envelopes behind before
    /// they lose the oldest ones.
    pub fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::channel(capacity.max(1)).0,
            peer_ids: Arc::default(),
        }
    }

    /// Holds `peer_id` for one peer of this process until the claim is
    /// dropped. Envelopes other processes bridge onto the bus are not
    /// checked: the channel's own peers are all this can see.
    fn claim(&self, peer_id: &str) -> Result<PeerIdClaim, BusError> {
        if peer_id.is_empty() {
            return Err(BusError::MissingPeerId);
        }
        let mut peer_ids = self.peer_ids.lock().unwrap_or_else(|e| e.into_inner());
        if !peer_ids.insert(peer_id.to_owned()) {
            return Err(BusError::PeerIdInUse(peer_id.to_owned()));
        }
        Ok(PeerIdClaim {
            peer_ids: self.peer_ids.clone(),
            peer_id: peer_id.to_owned(),
        })
    }

    /// Puts an envelope on the bus for every current subscriber. Nobody
    /// listening is not an error: like a broadcast channel, the envelope is
    /// simply gone.
    pub fn send(&self, message: BusMessage) {
        let _ = self.sender.send(message);
    }

    /// Receives every envelope put on the bus from now on (bridges, taps).
    pub fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.sender.subscribe()
    }

    /// A connector for a client configured with `config`: its links deliver
    /// only host envelopes addressed to everyone or to `config.peer_id`, from
    /// `config.host_id` if set, carrying `config.capability` if set.
    ///
    /// The connector holds `config.peer_id` on this bus until it is dropped:
    /// another connector or host asking for the same id meanwhile is
    /// refused with [`BusError::PeerIdInUse`], since peer ids must be
    /// unique on a shared channel (spec SC2) and the default
    /// [`ClientConfig::peer_id`] is the same for every client. A
    /// [`Client`](crate::client::Client) drops its connector when its
    /// driver ends, which [`Client::closed`](crate::client::Client::closed)
    /// waits for: a link's input ends as soon as the client closes it,
    /// so after `dispose` that is a matter of its task running once more.
    /// To reuse an id, await `closed` first.
    pub fn connector(&self, config: &ClientConfig) -> Result<BusConnector, BusError> {
        let claim = self.claim(&config.peer_id)?;
        Ok(BusConnector {
            _claim: claim,
            bus: self.clone(),
            filter: Arc::new(ClientFilter {
                peer_id: config.peer_id.clone(),
                host_id: config.host_id.clone(),
                capability: config.capability.clone(),
            }),
        })
    }
}

/// What a client's link lets through: the same rules as the client core's
/// first pre-check (K1), applied before the envelope is copied.
#[derive(Debug)]
struct ClientFilter {
    peer_id: String,
    host_id: String,
    capability: String,
}

impl ClientFilter {
    fn accepts(&self, header: Option<&Header>) -> bool {
        let Some(header) = header else {
            // Let the core report it as malformed.
            return true;
        };
        (header.target.is_empty() || header.target == self.peer_id)
            && (self.host_id.is_empty() || header.source == self.host_id)
            && (self.capability.is_empty() || header.capability == self.capability)
    }
}

/// A client's connector to a [`Bus`]. Every connect subscribes afresh; the
/// bus never closes while a connector holds it.
pub struct BusConnector {
    _claim: PeerIdClaim,
    bus: Bus,
    filter: Arc<ClientFilter>,
}

impl Connector for BusConnector {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        // Subscribe before anything is sent, so the answer to the client's
        // first sync request cannot slip past it.
        let receiver = self.bus.subscribe();
        let filter = self.filter.clone();
        // A bus has no half-close: the link's input ends when its sink is
        // dropped, as a point-to-point host ends a session its client
        // closed (H16), so a client that closes is not left draining input
        // that never ends, holding its connector, and so its peer id.
        let closed = CancellationToken::new();
        let stream = BroadcastStream::new(receiver).filter_map(move |item| {
            let delivered = match item {
                // Judged by the header alone: a Snapshot for another peer
                // is never copied out of its shared frame.
                Ok(BusMessage::Host(frame)) if filter.accepts(frame.header()) => {
                    Some(Ok(HostInput::from(frame)))
                }
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(lost)) => {
                    // Loss, not a broken link (SC12): the client settles the
                    // calls whose results may be lost and resyncs.
                    tracing::debug!(peer = %filter.peer_id, lost, "bus receiver lagged");
                    Some(Err(TransportError::Lost { count: lost }))
                }
            };
            futures::future::ready(delivered)
        });
        let stream = stream.take_until(closed.clone().cancelled_owned());
        let state = (self.bus.clone(), closed.drop_guard());
        let sink = futures::sink::unfold(state, |(bus, closed), message: ClientMessage| {
            bus.send(BusMessage::Client(Arc::new(message)));
            futures::future::ready(Ok::<_, TransportError>((bus, closed)))
        });
        let link = ClientLink {
            sink: Box::pin(sink),
            stream: Box::pin(stream),
        };
        async move { Ok(link) }.boxed()
    }
}

/// How a host bounds the client sessions it keeps on a bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusHostOptions {
    /// A client session not heard from for this long is dropped; the next
    /// envelope from that client opens a new one.
    pub idle_timeout: Duration,
    /// At most this many client sessions are kept; opening one more drops
    /// the one heard from least recently.
    pub max_sessions: usize,
}

impl Default for BusHostOptions {
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }
}

/// The host's end of a bus: one publication session, and reply-only
/// sessions keyed by client peer id.
struct BusHost {
    host: Host,
    bus: Bus,
    config: HostConfig,
    publications: Session,
    sessions: ReplySessions<Session>,
}

/// Serves `host` on `bus` until the host shuts down.
///
/// The host needs a non-empty peer id (its [`crate::host::HostBuilder::peer_id`]),
/// which it holds on the bus while it serves: like a connector's, it is
/// refused with [`BusError::PeerIdInUse`] if another peer of this process
/// holds it. Clients on a bus with more than one host must set
/// [`ClientConfig::host_id`] to the one they follow. On start the host
/// announces its current view to the whole bus.
///
/// Client sessions are created on demand and dropped after
/// [`BusHostOptions::idle_timeout`] without a word from their client, or to
/// make room beyond [`BusHostOptions::max_sessions`]. Dropping one loses
/// nothing: a reply-only session's output is put on the bus as soon as it is
/// produced, so there is never anything queued in it.
///
/// The peer id is claimed when this is called, not when the future is
/// first polled: a connector asking for it after `tokio::spawn(serve_host(..))`
/// is refused, rather than the host's task ending later with nobody told.
pub fn serve_host(
    host: Host,
    bus: Bus,
    options: BusHostOptions,
) -> impl Future<Output = Result<(), BusError>> + Send + 'static {
    let claim = bus.claim(&host.config().peer_id);
    async move {
        let claim = claim?;
        let served = serve_claimed(host, bus, options).await;
        drop(claim);
        served
    }
}

/// [`serve_host`] once the host's peer id is held.
async fn serve_claimed(host: Host, bus: Bus, options: BusHostOptions) -> Result<(), BusError> {
    let config = host.config();
    // Subscribe before announcing: a client that hears the announcement and
    // then asks for something must find the host listening.
    let mut receiver = bus.subscribe();
    let publications = host.open_session(PeerOptions {
        peer_id: format!("bus:{}", config.peer_id),
        publications: true,
    })?;
    let mut this = BusHost {
        host,
        bus,
        config,
        publications,
        sessions: ReplySessions::new(options.idle_timeout, options.max_sessions),
    };
    this.announce()?;
    let sweep_every = (options.idle_timeout / 2).max(Duration::from_millis(1));
    let mut sweep = tokio::time::interval(sweep_every);
    loop {
        tokio::select! {
            // A frame is taken from the core in the same poll that returns
            // it, so losing this race to another branch loses nothing.
            frame = this.publications.next_frame() => match frame {
                Some(frame) => this.bus.send(BusMessage::Host(frame)),
                None => return Ok(()),
            },
            received = receiver.recv() => match received {
                Ok(BusMessage::Client(message)) => this.on_client(message),
                // Other hosts' envelopes, and our own.
                Ok(BusMessage::Host(_)) => {}
                Err(broadcast::error::RecvError::Lagged(lost)) => {
                    // Lost sync requests are retried by their clients; lost
                    // calls are unanswered, as on any lossy channel.
                    tracing::warn!(host = %this.config.peer_id, lost, "bus host lagged; client envelopes lost");
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = sweep.tick() => {
                this.sessions.expire(Instant::now().into_std());
            }
        }
    }
}

impl BusHost {
    /// Attaches the publication session and broadcasts its sync answer as
    /// the host's announcement.
    fn announce(&mut self) -> Result<(), BusError> {
        self.publications.handle(ClientMessage {
            header: Some(Header {
                protocol_version: PROTOCOL_VERSION,
                epoch: self.host.epoch(),
                // No source: overflow snapshots of this session go to all.
                source: String::new(),
                target: self.config.peer_id.clone(),
                capability: self.config.capability.clone(),
            }),
            kind: Some(client_message::Kind::SyncRequest(SyncRequest {
                sync_id: 0,
                have_version: 0,
                reason: SyncReason::Initial as i32,
            })),
        })?;
        while let Some(frame) = self.publications.try_next_frame() {
            self.bus.send(BusMessage::Host(as_announcement(frame)));
        }
        Ok(())
    }

    fn on_client(&mut self, message: Arc<ClientMessage>) {
        let source = match admit(
            &self.config.peer_id,
            &self.config.capability,
            message.header.as_ref(),
        ) {
            Ok(source) => source.to_owned(),
            Err(reason) => {
                tracing::debug!(%reason, "left a client envelope on the bus unprocessed");
                return;
            }
        };
        let now = Instant::now().into_std();
        if self.sessions.heard(&source, now).is_none() && !self.open(&source, now) {
            return;
        }
        let Some(session) = self.sessions.heard(&source, now) else {
            return;
        };
        let outcome = session.handle(Arc::unwrap_or_clone(message.clone()));
        // Publications first: a result or sync answer names a version whose
        // publication must be on the bus ahead of it (SC5).
        while let Some(frame) = self.publications.try_next_frame() {
            self.bus.send(BusMessage::Host(frame));
        }
        while let Some(frame) = session.try_next_frame() {
            self.bus.send(BusMessage::Host(frame));
        }
        if let Err(error) = outcome {
            tracing::debug!(peer = %source, %error, "ignored bus input");
            if error.is_fatal() {
                self.sessions.remove(&source);
            }
        }
    }

    /// Opens a session for `source`, making room if needed. Returns whether
    /// it is open.
    fn open(&mut self, source: &str, now: std::time::Instant) -> bool {
        if self.sessions.is_full() {
            self.sessions.drop_least_recent();
        }
        let options = PeerOptions {
            peer_id: source.to_owned(),
            publications: false,
        };
        let session = match self.host.open_session(options.clone()) {
            Err(InputError::TooManyClients { .. }) if !self.sessions.is_empty() => {
                // Other transports fill the host; give up our oldest session.
                self.sessions.drop_least_recent();
                self.host.open_session(options)
            }
            other => other,
        };
        match session {
            Ok(session) => {
                self.sessions.insert(source, session, now);
                true
            }
            Err(error) => {
                tracing::warn!(peer = %source, %error, "no session for bus client");
                false
            }
        }
    }
}

/// The publication session's sync answer, recast as the host's
/// announcement to the whole bus.
fn as_announcement(frame: HostFrame) -> HostFrame {
    let mut message = frame.into_message();
    if let Some(host_message::Kind::Snapshot(snapshot)) = &mut message.kind {
        snapshot.reason = SnapshotReason::Announce as i32;
        snapshot.sync_id = 0;
    }
    if let Some(header) = &mut message.header {
        header.target.clear();
    }
    HostFrame::new(message)
}
