//! `cosystem-worker host`: serves the demo app.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use cosystem_worker::demo;
use cosystem_worker::host::{Host, HostLimits, SyncMode};
use cosystem_worker::transport::framed;
use cosystem_worker::transport::grpc::{
    ConnectionGauge, ConnectionLimits, DEFAULT_MAX_CONNECTIONS, GrpcServer,
};
use tokio::net::TcpListener;

use super::endpoint::{Endpoint, GrpcAddr};
use super::open_files;
use super::signals::ShutdownSignals;
use super::{CliError, read_file, read_token};

/// `host` options. Each option but `--stdio` may also come from the
/// environment variable named in its help (`COSYSTEM_WORKER_` and the
/// option's name), for deployments configured that way; a flag on the
/// command line wins over the variable, and `--stdio` over
/// `COSYSTEM_WORKER_LISTEN` ([`check_stdio`]).
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Where to listen: HOST:PORT or http(s)://HOST:PORT (gRPC);
    /// tcp://HOST:PORT or unix:PATH (length-prefixed frames).
    #[arg(
        long,
        value_name = "ENDPOINT",
        default_value = "127.0.0.1:50051",
        env = "COSYSTEM_WORKER_LISTEN"
    )]
    listen: Endpoint,
    /// Serve one client on stdin/stdout (length-prefixed frames) instead of
    /// listening; exits when stdin closes. It cannot be combined with
    /// --listen, but overrides COSYSTEM_WORKER_LISTEN, and ignores the
    /// variables of the gRPC-only options (token, TLS, connection limits).
    // Not `conflicts_with = "listen"`: clap would count the variable too,
    // and a shell that exports it for its gRPC hosts could then start no
    // `host --stdio`, nor could `client --spawn`, whose child inherits it.
    // `check_stdio` refuses only a `--listen` on the command line.
    #[arg(long)]
    stdio: bool,
    /// How commits are published: patch or snapshot.
    #[arg(
        long,
        value_name = "MODE",
        default_value = "patch",
        env = "COSYSTEM_WORKER_SYNC"
    )]
    sync: SyncMode,
    /// Modules whose state is published, comma-separated; the others stay
    /// private to the host (calls still reach them).
    #[arg(
        long,
        value_name = "MODULES",
        value_delimiter = ',',
        default_value = "counter,todos",
        env = "COSYSTEM_WORKER_SECTIONS"
    )]
    sections: Vec<String>,
    /// Require `authorization: Bearer <token>`, with the token read from
    /// this file (surrounding whitespace ignored).
    #[arg(long, value_name = "FILE", env = "COSYSTEM_WORKER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Serve TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "FILE", env = "COSYSTEM_WORKER_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", env = "COSYSTEM_WORKER_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Require mutual TLS: every client must present a certificate issued
    /// by this PEM CA certificate (needs --tls-cert).
    #[arg(long, value_name = "FILE", env = "COSYSTEM_WORKER_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// The initial value of the demo's private `secret` module (default:
    /// random).
    #[arg(
        long,
        value_name = "S",
        env = "COSYSTEM_WORKER_SECRET_TOKEN",
        hide_env_values = true
    )]
    secret_token: Option<String>,
    /// Sessions served at once; more are refused RESOURCE_EXHAUSTED
    /// (default: 10000).
    #[arg(long, value_name = "N", env = "COSYSTEM_WORKER_MAX_CLIENTS")]
    max_clients: Option<usize>,
    /// TCP connections held at once; more are closed as soon as they are
    /// accepted (gRPC only; default: 16384, or --max-clients + 1024 if
    /// that is more).
    #[arg(long, value_name = "N", env = "COSYSTEM_WORKER_MAX_CONNECTIONS")]
    max_connections: Option<NonZeroUsize>,
    /// TCP connections held at once from one client address, IPv6 counted
    /// by /64 (gRPC only; default: no limit, as clients behind a proxy or
    /// NAT share one).
    #[arg(
        long,
        value_name = "N",
        env = "COSYSTEM_WORKER_MAX_CONNECTIONS_PER_ADDRESS"
    )]
    max_connections_per_address: Option<NonZeroUsize>,
    /// Serve the host's metrics in the Prometheus text format at
    /// http://HOST:PORT/metrics (plain HTTP/1.1; default: not served).
    #[arg(long, value_name = "HOST:PORT", env = "COSYSTEM_WORKER_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// The environment variables that set gRPC-only options, for the error
    /// that refuses them on a framed endpoint ([`settle_grpc_only_env`]).
    #[arg(skip)]
    grpc_only_env: Vec<&'static str>,
    /// Runtime worker threads, at most 1024; 0 serves everything on one
    /// thread. Default: one per core.
    #[arg(
        long,
        value_name = "N",
        env = "COSYSTEM_WORKER_THREADS",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=MAX_THREADS)
    )]
    pub threads: Option<usize>,
}

