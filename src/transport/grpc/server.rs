//! The host's gRPC server: one `Session` stream per client session, plus
//! the standard health and reflection services.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::Stream;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;

use super::partial::{BodyBroken, Budgeted, Until};
use crate::transport::framed::budget::{FREE_BYTES, FrameBudget};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_health::ServingStatus;

use super::GrpcError;
use super::admission::{Admission, ConnectionGauge, ConnectionLimits};
use super::auth::{check_bearer, check_token};
use super::codec::ClientEnvelope;
use super::incoming::GuardedIncoming;
use crate::host::{Host, InputError, PeerOptions, Principal, Session, SessionEnd};
use crate::transport::throttle::{Throttle, throttled};
use crate::wire::{FILE_DESCRIPTOR_SET, HostFrame};

#[allow(missing_docs, clippy::all)]
mod generated {
    include!(concat!(
        env!("OUT_DIR"),
        "/cosystem.worker.v1.HostService.rs"
    ));
}
use generated::host_service_server::HostService;
pub use generated::host_service_server::HostServiceServer;

/// The full gRPC name of the host's service.
pub const SERVICE_NAME: &str = generated::host_service_server::SERVICE_NAME;

/// How long a stopping server waits for its connections to close.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How many streams one HTTP/2 connection may hold open at once. A client
/// needs one `Session` stream per connection; without a limit, anyone who
/// can connect (no token is needed for health) could open streams without
/// end and grow the host's memory with each.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 200;

/// The largest request message the health and reflection services read.
/// Their requests are a service or symbol name; tonic's default of 4 MiB
/// let anyone who can connect, token or not, hold 4 MiB per stalled stream
/// of partial message.
pub const MAX_SIDE_SERVICE_MESSAGE_BYTES: usize = 16 * 1024;

/// What the health and reflection streams of one server may hold in all in
/// their read buffers: 1024 stalled messages of
/// [`MAX_SIDE_SERVICE_MESSAGE_BYTES`]. A message that would pass it fails
/// its stream `RESOURCE_EXHAUSTED`.
pub const SIDE_SERVICE_READ_BYTES: usize = 1024 * MAX_SIDE_SERVICE_MESSAGE_BYTES;

/// Health and reflection messages up to this size do not count against
/// [`SIDE_SERVICE_READ_BYTES`]: a health check or a reflection request for
/// one symbol is a few dozen bytes, so a peer that holds the bound with
/// stalled large messages still leaves them answered.
pub const SIDE_SERVICE_FREE_BYTES: usize = 1024;

/// How often an idle HTTP/2 connection is pinged, and how long a ping may
/// go unanswered, so that a vanished client (no FIN, no RST) is noticed and
/// its session closed (spec §17.2).
pub const KEEPALIVE: Duration = Duration::from_secs(30);

/// An application's check of each `Session` stream as it opens; see
/// [`GrpcServerBuilder::interceptor`].
type SessionInterceptor = Arc<dyn Fn(Request<()>) -> Result<Request<()>, Status> + Send + Sync>;

/// Configures a [`GrpcServer`] for a host.
pub struct GrpcServerBuilder {
    host: Host,
    token: Option<String>,
    tls: Option<(Vec<u8>, Vec<u8>)>,
    client_ca: Option<Vec<u8>>,
    interceptor: Option<SessionInterceptor>,
    connections: Option<ConnectionLimits>,
}

