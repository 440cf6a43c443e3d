//! Watching derived state.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::watch;

use super::driver::Client;

/// A shared equality for watched values.
pub type Equals<T> = Arc<dyn Fn(&T, &T) -> bool + Send + Sync>;

/// How a watch compares and starts.
pub struct WatchOptions<T> {
    /// Yield the current value first, before any change (if the client is
    /// ready).
    pub immediate: bool,
    /// Whether two values are equal, so no notification is due. Defaults to
    /// `PartialEq` via [`WatchOptions::default`]; a custom one lets callers
    /// compare by id, by rounding, and so on.
    pub equals: Equals<T>,
}

impl<T: PartialEq> Default for WatchOptions<T> {
    fn default() -> Self {
        Self {
            immediate: false,
            equals: Arc::new(|a, b| a == b),
        }
    }
}

impl<T> Clone for WatchOptions<T> {
    fn clone(&self) -> Self {
        Self {
            immediate: self.immediate,
            equals: self.equals.clone(),
        }
    }
}

impl<T> fmt::Debug for WatchOptions<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchOptions")
            .field("immediate", &self.immediate)
            .finish_non_exhaustive()
    }
}

impl<T> WatchOptions<T> {
    /// Options with a custom equality.
    pub fn with_equals(equals: impl Fn(&T, &T) -> bool + Send + Sync + 'static) -> Self {
        Self {
            immediate: false,
            equals: Arc::new(equals),
        }
    }

    /// Yields the current value first.
    pub fn immediate(mut self) -> Self {
        self.immediate = true;
        self
    }
}

/// A subscription to a selector's value. Dropping it unsubscribes.
pub struct Watch<T, F> {
    client: Client,
    selector: F,
    options: WatchOptions<T>,
    changes: watch::Receiver<u64>,
    last: Option<T>,
    started: bool,
}

impl<T: Clone, F: Fn(&Value) -> T> Watch<T, F> {
    pub(super) fn new(client: Client, selector: F, options: WatchOptions<T>) -> Self {
        let mut changes = client.changes();
        changes.borrow_and_update();
        let last = client.select(&selector);
        Self {
            client,
            selector,
            options,
            changes,
            last,
            started: false,
        }
    }

    /// The selector's value now (`None` before the client is ready).
    pub fn current(&self) -> Option<T> {
        self.client.select(&self.selector)
    }

    /// Waits for the selector's next different value: the latest one when
    /// several changes landed since the last read (they are coalesced).
    /// `None` once the client is disposed or has stopped for good.
    pub async fn changed(&mut self) -> Option<T> {
        if !self.started {
            self.started = true;
            if self.options.immediate
                && let Some(value) = self.last.clone()
            {
                return Some(value);
            }
        }
        loop {
            // Looked at first: a watch made after the stop would otherwise
            // wait for a change that never comes.
            if self.client.shared_stopped() {
                return None;
            }
            self.changes.changed().await.ok()?;
            if self.client.shared_stopped() {
                return None;
            }
            let Some(value) = self.client.select(&self.selector) else {
                continue;
            };
            let same = self
                .last
                .as_ref()
                .is_some_and(|last| (self.options.equals)(last, &value));
            if !same {
                self.last = Some(value.clone());
                return Some(value);
            }
        }
    }
}

/// A listener running on its own task. Dropping the handle or calling
/// [`WatchHandle::unsubscribe`] stops it.
pub struct WatchHandle {
    task: tokio::task::JoinHandle<()>,
}

impl WatchHandle {
    pub(super) fn spawn<T, F, L>(mut watch: Watch<T, F>, mut listener: L) -> Self
    where
        T: Clone + Send + 'static,
        F: Fn(&Value) -> T + Send + 'static,
        L: FnMut(T) + Send + 'static,
    {
        let task = tokio::spawn(async move {
            while let Some(value) = watch.changed().await {
                listener(value);
            }
        });
        Self { task }
    }

    /// Stops the listener.
    pub fn unsubscribe(self) {}
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
