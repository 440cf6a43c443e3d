//! The client's gRPC connector: each connect opens a new connection and
//! one `Session` stream on it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, SinkExt, StreamExt, TryStreamExt, stream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::PollSender;
use tonic::codec::Streaming;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, GrpcMethod, IntoStreamingRequest, Request, Response, Status};

use super::auth::{AUTHORIZATION, check_token};
use super::client_codec::HostBytesCodec;
use super::opening::AbortOnDrop;
use super::{GrpcError, SERVICE_NAME};
use crate::transport::{ClientLink, Connector, HostInput, TransportError};
use crate::wire::ClientMessage;

/// Client envelopes buffered before the client's driver waits.
const CAPACITY: usize = 1024;

/// Connects a [`Client`](crate::client::Client) to a host over gRPC.
///
/// Stream failures are retryable ([`TransportError::Connection`], or
/// [`TransportError::HostLimit`] for a host's `RESOURCE_EXHAUSTED`) except a
/// refusal of the credentials (`UNAUTHENTICATED` or `PERMISSION_DENIED`),
/// which is [`TransportError::Unauthenticated`]: the client then stops and
/// its `ready()` and calls fail `permission-denied`; `UNIMPLEMENTED`
/// ([`TransportError::Unsupported`]); and a host message over this client's
/// limit ([`TransportError::FrameTooLarge`]).
#[derive(Debug, Clone)]
pub struct GrpcConnector {
    url: String,
    token: Option<String>,
    ca_cert: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
    connect_timeout: Duration,
    max_message_bytes: usize,
    /// The endpoint, built at the first connect and reused by every later
    /// one: building it reads and parses the system trust store.
    built: Arc<OnceLock<Result<Endpoint, String>>>,
}

impl GrpcConnector {
    /// A connector for `url`: `http://HOST:PORT`, `https://HOST:PORT`, or a
    /// bare `HOST:PORT` (plaintext).
    pub fn new(url: impl Into<String>) -> Result<Self, GrpcError> {
        let url = normalize_url(&url.into())?;
        Ok(Self {
            url,
            token: None,
            ca_cert: None,
            identity: None,
            domain: None,
            connect_timeout: Duration::from_secs(5),
            max_message_bytes: crate::host::HostLimits::default().max_message_bytes,
            built: Arc::default(),
        })
    }

    /// The URL connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `authorization: Bearer <token>` on every stream. Over an
    /// `http://` URL the token crosses the network in the clear, readable
    /// by anyone on the path: beyond loopback, connect with `https://`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self.built = Arc::default();
        self
    }

    /// Trusts this PEM certificate (a CA, or the host's self-signed one), and
    /// only it, for `https://` URLs. Without one, the system's trust store
    /// is used (as `SSL_CERT_FILE` or `SSL_CERT_DIR` name it, else the
    /// platform's own); connecting fails if it holds no certificate.
    pub fn ca_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_cert = Some(pem.into());
        self.built = Arc::default();
        self
    }

    /// Presents this PEM certificate chain and PEM private key to an
    /// `https://` host that asks for a client certificate (mutual TLS,
    /// [`GrpcServerBuilder::client_ca`](super::GrpcServerBuilder::client_ca)).
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self.built = Arc::default();
        self
    }

    /// Verifies the host's certificate for this name instead of the URL's
    /// host.
    pub fn domain_name(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self.built = Arc::default();
        self
    }

    /// How long one connection attempt may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self.built = Arc::default();
        self
    }

    /// Largest message accepted from the host, and sent to it (default:
    /// the protocol's 4 MiB). Keep it equal to
    /// [`ClientConfig::max_message_bytes`](crate::client::ClientConfig::max_message_bytes):
    /// a Call under that limit but over this one is refused by the gRPC
    /// library as it is encoded, which resets the stream, so every call in
    /// flight settles `outcome-unknown` and the client reconnects.
    pub fn max_message_bytes(mut self, limit: usize) -> Self {
        self.max_message_bytes = limit;
        self.built = Arc::default();
        self
    }

    /// Checks the token and TLS settings and builds the endpoint. `connect`
    /// does this once and keeps the result; a configuration it cannot build
    /// stops the client ([`TransportError::Setup`]) rather than being
    /// retried. Calling it first reports such a configuration up front.
    pub fn endpoint(&self) -> Result<Endpoint, GrpcError> {
        if let Some(token) = &self.token {
            check_token(token)?;
        }
        let tls_options =
            self.ca_cert.is_some() || self.identity.is_some() || self.domain.is_some();
        if tls_options && !self.url.starts_with("https://") {
            return Err(GrpcError::TlsOptionsOnPlaintext {
                url: self.url.clone(),
            });
        }
        let mut endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| GrpcError::InvalidUrl(format!("{}: {e}", self.url)))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // The server's own keepalive, so a vanished host is noticed
            // as soon as it notices a vanished client.
            .http2_keep_alive_interval(super::KEEPALIVE)
            .keep_alive_timeout(super::KEEPALIVE);
        if self.url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match &self.ca_cert {
                Some(pem) => {
                    super::pem::certificates(pem, "the CA certificate")?;
                    tls.ca_certificate(Certificate::from_pem(pem))
                }
                None => tls.with_native_roots(),
            };
            if let Some(domain) = &self.domain {
                tls = tls.domain_name(domain.clone());
            }
            if let Some((cert, key)) = &self.identity {
                super::pem::certificates(cert, "the client certificate")?;
                super::pem::private_key(key, "the client's private key")?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| GrpcError::Tls(super::error_chain(&e)))?;
        }
        Ok(endpoint)
    }
}

