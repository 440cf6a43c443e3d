//! Opening a session stream without waiting on the host's response headers.
//!
//! Many gRPC stacks send response headers only with their first message,
//! and a host sends its first message only after the client's SyncRequest:
//! a client that waited for the headers before sending would wait for ever.
//! So the link is handed over at once, and the RPC runs in a task of its
//! own, so that hyper sends the request and reads the answer whether or not
//! the link's stream is being polled. The client's Calls are held by its
//! driver until the host speaks (`client::outbound`), so a refusal (a wrong
//! token, the client limit) finds no Call sent.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::JoinHandle;

use crate::transport::TransportError;

/// A task's output, the task aborted if this is dropped first: a link
/// dropped while its stream is still opening takes the RPC down with it.
pub(super) struct AbortOnDrop<T>(pub(super) JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, TransportError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.get_mut().0)
            .poll(cx)
            .map_err(|e| TransportError::Connection(format!("opening the stream failed: {e}")))
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
