//! Configuring a gRPC server for a host: its token, TLS, interceptor and
//! connection limits, checked before anything is bound or served.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

use super::GrpcError;
use super::admission::{Admission, ConnectionLimits};
use super::auth::check_token;
use super::server::GrpcServer;
use super::session_service::{HostServiceServer, SessionService, session_service};
use crate::host::Host;

/// An application's check of each `Session` stream as it opens; see
/// [`GrpcServerBuilder::interceptor`].
pub(super) type SessionInterceptor =
    Arc<dyn Fn(Request<()>) -> Result<Request<()>, Status> + Send + Sync>;

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
    /// A builder serving `host`, with nothing else set.
    pub(super) fn new(host: Host) -> Self {
        Self {
            host,
            token: None,
            tls: None,
            client_ca: None,
            interceptor: None,
            connections: None,
        }
    }

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
    /// any state is sent. Without [`tls`](GrpcServerBuilder::tls) the token
    /// crosses the network in the clear: beyond loopback, serve TLS. Health and reflection stay open: they reveal
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
    /// its own health and reflection services ([`FILE_DESCRIPTOR_SET`](crate::wire::FILE_DESCRIPTOR_SET)).
    /// Sessions, the token check, the message-size limit and encode-once
    /// publication work as under [`GrpcServer::serve`]. A layer that
    /// authenticates the caller can name it with a
    /// [`Principal`](crate::host::Principal) in the request's extensions;
    /// methods then read it with [`caller`](crate::host::caller).
    ///
    /// What `serve` does around the service is then the application's to
    /// do (`examples/own_modules.rs --embedded` does all of it):
    /// - ping idle connections (`http2_keepalive_interval` and
    ///   `http2_keepalive_timeout` of [`KEEPALIVE`](super::KEEPALIVE)), or a client that
    ///   vanishes without a FIN holds its session and a client slot for ever;
    /// - bound the streams of one connection (`max_concurrent_streams` of
    ///   [`MAX_STREAMS_PER_CONNECTION`](super::MAX_STREAMS_PER_CONNECTION)): tonic sets no limit by default;
    /// - accept connections through [`GuardedIncoming`](super::GuardedIncoming)
    ///   (`serve_with_incoming`), which sets `TCP_NODELAY` (or small
    ///   answers may wait for a delayed ACK), backs off when accepting fails
    ///   (out of file descriptors), closes connections that send nothing
    ///   within [`HANDSHAKE_TIMEOUT`](super::HANDSHAKE_TIMEOUT) and bounds
    ///   the connections held at once ([`ConnectionLimits`]): tonic's
    ///   `TcpIncoming` retries a failed accept at once, waits for a silent
    ///   connection for ever and counts none;
    /// - report health for `""` and [`SERVICE_NAME`](super::SERVICE_NAME), and `NOT_SERVING`
    ///   when stopping, then end the health `Watch` streams
    ///   ([`health_service`](super::health_service): tonic-health's never
    ///   end by themselves);
    /// - call [`Host::shutdown`] when its server stops, so that every
    ///   session's stream ends (`UNAVAILABLE`) and the server's graceful
    ///   shutdown does not wait on them, and bound that shutdown (a stream
    ///   of another service may stay open; `serve` waits
    ///   [`SHUTDOWN_GRACE`](super::SHUTDOWN_GRACE)).
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