impl GrpcServerBuilder {
    /// Bounds the TCP connections [`GrpcServer::serve`] holds at once, in
    /// all and per client address (default: [`ConnectionLimits::default`],
    /// [`DEFAULT_MAX_CONNECTIONS`](super::DEFAULT_MAX_CONNECTIONS) in all
    /// and no per-address limit). A connection over a limit is closed as
    /// soon as it is accepted, before TLS and HTTP/2, with a warning logged
    /// at most once a second; connections already held are unaffected.
    /// Sessions are bounded separately, by the host's `max_clients`.
    pub fn connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.connections = Some(limits);
        self
    }

    /// Requires every `Session` stream to carry
    /// `authorization: Bearer <token>`; others end `UNAUTHENTICATED` before
    /// any state is sent. Health and reflection stay open: they reveal
    /// nothing beyond the public schema and whether the host is up.
    ///
    /// With an [`interceptor`](GrpcServerBuilder::interceptor) that reads
    /// `authorization` itself (API keys, say), set no token: both would
    /// read the same header, and every stream the interceptor admits with
    /// its own credential would then fail the token check.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Runs `check` on every `Session` stream's request as it opens, before
    /// the session and before the [`token`](GrpcServerBuilder::token)
    /// check: the application's own authentication, under everything else
    /// [`GrpcServer::serve`] does. An `Err` refuses the stream with that
    /// status before any state is sent (the reference client stops on
    /// `UNAUTHENTICATED` and `PERMISSION_DENIED`, and retries others); the
    /// host goes on serving everyone else. A
    /// [`Principal`](crate::host::Principal) that `check` inserts into the
    /// request's extensions becomes the session's, which methods read with
    /// [`caller`](crate::host::caller). The request carries the client's
    /// metadata, its address and, under mutual TLS
    /// ([`GrpcServerBuilder::client_ca`]), its certificate chain
    /// (`request.peer_certs()`), so `check` can name a principal from a
    /// verified certificate. It runs once per stream, not per message; health
    /// and reflection are not checked. A stream it admits must still pass
    /// the token check if a token is set, so an interceptor that reads
    /// `authorization` replaces the token rather than joining it.
    pub fn interceptor<F>(mut self, check: F) -> Self
    where
        F: Fn(Request<()>) -> Result<Request<()>, Status> + Send + Sync + 'static,
    {
        self.interceptor = Some(Arc::new(check));
        self
    }

    /// Serves TLS with this PEM certificate chain and PEM private key.
    pub fn tls(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.tls = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The host's `HostService` alone, for a tonic server the application
    /// builds and runs itself: next to its own services, behind its own
    /// layers (mutual TLS, interceptors that authenticate callers) and with
    /// its own health and reflection services ([`FILE_DESCRIPTOR_SET`]).
    /// Sessions, the token check, the message-size limit and encode-once
    /// publication work as under [`GrpcServer::serve`]. A layer that
    /// authenticates the caller can name it with a
    /// [`Principal`](crate::host::Principal) in the request's extensions;
    /// methods then read it with [`caller`](crate::host::caller).
    ///
    /// What `serve` does around the service is then the application's to
    /// do (`examples/own_modules.rs --embedded` does all of it):
    /// - ping idle connections (`http2_keepalive_interval` and
    ///   `http2_keepalive_timeout` of [`KEEPALIVE`]), or a client that
    ///   vanishes without a FIN holds its session and a client slot for ever;
    /// - bound the streams of one connection (`max_concurrent_streams` of
    ///   [`MAX_STREAMS_PER_CONNECTION`]): tonic sets no limit by default;
    /// - accept connections through [`GuardedIncoming`](super::GuardedIncoming)
    ///   (`serve_with_incoming`), which sets `TCP_NODELAY` (or small
    ///   answers may wait for a delayed ACK), backs off when accepting fails
    ///   (out of file descriptors), closes connections that send nothing
    ///   within [`HANDSHAKE_TIMEOUT`](super::HANDSHAKE_TIMEOUT) and bounds
    ///   the connections held at once ([`ConnectionLimits`]): tonic's
    ///   `TcpIncoming` retries a failed accept at once, waits for a silent
    ///   connection for ever and counts none;
    /// - report health for `""` and [`SERVICE_NAME`], and `NOT_SERVING`
    ///   when stopping, then end the health `Watch` streams
    ///   ([`health_service`](super::health_service): tonic-health's never
    ///   end by themselves);
    /// - call [`Host::shutdown`] when its server stops, so that every
    ///   session's stream ends (`UNAVAILABLE`) and the server's graceful
    ///   shutdown does not wait on them, and bound that shutdown (a stream
    ///   of another service may stay open; `serve` waits
    ///   [`SHUTDOWN_GRACE`]).
    ///
    /// Fails with [`GrpcError::HostShutDown`] for a host already shut
    /// down, [`GrpcError::SharedChannelToken`] for a host built with
    /// a capability token, [`GrpcError::InvalidToken`] for an unusable
    /// token, with [`GrpcError::TlsNotApplied`] if [`GrpcServerBuilder::tls`]
    /// or [`GrpcServerBuilder::client_ca`] was set (TLS belongs to the
    /// application's server), and with
    /// [`GrpcError::InterceptorNotApplied`] if
    /// [`GrpcServerBuilder::interceptor`] was set: the application wraps
    /// the service in its own (`InterceptedService`), and a check that
    /// silently did not run would admit everyone. Likewise
    /// [`GrpcError::ConnectionLimitsNotApplied`] if
    /// [`GrpcServerBuilder::connection_limits`] was set: connections are
    /// the application's server's to count.
    pub fn into_service(self) -> Result<HostServiceServer<SessionService>, GrpcError> {
        if self.tls.is_some() || self.client_ca.is_some() {
            return Err(GrpcError::TlsNotApplied);
        }
        if self.interceptor.is_some() {
            return Err(GrpcError::InterceptorNotApplied);
        }
        if self.connections.is_some() {
            return Err(GrpcError::ConnectionLimitsNotApplied);
        }
        servable(&self.host)?;
        let token = checked_token(self.token)?;
        Ok(session_service(self.host, token, Arc::default(), None))
    }

    /// Requires every connection to present a client certificate issued by
    /// this PEM CA certificate (mutual TLS); a client without one cannot
    /// complete the handshake. Needs [`GrpcServerBuilder::tls`]. It says
    /// who may connect, not who each client is: sessions get no
    /// [`Principal`](crate::host::Principal) from it unless an
    /// [`interceptor`](GrpcServerBuilder::interceptor) reads
    /// `request.peer_certs()` and names one.
    pub fn client_ca(mut self, ca_pem: impl Into<Vec<u8>>) -> Self {
        self.client_ca = Some(ca_pem.into());
        self
    }

    /// Binds `addr` (port 0 picks a free port) and checks the configuration;
    /// nothing is served until [`GrpcServer::serve`].
    pub async fn bind(self, addr: SocketAddr) -> Result<GrpcServer, GrpcError> {
        servable(&self.host)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| GrpcError::Bind { addr, source })?;
        self.listen(listener)
    }

    /// Like [`GrpcServerBuilder::bind`], on a listener the caller bound.
    pub fn listen(self, listener: TcpListener) -> Result<GrpcServer, GrpcError> {
        servable(&self.host)?;
        let token = checked_token(self.token)?;
        let tls = match self.tls {
            Some((cert, key)) => {
                super::pem::certificates(&cert, "the host's certificate chain")?;
                super::pem::private_key(&key, "the host's private key")?;
                if let Some(ca) = &self.client_ca {
                    super::pem::certificates(ca, "the client CA certificate")?;
                }
                // The TLS handshake gets the same deadline as a plaintext
                // preface: tonic sets none, and the raw-byte deadline of
                // `incoming` ends with the ClientHello.
                let mut config = ServerTlsConfig::new()
                    .identity(Identity::from_pem(cert, key))
                    .timeout(super::HANDSHAKE_TIMEOUT);
                if let Some(ca) = self.client_ca {
                    config = config.client_ca_root(Certificate::from_pem(ca));
                }
                // Building a throwaway server parses the certificate and key
                // now, so a bad file fails at startup rather than per stream.
                Server::builder()
                    .tls_config(config.clone())
                    .map_err(|e| GrpcError::Tls(super::error_chain(&e)))?;
                Some(config)
            }
            None if self.client_ca.is_some() => {
                return Err(GrpcError::ClientCaWithoutTls);
            }
            None => None,
        };
        let local_addr = listener.local_addr().map_err(GrpcError::Io)?;
        Ok(GrpcServer {
            host: self.host,
            token,
            tls,
            interceptor: self.interceptor,
            admission: Admission::new(self.connections.unwrap_or_default()),
            listener,
            local_addr,
        })
    }
}

