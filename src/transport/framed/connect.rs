//! Client connectors over byte streams.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, Sink, StreamExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::process::{Child, Command};

use super::{FramedConfig, client_link, host_link};
use crate::transport::{
    BoxSink, BoxStream, ClientLink, Connector, HostInput, HostLink, TransportError,
};
use crate::wire::ClientMessage;

fn connection_error(what: &str, error: &io::Error) -> TransportError {
    TransportError::Connection(format!("{what}: {error}"))
}

/// Connects to a host serving frames over TCP ([`super::serve_tcp`]). Every
/// connect resolves the address again and opens a new connection.
#[derive(Debug, Clone)]
pub struct TcpConnector {
    address: String,
    config: FramedConfig,
}

impl TcpConnector {
    /// A connector to `address` (`host:port`), with default framing.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            config: FramedConfig::default(),
        }
    }

    /// With other framing settings.
    pub fn with_config(mut self, config: FramedConfig) -> Self {
        self.config = config;
        self
    }
}

impl Connector for TcpConnector {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        let address = self.address.clone();
        let config = self.config;
        async move {
            let stream = TcpStream::connect(&address)
                .await
                .map_err(|e| connection_error(&format!("tcp {address}"), &e))?;
            super::serve::tune(&stream);
            let (reader, writer) = stream.into_split();
            Ok(client_link(reader, writer, config))
        }
        .boxed()
    }
}

/// Connects to a host serving frames on a Unix domain socket
/// ([`super::serve_unix`]).
#[derive(Debug, Clone)]
pub struct UnixConnector {
    path: PathBuf,
    config: FramedConfig,
}

impl UnixConnector {
    /// A connector to the socket at `path`, with default framing.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            config: FramedConfig::default(),
        }
    }

    /// With other framing settings.
    pub fn with_config(mut self, config: FramedConfig) -> Self {
        self.config = config;
        self
    }
}

impl Connector for UnixConnector {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        let path = self.path.clone();
        let config = self.config;
        async move {
            let stream = UnixStream::connect(&path)
                .await
                .map_err(|e| connection_error(&format!("unix {}", path.display()), &e))?;
            let (reader, writer) = stream.into_split();
            Ok(client_link(reader, writer, config))
        }
        .boxed()
    }
}

/// Spawns a host process and speaks frames over its stdin and stdout (the
/// analogue of starting a worker script). The child's stderr is inherited.
///
/// Each connect spawns a new child; the child is killed when its link is
/// dropped (when the client is disposed or the link fails). A child that
/// exits ends the link, and the link's error says how it exited (`host
/// command … exited with status 2`, `… was killed by signal 9`), so that a
/// client that gives up can say why. What happens next depends on when:
///
/// - A child that exits with a non-zero status before sending a single
///   frame, when no child of this connector has ever sent one, is
///   [`TransportError::Setup`], and the client stops: it failed before
///   speaking the protocol (a bad argument or configuration, a program that
///   is not a host), and a fresh child would fail the same way, so
///   respawning it would only repeat the failure. Once a child has spoken,
///   the command is known to work, and a later child's early failure is
///   taken as passing.
/// - Any other exit (a child killed by a signal, one that exits after it
///   has spoken, or exits 0 without a word) is
///   [`TransportError::Connection`], and the client reconnects to a fresh
///   child, under a new epoch. A child that exits 0 after it has spoken
///   ended the link cleanly (the stream just ends).
///
/// A program that cannot be started at all (missing, not executable) is
/// [`TransportError::Setup`] too.
#[derive(Debug, Clone)]
pub struct SpawnConnector {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    config: FramedConfig,
    /// Whether any child this connector (or a clone) started has sent a
    /// frame.
    ever_spoke: Arc<AtomicBool>,
}

impl SpawnConnector {
    /// A connector that runs `program` with `args`.
    pub fn new<I, S>(program: impl Into<OsString>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            envs: Vec::new(),
            config: FramedConfig::default(),
            ever_spoke: Arc::default(),
        }
    }

    /// Sets an environment variable for the child (e.g. its log level).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// With other framing settings.
    pub fn with_config(mut self, config: FramedConfig) -> Self {
        self.config = config;
        self
    }
}

