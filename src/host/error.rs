//! Why the host core refused an input.

/// Why an input was refused. The host stays consistent and keeps serving
/// every other session whatever the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The session key is not (or no longer) connected.
    #[error("unknown session")]
    UnknownPeer,
    /// The host is shutting down and opens no new sessions.
    #[error("the host is shutting down")]
    ShuttingDown,
    /// The host already serves its maximum number of sessions.
    #[error("too many clients: the limit is {limit}")]
    TooManyClients {
        /// The configured maximum.
        limit: usize,
    },
    /// The encoded message is larger than the limit.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    MessageTooLarge {
        /// The message's size.
        size: usize,
        /// The configured maximum.
        limit: usize,
    },
    /// The envelope's `source` is longer than any peer id a host answers;
    /// ignored.
    #[error("source peer id of {len} bytes exceeds the limit of {limit}")]
    PeerIdTooLong {
        /// The `source`'s length in bytes.
        len: usize,
        /// The longest peer id processed.
        limit: usize,
    },
    /// The host carries a shared channel's capability token
    /// ([`HostBuilder::capability`](crate::host::HostBuilder::capability)),
    /// which it writes on everything it sends, so it opens no
    /// point-to-point session: there `capability` MUST be `""` (spec §3.2,
    /// G9, FB8), and the session's client would be handed the token.
    #[error(
        "the host carries a shared channel's capability token, which a point-to-point session must not be sent (spec §3.2): serve it from a host built without one"
    )]
    SharedChannelToken,
    /// The bytes are not a `ClientMessage`.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The envelope carries no message kind this host knows; ignored.
    #[error("no known message kind")]
    UnknownKind,
    /// The envelope's protocol version is not 1; a call was answered
    /// `failed-precondition`, anything else was ignored.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u32),
    /// The frame the session was sending would have taken the frames
    /// still arriving on its listener's connections past their budget; the
    /// driver closes the session (spec FB6).
    #[error("frames still arriving would hold more than {limit} bytes on this listener")]
    ReceiveBudget {
        /// The listener's budget in bytes.
        limit: usize,
    },
    /// The session keeps calling without reading its results; the driver
    /// SHOULD close it. Nothing was executed.
    #[error("session floods the host: {queued} unread answers")]
    Flooding {
        /// Answers queued for the session and not yet taken.
        queued: usize,
    },
    /// The session's unread results add up to more bytes than the host
    /// keeps for one session; the driver SHOULD close it. Nothing was
    /// executed.
    #[error("session does not read its results: {bytes} bytes unread, the limit is {limit}")]
    Backlog {
        /// Encoded bytes of the results queued for the session.
        bytes: usize,
        /// The most the host keeps queued for one session.
        limit: usize,
    },
}

impl InputError {
    /// Whether the session cannot go on whatever carries it: it floods the
    /// host, leaves its results unread, or is gone. Every driver ends the
    /// session on these. Others are ignored, or ended by the transport's
    /// own rules: a gRPC stream also ends on a
    /// [`Malformed`](InputError::Malformed) envelope (spec §17.2) and on
    /// [`ShuttingDown`](InputError::ShuttingDown); a session served over a
    /// link ([`Host::serve`](crate::host::Host::serve)) ends when the link
    /// cannot read a frame, reported as
    /// [`MessageTooLarge`](InputError::MessageTooLarge),
    /// [`Malformed`](InputError::Malformed) or
    /// [`ReceiveBudget`](InputError::ReceiveBudget) (spec FB6).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Flooding { .. } | Self::Backlog { .. } | Self::UnknownPeer
        )
    }
}

/// What a server says when asked to serve a host that has shut down.
pub(crate) const SHUT_DOWN_REFUSAL: &str =
    "the host has shut down and opens no session again: build a new host to serve";