/// A host bound to a TCP address, ready to serve gRPC.
pub struct GrpcServer {
    host: Host,
    token: Option<Arc<[u8]>>,
    tls: Option<ServerTlsConfig>,
    interceptor: Option<SessionInterceptor>,
    admission: Arc<Admission>,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl GrpcServer {
    /// A builder serving `host`.
    pub fn builder(host: Host) -> GrpcServerBuilder {
        GrpcServerBuilder {
            host,
            token: None,
            tls: None,
            client_ca: None,
            interceptor: None,
            connections: None,
        }
    }

    /// The address actually bound (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A live view of the connections [`GrpcServer::serve`] holds and has
    /// refused under its [`ConnectionLimits`], for metrics; it stays valid
    /// while and after the server serves.
    pub fn connections(&self) -> ConnectionGauge {
        ConnectionGauge(self.admission.clone())
    }

    /// Whether streams must present a token.
    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    /// Serves until `shutdown` resolves or the host is shut down
    /// ([`Host::shutdown`]). Then health reports `NOT_SERVING` and its
    /// `Watch` streams end `UNAVAILABLE` after delivering it, the host shuts
    /// down (every session's stream ends `UNAVAILABLE`, new ones are
    /// refused) and the server waits for connections to close, at most
    /// [`SHUTDOWN_GRACE`]: a stream the client never ends (a reflection
    /// stream left open) does not keep `serve` from returning.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GrpcError> {
        let interceptor = self.interceptor;
        let refusals = Arc::new(Throttle::default());
        let admission = self.admission.clone();
        let sessions = session_service(
            self.host.clone(),
            self.token,
            refusals.clone(),
            Some(self.admission.clone()),
        );
        let service =
            InterceptedService::new(sessions, move |request: Request<()>| match &interceptor {
                Some(check) => checked_logged(check, &refusals, request)
                    .inspect_err(|_| admission.note_refused_by_interceptor()),
                None => Ok(request),
            });
        // What every session stream holds in its read buffer shares one
        // bound, as frames do on a framed listener (spec G3, FB6).
        let max_message = self.host.limits().max_message_bytes;
        let budget = Arc::new(FrameBudget::per_listener(max_message));
        let service = Budgeted::new(service, budget, max_message, FREE_BYTES);

        let (reporter, health, stop_watches) = super::health_service();
        reporter
            .set_service_status(SERVICE_NAME, ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;

        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| GrpcError::Reflection(e.to_string()))?;
        let reflection = reflection
            .build_v1()
            .map_err(|e| GrpcError::Reflection(e.to_string()))?
            .max_decoding_message_size(MAX_SIDE_SERVICE_MESSAGE_BYTES);
        let reflection_v1alpha =
            reflection_v1alpha.max_decoding_message_size(MAX_SIDE_SERVICE_MESSAGE_BYTES);
        let health = health.max_decoding_message_size(MAX_SIDE_SERVICE_MESSAGE_BYTES);
        // They need no token, so what their streams hold is bounded in all,
        // as the sessions' is; their ordinary requests are far smaller than
        // what counts, so a peer holding the bound stops only large ones.
        // A stream holds tonic's read buffer from its opening, so one that
        // sends nothing is ended at the first-envelope deadline, as a
        // session's is; a health request, one message, must also have
        // ended by then (a reflection stream may idle between requests).
        let side = Arc::new(FrameBudget::new(SIDE_SERVICE_READ_BYTES));
        let (max, free) = (MAX_SIDE_SERVICE_MESSAGE_BYTES, SIDE_SERVICE_FREE_BYTES);
        let first = self.host.limits().first_envelope_timeout;
        let health = Budgeted::new(health, side.clone(), max, free).deadline(first, Until::End);
        let reflection =
            Budgeted::new(reflection, side.clone(), max, free).deadline(first, Until::FirstMessage);
        let reflection_v1alpha =
            Budgeted::new(reflection_v1alpha, side, max, free).deadline(first, Until::FirstMessage);

        let mut server = Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE))
            .http2_keepalive_timeout(Some(KEEPALIVE))
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION));
        if let Some(tls) = self.tls {
            server = server
                .tls_config(tls)
                .map_err(|e| GrpcError::Tls(super::error_chain(&e)))?;
        }
        let host = self.host.clone();
        let (stopping, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            // A host shut down by the application stops its server too:
            // otherwise the server would accept connections only to refuse
            // each session, report SERVING, and keep its clients retrying.
            tokio::select! {
                () = shutdown => {}
                () = host.closed() => {}
            }
            let _ = stopping.send(());
            reporter
                .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
                .await;
            reporter
                .set_service_status("", ServingStatus::NotServing)
                .await;
            stop_watches.cancel();
            host.shutdown();
        };
        let incoming = GuardedIncoming::counted(self.listener, self.admission);
        let serving = server
            .add_service(health)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown);
        let mut serving = std::pin::pin!(serving);
        let ended = tokio::select! {
            // A server that has ended is never polled again.
            biased;
            ended = &mut serving => Some(ended),
            _ = stopped => None,
        };
        let ended = match ended {
            Some(ended) => ended,
            None => match tokio::time::timeout(SHUTDOWN_GRACE, &mut serving).await {
                Ok(ended) => ended,
                Err(_) => {
                    tracing::warn!(
                        grace = ?SHUTDOWN_GRACE,
                        "streams still open after the shutdown grace period; not waiting for them"
                    );
                    Ok(())
                }
            },
        };
        ended.map_err(|e| GrpcError::Serve(super::error_chain(&e)))
    }
}

