//! The bytes a gRPC server's session streams may hold in their read
//! buffers.
//!
//! tonic reads a request message whole before our codec sees it, making
//! room for all of it as soon as its prefix arrives, and keeps that room
//! for as long as the stream lasts. So a peer that announces a large
//! message, sends all of it but the last byte and stalls holds that much
//! of the host's memory, and so does one that sends a large message whole
//! and then idles. One stream is bounded by the max message size, but not
//! the sum: 100 streams on each of a few connections held 1.25 GB, and the
//! defaults (10 000 clients, 4 MiB messages) allow 40 GiB. As on framed
//! listeners (`crate::transport::framed`, spec FB6), the session streams of
//! one server share one budget of
//! [`PARTIAL_FRAMES_PER_LISTENER`](crate::transport::framed::PARTIAL_FRAMES_PER_LISTENER)
//! times the max message size. A stream holds against it the largest
//! message over [`FREE_BYTES`](crate::transport::framed::budget::FREE_BYTES) it has announced, from the moment that
//! message's prefix arrives until the stream ends, and a stream whose
//! message would take the budget past its limit fails `RESOURCE_EXHAUSTED`,
//! which ends its session and gives back what it held (its client's next
//! stream starts with nothing held). A message over the max message size
//! is left to tonic, which refuses it before making room for it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::Request;
use tonic::server::NamedService;

use crate::transport::framed::budget::FrameBudget;

/// Length of the gRPC message prefix: a compression flag and a 32-bit
/// big-endian length.
const PREFIX: usize = 5;

/// A service whose request bodies draw on one shared budget for what
/// their read buffers hold (see the module's doc).
#[derive(Clone)]
pub(super) struct Budgeted<S> {
    inner: S,
    budget: Arc<FrameBudget>,
    max_message: usize,
    free: usize,
    deadline: Option<(Duration, Until)>,
}

/// What a request body must have done by its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// Sent its first whole message (a stream that may idle after it).
    FirstMessage,
    /// Ended (a method that takes one message: unary or server-streaming,
    /// which tonic reads to the body's end before it answers).
    End,
}

impl<S> Budgeted<S> {
    /// `inner`, its request bodies sharing `budget`, for messages of at
    /// most `max_message` bytes, of which those over `free` bytes count.
    pub(super) fn new(inner: S, budget: Arc<FrameBudget>, max_message: usize, free: usize) -> Self {
        Self {
            inner,
            budget,
            max_message,
            free,
            deadline: None,
        }
    }

    /// Fails a request body with `DEADLINE_EXCEEDED` if it has not done
    /// `what` `within` of the stream's opening: tonic makes room to read a
    /// stream as it opens, so one that never sends, or sends a message and
    /// never ends where one message is all there is, would hold that room
    /// for as long as its connection lasts.
    pub(super) fn deadline(mut self, within: Duration, what: Until) -> Self {
        self.deadline = Some((within, what));
        self
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

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let framing = Framing::new(self.budget.clone(), self.max_message, self.free);
        let broken = BodyBroken::default();
        request.extensions_mut().insert(broken.clone());
        let deadline = self
            .deadline
            .map(|(within, until)| (within, until, Box::pin(tokio::time::sleep(within))));
        self.inner.call(request.map(|body| {
            Body::new(BudgetedBody {
                inner: body,
                framing,
                failed: false,
                broken,
                deadline,
            })
        }))
    }
}

/// Set once a request body failed on its own, not by this budget's
/// refusal: the client reset the stream or the connection broke. tonic
/// hands a stream reset with `CANCEL`, the way gRPC clients cancel, to the
/// handler as a plain end, so this wrapper, which sees the body first, is
/// where a half-close can be told from a reset. Found in the request's
/// extensions.
#[derive(Debug, Clone, Default)]
pub(super) struct BodyBroken(Arc<AtomicBool>);