impl Connector for SpawnConnector {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        let spawned = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn();
        let config = self.config;
        let program = self.program.to_string_lossy().into_owned();
        let ever_spoke = self.ever_spoke.clone();
        async move {
            let mut child = spawned.map_err(|e| match e.kind() {
                // Retrying cannot help, and the application is told why.
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => {
                    TransportError::Setup(format!("cannot start {program}: {e}"))
                }
                _ => connection_error(&format!("spawn {program}"), &e),
            })?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(TransportError::Connection(format!(
                    "spawn {program}: no stdio pipes"
                )));
            };
            let child = Arc::new(SpawnedChild {
                child: tokio::sync::Mutex::new(child),
                program,
                spoke: AtomicBool::new(false),
                ever_spoke,
            });
            let ClientLink { sink, stream } = client_link(stdout, stdin, config);
            Ok(ClientLink {
                sink: Box::pin(ChildSink {
                    inner: sink,
                    child: child.clone(),
                    failing: None,
                }),
                stream: child_stream(stream, child),
            })
        }
        .boxed()
    }
}

/// How long a link whose child closed its stdout (or stdin) waits for the
/// child to exit, to say how it did. A child still running after it, with
/// its stdout closed, ends the link as before and is killed with it.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// A spawned host, shared by its link's two halves: whichever sees the link
/// fail first asks it how it ended. It is killed when both halves are
/// dropped (`kill_on_drop`).
struct SpawnedChild {
    child: tokio::sync::Mutex<Child>,
    program: String,
    /// Whether a frame has come from the child.
    spoke: AtomicBool,
    /// Whether a frame has come from any child of the same connector.
    ever_spoke: Arc<AtomicBool>,
}

impl SpawnedChild {
    /// The error the link ends with, now that the child's stdout closed
    /// (`error` is `None`) or a pipe to it broke (`error`): the child's exit
    /// status if it exits within [`EXIT_WAIT`], else `error` unchanged. See
    /// [`SpawnConnector`] for which exits are retried.
    async fn ended(&self, error: Option<TransportError>) -> Option<TransportError> {
        let status = {
            let mut child = self.child.lock().await;
            tokio::time::timeout(EXIT_WAIT, child.wait())
                .await
                .ok()
                .and_then(Result::ok)
        };
        let Some(status) = status else {
            return error;
        };
        let spoke = self.spoke.load(Ordering::Acquire);
        if spoke && status.success() {
            return error;
        }
        let what = format!("host command {} {}", self.program, exited(status));
        Some(match status.code() {
            Some(code) if code != 0 && !spoke && !self.ever_spoke.load(Ordering::Acquire) => {
                TransportError::Setup(format!("{what} before speaking the protocol"))
            }
            _ => TransportError::Connection(what),
        })
    }
}

/// How a child ended, for an error message.
fn exited(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("was killed by signal {signal}");
        }
    }
    format!("ended ({status})")
}

/// The link's stream from `child`: its frames, then, when its stdout closes
/// or breaks, the error [`SpawnedChild::ended`] makes of the exit.
fn child_stream(inner: BoxStream<HostInput>, child: Arc<SpawnedChild>) -> BoxStream<HostInput> {
    Box::pin(futures::stream::unfold(Some(inner), move |inner| {
        let child = child.clone();
        async move {
            let mut inner = inner?;
            match inner.next().await {
                Some(Ok(message)) => {
                    child.spoke.store(true, Ordering::Release);
                    child.ever_spoke.store(true, Ordering::Release);
                    Some((Ok(message), Some(inner)))
                }
                // A broken pipe: the child is likely gone.
                Some(Err(error @ TransportError::Connection(_))) => {
                    let error = child.ended(Some(error)).await?;
                    Some((Err(error), None))
                }
                // Frames the child sent that are not ours: its exit is not
                // the story (and it may not exit at all).
                Some(Err(error)) => Some((Err(error), Some(inner))),
                None => {
                    let error = child.ended(None).await?;
                    Some((Err(error), None))
                }
            }
        }
    }))
}

