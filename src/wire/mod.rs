//! Wire types of `cosystem.worker.v1`, generated from `proto/`, plus the
//! shared, encode-once [`HostFrame`] and small constructors.
//!
//! Everything a peer sends is one of two envelopes: [`ClientMessage`] or
//! [`HostMessage`]. The protocol version they carry is [`PROTOCOL_VERSION`].

#[allow(clippy::all, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/cosystem.worker.v1.rs"));
}
pub use generated::*;

mod frame;
pub mod view;
pub use frame::{HostFrame, SharedHeader};

/// The protocol major version this crate implements.
pub const PROTOCOL_VERSION: u32 = 1;

/// The encoded `FileDescriptorSet` of `proto/`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/worker_descriptor.bin"));

impl Header {
    /// A version-1 header with the given epoch, source and target.
    pub fn v1(
        epoch: impl Into<String>,
        source: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            epoch: epoch.into(),
            source: source.into(),
            target: target.into(),
            capability: String::new(),
        }
    }
}

impl ErrorCode {
    /// Whether this is one of the codes a client gives its own calls and a
    /// host never sends (spec §14, 9 to 12): a call settled with one was not
    /// answered by the host, and may or may not have run. The converse does
    /// not hold: a client also settles calls locally with `unavailable`,
    /// `permission-denied`, `resource-exhausted` and `internal` (spec §14's
    /// codes that are "also local"). Whether the host answered is whether
    /// the settlement carries a state version.
    pub fn is_local(self) -> bool {
        matches!(
            self,
            ErrorCode::DeadlineExceeded
                | ErrorCode::Cancelled
                | ErrorCode::Disposed
                | ErrorCode::OutcomeUnknown
        )
    }

    /// The kebab-case name used in specs, vectors, logs and the CLI.
    pub fn kebab_name(self) -> &'static str {
        match self {
            ErrorCode::Unspecified => "unspecified",
            ErrorCode::NotFound => "not-found",
            ErrorCode::InvalidArgument => "invalid-argument",
            ErrorCode::Failed => "failed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::PermissionDenied => "permission-denied",
            ErrorCode::ResourceExhausted => "resource-exhausted",
            ErrorCode::Internal => "internal",
            ErrorCode::FailedPrecondition => "failed-precondition",
            ErrorCode::DeadlineExceeded => "deadline-exceeded",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Disposed => "disposed",
            ErrorCode::OutcomeUnknown => "outcome-unknown",
        }
    }
}