/// Runs the application's check, logging a refusal as a refused token is
/// logged: with the peer's address and the status.
fn checked_logged(
    check: &SessionInterceptor,
    refusals: &Throttle,
    request: Request<()>,
) -> Result<Request<()>, Status> {
    let peer = request
        .remote_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    check(request).inspect_err(|status| {
        let reason = format!("{:?}: {}", status.code(), status.message());
        log_refusal(
            refusals,
            &peer,
            "client refused by the interceptor",
            &reason,
        );
    })
}

/// Logs a refused stream: as a warning at most once per throttle interval,
/// saying how many were held back since; the others at debug.
fn log_refusal(refusals: &Throttle, peer: &str, what: &str, reason: &str) {
    throttled!(refusals, warn, %peer, reason, "{what}");
}

/// Refuses a host that has shut down, or that would write a shared
/// channel's token on its gRPC sessions.
fn servable(host: &Host) -> Result<(), GrpcError> {
    if host.is_shut_down() {
        Err(GrpcError::HostShutDown)
    } else if host.carries_capability() {
        Err(GrpcError::SharedChannelToken)
    } else {
        Ok(())
    }
}

/// A token fit to be sent as metadata, as the server compares it.
fn checked_token(token: Option<String>) -> Result<Option<Arc<[u8]>>, GrpcError> {
    match token {
        Some(token) => {
            check_token(&token)?;
            Ok(Some(Arc::from(token.into_bytes())))
        }
        None => Ok(None),
    }
}

