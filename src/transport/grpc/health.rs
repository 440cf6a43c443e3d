//! `grpc.health.v1.Health` as the server serves it: tonic-health's service,
//! except that `Watch` streams end when the server stops.
//!
//! tonic-health's `Watch` never ends by itself (its status channel lives as
//! long as the service), and a stopping tonic server waits for every open
//! stream. Load balancers and client-side health checking (grpc-go's
//! `healthCheckConfig`, Envoy) keep such a stream open for as long as they
//! are connected, so each of them would hold a stop for the whole
//! [`SHUTDOWN_GRACE`](super::SHUTDOWN_GRACE).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// A health service for one server, the reporter that sets its statuses,
/// and the token that ends its `Watch` streams: cancel it when the server
/// stops, after reporting `NOT_SERVING`, and every `Watch` delivers that
/// status and then ends `UNAVAILABLE`, so that a graceful stop need not
/// wait for the watchers to hang up. `Check` is tonic-health's own.
pub fn health_service() -> (
    HealthReporter,
    HealthServer<StoppingHealth>,
    CancellationToken,
) {
    let reporter = HealthReporter::new();
    let stop = CancellationToken::new();
    let service = StoppingHealth {
        inner: HealthService::from_health_reporter(reporter.clone()),
        stop: stop.clone(),
    };
    (reporter, HealthServer::new(service), stop)
}

/// tonic-health's service, whose `Watch` streams end once its stop token
/// ([`health_service`]) is cancelled.
pub struct StoppingHealth {
    inner: HealthService,
    stop: CancellationToken,
}

#[tonic::async_trait]
impl Health for StoppingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = EndsAtStop;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let statuses = self.inner.watch(request).await?.into_inner();
        Ok(Response::new(EndsAtStop {
            statuses: Some(statuses),
            stop: Box::pin(self.stop.clone().cancelled_owned()),
        }))
    }
}

/// A `Watch` stream that delivers every status change, then, once the
/// server stops, ends `UNAVAILABLE`.
pub struct EndsAtStop {
    /// `None` once the stream has ended.
    statuses: Option<tonic_health::server::WatchStream>,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Stream for EndsAtStop {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(statuses) = self.statuses.as_mut() else {
            return Poll::Ready(None);
        };
        // Statuses first: the server reports NOT_SERVING before it stops,
        // and a watcher should read that change before the stream ends.
        match Pin::new(statuses).poll_next(cx) {
            Poll::Ready(Some(status)) => return Poll::Ready(Some(status)),
            Poll::Ready(None) => {
                self.statuses = None;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        match self.stop.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.statuses = None;
                Poll::Ready(Some(Err(Status::unavailable("the server is stopping"))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
