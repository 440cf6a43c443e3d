//! A bound on the health and reflection requests a server reads at once.
//!
//! Those services need no token and are no session, so neither the client
//! limit nor the session streams' shared budget ([`super::partial`])
//! counts them. tonic makes room for a whole message as soon as its prefix
//! arrives, so a peer that announces a 16 KiB request on each of thousands
//! of streams and stalls would hold 16 KiB per stream, across every
//! connection the server admits. So every side service of one server
//! shares [`MAX_SIDE_REQUESTS`] request bodies being read at once; past
//! that, a request is answered `RESOURCE_EXHAUSTED` unread. A body counts
//! until it has been read or dropped, so a health `Watch` holds a place
//! only while its request comes in, not while it streams.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::Either;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{Request, Response};
use tonic::server::NamedService;

/// The side-service request bodies one server reads at once: with
/// [`MAX_SIDE_SERVICE_MESSAGE_BYTES`](super::MAX_SIDE_SERVICE_MESSAGE_BYTES)
/// each, at most 16 MiB held, far more than health probes and reflection
/// clients need.
pub const MAX_SIDE_REQUESTS: usize = 1024;

/// Side-service request bodies being read, shared by a server's side
/// services.
#[derive(Debug, Clone, Default)]
pub(super) struct SideRequests(Arc<AtomicUsize>);

impl SideRequests {
    /// A place for one more body, unless `limit` are being read.
    fn take(&self, limit: usize) -> Option<Place> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            })
            .ok()
            .map(|_| Place(self.0.clone()))
    }

    /// Bodies being read now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// One body's place, given back when the body is dropped.
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A side service whose request bodies take a place among
/// [`SideRequests`].
#[derive(Clone)]
pub(super) struct SideLimited<S> {
    inner: S,
    open: SideRequests,
    limit: usize,
}

impl<S> SideLimited<S> {
    /// `inner`, reading at most `limit` request bodies at once with the
    /// other services sharing `open`.
    pub(super) fn new(inner: S, open: SideRequests, limit: usize) -> Self {
        Self { inner, open, limit }
    }
}

impl<S: NamedService> NamedService for SideLimited<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<Body>> for SideLimited<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, std::future::Ready<Result<Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match self.open.take(self.limit) {
            Some(place) => Either::Left(self.inner.call(request.map(|inner| {
                Body::new(PlacedBody {
                    inner,
                    _place: place,
                })
            }))),
            None => Either::Right(std::future::ready(Ok(Status::resource_exhausted(format!(
                "the server is reading {} health and reflection requests already",
                self.limit
            ))
            .into_http()))),
        }
    }
}

/// A request body holding its place until dropped.
struct PlacedBody {
    inner: Body,
    _place: Place,
}

impl HttpBody for PlacedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_given_back_when_bodies_are_dropped() {
        let open = SideRequests::default();
        let places: Vec<Place> = (0..3).filter_map(|_| open.take(3)).collect();
        assert_eq!(places.len(), 3);
        assert!(open.take(3).is_none(), "a fourth body past the limit");
        drop(places);
        assert_eq!(open.open(), 0);
        assert!(open.take(3).is_some());
    }
}
