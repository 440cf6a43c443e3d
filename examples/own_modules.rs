//! A host serving a team's own modules over gRPC: the complete `main` that
//! `cargo run -- host` is for the demo app.
//!
//! ```sh
//! cargo run --example own_modules                         # its own gRPC server
//! cargo run --example own_modules -- --embedded           # on the app's tonic server
//! APP_TOKEN=s3cr3t cargo run --example own_modules        # clients must send the token
//! APP_TOKEN=s3cr3t cargo run --example own_modules -- --listen 0.0.0.0:7000 # beyond loopback
//! cargo run -- client --connect 127.0.0.1:50061 call tasks add '"write the spec"'
//! printf s3cr3t > token.txt                                # with APP_TOKEN set:
//! cargo run -- client --connect 127.0.0.1:50061 --token-file token.txt state
//! ```
//!
//! Stops on Ctrl-C or SIGTERM, waiting a few seconds for open streams; a
//! second Ctrl-C or SIGTERM stops it at once, even while a method runs. Logs to stderr through `RUST_LOG` (e.g.
//! `RUST_LOG=cosystem_worker=debug` for one line per call answered).

use std::io::IsTerminal;
use std::net::SocketAddr;

use clap::Parser;

use cosystem_worker::app::{App, JsonModule, MethodError, TypedModule};
use cosystem_worker::host::{Host, SyncMode};
use cosystem_worker::transport::grpc::{
    ConnectionLimits, GrpcServer, GuardedIncoming, KEEPALIVE, MAX_STREAMS_PER_CONNECTION,
    SERVICE_NAME, SHUTDOWN_GRACE, health_service,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;
use tonic::transport::Server;

#[derive(Default, Serialize, Deserialize)]
struct Tasks {
    items: Vec<Task>,
    next_id: u64,
}

#[derive(Serialize, Deserialize)]
struct Task {
    id: u64,
    title: String,
    done: bool,
}

/// The application: typed task state, and an append-only JSON log that
/// publishes at the cost of each change.
fn app() -> App {
    let tasks = TypedModule::new("tasks", Tasks::default())
        .method("add", |s: &mut Tasks, (title,): (String,)| {
            if title.trim().is_empty() {
                return Err(MethodError::invalid_argument("a task needs a title"));
            }
            s.next_id += 1;
            s.items.push(Task {
                id: s.next_id,
                title,
                done: false,
            });
            Ok(s.next_id)
        })
        .method("finish", |s: &mut Tasks, (id,): (u64,)| {
            let task = s.items.iter_mut().find(|t| t.id == id);
            let task = task.ok_or_else(|| MethodError::not_found(format!("no task {id}")))?;
            task.done = true;
            Ok(())
        });
    let log =
        JsonModule::new("log", json!({ "lines": [] })).method("append", |d, (line,): (String,)| {
            Ok(d.push("/lines", line)?)
        });
    App::new().with(tasks).with(log)
}

/// The stop signals: `first` resolves at the first Ctrl-C or (on Unix)
/// SIGTERM, what service managers send, and starts a graceful stop;
/// `second` resolves at the next one, for an operator who will not wait.
struct Stop {
    first: oneshot::Receiver<()>,
    second: oneshot::Receiver<()>,
}

/// Listens for stop signals from now on: one listener for the whole run,
/// so that no signal is missed between two waits and none falls back to
/// the default action.
fn listen_for_stop() -> Stop {
    let (first_tx, first) = oneshot::channel();
    let (second_tx, second) = oneshot::channel();
    // Registered here, before anything else runs: a handler registered
    // later, in the task, would leave a gap in which a signal is lost.
    #[cfg(unix)]
    let (mut interrupt, mut terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    tokio::spawn(async move {
        for (n, tx) in [first_tx, second_tx].into_iter().enumerate() {
            #[cfg(unix)]
            {
                async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
                    match signal {
                        Some(signal) => {
                            signal.recv().await;
                        }
                        None => std::future::pending().await,
                    }
                }
                tokio::select! {
                    _ = next(&mut interrupt) => {}
                    _ = next(&mut terminate) => {}
                }
            }
            #[cfg(not(unix))]
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            if n == 0 {
                tracing::info!("stopping (again to stop at once)");
            } else {
                tracing::warn!("stopping at once");
            }
            let _ = tx.send(());
        }
    });
    Stop { first, second }
}

/// A host of the application's own modules over gRPC.
#[derive(Parser)]
struct Args {
    /// The address to serve on.
    #[arg(long, default_value = "127.0.0.1:50061")]
    listen: SocketAddr,
    /// Serve the host's service on the application's own tonic server.
    #[arg(long)]
    embedded: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(run(args));
    // Without this, dropping the runtime would wait for a method still
    // running on one of its threads, however long it takes: the process
    // would outlive the host's stop, and no signal would end it.
    runtime.shutdown_background();
    result
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let addr = args.listen;
    let host = Host::builder(app()).sync(SyncMode::Patch).build();
    let mut server = GrpcServer::builder(host.clone());
    if let Ok(token) = std::env::var("APP_TOKEN") {
        server = server.token(token);
    } else if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "serving beyond loopback with no token: anyone who reaches the port can call every method (set APP_TOKEN)"
        );
    }

    if !args.embedded {
        // The host's own server, with health and reflection; it shuts the
        // host down when it stops.
        let server = server.bind(addr).await?;
        tracing::info!("listening on http://{}", server.local_addr());
        let stop = listen_for_stop();
        let first = async move {
            let _ = stop.first.await;
        };
        tokio::select! {
            served = server.serve(first) => served?,
            _ = stop.second => {}
        }
        return Ok(());
    }

    // Beside the application's own services, on its own server, which then
    // does what `serve` does: keepalive pings, a bound on streams per
    // connection, guarded accepts (`GuardedIncoming`), health for the
    // host's service, and at the stop NOT_SERVING, the host's shutdown and
    // the end of health watches, and a bounded wait for streams their
    // clients leave open.
    let (reporter, health, stop_watches) = health_service();
    for service in ["", SERVICE_NAME] {
        reporter
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("listening on http://{} (embedded)", listener.local_addr()?);
    let (stopped_tx, stopped) = oneshot::channel::<()>();
    let Stop { first, second } = listen_for_stop();
    let stopping = {
        let host = host.clone();
        async move {
            let _ = first.await;
            for service in ["", SERVICE_NAME] {
                reporter
                    .set_service_status(service, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            stop_watches.cancel();
            host.shutdown();
            let _ = stopped_tx.send(());
        }
    };
    let serving = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(health)
        .add_service(server.into_service()?)
        .serve_with_incoming_shutdown(
            GuardedIncoming::new(listener, ConnectionLimits::default()),
            stopping,
        );
    let mut serving = std::pin::pin!(serving);
    tokio::select! {
        ended = &mut serving => ended?,
        _ = stopped => {
            tokio::select! {
                ended = tokio::time::timeout(SHUTDOWN_GRACE, serving) => {
                    if let Ok(ended) = ended {
                        ended?;
                    }
                }
                _ = second => {}
            }
        }
    }
    Ok(())
}