/// The tonic service for `host`, refusing messages over the host's limit.
fn session_service(
    host: Host,
    token: Option<Arc<[u8]>>,
    refusals: Arc<Throttle>,
    admission: Option<Arc<Admission>>,
) -> HostServiceServer<SessionService> {
    let limit = host.limits().max_message_bytes;
    HostServiceServer::new(SessionService {
        host,
        token,
        refusals,
        admission,
    })
    .max_decoding_message_size(limit)
}

/// The `HostService` implementation: each `Session` stream is one host
/// session. Obtained from [`GrpcServerBuilder::into_service`].
pub struct SessionService {
    host: Host,
    token: Option<Arc<[u8]>>,
    /// Refused streams are logged at most once a second (`held_back`
    /// counts the others): a client looping on a wrong token is cheap to
    /// run and would otherwise write thousands of lines a second.
    refusals: Arc<Throttle>,
    /// Where refusals are counted for metrics: the server's, when it
    /// serves the service itself.
    admission: Option<Arc<Admission>>,
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<HostFrame, Status>> + Send>>;

#[tonic::async_trait]
impl HostService for SessionService {
    type SessionStream = FrameStream;

    async fn session(
        &self,
        request: Request<Streaming<ClientEnvelope>>,
    ) -> Result<Response<FrameStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let principal = request.extensions().get::<Principal>().cloned();
        if let Some(token) = &self.token
            && let Err(status) = check_bearer(request.metadata(), token)
        {
            let what = "client refused: unauthenticated";
            log_refusal(&self.refusals, &peer, what, status.message());
            if let Some(admission) = &self.admission {
                admission.note_unauthenticated();
            }
            return Err(status);
        }
        let session = self
            .host
            .open_session_as_async(
                PeerOptions {
                    peer_id: peer.clone(),
                    publications: true,
                },
                principal.map(|Principal(p)| p),
            )
            .await
            .map_err(|error| {
                // Throttled as refused tokens are: clients retry a refusal
                // (the host is full, or shutting down), so there may be
                // thousands a second.
                log_refusal(&self.refusals, &peer, "client refused", &error.to_string());
                refusal_status(&error)
            })?;
        throttled!(
            self.host.session_logs().comings_and_goings,
            info,
            %peer,
            sessions = session.sessions_at_open(),
            "client connected"
        );
        let session = Arc::new(session);
        let (end_tx, end_rx) = oneshot::channel();
        let ended = Arc::new(OnceLock::new());
        // Absent where the service is embedded (`into_service`): its
        // request bodies are not wrapped.
        let broken = request.extensions().get::<BodyBroken>().cloned();
        let reader = tokio::spawn(read_session(
            self.host.clone(),
            session.clone(),
            (request.into_inner(), broken),
            peer.clone(),
            end_tx,
            ended.clone(),
        ));
        let connection = Connection {
            host: self.host.clone(),
            session: session.clone(),
            peer,
            reader,
            ended,
        };
        Ok(Response::new(Box::pin(outbound(
            session, end_rx, connection,
        ))))
    }
}

