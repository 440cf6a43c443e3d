//! `cosystem-worker client`: `state`, `watch` and `call` against a host.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Subcommand};
use cosystem_worker::app::MethodError;
use cosystem_worker::client::{CallOptions, Client, ClientConfig, ClientEvent, Connection};
use cosystem_worker::transport::framed::{SpawnConnector, TcpConnector, UnixConnector};
use cosystem_worker::transport::grpc::GrpcConnector;
use cosystem_worker::transport::{ClientLink, Connector, TransportError};
use cosystem_worker::wire::ErrorCode;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use super::endpoint::{Endpoint, GrpcAddr};
use super::{CliError, read_file, read_token};

/// `client` options.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The host: HOST:PORT or http(s)://HOST:PORT (gRPC); tcp://HOST:PORT or
    /// unix:PATH (length-prefixed frames).
    #[arg(
        long,
        value_name = "ENDPOINT",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    connect: Endpoint,
    /// Start this host command (e.g. 'cosystem-worker host --stdio') and talk
    /// to it over its stdin/stdout; it is stopped when the client exits. The
    /// command is split into words as a shell would (quotes, backslashes),
    /// with nothing expanded. A command that exits with a non-zero status
    /// before speaking is an error at once (exit 3); one that dies
    /// otherwise is started again.
    #[arg(
        long,
        value_name = "COMMAND",
        conflicts_with = "connect",
        global = true
    )]
    spawn: Option<String>,
    /// Send `authorization: Bearer <token>` with the token read from this
    /// file (surrounding whitespace ignored).
    #[arg(long, value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Trust only this PEM certificate (a CA or the host's own) for
    /// https://; without it, the system's trust store.
    #[arg(long, value_name = "FILE", global = true)]
    ca_cert: Option<PathBuf>,
    /// Present this PEM client certificate to a host that requires mutual
    /// TLS (needs --tls-client-key).
    #[arg(long, value_name = "FILE", global = true, requires = "tls_client_key")]
    tls_client_cert: Option<PathBuf>,
    /// The PEM private key of --tls-client-cert.
    #[arg(long, value_name = "FILE", global = true, requires = "tls_client_cert")]
    tls_client_key: Option<PathBuf>,
    /// Give up if the host is not reached, or a call not settled, within
    /// this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, global = true)]
    timeout: f64,
    #[command(subcommand)]
    command: ClientCommand,
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Print the published state once: {"version":N,"epoch":"…","state":{…}}.
    State,
    /// Print {"version":N,"epoch":"…","value":…} for every version, until
    /// interrupted. A new epoch means the host restarted: versions start
    /// again.
    Watch {
        /// RFC 6901 JSON Pointer into the state ("" for all of it).
        #[arg(default_value = "")]
        pointer: String,
    },
    /// Call MODULE.METHOD with JSON arguments; print {"value":…,"version":N}.
    Call {
        /// The module.
        module: String,
        /// The method.
        method: String,
        /// Positional arguments, each one JSON value (a string is "\"text\"").
        #[arg(allow_negative_numbers = true, value_name = "ARG_JSON")]
        args: Vec<String>,
    },
}