/// The link's sink to `child`'s stdin: a write that fails because the
/// child is gone fails with how it ended, as the stream would.
struct ChildSink {
    inner: BoxSink<ClientMessage>,
    child: Arc<SpawnedChild>,
    failing: Option<Failing>,
}

enum Failing {
    /// Waiting for the child's exit status.
    Asking(BoxFuture<'static, TransportError>),
    /// The error the sink fails with from now on.
    Failed(TransportError),
}

impl ChildSink {
    /// Runs `step` on the inner sink; a broken pipe turns into the child's
    /// exit, once it is known.
    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        step: impl FnOnce(
            Pin<&mut (dyn Sink<ClientMessage, Error = TransportError> + Send)>,
            &mut Context<'_>,
        ) -> Poll<Result<(), TransportError>>,
    ) -> Poll<Result<(), TransportError>> {
        if self.failing.is_none() {
            match step(self.inner.as_mut(), cx) {
                // Waiting for the exit needs a runtime's timer; a caller
                // sending from a thread without one gets the pipe's error.
                Poll::Ready(Err(error @ TransportError::Connection(_)))
                    if tokio::runtime::Handle::try_current().is_err() =>
                {
                    return Poll::Ready(Err(error));
                }
                Poll::Ready(Err(error @ TransportError::Connection(_))) => {
                    let child = self.child.clone();
                    self.failing = Some(Failing::Asking(
                        async move {
                            let fallback = error.clone();
                            child.ended(Some(error)).await.unwrap_or(fallback)
                        }
                        .boxed(),
                    ));
                }
                other => return other,
            }
        }
        match &mut self.failing {
            Some(Failing::Asking(asking)) => {
                let error = std::task::ready!(asking.poll_unpin(cx));
                self.failing = Some(Failing::Failed(error.clone()));
                Poll::Ready(Err(error))
            }
            Some(Failing::Failed(error)) => Poll::Ready(Err(error.clone())),
            // Set above; a sink with nothing recorded has nothing to say.
            None => Poll::Ready(Err(TransportError::Closed)),
        }
    }
}

impl Sink<ClientMessage> for ChildSink {
    type Error = TransportError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_step(cx, |sink, cx| sink.poll_ready(cx))
    }

    fn start_send(self: Pin<&mut Self>, item: ClientMessage) -> Result<(), Self::Error> {
        let this = self.get_mut();
        match &this.failing {
            Some(Failing::Failed(error)) => Err(error.clone()),
            _ => this.inner.as_mut().start_send(item),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_step(cx, |sink, cx| sink.poll_flush(cx))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_step(cx, |sink, cx| sink.poll_close(cx))
    }
}

/// The client's end of a [`pipe`]. It connects once: a pipe cannot be
/// reopened.
pub struct PipeConnector(Mutex<Option<ClientLink>>);

impl Connector for PipeConnector {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        let link = self.0.lock().ok().and_then(|mut slot| slot.take());
        async move { link.ok_or(TransportError::Closed) }.boxed()
    }
}

/// A host link and a client connector joined by an in-process byte pipe:
/// the framed transport without a socket or a child process (tests, and
/// wherever two ends of one process must speak bytes).
pub fn pipe(config: FramedConfig) -> (HostLink, PipeConnector) {
    const PIPE_BUFFER: usize = 64 * 1024;
    let (host_io, client_io) = tokio::io::duplex(PIPE_BUFFER);
    let (host_reader, host_writer) = tokio::io::split(host_io);
    let (client_reader, client_writer) = tokio::io::split(client_io);
    (
        host_link(host_reader, host_writer, "pipe", config),
        PipeConnector(Mutex::new(Some(client_link(
            client_reader,
            client_writer,
            config,
        )))),
    )
}