/// The status a refused new session ends with.
fn refusal_status(error: &InputError) -> Status {
    match error {
        InputError::TooManyClients { limit } => {
            Status::resource_exhausted(format!("too many clients: the limit is {limit}"))
        }
        InputError::UnknownPeer | InputError::ShuttingDown => {
            Status::unavailable("the host is shutting down")
        }
        other => Status::internal(other.to_string()),
    }
}

/// The status a session ends with after a fatal input.
fn fatal_status(error: &InputError) -> Status {
    match error {
        InputError::Flooding { .. }
        | InputError::Backlog { .. }
        | InputError::MessageTooLarge { .. } => Status::resource_exhausted(error.to_string()),
        InputError::UnknownPeer | InputError::ShuttingDown => {
            Status::unavailable("the host is shutting down")
        }
        other => Status::internal(other.to_string()),
    }
}

/// The status a session ends with after its request stream failed. tonic
/// reports an oversize message as `OUT_OF_RANGE`; the protocol says
/// `RESOURCE_EXHAUSTED` (spec §15), as other gRPC stacks do. Broken gRPC
/// framing stays `INTERNAL`, as gRPC's own rules have it (§17.2).
fn inbound_status(status: Status) -> Status {
    match status.code() {
        Code::OutOfRange => Status::resource_exhausted(status.message().to_owned()),
        _ => status,
    }
}

