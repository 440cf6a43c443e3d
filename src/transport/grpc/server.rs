//! A bound gRPC server for a host: its sessions ([`SessionService`](super::SessionService)),
//! the standard health and reflection services, and how it stops.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Request, Status};
use tonic_health::ServingStatus;

use super::GrpcError;
use super::admission::{Admission, ConnectionGauge};
use super::builder::{GrpcServerBuilder, SessionInterceptor};
use super::incoming::GuardedIncoming;
use super::partial::{Budgeted, Until};
use super::session_service::{SERVICE_NAME, log_refusal, session_service};
use crate::host::Host;
use crate::transport::framed::budget::{FREE_BYTES, FrameBudget};
use crate::transport::throttle::Throttle;
use crate::wire::FILE_DESCRIPTOR_SET;

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

/// A host bound to a TCP address, ready to serve gRPC.
pub struct GrpcServer {
    pub(super) host: Host,
    pub(super) token: Option<Arc<[u8]>>,
    pub(super) tls: Option<ServerTlsConfig>,
    pub(super) interceptor: Option<SessionInterceptor>,
    pub(super) admission: Arc<Admission>,
    pub(super) listener: TcpListener,
    pub(super) local_addr: SocketAddr,
}

impl GrpcServer {
    /// A builder serving `host`.
    pub fn builder(host: Host) -> GrpcServerBuilder {
        GrpcServerBuilder::new(host)
    }

    /// The address actually bound (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A live view of the connections [`GrpcServer::serve`] holds and has
    /// refused under its [`ConnectionLimits`](super::ConnectionLimits), for metrics; it stays valid
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
