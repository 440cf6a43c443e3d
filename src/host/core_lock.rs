//! How the async host takes its one [`HostCore`].
//!
//! Every session shares one core, and a method runs under its lock, so a
//! session may find the core held for as long as someone else's method
//! takes. Waiting must not stall unrelated work: a blocked worker thread
//! would hold up every task queued on it, and a task that waits for the
//! lock cannot notice a shutdown. So there are three ways in:
//!
//! - [`CoreLock::now`]: a short spin, for paths that can wait later instead
//!   (a session's output and input, which then nap with [`Nap`]);
//! - [`CoreLock::lock`]: a wait that first hands the thread's other tasks
//!   to another worker (`block_in_place` on a multi-threaded runtime);
//! - [`CoreLock::disconnect`]: never waits; a session dropped while the core
//!   is held is disconnected by whoever takes the core next.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::task::{Context, Poll};
use std::time::Duration;

use super::{HostCore, PeerKey};

/// The host's core behind its lock, with the sessions waiting to be
/// disconnected.
pub(super) struct CoreLock {
    core: Mutex<HostCore>,
    /// Sessions dropped while the core was held.
    departed: Mutex<Vec<PeerKey>>,
    any_departed: AtomicBool,
}

impl CoreLock {
    pub(super) fn new(core: HostCore) -> Self {
        Self {
            core: Mutex::new(core),
            departed: Mutex::new(Vec::new()),
            any_departed: AtomicBool::new(false),
        }
    }

    /// The core if it is free now.
    pub(super) fn try_now(&self) -> Option<MutexGuard<'_, HostCore>> {
        // A panic while holding the lock can only come from a bug in the
        // core itself (module panics are caught inside it); the core's state
        // is still consistent, so keep serving.
        let core = match self.core.try_lock() {
            Ok(core) => core,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(self.reaped(core))
    }

    /// The core if it comes free within a short spin: long enough for any
    /// ordinary commit to finish, far shorter than a slow method.
    pub(super) fn now(&self) -> Option<MutexGuard<'_, HostCore>> {
        const SPINS: u32 = 64;
        for spin in 0..SPINS {
            if let Some(core) = self.try_now() {
                return Some(core);
            }
            if spin < SPINS / 2 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        None
    }

    /// The core, waiting as long as it takes. On a multi-threaded tokio
    /// runtime the waiting worker first hands its other tasks to a new
    /// worker (`block_in_place`), so a slow method holds up this host's
    /// callers only, never unrelated tasks queued on the same thread.
    pub(super) fn lock(&self) -> MutexGuard<'_, HostCore> {
        if let Some(core) = self.try_now() {
            return core;
        }
        let wait = || {
            let core = self.core.lock().unwrap_or_else(|e| e.into_inner());
            self.reaped(core)
        };
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(wait)
        } else {
            wait()
        }
    }

    /// Disconnects `peer` now if the core is free, else as soon as anyone
    /// takes it. Never waits: a session that ends while a method runs must
    /// not wait for that method.
    pub(super) fn disconnect(&self, peer: PeerKey) {
        if let Some(mut core) = self.now() {
            core.disconnect(peer);
            return;
        }
        self.departed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(peer);
        self.any_departed.store(true, Ordering::Release);
        // The holder may have finished and looked before the push.
        if let Some(core) = self.try_now() {
            drop(core);
        }
    }

    /// `core`, after disconnecting the sessions that left while it was held.
    fn reaped<'a>(&self, mut core: MutexGuard<'a, HostCore>) -> MutexGuard<'a, HostCore> {
        if self.any_departed.load(Ordering::Acquire)
            && self.any_departed.swap(false, Ordering::AcqRel)
        {
            let departed =
                std::mem::take(&mut *self.departed.lock().unwrap_or_else(|e| e.into_inner()));
            for peer in departed {
                core.disconnect(peer);
            }
        }
        core
    }
}

/// The wait between two attempts at a held core: 1 ms, doubling to 50 ms.
/// Short enough that a session resumes soon after an ordinary slow method,
/// long enough that a method that never returns costs its waiters nothing.
#[derive(Default)]
pub(super) struct Nap {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    length: Duration,
}

impl Nap {
    const FIRST: Duration = Duration::from_millis(1);
    const LONGEST: Duration = Duration::from_millis(50);

    /// Ready once the current nap is over, when the next attempt is due;
    /// the next nap is then longer.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let length = self.length;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(length.max(Self::FIRST))));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.length = (length * 2).clamp(Self::FIRST, Self::LONGEST);
                self.sleep = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// The core was taken: the next wait starts short again.
    pub(super) fn reset(&mut self) {
        self.sleep = None;
        self.length = Duration::ZERO;
    }
}