/// Feeds the client's envelopes to its session until the client closes its
/// side, breaks the stream, or sends something fatal. Reports how the
/// response stream must end: `None` for a plain end, or a status.
async fn read_session(
    host: Host,
    session: Arc<Session>,
    (mut inbound, broken): (Streaming<ClientEnvelope>, Option<BodyBroken>),
    peer: String,
    end: oneshot::Sender<Option<Status>>,
    ended: Arc<OnceLock<String>>,
) {
    // Each end is labelled where it is decided: a status alone cannot tell
    // the host's refusals from what a client's stream reset maps to.
    let reset = || broken.as_ref().is_some_and(BodyBroken::get);
    // The session holds a client slot from the stream's opening, so a
    // stream that never speaks is ended (spec G2); an honest client sends
    // its SyncRequest at once (G4). Only the first envelope has a deadline:
    // an attached session may idle as long as it likes.
    let mut first = Some(host.limits().first_envelope_timeout);
    let outcome = loop {
        let next = match first.take() {
            Some(deadline) => match tokio::time::timeout(deadline, inbound.message()).await {
                Ok(next) => next,
                Err(_) => {
                    throttled!(
                        host.session_logs().closing,
                        warn,
                        %peer,
                        timeout = ?deadline,
                        "closing a session that sent no envelope in time"
                    );
                    session.end_as(SessionEnd::RefusedInput);
                    break Some(Status::deadline_exceeded(format!(
                        "no envelope arrived within {deadline:?} of the stream opening: a client sends its SyncRequest as soon as it opens the stream, without waiting for response headers (spec G2, G4)"
                    )));
                }
            },
            None => inbound.message().await,
        };
        match next {
            // tonic held the bytes to the max message size already.
            // Never blocking a thread on a core another session's method
            // holds: hundreds of sessions may be waiting at once.
            Ok(Some(envelope)) => match session.handle_bytes_async(envelope.bytes()).await {
                Ok(()) => {}
                // Decoded here rather than in the codec, so once; the
                // status is the one §17.2 gives bytes that are no envelope.
                Err(InputError::Malformed(reason)) => {
                    throttled!(host.session_logs().closing, warn, %peer, %reason, "closing session");
                    session.end_as(SessionEnd::RefusedInput);
                    break Some(Status::invalid_argument(format!(
                        "malformed ClientMessage: {reason}"
                    )));
                }
                // A shutdown while the input waited for the core ends the
                // stream as any shutdown does.
                Err(error) if error.is_fatal() || matches!(error, InputError::ShuttingDown) => {
                    throttled!(host.session_logs().closing, warn, %peer, %error, "closing session");
                    session.end_as(match error {
                        InputError::ShuttingDown | InputError::UnknownPeer => {
                            SessionEnd::HostShutDown
                        }
                        _ => SessionEnd::RefusedInput,
                    });
                    break Some(fatal_status(&error));
                }
                Err(error) => tracing::debug!(%peer, %error, "ignored input"),
            },
            // A half-close is labelled once what it is owed has gone out
            // (`outbound`); a reset, which tonic also ends this way, now.
            Ok(None) if reset() => {
                session.end_as(SessionEnd::ConnectionLost);
                break Some(Status::cancelled("the client reset its stream"));
            }
            Ok(None) => break None,
            Err(status) => {
                tracing::debug!(%peer, %status, "request stream failed");
                // A body that did not fail was refused by tonic (an
                // oversize message, a compression flag with no encoding)
                // or by the budget. Unwrapped (`into_service`), only the
                // size refusals' codes can tell, and resets may map to
                // others.
                let refused = match &broken {
                    Some(broken) => !broken.get(),
                    None => matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
                };
                session.end_as(if refused {
                    SessionEnd::RefusedInput
                } else {
                    SessionEnd::ConnectionLost
                });
                break Some(inbound_status(status));
            }
        }
    };
    let _ = ended.set(match &outcome {
        None => "the client closed its stream".to_owned(),
        // What hyper reports when a client process exits or drops its
        // connection without closing the stream: an everyday end, not a
        // protocol error, so the log says so rather than quote h2.
        Some(status) if matches!(status.code(), Code::Unknown | Code::Cancelled) => {
            format!(
                "the client went away without closing its stream ({})",
                status.message()
            )
        }
        Some(status) => format!("{:?}: {}", status.code(), status.message()),
    });
    let _ = end.send(outcome);
}

