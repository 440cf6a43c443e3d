//! gRPC transport (spec §17.2): the host serves
//! `cosystem.worker.v1.HostService/Session`, one bidirectional stream per
//! client session; clients connect with [`GrpcConnector`].
//!
//! The server writes each publication's encoding once and hands the same
//! bytes to every stream ([`codec::SharedFrameCodec`]). It also serves
//! `grpc.health.v1.Health` and server reflection (v1 and v1alpha), so
//! standard tools (`grpcurl`, `grpc_health_probe`) work against it.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use cosystem_worker::client::{Client, ClientConfig};
//! use cosystem_worker::host::Host;
//! use cosystem_worker::transport::grpc::{GrpcConnector, GrpcServer};
//!
//! let host = Host::builder(cosystem_worker::demo::app("s3cr3t")).build();
//! let server = GrpcServer::builder(host)
//!     .token("t0ken")
//!     .bind("127.0.0.1:0".parse()?)
//!     .await?;
//! let url = format!("http://{}", server.local_addr());
//! tokio::spawn(server.serve(std::future::pending()));
//!
//! let client = Client::new(GrpcConnector::new(url)?.token("t0ken"), ClientConfig::default());
//! client.ready().await?;
//! # Ok(()) }
//! ```

mod admission;
mod auth;
mod builder;
mod client;
pub mod client_codec;
pub mod codec;
mod health;
mod incoming;
mod opening;
mod partial;
mod pem;
mod probe;
mod server;
mod session_service;

pub use admission::{ConnectionCounts, ConnectionGauge, ConnectionLimits, DEFAULT_MAX_CONNECTIONS};
pub use auth::{TokenFault, check_token, constant_time_eq};
pub use builder::GrpcServerBuilder;
pub use client::GrpcConnector;
pub use health::{EndsAtStop, StoppingHealth, health_service};
pub use incoming::{
    ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_MIN, Accepted, GuardedIncoming, HANDSHAKE_TIMEOUT,
};
pub use server::{
    GrpcServer, KEEPALIVE, MAX_SIDE_SERVICE_MESSAGE_BYTES, MAX_STREAMS_PER_CONNECTION,
    SHUTDOWN_GRACE, SIDE_SERVICE_FREE_BYTES, SIDE_SERVICE_READ_BYTES,
};
pub use session_service::{HostServiceServer, SERVICE_NAME, SessionService};

/// Why a gRPC server or connector could not be set up or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Another socket error.
    #[error("socket error: {0}")]
    Io(#[source] std::io::Error),
    /// The certificate, key or CA certificate is unusable.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// [`GrpcServerBuilder::into_service`] was asked for with TLS or a
    /// client CA set, which only [`GrpcServer::serve`] applies.
    #[error("into_service serves no TLS of its own: configure TLS on the tonic server")]
    TlsNotApplied,
    /// A client CA was set on a server without a certificate and key of its
    /// own: it would verify clients over a connection that is not TLS.
    #[error("a client CA needs TLS: set the host's certificate and key too")]
    ClientCaWithoutTls,
    /// A CA certificate, client identity or domain name was given for a
    /// plaintext URL: it would be dropped, and a token sent in the clear to
    /// a host the application meant to verify.
    #[error("a CA certificate, client identity or domain name needs an https:// host, not {url}")]
    TlsOptionsOnPlaintext {
        /// The URL.
        url: String,
    },
    /// The token is empty or not sendable as a metadata value.
    #[error("unusable token: {0}")]
    InvalidToken(#[from] TokenFault),
    /// [`GrpcServerBuilder::into_service`] was asked for with an
    /// interceptor set, which only [`GrpcServer::serve`] applies.
    #[error(
        "into_service applies no interceptor: wrap the service in the application's own (InterceptedService)"
    )]
    InterceptorNotApplied,
    /// [`GrpcServerBuilder::into_service`] was asked for with connection
    /// limits set, which only [`GrpcServer::serve`] enforces.
    #[error(
        "into_service counts no connections: bound them in the application's own server or listener"
    )]
    ConnectionLimitsNotApplied,
    /// The host was built with a shared channel's capability token
    /// ([`HostBuilder::capability`](crate::host::HostBuilder::capability)),
    /// which it writes on everything it sends: on gRPC `capability` MUST be
    /// `""` (spec G9), and serving it would hand the channel's token to
    /// every gRPC client. Serve gRPC from a host built without one.
    #[error(
        "the host carries a shared channel's capability token, which gRPC sessions must not be sent (spec G9): serve gRPC from a host built without one"
    )]
    SharedChannelToken,
    /// The host has shut down ([`Host::shutdown`](crate::host::Host::shutdown)):
    /// it opens no session again, so a server of it would answer every
    /// client `UNAVAILABLE` and `serve` would end at once. Build a new
    /// `Host` to serve again.
    #[error("{}", crate::host::SHUT_DOWN_REFUSAL)]
    HostShutDown,
    /// The URL is not a gRPC URL.
    #[error("invalid URL {0}")]
    InvalidUrl(String),
    /// The reflection service could not be built.
    #[error("reflection service: {0}")]
    Reflection(String),
    /// The server failed while serving.
    #[error("server failed: {0}")]
    Serve(String),
}

/// An error and its sources on one line (tonic's errors say little on their
/// own: "transport error").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let next = inner.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = inner.source();
    }
    text
}
