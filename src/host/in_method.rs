//! Which host's method the current thread is running.
//!
//! A method runs with its host's core locked. A driver that is asked to
//! lock that core again from inside the method (the method calling back
//! into its own `Host`) must refuse rather than deadlock; this is how it
//! knows.

thread_local! {
    /// The id of the core whose method this thread is running, or 0.
    static INNERMOST: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// The cores of the methods that one runs inside, outermost first:
    /// a method of host A that runs a method of host B still holds A's
    /// core, so B's method calling back into A must be refused as A's own
    /// would be. Empty unless methods nest, so that the common check (no
    /// method running, as when a session locks the core) never touches it.
    static OUTER: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Hands every core an id of its own, never 0.
static NEXT_CORE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Marks the current thread as running a method of core `id` until
/// dropped; holds the core it ran inside, or 0.
pub(super) struct InMethod(u64);

impl InMethod {
    pub(super) fn enter(id: u64) -> Self {
        let outer = INNERMOST.with(|m| m.replace(id));
        if outer != 0 {
            OUTER.with(|o| o.borrow_mut().push(outer));
        }
        InMethod(outer)
    }
}

impl Drop for InMethod {
    fn drop(&mut self) {
        INNERMOST.with(|m| m.set(self.0));
        if self.0 != 0 {
            OUTER.with(|o| o.borrow_mut().pop());
        }
    }
}

/// Whether the current thread is running a method of the core with this
/// `HostCore::id`, however deeply nested in other hosts' methods, and so
/// holds that core: a driver that would lock it again must refuse instead
/// of deadlocking.
pub(crate) fn in_method_of(id: u64) -> bool {
    let innermost = INNERMOST.with(std::cell::Cell::get);
    innermost == id || (innermost != 0 && OUTER.with(|o| o.borrow().contains(&id)))
}

/// A new core id, never 0 and never handed out twice in the process.
pub(super) fn new_core_id() -> u64 {
    NEXT_CORE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What a driver panics with when a method calls back into its own host:
/// the method's bug, which the host reports to the caller as it is (a
/// method's other panics are not, since their messages may quote data).
pub(crate) const CALLED_BACK: &str = "a method called back into its own host (Host::view, version, …), which would deadlock; use its Draft or state instead";

/// Panics with [`CALLED_BACK`] as its message, so that the panic hook's
/// log line says what went wrong.
pub(crate) fn called_back() -> ! {
    std::panic::panic_any(CALLED_BACK)
}

/// Whether a panic's payload is that of [`called_back`]. Judged by its
/// text: a method that panics with the very same words gets the same
/// answer, which reveals nothing but those words.
pub(crate) fn is_called_back(payload: &(dyn std::any::Any + Send)) -> bool {
    payload
        .downcast_ref::<&str>()
        .is_some_and(|message| *message == CALLED_BACK)
}
