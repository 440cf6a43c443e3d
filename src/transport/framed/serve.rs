//! Serving a host over byte streams: one session per connection.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::task::AbortHandle;
use tokio_util::codec::FramedRead;

use super::budget::{FrameBudget, PARTIAL_FIRST_FRAMES_PER_LISTENER};
use super::codec::{CodecError, FrameCodec};
use super::refusal::refuse_http2;
use super::sniff::Foreign;
use super::{FramedConfig, host_link, host_link_over};
use crate::host::{Host, InputError, PeerOptions};
use crate::transport::TransportError;
use crate::transport::throttle::{Throttle, throttled};

/// The throttles of one listener's refusal lines, so that one listener's
/// refusals do not hide another's.
#[derive(Default)]
struct RefusalLogs {
    /// A client of another protocol: unlike other connections that never
    /// become sessions (logged at debug, since anyone can make them), it is
    /// most likely an operator's mistake (a gRPC client pointed at a framed
    /// listener), and it retries.
    foreign: Throttle,
    /// A client refused because the host is full: every refused client
    /// retries.
    full: Throttle,
}

/// How long the accept loop pauses after a failed accept (for instance when
/// the process is out of file descriptors), so it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How many connections accepted by one [`serve_tcp`] or [`serve_unix`]
/// listener may wait for their first frame at once. Without a bound,
/// connections that never finish a frame would take memory (each may
/// buffer up to a frame's length) and file descriptors without end for
/// the host's [`first_envelope_timeout`](crate::host::HostLimits::first_envelope_timeout) each.
///
/// When one more arrives, the one that has waited longest is closed, not
/// the newcomer: a client sends its first frame as it connects, so an
/// honest one waits here for a round trip at most, and is closed only if
/// this many connections arrive within that round trip. Closing newcomers
/// instead let anyone who kept this many silent connections open (a few
/// dozen new ones a second) lock every client out.
pub const MAX_WAITING: usize = 256;

/// Serves one session over `io` until the connection closes, breaks, sends
/// something that is not a frame of at most `config.max_frame_bytes`, or the
/// host shuts down.
///
/// The session opens at once and waits for the peer for as long as it
/// takes, as suits a stream from a trusted peer (a pipe to a parent or
/// child process). A connection accepted from a listener is served by
/// [`serve_tcp`] and [`serve_unix`] instead, which open its session only
/// once its first frame arrives within the host's
/// [`first_envelope_timeout`](crate::host::HostLimits::first_envelope_timeout).
pub async fn serve_stream<S>(
    host: Host,
    io: S,
    peer_id: impl Into<String>,
    config: FramedConfig,
) -> Result<(), InputError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(io);
    host.serve(host_link(reader, writer, peer_id, config)).await
}

/// Accepts TCP connections and serves each as its own session, with frames
/// up to the host's max message size. A connection's session opens when its
/// first frame arrives; one that sends none within the host's
/// [`first_envelope_timeout`](crate::host::HostLimits::first_envelope_timeout) (10 s by
/// default) is closed. Runs until the host shuts down ([`Host::shutdown`]) or the
/// task is dropped; a failed accept is logged and retried, and a failed
/// session ends only itself. Fails at once, with `InvalidInput`, for a host
/// already shut down or built with a capability token (spec FB8).
///
/// The host is checked when this is called, not when the future is first
/// polled, so a host shut down after `tokio::spawn(serve_tcp(..))` ends the
/// listener cleanly however soon.
pub fn serve_tcp(
    host: Host,
    listener: TcpListener,
) -> impl Future<Output = io::Result<()>> + Send + 'static {
    checked_first(servable(&host), accept_tcp(host, listener))
}

/// `serve`, unless `checked`, the verdict on its host taken when the
/// listener was asked for, refused it.
async fn checked_first(
    checked: io::Result<()>,
    serve: impl Future<Output = io::Result<()>>,
) -> io::Result<()> {
    checked?;
    serve.await
}

