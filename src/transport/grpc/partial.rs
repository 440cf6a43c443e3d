//! The bytes a gRPC server's session streams may hold in messages still
//! arriving.
//!
//! tonic reads a request message whole before our codec sees it, so a peer
//! that announces a large message, sends all of it but the last byte and
//! stalls holds that much of the host's memory for as long as its stream
//! stays open. One message per stream is bounded by the max message size,
//! but not the sum: 100 streams on each of a few connections held 1.25 GB,
//! and the defaults (10 000 clients, 4 MiB messages) allow 40 GiB. As on
//! framed listeners (`crate::transport::framed`, spec FB6), the session
//! streams of one server share one budget of
//! [`PARTIAL_FRAMES_PER_LISTENER`](crate::transport::framed::PARTIAL_FRAMES_PER_LISTENER)
//! times the max message size; a message larger than
//! [`FREE_BYTES`] counts at the length its gRPC prefix announces from the
//! moment the prefix arrives, and a stream whose message would take the
//! budget past its limit fails `RESOURCE_EXHAUSTED`, which ends its
//! session and gives back what it held. Messages a stream has finished
//! receiving count no more: tonic hands them on as they complete.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::Request;
use tonic::server::NamedService;

use crate::transport::framed::budget::{FREE_BYTES, FrameBudget};

/// Length of the gRPC message prefix: a compression flag and a 32-bit
/// big-endian length.
const PREFIX: usize = 5;

/// A service whose request bodies draw on one shared budget for the
/// messages they hold in progress (see the module's doc).
#[derive(Clone)]
pub(super) struct Budgeted<S> {
    inner: S,
    budget: Arc<FrameBudget>,
}

impl<S> Budgeted<S> {
    /// `inner`, its request bodies sharing `budget`.
    pub(super) fn new(inner: S, budget: Arc<FrameBudget>) -> Self {
        Self { inner, budget }
    }
}

impl<S: NamedService> NamedService for Budgeted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<Body>> for Budgeted<S>
where
    S: Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let budget = self.budget.clone();
        self.inner
            .call(request.map(|body| Body::new(BudgetedBody::new(body, budget))))
    }
}

/// Where a stream is in the gRPC framing of its request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// The prefix of the next message, of which this many bytes are in.
    Prefix { have: usize, bytes: [u8; PREFIX] },
    /// A message's body, of which this many bytes are still to come.
    Message { left: usize },
}

/// Follows one request body's gRPC framing, holding from the budget what
/// its message in progress announces.
struct Framing {
    reading: Reading,
    /// Taken from the budget for the message in progress.
    held: usize,
    budget: Arc<FrameBudget>,
}

impl Framing {
    fn new(budget: Arc<FrameBudget>) -> Self {
        Self {
            reading: Reading::Prefix {
                have: 0,
                bytes: [0; PREFIX],
            },
            held: 0,
            budget,
        }
    }

    /// Accounts for `data`, the next bytes of the body: refuses the
    /// message whose prefix it completes if the budget has no room for it.
    fn read(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            match &mut self.reading {
                Reading::Prefix { have, bytes } => {
                    let n = (PREFIX - *have).min(data.len());
                    bytes[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have == PREFIX {
                        let announced = [bytes[1], bytes[2], bytes[3], bytes[4]];
                        let announced = u32::from_be_bytes(announced) as usize;
                        self.start(announced)?;
                    }
                }
                Reading::Message { left } => {
                    let n = (*left).min(data.len());
                    *left -= n;
                    data = &data[n..];
                    if *left == 0 {
                        self.finish();
                    }
                }
            }
        }
        Ok(())
    }

    /// A message of `announced` bytes begins.
    fn start(&mut self, announced: usize) -> Result<(), Status> {
        if announced > FREE_BYTES {
            let wanted = announced.saturating_add(PREFIX);
            if !self.budget.take(wanted) {
                return Err(Status::resource_exhausted(format!(
                    "a message of {announced} bytes would take the messages still arriving on this server past {} bytes (spec §15)",
                    self.budget.limit()
                )));
            }
            self.held = wanted;
        }
        self.reading = Reading::Message { left: announced };
        if announced == 0 {
            self.finish();
        }
        Ok(())
    }

