//! Client connectors over byte streams.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::process::{Child, ChildStdout, Command};

use super::{FramedConfig, client_link, host_link};
use crate::transport::{ClientLink, Connector, HostLink, TransportError};

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
/// exits ends the link, so the client reconnects to a fresh child, under a
/// new epoch. A program that cannot be started at all (missing, not
/// executable) is [`TransportError::Closed`]: retrying would not help.
#[derive(Debug, Clone)]
pub struct SpawnConnector {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    config: FramedConfig,
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
            let reader = ChildReader {
                stdout,
                _child: child,
            };
            Ok(client_link(reader, stdin, config))
        }
        .boxed()
    }
}

/// A child's stdout that owns the child, so dropping the link kills it.
struct ChildReader {
    stdout: ChildStdout,
    _child: Child,
}

impl AsyncRead for ChildReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stdout).poll_read(cx, buf)
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
