//! `cosystem-worker host`: serves the demo app.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use cosystem_worker::demo;
use cosystem_worker::host::{Host, HostLimits, SyncMode, new_epoch};
use cosystem_worker::transport::grpc::GrpcServer;

use super::endpoint::{Endpoint, GrpcAddr};
use super::{CliError, read_file, read_token};

/// `host` options.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Where to listen: HOST:PORT or http(s)://HOST:PORT (gRPC).
    #[arg(long, value_name = "ENDPOINT", default_value = "127.0.0.1:50051")]
    listen: Endpoint,
    /// Serve one client on stdin/stdout instead of listening.
    #[arg(long, conflicts_with = "listen")]
    stdio: bool,
    /// How commits are published: patch or snapshot.
    #[arg(long, value_name = "MODE", default_value = "patch")]
    sync: SyncMode,
    /// Modules whose state is published, comma-separated; the others stay
    /// private to the host (calls still reach them).
    #[arg(
        long,
        value_name = "MODULES",
        value_delimiter = ',',
        default_value = "counter,todos"
    )]
    sections: Vec<String>,
    /// Require `authorization: Bearer <token>`, with the token read from
    /// this file (surrounding whitespace ignored).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Serve TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The initial value of the demo's private `secret` module (default:
    /// random).
    #[arg(long, value_name = "S")]
    secret_token: Option<String>,
    /// Sessions served at once; more are refused RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "N")]
    max_clients: Option<usize>,
}

/// Runs the host until Ctrl-C or SIGTERM.
pub async fn run(args: HostArgs) -> Result<(), CliError> {
    let endpoint = Endpoint::for_host(args.listen.clone(), args.stdio);
    let Endpoint::Grpc(addr) = &endpoint else {
        return Err(endpoint.not_supported());
    };
    let host = build_host(&args)?;
    serve_grpc(host, addr, &args).await
}

fn build_host(args: &HostArgs) -> Result<Host, CliError> {
    let app = demo::app(args.secret_token.clone().unwrap_or_else(new_epoch));
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
        .build())
}

async fn serve_grpc(host: Host, addr: &GrpcAddr, args: &HostArgs) -> Result<(), CliError> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some((read_file(cert)?, read_file(key)?)),
        _ => None,
    };
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
    let mut builder = GrpcServer::builder(host.clone());
    if let Some(path) = &args.token_file {
        builder = builder.token(read_token(path)?);
    }
    let scheme = if let Some((cert, key)) = tls {
        builder = builder.tls(cert, key);
        "https"
    } else {
        "http"
    };
    let server = builder.bind(socket).await?;
    tracing::info!(
        epoch = %host.epoch(),
        token = server.requires_token(),
        "listening on {scheme}://{}",
        server.local_addr()
    );
    server.serve(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// The first address `HOST:PORT` resolves to (`[::1]:5` forms included).
async fn resolve(authority: &str) -> Result<SocketAddr, CliError> {
    tokio::net::lookup_host(authority)
        .await
        .map_err(|e| CliError::Usage(format!("cannot resolve {authority}: {e}")))?
        .next()
        .ok_or_else(|| CliError::Usage(format!("{authority} resolves to no address")))
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("interrupted; shutting down"),
        _ = term => tracing::info!("terminated; shutting down"),
    }
}