    /// The message in progress is complete: it no longer counts.
    fn finish(&mut self) {
        self.budget.give(std::mem::take(&mut self.held));
        self.reading = Reading::Prefix {
            have: 0,
            bytes: [0; PREFIX],
        };
    }
}

impl Drop for Framing {
    fn drop(&mut self) {
        self.budget.give(std::mem::take(&mut self.held));
    }
}

/// A request body that accounts its message in progress to a budget.
struct BudgetedBody {
    inner: Body,
    framing: Framing,
    /// Set once the budget refused a message: the body ends with that.
    failed: bool,
}

impl BudgetedBody {
    fn new(inner: Body, budget: Arc<FrameBudget>) -> Self {
        Self {
            inner,
            framing: Framing::new(budget),
            failed: false,
        }
    }
}

impl HttpBody for BudgetedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(status) = this.framing.read(data)
                {
                    this.failed = true;
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn prefixed(len: usize) -> Vec<u8> {
        let mut message = vec![0u8];
        message.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
        message.resize(PREFIX + len, 7);
        message
    }

    #[test]
    fn a_large_message_holds_its_announced_size_until_it_completes() {
        let budget = Arc::new(FrameBudget::new(1 << 20));
        let mut framing = Framing::new(budget.clone());
        let message = prefixed(100_000);
        framing.read(&message[..PREFIX + 10]).unwrap();
        assert_eq!(budget.used(), 100_000 + PREFIX);
        framing.read(&message[PREFIX + 10..]).unwrap();
        assert_eq!(budget.used(), 0);
        // Small messages never count.
        framing.read(&prefixed(FREE_BYTES)).unwrap();
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_message_past_the_budget_is_refused_and_a_dropped_stream_gives_back() {
        let budget = Arc::new(FrameBudget::new(300_000));
        let mut first = Framing::new(budget.clone());
        first.read(&prefixed(200_000)[..PREFIX]).unwrap();
        let mut second = Framing::new(budget.clone());
        let refused = second.read(&prefixed(200_000)[..PREFIX]).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(budget.used(), 200_000 + PREFIX);
        drop(first);
        assert_eq!(budget.used(), 0);
        let mut third = Framing::new(budget.clone());
        third.read(&prefixed(200_000)[..PREFIX]).unwrap();
    }

    proptest! {
        /// However a stream of messages is cut into chunks, the budget
        /// holds exactly the announced size of the message in progress
        /// (when it is over the free size), and nothing between messages.
        #[test]
        fn the_budget_follows_the_message_in_progress_across_any_chunking(
            lengths in prop::collection::vec(
                prop_oneof![0usize..64, (FREE_BYTES - 2)..(FREE_BYTES + 70_000)],
                1..6,
            ),
            cuts in prop::collection::vec(1usize..40_000, 1..40),
        ) {
            let budget = Arc::new(FrameBudget::new(usize::MAX));
            let mut framing = Framing::new(budget.clone());
            let mut body = Vec::new();
            let mut ends = Vec::new();
            for &len in &lengths {
                body.extend_from_slice(&prefixed(len));
                ends.push((body.len(), len));
            }
            let mut at = 0;
            let mut cuts = cuts.into_iter().cycle();
            while at < body.len() {
                let next = (at + cuts.next().unwrap_or(1)).min(body.len());
                framing.read(&body[at..next]).unwrap();
                at = next;
                // The message in progress at `at`, if any: the first whose
                // end is past it, once its prefix is in.
                let expected = ends
                    .iter()
                    .zip(std::iter::once(0).chain(ends.iter().map(|(end, _)| *end)))
                    .find(|((end, _), start)| at < *end && at >= start + PREFIX)
                    .map_or(0, |((_, len), _)| if *len > FREE_BYTES { len + PREFIX } else { 0 });
                prop_assert_eq!(budget.used(), expected);
            }
            prop_assert_eq!(budget.used(), 0);
        }
    }
}