/// The most runtime worker threads `--threads` takes: far past any
/// machine's cores, and below what makes the runtime fail to start (tokio
/// panics on absurd counts, and spawning tens of thousands of threads
/// exhausts memory).
const MAX_THREADS: u64 = 1024;

/// Refuses `--stdio` beside a `--listen` given on the command line, which
/// asks for two endpoints at once. `--listen`'s variable is not counted: a
/// flag wins over a variable, so `--stdio` then simply serves stdio.
/// `command` is `host`'s own, for the usage line of the error.
pub fn check_stdio(matches: &ArgMatches, command: &mut clap::Command) -> Result<(), clap::Error> {
    if matches.get_flag("stdio") && matches.value_source("listen") == Some(ValueSource::CommandLine)
    {
        return Err(command.error(
            ErrorKind::ArgumentConflict,
            "the argument '--stdio' cannot be used with '--listen <ENDPOINT>'",
        ));
    }
    Ok(())
}

/// A gRPC-only option: its argument id, its environment variable, and how
/// to forget its value.
type GrpcOnly = (&'static str, &'static str, fn(&mut HostArgs));

/// The options that apply to gRPC only.
const GRPC_ONLY: [GrpcOnly; 6] = [
    ("token_file", "COSYSTEM_WORKER_TOKEN_FILE", |a| {
        a.token_file = None
    }),
    ("tls_cert", "COSYSTEM_WORKER_TLS_CERT", |a| {
        a.tls_cert = None
    }),
    ("tls_key", "COSYSTEM_WORKER_TLS_KEY", |a| a.tls_key = None),
    ("tls_client_ca", "COSYSTEM_WORKER_TLS_CLIENT_CA", |a| {
        a.tls_client_ca = None
    }),
    ("max_connections", "COSYSTEM_WORKER_MAX_CONNECTIONS", |a| {
        a.max_connections = None
    }),
    (
        "max_connections_per_address",
        "COSYSTEM_WORKER_MAX_CONNECTIONS_PER_ADDRESS",
        |a| a.max_connections_per_address = None,
    ),
];

/// Settles the gRPC-only options the environment set. With `--stdio` they
/// are ignored, as `COSYSTEM_WORKER_LISTEN` is: a host started by
/// `client --spawn` inherits the environment of a process that may serve
/// gRPC, and its one session is the pipe, where none of them means
/// anything. On a `tcp:` or `unix:` endpoint they are kept, to be refused
/// naming their variables: a token meant to guard a listener must not be
/// dropped without a word.
pub fn settle_grpc_only_env(args: &mut HostArgs, matches: &ArgMatches) {
    let from_env = GRPC_ONLY
        .into_iter()
        .filter(|(id, _, _)| matches.value_source(id) == Some(ValueSource::EnvVariable));
    if args.stdio {
        for (_, _, forget) in from_env {
            forget(args);
        }
    } else {
        args.grpc_only_env = from_env.map(|(_, var, _)| var).collect();
    }
}

