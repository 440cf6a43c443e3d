//! A service that is a client of `own_modules`: it connects over gRPC
//! (with a token, and TLS when given a CA), calls methods with typed
//! arguments, watches part of the mirrored state, reports its connection
//! and sync conflicts, and stops cleanly.
//!
//! ```sh
//! cargo run --example own_modules                       # the host, in one shell
//! cargo run --example own_client                        # this client, in another
//! APP_TOKEN=s3cr3t cargo run --example own_client      # when the host wants a token
//! # a host served with TLS (not own_modules, which serves plaintext):
//! cargo run --example own_client -- --connect https://tasks.internal:50061 --ca-cert ca.pem
//! ```

use std::time::Duration;

use clap::Parser;

use cosystem_worker::client::{CallAsError, CallOptions, Client, ClientConfig, Connection};
use cosystem_worker::transport::grpc::GrpcConnector;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// The host's URL: `http://` on loopback, `https://` anywhere else (a
    /// token crosses the network in the clear over `http://`).
    #[arg(long, default_value = "http://127.0.0.1:50061")]
    connect: String,
    /// A PEM CA certificate to trust for an `https://` host, beside the
    /// system's trust store.
    #[arg(long)]
    ca_cert: Option<std::path::PathBuf>,
}

/// How many tasks are still open, from the mirror (`None` while the
/// `tasks` section is not in it).
fn open_tasks(view: &Value) -> Option<usize> {
    let items = view.get("tasks")?.get("items")?.as_array()?;
    Some(items.iter().filter(|t| t["done"] == json!(false)).count())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let mut connector = GrpcConnector::new(args.connect)?;
    if let Ok(token) = std::env::var("APP_TOKEN") {
        connector = connector.token(token);
    }
    if let Some(path) = args.ca_cert {
        connector = connector.ca_cert(std::fs::read(path)?);
    }
    // Calls wait while the host is unreachable; this bounds how long.
    let config = ClientConfig {
        call_timeout: Some(Duration::from_secs(10)),
        ..ClientConfig::default()
    };
    let client = Client::new(connector, config);

    // The link's ups and downs, with their causes (a refused token, a
    // certificate not trusted): what an application shows as "offline".
    let mut connection = client.connection_changes();
    tokio::spawn(async move {
        while connection.changed().await.is_ok() {
            let state = connection.borrow_and_update().clone();
            eprintln!("connection: {state:?}");
            if matches!(state, Connection::Stopped { .. }) {
                break;
            }
        }
    });
    // Conflicts heal by themselves (a resync); they are worth a log line.
    let mut conflicts = client.conflicts();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match conflicts.recv().await {
                Ok(conflict) => eprintln!("sync conflict, healing: {conflict:?}"),
                Err(RecvError::Lagged(missed)) => eprintln!("{missed} conflicts not shown"),
                Err(RecvError::Closed) => break,
            }
        }
    });

    let outcome = run(&client).await;
    // Stop, however the work ended: pending calls settle `disposed`,
    // watches end, and the link is closed in order before the process
    // exits (bounded: a host that stopped reading must not hold us).
    client.dispose();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.closed()).await;
    outcome
}

/// The service's work with the host.
async fn run(client: &Client) -> Result<(), Box<dyn std::error::Error>> {
    // Ready: the mirror holds the host's view. A refused token fails here
    // for good (permission-denied); an unreachable host is retried.
    tokio::time::timeout(Duration::from_secs(30), client.ready())
        .await
        .map_err(|_| "the host did not answer within 30 s")??;
    println!("open tasks: {:?}", client.select(open_tasks).flatten());

    let mut open = client.watch(open_tasks);
    tokio::spawn(async move {
        while let Some(count) = open.changed().await {
            println!("open tasks now: {count:?}");
        }
    });

    let tasks = client.module("tasks");
    // Typed in, typed out. The call settles once the mirror has the
    // change it made (read-your-writes), so the mirror shows the task,
    // unless something newer (a host restart) has replaced it since.
    let id: u64 = match tasks.call_as("add", ("write the spec",)).await {
        Ok(id) => id,
        Err(CallAsError::Failed(error)) => {
            return Err(format!("the host refused the task: {error}").into());
        }
        Err(other) => return Err(other.into()),
    };
    let shown = client.select(|view| {
        view["tasks"]["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|t| t["id"] == json!(id)))
    });
    println!("task {id} added; in the mirror: {shown:?}");

    // Whether a failed call may be made again is `sent` and
    // `state_version`, not the code: one never sent never ran, and one the
    // host answered has a known outcome.
    let settled = tasks
        .call_with("finish", vec![json!(id)], CallOptions::default())
        .with_version()
        .await;
    match (settled.outcome, settled.state_version) {
        (Ok(_), version) => println!("finished task {id} at version {version:?}"),
        (Err(error), Some(version)) => println!("the host refused it at {version}: {error}"),
        (Err(error), None) if !settled.sent => println!("not sent, safe to retry: {error}"),
        (Err(error), None) => println!("may or may not have run: {error}"),
    }
    Ok(())
}
