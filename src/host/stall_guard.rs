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
//! gRPC calls 2.5× as slow. So instead one thread per runtime looks at the
//! hosts used on it every [`INTERVAL`]; when one input has held a host's
//! core for a whole interval, it spawns an empty task on the runtime. A
//! sleeping worker wakes to run it, and on going back to sleep takes the
//! driver that nobody holds. That needs a worker that is not itself held:
//! a runtime whose every worker runs a method has none to wake.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use tokio::runtime::{Handle, Id, RuntimeFlavor};

use super::busy::Busy;

/// How often a guard looks: the longest a method can keep its runtime's
/// sockets waiting is about twice this.
pub(super) const INTERVAL: Duration = Duration::from_millis(20);

/// What a guard watches of a host: its record of inputs holding its core,
/// and whether it is still serving.
pub(super) trait Watched: Send + Sync + 'static {
    /// The host's record of the input holding its core.
    fn busy(&self) -> &Busy;
    /// Whether the host has shut down; the guard then stops watching it.
    fn closed(&self) -> bool;
}

/// A host a guard watches, with the input it last saw hold the core.
struct Watching {
    host: Weak<dyn Watched>,
    seen: Option<u64>,
}

/// The hosts one runtime's guard watches.
type Hosts = Arc<Mutex<Vec<Watching>>>;

/// The hosts used on each guarded runtime. A runtime's guard thread ends,
/// and leaves this map, once it watches no host.
fn guards() -> MutexGuard<'static, HashMap<Id, Hosts>> {
    static GUARDS: OnceLock<Mutex<HashMap<Id, Hosts>>> = OnceLock::new();
    GUARDS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn lock(hosts: &Mutex<Vec<Watching>>) -> MutexGuard<'_, Vec<Watching>> {
    hosts.lock().unwrap_or_else(|e| e.into_inner())
}

/// The current runtime, if it is one a guard helps: a multi-threaded tokio
/// runtime (a current-thread one has no other worker to wake).
pub(super) fn current_runtime() -> Option<Handle> {
    Handle::try_current()
        .ok()
        .filter(|runtime| runtime.runtime_flavor() == RuntimeFlavor::MultiThread)
}

/// Has `runtime`'s guard watch `host`, starting the guard if the runtime
/// has none. The caller registers each host once per runtime.
pub(super) fn watch(host: Weak<dyn Watched>, runtime: &Handle) {
    let watching = Watching { host, seen: None };
    let mut guards = guards();
    if let Some(hosts) = guards.get(&runtime.id()) {
        lock(hosts).push(watching);
        return;
    }
    let hosts = Arc::new(Mutex::new(vec![watching]));
    let (id, handle, watched) = (runtime.id(), runtime.clone(), hosts.clone());
    let spawned = std::thread::Builder::new()
        .name("cosystem-stall-guard".into())
        .spawn(move || guard(id, &handle, &watched));
    match spawned {
        Ok(_) => {
            guards.insert(runtime.id(), hosts);
        }
        Err(error) => tracing::warn!(
            "no stall guard ({error}): a slow method may hold up every socket of its runtime"
        ),
    }
}

fn guard(id: Id, runtime: &Handle, hosts: &Mutex<Vec<Watching>>) {
    loop {
        std::thread::sleep(INTERVAL);
        // The map first, as `watch` takes them: a host registered now is
        // either seen below or finds this guard gone and starts another.
        let mut guards = guards();
        let mut hosts = lock(hosts);
        let mut held = false;
        hosts.retain_mut(|watching| {
            let Some(host) = watching.host.upgrade().filter(|host| !host.closed()) else {
                return false;
            };
            let holding = host.busy().holding();
            // The same input for a whole interval: a method taking long.
            held |= holding.is_some() && holding == watching.seen;
            watching.seen = holding;
            true
        });
        if hosts.is_empty() {
            guards.remove(&id);
            return;
        }
        drop((hosts, guards));
        if held {
            drop(runtime.spawn(async {}));
        }
    }
}