/// Runs the host until Ctrl-C or SIGTERM (with `--stdio`, also until stdin
/// closes). Over gRPC a second signal ends the graceful shutdown's wait.
pub async fn run(args: HostArgs) -> Result<(), CliError> {
    let mut signals = ShutdownSignals::new();
    let endpoint = Endpoint::for_host(args.listen.clone(), args.stdio);
    if !matches!(endpoint, Endpoint::Grpc(_)) {
        framed_only(&args)?;
    }
    let host = build_host(&args)?;
    let open_files = open_files::raise();
    let metrics = match &args.metrics_listen {
        Some(authority) => {
            let addr = resolve(authority)
                .await
                .map_err(|e| e.for_flag("--metrics-listen"))?;
            if let Endpoint::Grpc(grpc) = &endpoint {
                let listen = resolve(&grpc.authority).await?;
                if shares_port(addr, listen) {
                    return Err(CliError::Usage(format!(
                        "--metrics-listen {addr} and --listen {listen} would share one port"
                    )));
                }
            }
            let listener = bind_metrics(addr).await?;
            let local = listener.local_addr()?;
            tracing::info!("metrics on http://{local}/metrics");
            // The metrics server asks nothing of who connects, and its
            // counters name the host's methods and show its traffic.
            if !local.ip().is_loopback() {
                tracing::warn!(
                    "metrics on http://{local}/metrics beyond this machine: the metrics server has no authentication or TLS, so anyone who reaches the port reads the host's counters and method names (keep it on loopback, or put a proxy in front)"
                );
            }
            Some(listener)
        }
        None => None,
    };
    let max_clients = host.limits().max_clients;
    match &endpoint {
        Endpoint::Grpc(addr) => serve_grpc(host, addr, &args, open_files, metrics, signals).await,
        Endpoint::Tcp(authority) => {
            open_files::warn_if_short(open_files, max_clients, "--max-clients");
            spawn_metrics(metrics, &host, None);
            serve_tcp(host, authority, &mut signals).await
        }
        Endpoint::Unix(path) => {
            open_files::warn_if_short(open_files, max_clients, "--max-clients");
            spawn_metrics(metrics, &host, None);
            serve_unix(host, path, &mut signals).await
        }
        Endpoint::Stdio => {
            spawn_metrics(metrics, &host, None);
            serve_stdio(host, &mut signals).await
        }
        Endpoint::Spawn(_) => Err(endpoint.not_supported()),
    }
}

/// Serves metrics on `listener`, if `--metrics-listen` gave one: the host's
/// counters, and a gRPC server's connection counts. Framed transports hold
/// one session per connection, so sessions are their connections.
fn spawn_metrics(listener: Option<TcpListener>, host: &Host, connections: Option<ConnectionGauge>) {
    if let Some(listener) = listener {
        tokio::spawn(cosystem_worker::metrics_server::serve(
            listener,
            host.clone(),
            connections,
        ));
    }
}

/// Refuses the gRPC-only options on framed transports, which have no
/// metadata to carry a token and leave encryption to the socket.
fn framed_only(args: &HostArgs) -> Result<(), CliError> {
    if args.token_file.is_some()
        || args.tls_cert.is_some()
        || args.tls_key.is_some()
        || args.tls_client_ca.is_some()
        || args.max_connections.is_some()
        || args.max_connections_per_address.is_some()
    {
        let from_env = if args.grpc_only_env.is_empty() {
            String::new()
        } else {
            format!(" (set here by {})", args.grpc_only_env.join(", "))
        };
        return Err(CliError::Usage(format!(
            "--token-file, --tls-cert, --tls-key, --tls-client-ca and --max-connections(-per-address) \
             apply to gRPC only{from_env}; framed transports rely on the socket's own access control \
             and hold one session per connection (--max-clients)"
        )));
    }
    Ok(())
}

async fn serve_tcp(
    host: Host,
    authority: &str,
    signals: &mut ShutdownSignals,
) -> Result<(), CliError> {
    let socket = resolve(authority).await?;
    let listener = TcpListener::bind(socket).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on tcp://{socket}: {e}"))
    })?;
    let local = listener.local_addr()?;
    tracing::info!(
        epoch = %host.epoch(),
        sync = ?host.config().sync,
        sections = %published(&host),
        max_clients = host.limits().max_clients,
        "listening on tcp://{local}"
    );
    // As for gRPC without a token, but framed TCP has no token or TLS to
    // ask for: beyond loopback, reaching the port is all it takes.
    if !local.ip().is_loopback() {
        tracing::warn!(
            "listening on tcp://{local} beyond this machine: framed TCP has no authentication or encryption, so anyone who reaches it can call every method (keep it on loopback, or use unix: or gRPC with --token-file)"
        );
    }
    serve_until_signal(&host, framed::serve_tcp(host.clone(), listener), signals).await
}

async fn serve_unix(
    host: Host,
    path: &Path,
    signals: &mut ShutdownSignals,
) -> Result<(), CliError> {
    let listener = framed::bind_unix(path).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on unix:{}: {e}", path.display()),
        )
    })?;
    tracing::info!(
        epoch = %host.epoch(),
        sync = ?host.config().sync,
        sections = %published(&host),
        max_clients = host.limits().max_clients,
        "listening on unix:{}",
        path.display()
    );
    let serving = framed::serve_unix_listener(host.clone(), listener);
    let result = serve_until_signal(&host, serving, signals).await;
    // The socket file is ours: leave no stale one behind.
    let _ = std::fs::remove_file(path);
    result
}

