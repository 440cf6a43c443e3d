//! The host: runs the app's modules and publishes their state.
//!
//! [`HostCore`] is the sans-IO state machine; the async driver that runs it
//! over a transport lives beside it.

mod busy;
mod caller;
mod config;
mod core;
mod core_lock;
mod driver;
mod encode;
mod error;
mod event;
mod history;
mod in_method;
mod input;
mod session_end;
mod shared_channel;
mod stall_guard;
mod stats;
mod timing;
mod view_depth;
mod view_size;

pub use caller::{Caller, Principal, caller};
pub use config::{HostConfig, HostLimits, SyncMode};
pub use core::{HostCore, MAX_PEER_ID, PeerKey, PeerOptions};
pub use driver::{DEFAULT_BOOKMARK_INTERVAL, EVENT_BUFFER, Host, HostBuilder, Session};
pub use error::InputError;
pub(crate) use error::SHUT_DOWN_REFUSAL;
pub use event::{CallRecord, HostEvent, RECORDED_NAME};
pub use input::{ARGS_BUDGET_BYTES, ArgsBudget, MAX_PREPARSED_ARGS, PreparedInput};
pub(crate) use session_end::SessionEnd;
pub use shared_channel::{ReplySessions, Unaddressed, admit};
pub use stats::HostStats;
pub use timing::{LatencyHistogram, MethodRun, MethodTiming};
pub use view_depth::{MAX_PRIVATE_DEPTH, MAX_VIEW_DEPTH};

/// A new epoch: 128 bits, hex, different for every call in practice.
///
/// It mixes the process id, the wall clock and std's per-process random
/// hasher keys; an epoch only has to differ from earlier epochs of the same
/// host, not be secret.
pub fn new_epoch() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut words = [0u64; 2];
    for (i, word) in words.iter_mut().enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_usize(i);
        *word = h.finish();
    }
    format!("{:016x}{:016x}", words[0], words[1])
}
