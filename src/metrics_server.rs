//! A host's counters ([`Host::stats`]) in the Prometheus text format, over
//! plain HTTP/1.1 at `GET /metrics`, for a scraper: what `cosystem-worker
//! host --metrics-listen` serves, for an application serving its own
//! modules to serve alike. On a port of its own, apart from the protocol's,
//! so that it can be exposed to a monitoring network alone; hardened like
//! any listener open to a network (a bounded number of connections, header
//! and connection deadlines, one request per connection). A scrape never
//! waits for a method that holds the core (see [`Host::stats`]).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::host::Host;
use crate::prometheus::CONTENT_TYPE;
use crate::transport::grpc::ConnectionGauge;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

use crate::transport::throttle::{Throttle, throttled};

/// Connections held at once. When all are taken, a new connection takes
/// the place of the oldest one that has not yet sent its request, so that
/// silent connections cannot keep a scraper out; it is closed only when
/// every one held is being answered.
const MAX_CONNECTIONS: usize = 16;

/// How long a connection may take to send its request headers, so that a
/// silent one does not hold a slot. Each connection serves one request
/// (no keep-alive), so none idles between scrapes either.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one connection may take in all, reading the answer included.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `host`'s metrics, and a gRPC server's connection counts if given
/// ([`GrpcServer::connections`](crate::transport::grpc::GrpcServer::connections)),
/// on `listener` until the future is dropped. Another path answers 404,
/// another method 405.
pub async fn serve(listener: TcpListener, host: Host, connections: Option<ConnectionGauge>) {
    let mut held = Held::default();
    let accept_failures = Throttle::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                throttled!(accept_failures, warn, %error, "accepting a metrics connection failed");
                // Out of descriptors, say: wait rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !held.make_room() {
            tracing::debug!(%peer, "closing a metrics connection: every one held is being answered");
            continue;
        }
        let asked = Arc::new(AtomicBool::new(false));
        let host = host.clone();
        let connections = connections.clone();
        let task = tokio::spawn({
            let asked = asked.clone();
            async move {
                let service = hyper::service::service_fn(move |request| {
                    asked.store(true, Ordering::Release);
                    let response = respond(&host, connections.as_ref(), &request);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                // A peer that never reads its answer is not bounded by the
                // header timeout: the whole exchange is.
                match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "metrics connection failed"),
                    Err(_) => tracing::debug!(%peer, "metrics connection timed out"),
                }
            }
        });
        held.connections.push_back(Connection {
            task: task.abort_handle(),
            asked,
        });
    }
}

/// One connection the server holds.
struct Connection {
    task: AbortHandle,
    /// Whether its request has arrived (it is being answered).
    asked: Arc<AtomicBool>,
}

/// The connections the server holds, oldest first.
#[derive(Default)]
struct Held {
    connections: VecDeque<Connection>,
}

impl Held {
    /// Makes room for one more connection: forgets those that ended, and
    /// when all places are taken closes the oldest that has not asked
    /// anything. False if every one held is being answered.
    fn make_room(&mut self) -> bool {
        self.connections.retain(|c| !c.task.is_finished());
        if self.connections.len() < MAX_CONNECTIONS {
            return true;
        }
        let silent = self
            .connections
            .iter()
            .position(|c| !c.asked.load(Ordering::Acquire));
        match silent.and_then(|i| self.connections.remove(i)) {
            Some(oldest) => {
                oldest.task.abort();
                true
            }
            None => false,
        }
    }
}

/// The answer to one request: the metrics at `GET /metrics` (or `HEAD`),
/// 404 elsewhere, 405 for other methods there.
fn respond(
    host: &Host,
    connections: Option<&ConnectionGauge>,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let status = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => StatusCode::OK,
        (_, "/metrics") => StatusCode::METHOD_NOT_ALLOWED,
        _ => StatusCode::NOT_FOUND,
    };
    let body = if status == StatusCode::OK {
        let mut text = host.stats().to_prometheus();
        if let Some(connections) = connections {
            text.push_str(&connections.counts().to_prometheus());
        }
        Bytes::from(text)
    } else {
        Bytes::from_static(b"try GET /metrics\n")
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if status == StatusCode::OK
        && let Ok(value) = hyper::header::HeaderValue::from_str(CONTENT_TYPE)
    {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
    }
    response
}
