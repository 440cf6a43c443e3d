//! The application model: modules with state and declared methods.
//!
//! A [`Module`] owns one top-level section of the host's state. Only the
//! methods it declares are callable remotely. Two ready-made kinds exist:
//!
//! - [`TypedModule`]: state is any serde type mutated through `&mut S`; the
//!   host diffs the module's JSON before and after each call. Short to write,
//!   costs O(module size) per call.
//! - [`JsonModule`]: state is a JSON tree mutated through a [`Draft`] that
//!   records RFC 6902 operations as it goes, so publishing costs O(change).
//!
//! A method that panics commits nothing and its call is answered
//! `internal`, because the host catches the unwind. That needs the binary
//! to unwind on panic: built with `panic = "abort"`, a panicking method
//! (or one that calls a `Host` method documented to panic inside a
//! method) ends the whole process.

mod args;
mod diff;
mod draft;
mod draft_error;
mod error;
mod json;
pub(crate) use json::check_finite;
pub(crate) mod json_len;
mod methods;
mod pointer;
mod typed;

use serde_json::Value;

/// The codes a [`MethodError`] carries (the wire's `ErrorCode`). A method
/// may choose any but the client-only ones (`DEADLINE_EXCEEDED`,
/// `CANCELLED`, `DISPOSED`, `OUTCOME_UNKNOWN`, `UNSPECIFIED`), which the host
/// answers as `INTERNAL` (spec H9).
pub use crate::wire::ErrorCode;
pub use args::FromArgs;
pub use draft::{Draft, JsonModule};
pub use draft_error::DraftError;
pub use error::MethodError;
pub use json_patch::PatchOperation;
pub use pointer::pointer;
pub use typed::TypedModule;

/// What a successful method invocation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// The method's return value.
    pub value: Value,
    /// RFC 6902 operations, with paths relative to the module's root, that
    /// take the module's state before the call to its state after it. Empty
    /// when the call changed nothing.
    pub ops: Vec<PatchOperation>,
}

/// One hosted module.
///
/// Contract the host relies on:
/// - [`Module::state`] is the state as of the last successful invocation.
/// - [`Module::invoke`] either succeeds, and `ops` applied to the previous
///   `state()` yields the new `state()`, or fails and leaves `state()` as it was.
/// - After a panic escaped `invoke`, the host calls [`Module::rollback`], which
///   restores the state as of the last successful invocation.
pub trait Module: Send + 'static {
    /// The module's name: its section key in the published view.
    fn name(&self) -> &str;
    /// Whether `method` is declared, and so callable remotely.
    fn declares(&self, method: &str) -> bool;
    /// The declared method names, sorted.
    fn methods(&self) -> Vec<String>;
    /// The committed state as JSON.
    fn state(&self) -> &Value;
    /// Runs a declared method with positional JSON arguments.
    fn invoke(&mut self, method: &str, args: &[Value]) -> Result<Invocation, MethodError>;
    /// Restores the committed state after a panic inside [`Module::invoke`].
    fn rollback(&mut self);
    /// The host's verdict on the last successful [`Module::invoke`], given
    /// once, right after it: `keep` the call's changes, or revert them (the
    /// host refuses a commit that would make the published view too large
    /// to send as one snapshot, spec §15). Returns whether the state now
    /// matches the verdict. The default keeps everything and cannot revert:
    /// it returns `false` for `keep == false`, and the host then lets the
    /// commit stand, answering the call `resource-exhausted` all the same.
    /// A published view then too large for one snapshot leaves every client
    /// that needs one unable to sync until a later call shrinks it, so a
    /// module whose calls can grow its state should implement this (both
    /// built-in kinds do).
    fn settle(&mut self, keep: bool) -> bool {
        keep
    }
    /// While the last successful [`Module::invoke`] is unsettled: exactly how
    /// many bytes it changed the length of [`Module::state`]'s compact JSON
    /// text by (negative when it shrank). `None`, the default, when the
    /// module does not track it.
    ///
    /// The host asks after every call that changed the state, so it must be
    /// cheap: both built-in kinds add it up as the call runs, in time
    /// proportional to the change. With it, the host keeps the published
    /// view's length exact and refuses a call that would make the view too
    /// large to send (spec §15) in time proportional to the change; without
    /// it, the host bounds the growth by the patch's text and measures the
    /// whole view, O(state), whenever that bound reaches the limit. A wrong
    /// answer makes the host misjudge the view's size.
    fn size_change(&self) -> Option<i64> {
        None
    }
    /// How many bytes the next [`Module::invoke`] may grow
    /// [`Module::state`]'s compact JSON text by before its commit is sure
    /// to be refused as too large to send (spec §15); `None`: no limit. The
    /// host sets it before each call on a published section, from the room
    /// the view has left.
    ///
    /// A module that can stop a call's work once its changes pass the limit
    /// should fail the call with `resource-exhausted` and change nothing, so
    /// that what a call costs is bounded by that room rather than by its
    /// arguments: [`JsonModule`] refuses the draft operation that would
    /// pass it, and then the whole call. The default ignores it; the host
    /// still refuses such a commit once the method returns.
    fn limit_growth(&mut self, limit: Option<usize>) {
        let _ = limit;
    }
}

/// The modules a host runs, in a fixed order.
#[derive(Default)]
pub struct App {
    modules: Vec<Box<dyn Module>>,
}

impl App {
    /// An app with no modules.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a module. A later module with the same name replaces the
    /// earlier one, silently: give each module a name of its own (the
    /// names are the published sections' and the calls' module names).
    pub fn with(mut self, module: impl Module) -> Self {
        self.add(Box::new(module));
        self
    }

    /// Adds a boxed module, replacing any module of the same name.
    pub fn add(&mut self, module: Box<dyn Module>) {
        self.modules.retain(|m| m.name() != module.name());
        self.modules.push(module);
    }

    /// The modules' names, in insertion order.
    pub fn names(&self) -> Vec<String> {
        self.modules.iter().map(|m| m.name().to_owned()).collect()
    }

    pub(crate) fn into_modules(self) -> Vec<Box<dyn Module>> {
        self.modules
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("modules", &self.names())
            .finish()
    }
}