/// Serves the one stdio session. A session the host ended with an error
/// (bytes that are not frames, a frame over the size limit, a client that
/// floods it) is the process's failure: the parent learns it from the exit
/// status ([`CliError::Session`]), not only from the log.
async fn serve_stdio(host: Host, signals: &mut ShutdownSignals) -> Result<(), CliError> {
    tracing::info!(
        epoch = %host.epoch(),
        sync = ?host.config().sync,
        sections = %published(&host),
        "serving one client on stdin/stdout"
    );
    let result = tokio::select! {
        result = framed::serve_stdio(host.clone()) => match result {
            Ok(()) => {
                tracing::info!("stdin closed; stopping");
                Ok(())
            }
            Err(error) => Err(CliError::Session(error)),
        },
        () = signals.next() => Ok(()),
    };
    host.shutdown();
    result
}

/// Serves until a signal, then shuts the host down (ending every session).
async fn serve_until_signal(
    host: &Host,
    serving: impl Future<Output = std::io::Result<()>>,
    signals: &mut ShutdownSignals,
) -> Result<(), CliError> {
    tokio::select! {
        result = serving => result?,
        () = signals.next() => {}
    }
    host.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// 128 bits from the OS, in hex: the marker's only value is that no peer
/// can guess it, which an epoch (unique, not secret) does not promise.
fn new_secret() -> Result<String, CliError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(CliError::Randomness)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn build_host(args: &HostArgs) -> Result<Host, CliError> {
    if args.secret_token.as_deref() == Some("") {
        // An empty marker would make "the secret never appears" vacuous.
        return Err(CliError::Usage("--secret-token must not be empty".into()));
    }
    let secret = match &args.secret_token {
        Some(token) => token.clone(),
        None => new_secret()?,
    };
    let app = demo::app(secret);
    let names = app.names();
    let sections: Vec<String> = args
        .sections
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(unknown) = sections.iter().find(|s| !names.contains(s)) {
        return Err(CliError::Usage(format!(
            "unknown section {unknown:?} (modules: {})",
            names.join(", ")
        )));
    }
    let mut limits = HostLimits::default();
    if let Some(max) = args.max_clients {
        if max == 0 {
            return Err(CliError::Usage("--max-clients must be at least 1".into()));
        }
        limits.max_clients = max;
    }
    Ok(Host::builder(app)
        .sync(args.sync)
        .sections(sections)
        .limits(limits)
        // Timing costs two clock reads per input: only where it is read.
        .method_timing(args.metrics_listen.is_some())
        .build())
}

async fn serve_grpc(
    host: Host,
    addr: &GrpcAddr,
    args: &HostArgs,
    open_files: Option<u64>,
    metrics: Option<TcpListener>,
    mut signals: ShutdownSignals,
) -> Result<(), CliError> {
    // Checked here rather than by clap, after `settle_grpc_only_env`: with
    // `--stdio` a variable for one of the pair alone is ignored, not an
    // error naming a flag nobody typed.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some((read_file(cert)?, read_file(key)?)),
        (Some(_), None) => return Err(CliError::Usage("--tls-cert needs --tls-key".into())),
        (None, Some(_)) => return Err(CliError::Usage("--tls-key needs --tls-cert".into())),
        (None, None) => None,
    };
    if args.tls_client_ca.is_some() && tls.is_none() {
        return Err(CliError::Usage(
            "--tls-client-ca needs --tls-cert and --tls-key".into(),
        ));
    }
    match (addr.tls, tls.is_some()) {
        (Some(true), false) => {
            return Err(CliError::Usage(
                "https:// needs --tls-cert and --tls-key".into(),
            ));
        }
        (Some(false), true) => {
            return Err(CliError::Usage(
                "http:// is plaintext: drop the scheme or use https:// with --tls-cert".into(),
            ));
        }
        _ => {}
    }
    let socket = resolve(&addr.authority).await?;
    let limits = connection_limits(args, host.limits().max_clients);
    open_files::warn_if_short(open_files, limits.max().get(), "--max-connections");
    let mut builder = GrpcServer::builder(host.clone()).connection_limits(limits);
    if let Some(path) = &args.token_file {
        builder = builder.token(read_token(path)?);
    }
    if let Some(path) = &args.tls_client_ca {
        builder = builder.client_ca(read_file(path)?);
    }
    let scheme = if let Some((cert, key)) = tls {
        builder = builder.tls(cert, key);
        "https"
    } else {
        "http"
    };
    let server = builder.bind(socket).await?;
    spawn_metrics(metrics, &host, Some(server.connections()));
    let local = server.local_addr();
    tracing::info!(
        epoch = %host.epoch(),
        sync = ?args.sync,
        sections = %published(&host),
        max_clients = host.limits().max_clients,
        max_connections = limits.max().get(),
        max_connections_per_address = limits.max_per_address().map(NonZeroUsize::get),
        token = server.requires_token(),
        client_certificates = args.tls_client_ca.is_some(),
        "listening on {scheme}://{local}",
    );
    // Reachable from other machines with nothing asked of clients: say so,
    // as anyone who can reach the port can call every method.
    if !local.ip().is_loopback() && !server.requires_token() && args.tls_client_ca.is_none() {
        tracing::warn!(
            "listening on {local} beyond this machine with no token or client certificates: anyone who reaches it can call every method"
        );
    }
    // A bearer token sent in plaintext is anyone's who sees the traffic.
    if !local.ip().is_loopback() && server.requires_token() && scheme == "http" {
        tracing::warn!(
            "listening on {local} beyond this machine without TLS: clients send the token in plaintext; serve TLS with --tls-cert and --tls-key"
        );
    }
    // The first signal stops the server gracefully: it waits up to
    // SHUTDOWN_GRACE for its connections to close. A second one stops now,
    // as an operator who asks twice expects.
    let (stop, stopping) = tokio::sync::oneshot::channel::<()>();
    let serving = server.serve(async move {
        let _ = stopping.await;
    });
    let signals = async move {
        signals.next().await;
        let _ = stop.send(());
        signals.next().await;
    };
    tokio::select! {
        result = serving => {
            result?;
            tracing::info!("stopped");
        }
        () = signals => {
            tracing::warn!("a second signal: stopping now, without waiting for connections to close");
        }
    }
    Ok(())
}