impl Connector for GrpcConnector {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        let endpoint = self
            .built
            .get_or_init(|| self.endpoint().map_err(|e| e.to_string()))
            .clone();
        let token = self.token.clone();
        let max = self.max_message_bytes;
        // Where a plaintext opening that fails is checked for a TLS host
        // or a framed listener.
        let plain = self
            .url
            .strip_prefix("http://")
            .map(|rest| rest.split('/').next().unwrap_or(rest).to_owned());
        async move {
            let endpoint = endpoint.map_err(TransportError::Setup)?;
            let channel = match endpoint.connect().await {
                Ok(channel) => channel,
                Err(e) => {
                    let error = TransportError::Connection(format!(
                        "cannot connect to {}: {}",
                        endpoint.uri(),
                        super::error_chain(&e)
                    ));
                    return Err(super::probe::hint(error, plain.as_deref()).await);
                }
            };
            let mut client = tonic::client::Grpc::new(channel)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max);
            let (to_host, outbound) = mpsc::channel(CAPACITY);
            let mut request = Request::new(ReceiverStream::new(outbound));
            if let Some(token) = token {
                let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                    TransportError::Unauthenticated("the token is not a valid header value".into())
                })?;
                request.metadata_mut().insert(AUTHORIZATION, value);
            }
            // Handed over at once: the SyncRequest goes out before the host
            // answers (many gRPC stacks send response headers only with
            // their first message), and the client's driver holds its Calls
            // until the host speaks (see `opening`).
            let task = tokio::spawn(async move {
                match session(&mut client, request).await {
                    Ok(answer) => Ok(answer.into_inner()),
                    Err(status) => {
                        Err(super::probe::hint(status_error(status, max), plain.as_deref()).await)
                    }
                }
            });
            let stream = stream::once(AbortOnDrop(task))
                .map(|joined| joined.and_then(|answer| answer))
                .map_ok(move |answers| {
                    answers
                        .map_ok(HostInput::Encoded)
                        .map_err(move |status| status_error(status, max))
                })
                .try_flatten();
            let sink = PollSender::new(to_host)
                .sink_map_err(|_| TransportError::Connection("the request stream closed".into()));
            Ok(ClientLink {
                sink: Box::pin(sink),
                stream: Box::pin(stream),
            })
        }
        .boxed()
    }
}

/// Opens `HostService/Session`, as the generated client does, with a codec
/// that hands over each host message's bytes for the client to read in
/// place.
async fn session(
    client: &mut tonic::client::Grpc<Channel>,
    request: Request<ReceiverStream<ClientMessage>>,
) -> Result<Response<Streaming<Bytes>>, Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unknown(format!("Service was not ready: {e}")))?;
    let mut request = request.into_streaming_request();
    request
        .extensions_mut()
        .insert(GrpcMethod::new(SERVICE_NAME, "Session"));
    client
        .streaming(
            request,
            PathAndQuery::from_static("/cosystem.worker.v1.HostService/Session"),
            HostBytesCodec,
        )
        .await
}

/// `HOST:PORT` means plaintext gRPC; URLs must be `http://` or `https://`.
fn normalize_url(url: &str) -> Result<String, GrpcError> {
    let url = url.trim();
    let full = if let Some((scheme, rest)) = url.split_once("://") {
        // Schemes are case-insensitive (RFC 3986 §3.1).
        format!("{}://{rest}", scheme.to_ascii_lowercase())
    } else {
        // A URL without a port means the scheme's (80), but a bare address
        // without one is almost always a port forgotten.
        if bare_port_missing(url) {
            return Err(GrpcError::InvalidUrl(format!(
                "{url}: no port (write HOST:PORT, such as localhost:50051, or an http:// or https:// URL)"
            )));
        }
        format!("http://{url}")
    };
    if !(full.starts_with("http://") || full.starts_with("https://")) {
        return Err(GrpcError::InvalidUrl(format!(
            "{url}: a gRPC URL starts with http:// or https://"
        )));
    }
    let authority = full.split_once("://").map_or("", |(_, rest)| rest);
    if authority.trim_end_matches('/').is_empty() {
        return Err(GrpcError::InvalidUrl(format!("{url}: no host")));
    }
    // Parsed here so that a bad URL is refused at once, not retried.
    let endpoint = Endpoint::from_shared(full.clone())
        .map_err(|e| GrpcError::InvalidUrl(format!("{url}: {e}")))?;
    // The URI grammar lets a port be any digits, or none after the colon;
    // a connect would then fail, or dial the scheme's port, far from here.
    if let Some(port) = endpoint
        .uri()
        .authority()
        .and_then(|a| port_text(a.as_str()))
        && (!port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err())
    {
        return Err(GrpcError::InvalidUrl(format!(
            "{url}: the port {port:?} is not a number from 0 to 65535"
        )));
    }
    Ok(full)
}

