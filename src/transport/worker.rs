//! A host on its own OS thread with its own tokio runtime: the in-process
//! analogue of starting a worker.
//!
//! [`spawn`] starts the thread, builds the host there (so its bookmark timer
//! runs on the worker's runtime, not the caller's) and hands back a
//! connected [`Client`] and a [`Worker`] handle. Clients reach the host
//! through memory pairs; envelopes cross threads as shared frames, nothing
//! is encoded.

use std::thread::JoinHandle;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::{ClientLink, Connector, HostLink, TransportError, memory};
use crate::client::{Client, ClientConfig};
use crate::host::Host;

/// Why a worker could not start or did not end cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The OS refused the thread, or the runtime could not be built.
    #[error("cannot start the worker: {0}")]
    Start(#[from] std::io::Error),
    /// Building the host panicked on the worker thread.
    #[error("building the host panicked")]
    BuildPanicked,
    /// The worker thread panicked.
    #[error("the worker thread panicked")]
    Panicked,
    /// The host carries a shared channel's capability token, which its
    /// point-to-point sessions must not be sent (spec §3.2): see
    /// [`InputError::SharedChannelToken`](crate::host::InputError::SharedChannelToken).
    #[error(
        "the host carries a shared channel's capability token, which a worker's sessions must not be sent (spec §3.2): build it without one"
    )]
    SharedChannelToken,
}

/// A running worker thread. Dropping it stops the host without waiting for
/// the thread; [`Worker::join`] stops it and waits.
pub struct Worker {
    host: Host,
    links: mpsc::UnboundedSender<HostLink>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Starts a host built by `make_host` on a new thread with its own
/// runtime, and a client connected to it (on the caller's runtime).
///
/// # Panics
/// Outside a tokio runtime (the client's driver needs one).
pub fn spawn<F>(make_host: F, config: ClientConfig) -> Result<(Client, Worker), WorkerError>
where
    F: FnOnce() -> Host + Send + 'static,
{
    let worker = Worker::start(make_host)?;
    let client = Client::new(worker.connector(), config);
    Ok((client, worker))
}

impl Worker {
    /// Starts a host built by `make_host` on a new thread, with no client.
    ///
    /// Blocks the calling thread until the host is built.
    pub fn start<F>(make_host: F) -> Result<Self, WorkerError>
    where
        F: FnOnce() -> Host + Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (links, mut incoming) = mpsc::unbounded_channel::<HostLink>();
        let (stop, stopped) = oneshot::channel::<()>();
        let (built, host) = std::sync::mpsc::sync_channel::<Host>(1);
        let thread = std::thread::Builder::new()
            .name("cosystem-worker-host".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let host = make_host();
                    if built.send(host.clone()).is_err() {
                        return;
                    }
                    let mut stopped = stopped;
                    loop {
                        tokio::select! {
                            link = incoming.recv() => match link {
                                Some(link) => {
                                    let host = host.clone();
                                    tokio::spawn(async move {
                                        if let Err(error) = host.serve(link).await {
                                            tracing::debug!(%error, "a worker session ended");
                                        }
                                    });
                                }
                                None => break,
                            },
                            _ = &mut stopped => break,
                        }
                    }
                    host.shutdown();
                });
            })?;
        let Ok(host) = host.recv() else {
            // The sender was dropped without sending: make_host panicked.
            let _ = thread.join();
            return Err(WorkerError::BuildPanicked);
        };
        if host.carries_capability() {
            // Every session would be refused; say why now, not per session.
            drop((links, stop));
            let _ = thread.join();
            return Err(WorkerError::SharedChannelToken);
        }
        Ok(Self {
            host,
            links,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// A connector to this worker's host: each connect opens a new session.
    /// After the worker stops, connecting fails with
    /// [`TransportError::Closed`].
    pub fn connector(&self) -> WorkerConnector {
        WorkerConnector {
            links: self.links.clone(),
        }
    }

    /// Another client of this worker's host.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn client(&self, config: ClientConfig) -> Client {
        Client::new(self.connector(), config)
    }

    /// The host, for host-side calls ([`Host::invoke`]) and inspection. Its
    /// sessions run on the worker thread.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Asks the worker to stop: the host shuts down, every session ends and
    /// new connects fail. Does not wait; idempotent.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Sessions end even if the thread is busy.
        self.host.shutdown();
    }

    /// Stops the worker and waits for its thread to finish. Blocks the
    /// calling thread.
    pub fn join(mut self) -> Result<(), WorkerError> {
        self.stop();
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| WorkerError::Panicked),
            None => Ok(()),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connects clients to a [`Worker`]'s host.
#[derive(Clone)]
pub struct WorkerConnector {
    links: mpsc::UnboundedSender<HostLink>,
}

impl Connector for WorkerConnector {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        let (host_end, connector) = memory::pair();
        let sent = self.links.send(host_end);
        async move {
            sent.map_err(|_| TransportError::Closed)?;
            connector.connect().await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::app::{App, MethodError, TypedModule};
    use crate::demo;
    use crate::wire::ErrorCode;

    /// The demo app plus a module that reports which thread runs it.
    fn probed_host() -> Host {
        let probe = TypedModule::new("probe", json!({})).method(
            "thread",
            |_: &mut serde_json::Value, (): ()| {
                Ok::<_, MethodError>(std::thread::current().name().map(str::to_owned))
            },
        );
        Host::builder(App::new().with(demo::counter()).with(probe)).build()
    }

    #[tokio::test]
    async fn the_host_runs_on_the_worker_thread_and_the_client_is_connected() {
        let (client, worker) = spawn(probed_host, ClientConfig::default()).unwrap();
        client.ready().await.unwrap();
        let thread = client.call("probe", "thread", vec![]).await.unwrap();
        assert_eq!(thread, json!("cosystem-worker-host"));
        let value = client
            .call("counter", "increase", vec![json!(3)])
            .await
            .unwrap();
        assert_eq!(value, json!(3));
        assert_eq!(worker.host().version(), 2);
        drop(client);
        worker.join().unwrap();
    }

    #[tokio::test]
    async fn more_clients_share_the_worker_host() {
        let (first, worker) = spawn(probed_host, ClientConfig::default()).unwrap();
        let second = worker.client(ClientConfig::default());
        second.ready().await.unwrap();
        let mut watch = second.watch(|s| s["counter"]["count"].clone());
        first
            .call("counter", "increase", vec![json!(2)])
            .await
            .unwrap();
        assert_eq!(watch.changed().await, Some(json!(2)));
    }

    #[tokio::test]
    async fn after_join_no_client_can_connect() {
        let (client, worker) = spawn(probed_host, ClientConfig::default()).unwrap();
        client.ready().await.unwrap();
        let connector = worker.connector();
        tokio::task::spawn_blocking(move || worker.join())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            connector.connect().await.err(),
            Some(TransportError::Closed)
        ));
        let late = Client::new(connector, ClientConfig::default());
        assert_eq!(late.ready().await.unwrap_err().code, ErrorCode::Unavailable);
    }

    #[test]
    fn a_host_builder_that_panics_is_an_error_not_a_hang() {
        let result = Worker::start(|| panic!("no host today"));
        assert!(matches!(result.err(), Some(WorkerError::BuildPanicked)));
    }
}