/// Runs a client command.
pub async fn run(args: ClientArgs) -> Result<(), CliError> {
    let timeout = timeout(args.timeout)?;
    // Checked before connecting: bad input never waits for the network.
    let call_args = match &args.command {
        ClientCommand::Call { args, .. } => parse_args(args)?,
        _ => Vec::new(),
    };
    if let ClientCommand::Watch { pointer } = &args.command
        && !(pointer.is_empty() || pointer.starts_with('/'))
    {
        return Err(CliError::Usage(format!(
            "{pointer:?} is not a JSON Pointer (it starts with \"/\", or is \"\" for the whole state)"
        )));
    }
    let endpoint = Endpoint::for_client(args.connect.clone(), args.spawn.as_deref())?;
    let (connector, url): (Box<dyn Connector>, String) = match &endpoint {
        Endpoint::Grpc(addr) => {
            let connector = grpc_connector(addr, &args, timeout)?;
            let url = connector.url().to_owned();
            (Box::new(connector), url)
        }
        Endpoint::Tcp(authority) => {
            grpc_only(&args)?;
            (
                Box::new(TcpConnector::new(authority.clone())),
                endpoint.to_string(),
            )
        }
        Endpoint::Unix(path) => {
            grpc_only(&args)?;
            (
                Box::new(UnixConnector::new(path.clone())),
                endpoint.to_string(),
            )
        }
        Endpoint::Spawn(words) => {
            grpc_only(&args)?;
            let (program, rest) = words
                .split_first()
                .ok_or_else(|| CliError::Usage("--spawn needs a command".into()))?;
            (
                Box::new(SpawnConnector::new(program, rest)),
                endpoint.to_string(),
            )
        }
        Endpoint::Stdio => return Err(endpoint.not_supported()),
    };
    let last_error = Arc::new(Mutex::new(None));
    let client = Client::new(
        Recording {
            inner: connector,
            last_error: last_error.clone(),
        },
        ClientConfig::default(),
    );
    let mut events = client.events();
    match tokio::time::timeout(timeout, client.ready()).await {
        Ok(Ok(())) => {}
        Ok(Err(error))
            if matches!(
                error.code,
                ErrorCode::PermissionDenied | ErrorCode::Unavailable
            ) =>
        {
            return Err(CliError::Refused(error));
        }
        Ok(Err(error)) => return Err(CliError::settled(error)),
        Err(_) => {
            return Err(CliError::Unreachable {
                url,
                seconds: timeout.as_secs_f64(),
                last: last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            });
        }
    }
    let result = match args.command {
        ClientCommand::State => state(&client),
        ClientCommand::Watch { pointer } => watch(&client, &mut events, &pointer).await,
        ClientCommand::Call { module, method, .. } => {
            call(&client, &module, &method, call_args, timeout).await
        }
    };
    client.dispose();
    // The process exits next: let the link close in order first.
    let _ = tokio::time::timeout(cosystem_worker::client::CLOSE_GRACE * 2, client.closed()).await;
    match result {
        // The reader went away (`| head -1`): nothing left to do.
        Err(CliError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn timeout(seconds: f64) -> Result<Duration, CliError> {
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--timeout {seconds}: give a positive number of seconds"
            ))
        })
}

fn parse_args(args: &[String]) -> Result<Vec<Value>, CliError> {
    args.iter()
        .enumerate()
        .map(|(i, text)| {
            serde_json::from_str(text).map_err(|e| {
                CliError::Usage(format!(
                    "argument {} is not JSON ({e}): {text:?} (quote strings: '\"text\"')",
                    i + 1
                ))
            })
        })
        .collect()
}

fn grpc_connector(
    addr: &GrpcAddr,
    args: &ClientArgs,
    timeout: Duration,
) -> Result<GrpcConnector, CliError> {
    let mut connector = GrpcConnector::new(addr.url())?.connect_timeout(timeout);
    if let Some(path) = &args.token_file {
        connector = connector.token(read_token(path)?);
    }
    if let Some(path) = &args.ca_cert {
        if addr.tls != Some(true) {
            return Err(CliError::Usage("--ca-cert needs an https:// host".into()));
        }
        connector = connector.ca_cert(read_file(path)?);
    }
    if let (Some(cert), Some(key)) = (&args.tls_client_cert, &args.tls_client_key) {
        if addr.tls != Some(true) {
            return Err(CliError::Usage(
                "--tls-client-cert needs an https:// host".into(),
            ));
        }
        connector = connector.identity(read_file(cert)?, read_file(key)?);
    }
    // Reports a bad token or certificate now rather than as retried
    // connection failures.
    connector.endpoint()?;
    Ok(connector)
}

/// Refuses the gRPC-only options on framed transports.
fn grpc_only(args: &ClientArgs) -> Result<(), CliError> {
    if args.token_file.is_some() || args.ca_cert.is_some() || args.tls_client_cert.is_some() {
        return Err(CliError::Usage(
            "--token-file, --ca-cert and --tls-client-cert apply to gRPC only".into(),
        ));
    }
    Ok(())
}

/// Remembers the last connection error, to say why a host was unreachable:
/// a failed connect's, or the error a link ended with before the host was
/// ready (a `--spawn` child that exits at once connects fine, and only its
/// link's end says how it exited).
struct Recording {
    inner: Box<dyn Connector>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl Connector for Recording {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        let last_error = self.last_error.clone();
        self.inner
            .connect()
            .map(move |result| {
                let record = move |error: &TransportError| {
                    *last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
                };
                match result {
                    Ok(ClientLink { sink, stream }) => Ok(ClientLink {
                        sink,
                        stream: Box::pin(stream.inspect(move |item| {
                            // Lost envelopes do not end a link.
                            if let Err(error) = item
                                && !matches!(error, TransportError::Lost { .. })
                            {
                                record(error);
                            }
                        })),
                    }),
                    Err(error) => {
                        record(&error);
                        Err(error)
                    }
                }
            })
            .boxed()
    }
}

