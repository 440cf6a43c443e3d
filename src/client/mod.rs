//! The client: mirrors a host's published view and delegates calls to it.
//!
//! [`ClientCore`] is the sans-IO state machine; the async driver that runs it
//! over a transport lives beside it.

mod apply;
mod core;

pub use apply::{ApplyError, MAX_MIRROR_DEPTH, apply_patch, copy_budget};
pub use core::{
    CallId, ClientConfig, ClientCore, ClientError, ClientEvent, Conflict, ConflictReason, Notice,
};
