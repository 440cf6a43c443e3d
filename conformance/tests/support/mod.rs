//! Test support: the reference host served over gRPC in process, either by
//! the reference gRPC transport ([`serve_reference`]) or, broken on purpose
//! so tests can show the host runner catching a broken host, through a small
//! adapter from the generated `HostService` server to `Host::open_session`
//! ([`serve_broken`]).

#![allow(dead_code)]

use std::sync::Arc;

use cosystem_worker::host::{Host, PeerOptions};
use cosystem_worker::transport::grpc::GrpcServer;
use cosystem_worker::wire::host_service_server::{HostService, HostServiceServer};
use cosystem_worker::wire::{ClientMessage, HostMessage, client_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// A deliberate defect of the served host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostBreakage {
    /// Calls are run whatever epoch their header names (no fencing).
    IgnoreCallEpoch,
    /// A result queued right behind a publication is sent ahead of it
    /// (read-your-writes ordering broken).
    ResultsFirst,
    /// The session ends as soon as the client half-closes, whatever it is
    /// still owed.
    EndOnHalfClose,
}

struct Adapter {
    host: Host,
    token: Option<String>,
    breakage: Option<HostBreakage>,
}

#[tonic::async_trait]
impl HostService for Adapter {
    type SessionStream = ReceiverStream<Result<HostMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        if let Some(token) = &self.token {
            let presented = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if presented != Some(format!("Bearer {token}").as_str()) {
                return Err(Status::unauthenticated("a valid bearer token is required"));
            }
        }
        let session = self
            .host
            .open_session(PeerOptions {
                peer_id: "grpc".into(),
                publications: true,
            })
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        let session = Arc::new(session);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let breakage = self.breakage;
        // Sent by the reader when the client half-closes: it is still owed
        // the answers to what it sent (H16).
        let (ended, mut end) = tokio::sync::oneshot::channel::<()>();
        let writer = tokio::spawn({
            let session = session.clone();
            async move {
                loop {
                    let frame = tokio::select! {
                        biased;
                        frame = session.next_frame() => frame,
                        drain = &mut end => {
                            if drain.is_ok() {
                                while let Some(frame) = session.next_answer().await {
                                    if tx.send(Ok(frame.message().clone())).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            return;
                        }
                    };
                    let Some(frame) = frame else { return };
                    let mut out = vec![frame.message().clone()];
                    if breakage == Some(HostBreakage::ResultsFirst)
                        && let Some(next) = session.try_next_frame()
                    {
                        out.insert(0, next.message().clone());
                    }
                    for message in out {
                        if tx.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        tokio::spawn(async move {
            // Undecodable input ends the stream with an error: the host may
            // close a session that sends it (H14).
            let mut clean = false;
            loop {
                let mut message = match inbound.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => {
                        clean = true;
                        break;
                    }
                    Err(_) => break,
                };
                if breakage == Some(HostBreakage::IgnoreCallEpoch)
                    && let (Some(h), Some(client_message::Kind::Call(_))) =
                        (message.header.as_mut(), &message.kind)
                {
                    h.epoch.clear();
                }
                if session.handle(message).is_err_and(|e| e.is_fatal()) {
                    break;
                }
            }
            // A half-close is answered first (H16), unless broken not to be.
            if clean && breakage != Some(HostBreakage::EndOnHalfClose) {
                let _ = ended.send(());
                let _ = writer.await;
            } else {
                writer.abort();
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A host being served on a loopback port until dropped.
pub struct Served {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The host itself.
    pub host: Host,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.abort();
        self.host.shutdown();
    }
}

/// Serves `host` with the reference gRPC transport on a free loopback port.
pub async fn serve_reference(host: Host, token: Option<String>) -> Served {
    let mut builder = GrpcServer::builder(host.clone());
    if let Some(token) = token {
        builder = builder.token(token);
    }
    let server = builder
        .bind("127.0.0.1:0".parse().expect("an address"))
        .await
        .expect("a loopback port");
    let url = format!("http://{}", server.local_addr());
    let server = tokio::spawn(async move {
        let _ = server.serve(std::future::pending()).await;
    });
    Served { url, host, server }
}

/// Serves `host`, broken as `breakage` says, on a free loopback port.
pub async fn serve_broken(host: Host, breakage: HostBreakage) -> Served {
    serve(host, None, Some(breakage)).await
}

async fn serve(host: Host, token: Option<String>, breakage: Option<HostBreakage>) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("a local address"));
    let service = HostServiceServer::new(Adapter {
        host: host.clone(),
        token,
        breakage,
    });
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    Served { url, host, server }
}