/// [`serve_tcp`] for a host found servable.
async fn accept_tcp(host: Host, listener: TcpListener) -> io::Result<()> {
    let config = FramedConfig::for_host(&host);
    let waiting = WaitingList::new(config);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = host.closed() => return Ok(()),
        };
        match accepted {
            Ok((stream, address)) => {
                tune(&stream);
                spawn_session(&host, stream, address.to_string(), config, &waiting);
            }
            Err(error) => {
                tracing::warn!(%error, "tcp accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Refuses a host that has shut down (it opens no session again, and the
/// listener would end at once), and a host built with a shared channel's
/// capability token: it writes the token on everything it sends, and on a
/// framed stream `capability` MUST be `""` (spec FB8), so every client
/// would be handed it.
fn servable(host: &Host) -> io::Result<()> {
    let why = if host.is_shut_down() {
        crate::host::SHUT_DOWN_REFUSAL
    } else if host.carries_capability() {
        "the host carries a shared channel's capability token, which framed sessions must not be sent (spec FB8): serve framed streams from a host built without one"
    } else {
        return Ok(());
    };
    Err(io::Error::new(io::ErrorKind::InvalidInput, why))
}

/// How long a TCP session may be silent before the kernel probes it, and
/// then how often: a peer that vanished without closing (power loss, a
/// dropped route) is found and its session ended, instead of holding one
/// of the host's client slots, or a client's link, for good.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Socket options for a TCP session, on either end.
pub(super) fn tune(stream: &tokio::net::TcpStream) {
    // Envelopes are small and latency-sensitive.
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(%error, "cannot set TCP keepalive");
    }
}

/// Binds a Unix domain socket at `path` (see [`bind_unix`]) and serves it
/// like [`serve_tcp`].
pub fn serve_unix(
    host: Host,
    path: impl AsRef<Path>,
) -> impl Future<Output = io::Result<()>> + Send + 'static {
    // Checked before binding, so that a refusal leaves no socket file, and
    // at the call, as `serve_tcp` is.
    let checked = servable(&host);
    let path = path.as_ref().to_owned();
    async move {
        checked?;
        // Shut down since the call: serve nothing, and bind no socket.
        if host.is_shut_down() {
            return Ok(());
        }
        let listener = bind_unix(&path).await?;
        accept_unix(host, listener).await
    }
}

/// Serves connections accepted on an already bound Unix listener.
/// The host is checked when this is called, as in [`serve_tcp`].
pub fn serve_unix_listener(
    host: Host,
    listener: UnixListener,
) -> impl Future<Output = io::Result<()>> + Send + 'static {
    checked_first(servable(&host), accept_unix(host, listener))
}