/// The text after an authority's port colon, if it has one: after any
/// user information and past a bracketed IPv6 address.
fn port_text(authority: &str) -> Option<&str> {
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, rest)| rest);
    let after_host = host_port
        .rsplit_once(']')
        .map_or(host_port, |(_, rest)| rest);
    after_host.rsplit_once(':').map(|(_, port)| port)
}

/// Whether a bare `HOST:PORT` address lacks its port: `host`, `1.2.3.4`,
/// `[::1]` (a bracketed IPv6 address), or an empty port after the colon.
fn bare_port_missing(address: &str) -> bool {
    let authority = address.split('/').next().unwrap_or(address);
    let after_host = match authority.rsplit_once(']') {
        Some((_, rest)) => rest,
        None => authority,
    };
    match after_host.rsplit_once(':') {
        Some((_, port)) => port.is_empty(),
        None => true,
    }
}

/// Not retryable: credentials refused; a host that does not serve this
/// protocol (UNIMPLEMENTED); a host message over this client's `limit`
/// (tonic's decoder says OUT_OF_RANGE; a host never sends that code,
/// §17.2), since every reconnect would fetch the same message again.
/// Anything else: the stream broke.
fn status_error(status: Status, limit: usize) -> TransportError {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => {
            TransportError::Unauthenticated(status.message().to_owned())
        }
        Code::Unimplemented => TransportError::Unsupported(status.message().to_owned()),
        Code::ResourceExhausted => TransportError::HostLimit(status.message().to_owned()),
        Code::OutOfRange => TransportError::FrameTooLarge {
            size: found_bytes(status.message()).unwrap_or(0),
            limit,
        },
        code => {
            let mut message = format!("{code:?}: {}", status.message());
            if let Some(source) = std::error::Error::source(&status) {
                message.push_str(": ");
                message.push_str(&super::error_chain(source));
            }
            TransportError::Connection(message)
        }
    }
}

/// The size in tonic's "found N bytes" message, if it says.
fn found_bytes(message: &str) -> Option<usize> {
    let rest = &message[message.find("found ")? + "found ".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn bare_host_port_means_plaintext() {
        assert_eq!(
            normalize_url("127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(
            normalize_url("https://localhost:1").unwrap(),
            "https://localhost:1"
        );
    }

    #[test]
    fn a_bare_address_without_a_port_is_refused() {
        for address in ["127.0.0.1", "localhost", "[::1]", "localhost:", "host/path"] {
            let error = normalize_url(address).expect_err(address).to_string();
            assert!(error.contains("no port"), "{address}: {error}");
        }
        for address in ["[::1]:50051", "localhost:1", "http://localhost"] {
            assert!(normalize_url(address).is_ok(), "{address}");
        }
        for address in [
            "localhost:abc",
            "http://localhost:99999",
            "https://[::1]:x",
            "localhost:+1",
        ] {
            let error = normalize_url(address).expect_err(address).to_string();
            assert!(error.contains("is not a number"), "{address}: {error}");
        }
        assert_eq!(
            normalize_url("HTTPS://localhost:1").unwrap(),
            "https://localhost:1",
            "schemes are case-insensitive"
        );
    }

    #[test]
    fn other_schemes_and_empty_hosts_are_refused() {
        assert!(normalize_url("tcp://127.0.0.1:1").is_err());
        assert!(normalize_url("http://").is_err());
        assert!(normalize_url("http://exa mple:1").is_err());
    }

    #[test]
    fn refused_credentials_and_unserved_methods_are_not_retryable() {
        assert!(!status_error(Status::unauthenticated("x"), 1).is_retryable());
        assert!(!status_error(Status::permission_denied("x"), 1).is_retryable());
        assert!(status_error(Status::unavailable("x"), 1).is_retryable());
        assert!(status_error(Status::resource_exhausted("x"), 1).is_retryable());
        assert_eq!(
            status_error(Status::resource_exhausted("too many clients"), 1),
            TransportError::HostLimit("too many clients".into())
        );
        assert_eq!(
            status_error(Status::unimplemented("no such method"), 1),
            TransportError::Unsupported("no such method".into())
        );
        let too_large = Status::out_of_range(
            "Error, decoded message length too large: found 6291521 bytes, the limit is: 4194304 bytes",
        );
        assert_eq!(
            status_error(too_large, 4_194_304),
            TransportError::FrameTooLarge {
                size: 6_291_521,
                limit: 4_194_304
            }
        );
    }
}
