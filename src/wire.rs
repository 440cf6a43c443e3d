//! Wire types of `cosystem.worker.v1`, generated from `proto/`, plus the
//! shared, encode-once [`HostFrame`] and small constructors.
//!
//! Everything a peer sends is one of two envelopes: [`ClientMessage`] or
//! [`HostMessage`]. The protocol version they carry is [`PROTOCOL_VERSION`].

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use prost::Message;

#[allow(clippy::all, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/cosystem.worker.v1.rs"));
}
pub use generated::*;

/// The protocol major version this crate implements.
pub const PROTOCOL_VERSION: u32 = 1;

/// The encoded `FileDescriptorSet` of `proto/`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/worker_descriptor.bin"));

/// A host message shared by every receiver of it.
///
/// Cloning is a reference-count increment. In-memory transports hand the
/// decoded message over as it is; byte transports call [`HostFrame::encoded`],
/// which serialises the message at most once however many streams write it.
#[derive(Clone, Debug)]
pub struct HostFrame(Arc<FrameInner>);

#[derive(Debug)]
struct FrameInner {
    message: HostMessage,
    encoded: OnceLock<Bytes>,
}

impl HostFrame {
    /// Wraps a message; nothing is encoded yet.
    pub fn new(message: HostMessage) -> Self {
        Self(Arc::new(FrameInner {
            message,
            encoded: OnceLock::new(),
        }))
    }

    /// The message itself.
    pub fn message(&self) -> &HostMessage {
        &self.0.message
    }

    /// The protobuf encoding of the message, computed on first use and then
    /// shared (the returned `Bytes` points at the same allocation every time).
    pub fn encoded(&self) -> Bytes {
        self.0
            .encoded
            .get_or_init(|| Bytes::from(self.0.message.encode_to_vec()))
            .clone()
    }

    /// The message itself, by value: moved out when this is the frame's only
    /// handle (a result or a sync answer, sent to one session), cloned when
    /// other handles share it (a publication, also held by the history).
    pub fn into_message(self) -> HostMessage {
        match Arc::try_unwrap(self.0) {
            Ok(inner) => inner.message,
            Err(shared) => shared.message.clone(),
        }
    }

    /// Whether two frames are the same shared frame (not merely equal).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl From<HostMessage> for HostFrame {
    fn from(message: HostMessage) -> Self {
        Self::new(message)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(patch_json: &str) -> HostMessage {
        HostMessage {
            header: Some(Header::v1("e", "host", "")),
            kind: Some(host_message::Kind::Patch(Patch {
                base_version: 1,
                version: 2,
                patch_json: patch_json.to_owned(),
                sync_id: 0,
            })),
        }
    }

    #[test]
    fn into_message_gives_the_message_whether_or_not_the_frame_is_shared() {
        let only = HostFrame::new(message("[1]"));
        assert_eq!(only.into_message(), message("[1]"));

        let shared = HostFrame::new(message("[2]"));
        let other = shared.clone();
        assert_eq!(shared.into_message(), message("[2]"));
        // The other handle still holds the same message.
        assert_eq!(other.message(), &message("[2]"));
    }
}