/// Lives as long as the response stream: logs the disconnect with its
/// reason and stops the reader, so the session is closed however the
/// stream ends.
struct Connection {
    host: Host,
    session: Arc<Session>,
    peer: String,
    reader: tokio::task::JoinHandle<()>,
    /// Why the session ended, once known: set by the reader (the client's
    /// side ended or failed) or by the response stream (host shutdown).
    ended: Arc<OnceLock<String>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        // A stream dropped with no end reported was reset or lost.
        self.session.end_as(SessionEnd::ConnectionLost);
        let reason = self.ended.get().map_or(
            "the client went away without closing its stream (stream reset or connection lost)",
            String::as_str,
        );
        throttled!(
            self.host.session_logs().comings_and_goings,
            info,
            peer = %self.peer,
            reason,
            "client disconnected"
        );
    }
}

struct Outbound {
    session: Arc<Session>,
    end: oneshot::Receiver<Option<Status>>,
    /// The client closed its side: answer what it sent, then end.
    draining: bool,
    connection: Connection,
}

impl Outbound {
    /// Ends the response stream because the host is shutting down.
    fn shut_down(self) -> Option<(Result<HostFrame, Status>, Option<Outbound>)> {
        self.session.end_as(SessionEnd::HostShutDown);
        let _ = self
            .connection
            .ended
            .set("the host is shutting down".to_owned());
        Some((Err(Status::unavailable("the host is shutting down")), None))
    }
}

enum Step {
    Frame(Option<HostFrame>),
    End(Option<Status>),
}

/// The response stream: the session's frames, pulled at the stream's pace,
/// until the reader reports an end or the host shuts down.
fn outbound(
    session: Arc<Session>,
    end: oneshot::Receiver<Option<Status>>,
    connection: Connection,
) -> impl Stream<Item = Result<HostFrame, Status>> + Send {
    let state = Outbound {
        session,
        end,
        draining: false,
        connection,
    };
    futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        loop {
            if state.draining {
                return match state.session.next_answer().await {
                    Some(frame) => Some((Ok(frame), Some(state))),
                    None if state.session.is_closed() => state.shut_down(),
                    None => {
                        state.session.end_as(SessionEnd::ClientClosed);
                        None
                    }
                };
            }
            let step = tokio::select! {
                // An end decided by the reader wins over frames still queued.
                biased;
                ended = &mut state.end => Step::End(ended.ok().flatten()),
                frame = state.session.next_frame() => Step::Frame(frame),
            };
            return match step {
                Step::Frame(Some(frame)) => Some((Ok(frame), Some(state))),
                Step::Frame(None) => state.shut_down(),
                Step::End(Some(status)) => Some((Err(status), None)),
                // A half-close: the calls already sent are still answered
                // (H8), then the stream ends.
                Step::End(None) => {
                    state.draining = true;
                    continue;
                }
            };
        }
    })
}