fn emit(line: &impl Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string(line).map_err(|e| CliError::Io(e.into()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

#[derive(Serialize)]
struct StateLine<'a> {
    version: u64,
    epoch: &'a str,
    state: &'a Value,
}

fn state(client: &Client) -> Result<(), CliError> {
    let mirror = client
        .mirror()
        .ok_or_else(|| CliError::Usage("the client has no state".into()))?;
    emit(&StateLine {
        version: mirror.version,
        epoch: &mirror.epoch,
        state: &mirror.state,
    })
}

#[derive(Serialize)]
struct WatchLine<'a> {
    version: u64,
    epoch: &'a str,
    value: &'a Value,
}

/// Prints the value at `pointer` for each version the mirror reaches (a
/// version skipped by a coalescing snapshot is not printed), until Ctrl-C.
async fn watch(
    client: &Client,
    events: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
    pointer: &str,
) -> Result<(), CliError> {
    let mut last: Option<(String, u64)> = None;
    let print_current = |last: &mut Option<(String, u64)>| -> Result<(), CliError> {
        let Some(mirror) = client.mirror() else {
            return Ok(());
        };
        let key = (mirror.epoch, mirror.version);
        if last.as_ref() == Some(&key) {
            return Ok(());
        }
        let value = mirror.state.pointer(pointer).unwrap_or(&Value::Null);
        emit(&WatchLine {
            version: key.1,
            epoch: &key.0,
            value,
        })?;
        *last = Some(key);
        Ok(())
    };
    print_current(&mut last)?;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    // A client that stops for good (the host now refuses its token) sends
    // no more events; without watching for it, `watch` would wait for ever.
    let mut connection = client.connection_changes();
    // The client may have stopped before this subscription, which sees only
    // later changes: mark the current state as news once.
    connection.mark_changed();
    // Whether the link was lost and not found again: said once on stderr,
    // not per attempt, so that a watch that has gone quiet says why.
    let mut lost = false;
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            _ = connection.changed() => match &*connection.borrow_and_update() {
                Connection::Stopped { error: Some(error) } => {
                    return Err(CliError::Refused(MethodError::new(
                        error.stop_code(),
                        error.to_string(),
                    )));
                }
                Connection::Retrying { error, .. } if !lost => {
                    lost = true;
                    let why = error.as_ref().map_or_else(|| "the host ended the link".to_owned(), ToString::to_string);
                    tracing::warn!("lost the host ({why}); reconnecting until it is back");
                }
                Connection::Connected if lost => {
                    lost = false;
                    tracing::info!("reconnected");
                }
                _ => {}
            },
            event = events.recv() => match event {
                Ok(ClientEvent::StateChanged { .. } | ClientEvent::Ready { .. })
                | Err(RecvError::Lagged(_)) => print_current(&mut last)?,
                Ok(_) => {}
                Err(RecvError::Closed) => return Ok(()),
            },
        }
    }
}

#[derive(Serialize)]
struct CallLine<'a> {
    value: &'a Value,
    version: Option<u64>,
}

async fn call(
    client: &Client,
    module: &str,
    method: &str,
    args: Vec<Value>,
    timeout: Duration,
) -> Result<(), CliError> {
    let settled = client
        .call_with(
            module,
            method,
            args,
            CallOptions {
                timeout: Some(timeout),
            },
        )
        .with_version()
        .await;
    match settled.outcome {
        Ok(value) => emit(&CallLine {
            value: &value,
            version: settled.state_version,
        }),
        Err(error) if stopped_by_link(client, &error) => Err(CliError::Refused(error)),
        // A method's own `permission-denied` (or `unavailable`) is its
        // answer, like any other error code: the host was reached and
        // accepted the credentials.
        Err(error) => Err(CliError::settled(error)),
    }
}

/// Whether `error` is the client's link stopping for good (the host now
/// refusing the token, a `--spawn` command that fails at once) rather than
/// the method's answer: the client is `Stopped` by a transport error whose
/// code the call settled with.
fn stopped_by_link(client: &Client, error: &MethodError) -> bool {
    matches!(
        client.connection(),
        Connection::Stopped { error: Some(stop) } if stop.stop_code() == error.code
    )
}
