//! The client: mirrors a host's published view and delegates calls to it.
//!
//! [`ClientCore`] is the sans-IO state machine; [`Client`] drives it over a
//! transport on tokio.

mod apply;
mod call;
mod canonical;
mod config;
mod connection;
mod core;
mod driver;
mod equality;
mod event;
mod ops;
mod outbound;
mod read_ahead;
#[cfg(test)]
mod read_ahead_tests;
mod reconnect;
mod shift_credit;
mod watch;

pub use apply::{ApplyError, MAX_MIRROR_DEPTH, apply_patch, copy_budget, shift_budget};
pub use call::{CallAsError, CallFuture, CallOptions, ModuleHandle, VersionedCall};
pub use config::{ClientConfig, MIN_SYNC_RETRY};
pub use connection::Connection;
pub use core::{ClientCore, MAX_EPOCH};
pub use driver::{
    CLOSE_GRACE, CONFLICT_BUFFER, CallOutcome, Client, EVENT_BUFFER, MirrorSnapshot, Settlement,
};
pub use event::{CallId, ClientError, ClientEvent, Conflict, ConflictReason, Notice};
pub use reconnect::{JITTER, MIN_BACKOFF, Reconnect};
pub use watch::{Equals, Watch, WatchHandle, WatchOptions};
