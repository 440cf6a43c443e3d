//! Who a method is running for: the calling peer, and the principal its
//! transport authenticated, for methods that authorise or audit per caller.
//!
//! A method reads it with [`caller`] rather than through an argument, so
//! the [`Module`](crate::app::Module) trait and every method signature stay
//! as they are; a method that does not care pays nothing.

use std::cell::RefCell;
use std::sync::Arc;

thread_local! {
    static CALLER: RefCell<Option<Caller>> = const { RefCell::new(None) };
}

/// The client a method is running for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The calling peer's id: the `source` of its envelopes (a client's
    /// `ClientConfig::peer_id`). Any client may claim any id; authorise on
    /// [`Caller::principal`], not on this.
    pub peer_id: Arc<str>,
    /// Who the session's transport authenticated, if the application told
    /// the host ([`Principal`] on a gRPC request,
    /// [`Session::set_principal`](super::Session::set_principal) otherwise).
    pub principal: Option<Arc<str>>,
}

/// The client whose call the current thread is running a method for.
///
/// `Some` only inside a method run for a client's call; `None` elsewhere,
/// including inside a method run by [`Host::invoke`](super::Host::invoke).
pub fn caller() -> Option<Caller> {
    CALLER.with(|c| c.borrow().clone())
}

/// Names the authenticated caller of a gRPC session. Insert it into the
/// `Session` request's extensions from an interceptor or a tower layer
/// (after checking a token, a JWT or a client certificate); every call on
/// that session then runs with it as [`Caller::principal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(pub Arc<str>);

impl Principal {
    /// A principal named `name`.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(name.into())
    }
}

/// Makes `caller` the current thread's caller until dropped, then restores
/// the previous one (a method may run another host's method, which must
/// not see its own caller's).
pub(super) struct CallerScope(Option<Caller>);

impl CallerScope {
    pub(super) fn enter(caller: Option<Caller>) -> Self {
        Self(CALLER.with(|c| c.replace(caller)))
    }
}

impl Drop for CallerScope {
    fn drop(&mut self) {
        let previous = self.0.take();
        CALLER.with(|c| *c.borrow_mut() = previous);
    }
}