/// [`serve_unix_listener`] for a host found servable.
async fn accept_unix(host: Host, listener: UnixListener) -> io::Result<()> {
    let config = FramedConfig::for_host(&host);
    let label = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
        .unwrap_or_else(|| "unix".to_owned());
    let waiting = WaitingList::new(config);
    // Every client of a Unix socket has the socket's own path for an
    // address: a number per connection tells their sessions apart in logs.
    let mut accepted_count: u64 = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = host.closed() => return Ok(()),
        };
        match accepted {
            Ok((stream, _)) => {
                accepted_count += 1;
                let peer = format!("{label}#{accepted_count}");
                spawn_session(&host, stream, peer, config, &waiting);
            }
            Err(error) => {
                tracing::warn!(%error, "unix accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Serves one session over the process's own stdin and stdout, until stdin
/// closes. Nothing else may write to stdout meanwhile: it carries frames.
pub async fn serve_stdio(host: Host) -> Result<(), InputError> {
    let config = FramedConfig::for_host(&host);
    let link = host_link(tokio::io::stdin(), tokio::io::stdout(), "stdio", config);
    host.serve(link).await
}

/// The connections of one listener that wait for their first frame,
/// oldest first, each with the handle that closes it (by ending its task).
#[derive(Clone)]
struct WaitingList {
    waiting: Arc<Mutex<Waiting>>,
    /// The listener's refusal log throttles, carried with its list.
    logs: Arc<RefusalLogs>,
    /// What the listener's sessions, and its connections still waiting
    /// for their first frame, may hold of frames in progress.
    budget: Arc<FrameBudget>,
    first_frame_budget: Arc<FrameBudget>,
}

#[derive(Default)]
struct Waiting {
    next: u64,
    tasks: VecDeque<(u64, AbortHandle)>,
}

impl WaitingList {
    /// The list of a listener reading frames of `config`'s size.
    fn new(config: FramedConfig) -> Self {
        Self {
            waiting: Arc::default(),
            logs: Arc::default(),
            budget: Arc::new(FrameBudget::per_listener(config.max_frame_bytes)),
            first_frame_budget: Arc::new(FrameBudget::new(
                config
                    .max_frame_bytes
                    .saturating_mul(PARTIAL_FIRST_FRAMES_PER_LISTENER),
            )),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        // The list stays consistent whatever a panicking holder did.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection's place on its listener's [`WaitingList`], given up when
/// its first frame arrives ([`WaitingSlot::promote`]) or its task ends,
/// however it ends.
struct WaitingSlot {
    id: u64,
    list: WaitingList,
}

impl WaitingSlot {
    /// Leaves the list because the first frame arrived: true, unless the
    /// connection was already closed to make room (its task is then being
    /// ended, and must not open a session). Under the list's lock, so a
    /// connection is either promoted or closed, never both.
    fn promote(self) -> bool {
        self.leave()
    }

    fn leave(&self) -> bool {
        let mut waiting = self.list.lock();
        let at = waiting.tasks.iter().position(|(id, _)| *id == self.id);
        at.and_then(|at| waiting.tasks.remove(at)).is_some()
    }
}

impl Drop for WaitingSlot {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Serves an accepted connection on its own task (see [`serve_accepted`]),
/// first closing the connection that has waited longest for its first
/// frame if [`MAX_WAITING`] already wait.
fn spawn_session<S>(
    host: &Host,
    stream: S,
    peer: String,
    config: FramedConfig,
    waiting: &WaitingList,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    // Held while spawning, so that the task cannot give up its place
    // before it has one.
    let mut list = waiting.lock();
    if list.tasks.len() >= MAX_WAITING
        && let Some((_, oldest)) = list.tasks.pop_front()
    {
        tracing::debug!(%peer, "closing the connection that has waited longest for a first frame");
        oldest.abort();
    }
    let id = list.next;
    list.next += 1;
    let slot = WaitingSlot {
        id,
        list: waiting.clone(),
    };
    let task = tokio::spawn(serve_accepted(host.clone(), stream, peer, config, slot));
    list.tasks.push_back((id, task.abort_handle()));
}

/// Serves a connection accepted from a listener as one session, which opens
/// only once the peer's first complete non-empty frame has arrived within
/// the host's first-envelope deadline. A connection that closes, fails or
/// runs out of time before then is dropped (closed) without ever having
/// had a session (spec FB6).
///
/// So a connection that stays silent, sends part of a length prefix or of
/// a frame and then nothing, or sends only empty frames, never takes one
/// of the host's client slots, and is gone after the deadline: without it,
/// `max_clients` such sockets would lock every real client out for as
/// long as they stayed open (TCP keepalive probes are answered by the
/// peer's kernel, so they never end it).
///
/// Later frames have no deadline, which would cut off an honest client
/// sending a large frame over a slow link. What a peer that starts a
/// large frame and never finishes it holds is bounded instead by its
/// listener's budgets for frames in progress
/// ([`PARTIAL_FRAMES_PER_LISTENER`](super::PARTIAL_FRAMES_PER_LISTENER)
/// frames of the limit shared by its sessions, and
/// [`PARTIAL_FIRST_FRAMES_PER_LISTENER`](super::PARTIAL_FIRST_FRAMES_PER_LISTENER)
/// apart, by its connections still waiting for their first frame).
async fn serve_accepted<S>(
    host: Host,
    stream: S,
    peer: String,
    config: FramedConfig,
    waiting: WaitingSlot,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let logs = waiting.list.logs.clone();
    let deadline = host.limits().first_envelope_timeout;
    let session_budget = waiting.list.budget.clone();
    let (reader, writer) = tokio::io::split(stream);
    let codec = FrameCodec::with_budget(
        config.max_frame_bytes,
        waiting.list.first_frame_budget.clone(),
    );
    let mut frames = FramedRead::new(reader, codec);
    // Empty frames (FB2) do not count: otherwise four zero bytes would open
    // a session and hold a client slot past the deadline.
    let first_envelope = async {
        loop {
            match frames.next().await {
                Some(Ok(frame)) if frame.is_empty() => continue,
                other => break other,
            }
        }
    };
    // Connections that never become sessions log at debug, since anyone
    // who can connect can make as many as they like; only a client of
    // another protocol, most likely misdirected, is told at info.
    // A stopping host closes every connection (FB6), including those that
    // would otherwise wait out their deadline.
    let waited = tokio::select! {
        waited = tokio::time::timeout(deadline, first_envelope) => waited,
        () = host.closed() => {
            tracing::debug!(%peer, "closing a connection waiting for its first frame: the host is stopping");
            return;
        }
    };
    let first = match waited {
        Ok(Some(Ok(frame))) => frame,
        Ok(Some(Err(error @ CodecError::Foreign(foreign)))) => {
            throttled!(
                logs.foreign,
                info,
                %peer,
                %error,
                "closing a connection that speaks another protocol: this listener serves framed clients (spec §17.3)"
            );
            if foreign == Foreign::Http2Client {
                refuse_http2(frames.into_inner(), writer).await;
            }
            return;
        }
        Ok(Some(Err(error))) => {
            let error = TransportError::from(error);
            tracing::debug!(%peer, %error, "closing a connection before its first frame");
            return;
        }
        Ok(None) => {
            tracing::debug!(%peer, "connection closed before its first frame");
            return;
        }
        Err(_) => {
            tracing::debug!(
                %peer,
                timeout = ?deadline,
                "closing a connection that sent no complete frame in time"
            );
            return;
        }
    };
    if !waiting.promote() {
        tracing::debug!(%peer, "closing a connection closed to make room as its first frame arrived");
        return;
    }
    frames.decoder_mut().set_budget(session_budget);
    // The frame read goes first, then the rest of the same reader: bytes
    // after it that arrived with it are still in `frames`' buffer.
    let frames = futures::stream::iter([Ok(first)]).chain(frames);
    let link = host_link_over(frames, writer, peer.clone(), config);
    let options = PeerOptions {
        peer_id: peer.clone(),
        publications: true,
    };
    let session = match host.open_session_as_async(options, None).await {
        Ok(session) => session,
        // Closed without a word: no envelope says "full", and the client
        // backs off and retries as after any lost connection (spec FB6).
        Err(InputError::TooManyClients { limit }) => {
            throttled!(
                logs.full,
                warn,
                %peer,
                limit,
                "refusing a client: the host is at its limit of clients"
            );
            return;
        }
        Err(error) => {
            tracing::debug!(%peer, %error, "refusing a client");
            return;
        }
    };
    let lines = &host.session_logs().comings_and_goings;
    throttled!(lines, info, %peer, sessions = session.sessions_at_open(), "client connected");
    match host.serve_session(session, link).await {
        Ok(()) => throttled!(lines, info, %peer, "client disconnected"),
        // Named here too: the session's own warning is throttled per host,
        // so another peer's mistakes may have held it back.
        Err(error) => throttled!(
            lines,
            info,
            %peer,
            %error,
            "client disconnected: the host closed the session"
        ),
    }
}

/// Binds a Unix domain socket listener at `path`. A socket file left behind
/// by a host that is gone is replaced; one that a live host still listens
/// on is an `AddrInUse` error, and any other file is left alone.
pub async fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Err(error) if error.kind() == io::ErrorKind::AddrInUse => {
            // Only a socket nobody answers on is stale.
            if UnixStream::connect(path).await.is_ok() {
                return Err(error);
            }
            let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_socket()
            });
            if !is_socket {
                return Err(error);
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_accepted_session_is_probed_when_idle_and_sends_without_delay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(address).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        tune(&stream);
        let socket = socket2::SockRef::from(&stream);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert!(stream.nodelay().unwrap());
    }
}