/// `--max-connections` and `--max-connections-per-address` over the
/// defaults. Each session takes a connection, so the default leaves room for
/// `max_clients` sessions and some health checks; a smaller limit given on
/// purpose is kept, with a warning.
fn connection_limits(args: &HostArgs, max_clients: usize) -> ConnectionLimits {
    /// Connections beyond the sessions: health checks, reflection.
    const SPARE: usize = 1024;
    let max = match args.max_connections {
        Some(max) => {
            if max.get() < max_clients {
                tracing::warn!(
                    max_connections = max.get(),
                    max_clients,
                    "--max-connections is below --max-clients: sessions past it cannot connect"
                );
            }
            max
        }
        None => DEFAULT_MAX_CONNECTIONS.max(
            NonZeroUsize::new(max_clients.saturating_add(SPARE)).unwrap_or(DEFAULT_MAX_CONNECTIONS),
        ),
    };
    let limits = ConnectionLimits::new(max);
    match args.max_connections_per_address {
        Some(limit) => limits.per_address(limit),
        None => limits,
    }
}

/// The first address `HOST:PORT` resolves to (`[::1]:5` forms included).
async fn resolve(authority: &str) -> Result<SocketAddr, CliError> {
    tokio::net::lookup_host(authority)
        .await
        .map_err(|e| CliError::Usage(format!("cannot resolve {authority}: {e}")))?
        .next()
        .ok_or_else(|| CliError::Usage(format!("{authority} resolves to no address")))
}

/// The sections `host` publishes, as its startup line shows them: the list
/// in effect, not as typed.
fn published(host: &Host) -> String {
    match host.config().sections {
        Some(sections) => sections.join(","),
        None => "all".to_owned(),
    }
}

/// Whether listening on both `a` and `b` would take one port twice: the
/// same port on the same address, or on any address and another. Port 0
/// asks for a free port each time, so never.
fn shares_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Binds `addr` for the metrics server, with a usage error that names the
/// flag.
async fn bind_metrics(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} (--metrics-listen): {e}"),
        )
    })
}