impl BodyBroken {
    /// Whether the body failed.
    pub(super) fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
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

/// Follows one request body's gRPC framing, holding from the budget the
/// largest message it has announced.
struct Framing {
    reading: Reading,
    /// Taken from the budget: the length of the largest message announced
    /// so far, when over `free` (for sessions [`FREE_BYTES`], as a framed
    /// frame counts).
    held: usize,
    budget: Arc<FrameBudget>,
    max_message: usize,
    /// Messages up to this size do not count.
    free: usize,
    /// Whole messages read so far.
    messages: u64,
}

impl Framing {
    fn new(budget: Arc<FrameBudget>, max_message: usize, free: usize) -> Self {
        Self {
            reading: Reading::Prefix {
                have: 0,
                bytes: [0; PREFIX],
            },
            held: 0,
            budget,
            max_message,
            free,
            messages: 0,
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

    /// A message of `announced` bytes begins: the stream's read buffer
    /// grows to hold it, and keeps that room.
    fn start(&mut self, announced: usize) -> Result<(), Status> {
        if announced > self.free && announced <= self.max_message && announced > self.held {
            if !self.budget.take(announced - self.held) {
                return Err(Status::resource_exhausted(format!(
                    "a message of {announced} bytes would take what this server's streams hold in their read buffers past {} bytes (spec §17.2, G3)",
                    self.budget.limit()
                )));
            }
            self.held = announced;
        }
        self.reading = Reading::Message { left: announced };
        if announced == 0 {
            self.finish();
        }
        Ok(())
    }

    /// The message in progress is complete; the room it took stays held.
    fn finish(&mut self) {
        self.messages += 1;
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
    broken: BodyBroken,
    /// Until the body has done what it must: how long it may take, what
    /// it must do, and when that runs out.
    deadline: Option<(Duration, Until, Pin<Box<tokio::time::Sleep>>)>,
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
                if this.framing.messages > 0
                    && matches!(this.deadline, Some((_, Until::FirstMessage, _)))
                {
                    this.deadline = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(status))) => {
                this.broken.0.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(status)))
            }
            Poll::Pending => {
                let Some((within, until, sleep)) = &mut this.deadline else {
                    return Poll::Pending;
                };
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let (within, until) = (*within, *until);
                this.failed = true;
                let what = match until {
                    Until::FirstMessage => "no whole message arrived",
                    Until::End => "the request did not end",
                };
                Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                    "{what} within {within:?} of the stream opening"
                )))))
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
    use crate::transport::framed::budget::FREE_BYTES;
    use proptest::prelude::*;

    fn prefixed(len: usize) -> Vec<u8> {
        let mut message = vec![0u8];
        message.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
        message.resize(PREFIX + len, 7);
        message
    }

    const MAX: usize = 1 << 20;

    #[test]
    fn a_stream_holds_the_largest_message_it_announced_until_it_ends() {
        let budget = Arc::new(FrameBudget::new(4 * MAX));
        let mut framing = Framing::new(budget.clone(), MAX, FREE_BYTES);
        let message = prefixed(100_000);
        framing.read(&message[..PREFIX + 10]).unwrap();
        assert_eq!(budget.used(), 100_000);
        // Complete, it still holds: the read buffer keeps the room.
        framing.read(&message[PREFIX + 10..]).unwrap();
        assert_eq!(budget.used(), 100_000);
        // A smaller one takes nothing more; a larger one the difference.
        framing.read(&prefixed(50_000)).unwrap();
        framing.read(&prefixed(FREE_BYTES)).unwrap();
        assert_eq!(budget.used(), 100_000);
        framing.read(&prefixed(300_000)).unwrap();
        assert_eq!(budget.used(), 300_000);
        // Over the max message size: tonic refuses it, and it takes nothing.
        framing.read(&prefixed(MAX + 1)[..PREFIX]).unwrap();
        assert_eq!(budget.used(), 300_000);
        drop(framing);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_message_past_the_budget_is_refused_and_a_dropped_stream_gives_back() {
        let budget = Arc::new(FrameBudget::new(300_000));
        let mut first = Framing::new(budget.clone(), MAX, FREE_BYTES);
        first.read(&prefixed(200_000)[..PREFIX]).unwrap();
        let mut second = Framing::new(budget.clone(), MAX, FREE_BYTES);
        let refused = second.read(&prefixed(200_000)[..PREFIX]).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(budget.used(), 200_000);
        drop(first);
        assert_eq!(budget.used(), 0);
        let mut third = Framing::new(budget.clone(), MAX, FREE_BYTES);
        third.read(&prefixed(200_000)[..PREFIX]).unwrap();
    }

    proptest! {
        /// However a stream of messages is cut into chunks, the budget
        /// holds exactly the largest message over the free size whose
        /// prefix has arrived, and all of it is given back at the end.
        #[test]
        fn the_budget_follows_the_largest_message_across_any_chunking(
            lengths in prop::collection::vec(
                prop_oneof![0usize..64, (FREE_BYTES - 2)..(FREE_BYTES + 70_000)],
                1..6,
            ),
            cuts in prop::collection::vec(1usize..40_000, 1..40),
        ) {
            let budget = Arc::new(FrameBudget::new(usize::MAX));
            let mut framing = Framing::new(budget.clone(), MAX, FREE_BYTES);
            let mut body = Vec::new();
            let mut starts = Vec::new();
            for &len in &lengths {
                starts.push((body.len(), len));
                body.extend_from_slice(&prefixed(len));
            }
            let mut at = 0;
            let mut cuts = cuts.into_iter().cycle();
            while at < body.len() {
                let next = (at + cuts.next().unwrap_or(1)).min(body.len());
                framing.read(&body[at..next]).unwrap();
                at = next;
                let expected = starts
                    .iter()
                    .filter(|(start, len)| at >= start + PREFIX && *len > FREE_BYTES)
                    .map(|(_, len)| *len)
                    .max()
                    .unwrap_or(0);
                prop_assert_eq!(budget.used(), expected);
            }
            drop(framing);
            prop_assert_eq!(budget.used(), 0);
        }
    }
}
