//! The gRPC server's accepted connections: what tonic's own `TcpIncoming`
//! does (TCP_NODELAY), plus three defences it lacks.
//!
//! - **Accept errors back off.** When the process runs out of file
//!   descriptors, `accept` fails at once every time it is retried; tonic
//!   retries immediately and logs at trace, so the host would spin a core
//!   silently. Here a failure is logged as a warning and the next accept
//!   waits, from [`ACCEPT_BACKOFF_MIN`] doubling to [`ACCEPT_BACKOFF_MAX`].
//! - **A connection must start talking.** HTTP/2 keepalive pings only begin
//!   once the connection's handshake is done, so a peer that connects and
//!   sends nothing would hold a descriptor for ever, and enough of them
//!   starve the server. A connection that has not sent the HTTP/2 preface's
//!   24 bytes within [`HANDSHAKE_TIMEOUT`] is closed. Under TLS those bytes
//!   are the start of its handshake, which the server's TLS configuration
//!   then bounds by the same timeout; a peer that completes TLS and then
//!   sends no HTTP/2 preface is not caught here (the TLS layer hides the
//!   bytes), which needs a valid handshake and, with a client CA, a
//!   certificate. The connection limits bound those.
//! - **Connections are counted.** One over the server's
//!   [`ConnectionLimits`](super::ConnectionLimits) is closed as soon as it
//!   is accepted (see `admission`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Sleep, sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::admission::{Admission, ConnectionGauge, ConnectionLimits, Slot};
use crate::transport::throttle::{Throttle, throttled};

/// How long a new connection may take to send its first 24 bytes.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first wait after a failed accept.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// The longest wait between failed accepts.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The length of the HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE_BYTES: usize = 24;

/// Connections accepted from a listener, for tonic's
/// `Server::serve_with_incoming(_shutdown)`, with the defences above:
/// what [`GrpcServer::serve`](super::GrpcServer::serve) uses, for an
/// application serving [`GrpcServerBuilder::into_service`](super::GrpcServerBuilder::into_service)
/// on its own tonic server.
pub struct GuardedIncoming {
    listener: TcpListener,
    backoff: Option<Pin<Box<Sleep>>>,
    next_delay: Duration,
    admission: Arc<Admission>,
    /// A flood over the limits would otherwise log a line per connection.
    refusals: Throttle,
}

impl GuardedIncoming {
    /// Accepts from `listener`, holding connections to `limits`.
    pub fn new(listener: TcpListener, limits: ConnectionLimits) -> Self {
        Self::counted(listener, Admission::new(limits))
    }

    /// Accepts from `listener` within the limits and counts of another
    /// `GuardedIncoming`, whose [`GuardedIncoming::connections`] is
    /// `gauge`: one budget for a server listening on several sockets
    /// (IPv4 and IPv6, say), where each would otherwise get its own.
    pub fn sharing(listener: TcpListener, gauge: &ConnectionGauge) -> Self {
        Self::counted(listener, gauge.0.clone())
    }

    /// Accepts from `listener`, counting in `admission`.
    pub(super) fn counted(listener: TcpListener, admission: Arc<Admission>) -> Self {
        Self {
            listener,
            backoff: None,
            next_delay: ACCEPT_BACKOFF_MIN,
            admission,
            refusals: Throttle::default(),
        }
    }
}

impl GuardedIncoming {
    /// A live view of the connections held and refused, for metrics.
    pub fn connections(&self) -> ConnectionGauge {
        ConnectionGauge(self.admission.clone())
    }
}

impl Stream for GuardedIncoming {
    type Item = Result<Accepted, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(wait) = self.backoff.as_mut() {
                ready!(wait.as_mut().poll(cx));
                self.backoff = None;
            }
            match ready!(self.listener.poll_accept(cx)) {
                Ok((stream, peer)) => {
                    self.next_delay = ACCEPT_BACKOFF_MIN;
                    let slot = match self.admission.admit(peer.ip()) {
                        Ok(slot) => slot,
                        Err(refusal) => {
                            // Dropping the stream closes it.
                            throttled!(
                                self.refusals,
                                warn,
                                %peer,
                                %refusal,
                                "closing a new connection"
                            );
                            continue;
                        }
                    };
                    // Small answers must not wait for a delayed ACK.
                    let _ = stream.set_nodelay(true);
                    return Poll::Ready(Some(Ok(Accepted::new(stream, slot))));
                }
                // Never yielded to tonic, which would retry at once.
                Err(error) => {
                    let delay = self.next_delay;
                    tracing::warn!(%error, retry_in = ?delay, "accepting a connection failed");
                    self.backoff = Some(Box::pin(sleep(delay)));
                    self.next_delay = (delay * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }
}

/// A connection from [`GuardedIncoming`]: it fails its reads if its first 24
/// bytes do not arrive within [`HANDSHAKE_TIMEOUT`], and holds its place
/// under the connection limits until dropped.
pub struct Accepted {
    stream: TcpStream,
    /// Until the preface's length has been read.
    deadline: Option<Pin<Box<Sleep>>>,
    read: usize,
    _slot: Slot,
}

impl Accepted {
    fn new(stream: TcpStream, slot: Slot) -> Self {
        Self {
            stream,
            deadline: Some(Box::pin(sleep(HANDSHAKE_TIMEOUT))),
            read: 0,
            _slot: slot,
        }
    }
}

impl AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if this.deadline.is_some() {
                    this.read += buf.filled().len() - before;
                    if this.read >= PREFACE_BYTES {
                        this.deadline = None;
                    }
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                tracing::debug!(
                    peer = ?this.stream.peer_addr().ok(),
                    "closing a connection that did not start its handshake in time"
                );
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection did not start its handshake in time",
                )))
            }
        }
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for Accepted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}
