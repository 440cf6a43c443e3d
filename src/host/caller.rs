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
    /// The calling peer's id: the `source` of the call's envelope (a
    /// client's `ClientConfig::peer_id`). Any client may claim any id;
    /// authorise on [`Caller::principal`], not on this.
    pub peer_id: Arc<str>,
    /// Who the session's transport authenticated, if the application told
    /// the host: a [`Principal`] in a gRPC `Session` request's extensions
    /// (put there by a `GrpcServerBuilder::interceptor`, or by a layer of
    /// the application's own server; the shared token alone names
    /// nobody), or
    /// [`Host::serve_as`](super::Host::serve_as) /
    /// [`Host::open_session_as`](super::Host::open_session_as) on other
    /// transports. It is fixed when the session opens and lasts as long as
    /// the session (a gRPC stream, until the client reconnects);
    /// [`Session::set_principal`](super::Session::set_principal) changes it.
    pub principal: Option<Arc<str>>,
}

/// The client whose call the current thread is running a method for.
///
/// `Some` only on the thread running a method for a client's call. `None`
/// means no client is known here, not that the code is trusted: it is what
/// a method run by [`Host::invoke`](super::Host::invoke) sees (even when
/// another host's method, run for a client, invoked it), and what threads
/// or tasks a method starts see. Read it once at the start of the method
/// and pass it on explicitly.
///
/// A method's change may still be reverted after it returns (a value or a
/// view too large to send); the authoritative audit record of a call is
/// its [`HostEvent::CallAnswered`](super::HostEvent::CallAnswered), which
/// carries the principal and the outcome.
pub fn caller() -> Option<Caller> {
    CALLER.with(|c| c.borrow().clone())
}

/// Names the authenticated caller of a gRPC session. Insert it into the
/// `Session` request's extensions from the server's interceptor
/// ([`GrpcServerBuilder::interceptor`](crate::transport::grpc::GrpcServerBuilder::interceptor))
/// or a tower layer of the application's own server, after checking a
/// token, a JWT or a client certificate; every call on that session then
/// runs with it as [`Caller::principal`].
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
