//! Keeps a runtime's I/O going while a method holds one of its workers.
//!
//! A method runs on the worker thread of the session that called it. On a
//! multi-threaded tokio runtime a worker blocked in a task can leave the
//! runtime's I/O driver with no thread to poll it: the other workers sleep
//! until something wakes them, and only the driver would (tokio issue
//! 4730). Every socket of the runtime then waits for the method: other
//! hosts' sessions, health checks, metrics, new connections. Running each
//! call under `block_in_place` avoids that, but hands every call's worker to
//! another thread: measured, it made an in-memory call 7× and 64 pipelined
//! gRPC calls 2.5× as slow. So instead a thread looks at the host every
//! [`INTERVAL`]; when one input has held the core for a whole interval, it
//! spawns an empty task on the runtime. A sleeping worker wakes to run it,
//! and on going back to sleep takes the driver that nobody holds.

use std::sync::Weak;
use std::time::Duration;

use tokio::runtime::{Handle, RuntimeFlavor};

use super::busy::Busy;

/// How often the guard looks: the longest a method can keep the runtime's
/// sockets waiting is about twice this.
pub(super) const INTERVAL: Duration = Duration::from_millis(20);

/// What the guard watches: the host's record of inputs holding its core,
/// and whether the host is still serving.
pub(super) trait Watched: Send + Sync + 'static {
    /// The host's record of the input holding its core.
    fn busy(&self) -> &Busy;
    /// Whether the host has shut down, ending the guard.
    fn closed(&self) -> bool;
}

/// The current runtime, if it is one a guard helps: a multi-threaded tokio
/// runtime (a current-thread one has no other worker to wake).
pub(super) fn current_runtime() -> Option<Handle> {
    Handle::try_current()
        .ok()
        .filter(|runtime| runtime.runtime_flavor() == RuntimeFlavor::MultiThread)
}

/// Starts a guard for `host` on `runtime`. It ends once the host is
/// dropped or shut down.
pub(super) fn start<W: Watched>(host: Weak<W>, runtime: Handle) {
    let spawned = std::thread::Builder::new()
        .name("cosystem-stall-guard".into())
        .spawn(move || guard(&host, &runtime));
    if let Err(error) = spawned {
        tracing::warn!(
            "no stall guard ({error}): a slow method may hold up every socket of its runtime"
        );
    }
}

fn guard<W: Watched>(host: &Weak<W>, runtime: &Handle) {
    let mut seen = None;
    loop {
        std::thread::sleep(INTERVAL);
        let Some(host) = host.upgrade() else {
            return;
        };
        if host.closed() {
            return;
        }
        let holding = host.busy().holding();
        if holding.is_some() && holding == seen {
            // The same input for a whole interval: a method taking long.
            drop(runtime.spawn(async {}));
        }
        seen = holding;
    }
}
