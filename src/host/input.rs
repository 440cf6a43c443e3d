//! A client's envelope made ready for the core without the core.
//!
//! Decoding an envelope, holding it to the message size limit and parsing a
//! call's arguments depend on nothing the core holds, yet a core that did
//! them itself did them with every other session waiting: a call whose
//! arguments are megabytes of JSON held the whole host for milliseconds
//! while they were parsed. A driver makes a [`PreparedInput`] first, then
//! locks the core for what only the core can do
//! ([`HostCore::handle_input`](super::HostCore::handle_input)).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use super::error::InputError;
use crate::app::MethodError;
use crate::wire::view::{ClientKindView, ClientView};
use crate::wire::{ClientMessage, client_message};
use prost::Message;

/// One envelope from a client, decoded and sized, with a call's arguments
/// already parsed if they are at most [`MAX_PREPARSED_ARGS`] bytes long.
///
/// Handing it to [`HostCore::handle_input`](super::HostCore::handle_input)
/// has exactly the effect of handing its bytes to `handle_bytes` (or its
/// message to `handle_message`): the same outputs, the same errors. The
/// core holds every input to its own message size limit whatever limit the
/// input was prepared against; preparing against that same limit only
/// spares the core redoing the work.
#[derive(Debug)]
pub struct PreparedInput<'a> {
    pub(super) source: Source<'a>,
    /// The message size limit `size` and `args` were worked out against.
    pub(super) limit: usize,
    /// The envelope's encoded size: always for bytes; for a message, when
    /// it may be over `limit` (`None` when its strings alone show it is
    /// within).
    pub(super) size: Option<usize>,
    /// A call's arguments as `args_json` parses (J4), when the envelope is
    /// a call within `limit` whose arguments are at most
    /// [`MAX_PREPARSED_ARGS`] bytes, or were parsed within a budget.
    pub(super) args: Option<Result<Vec<Value>, MethodError>>,
    /// The budget room longer parsed arguments hold, until this is dropped.
    reservation: Option<Reservation>,
}

/// What the envelope was handed over as.
#[derive(Debug)]
pub(super) enum Source<'a> {
    /// Bytes off the wire, read in place.
    View(ClientView<'a>),
    /// An envelope that was never encoded (in-process transports).
    Message(ClientMessage),
}

impl<'a> PreparedInput<'a> {
    /// Decodes one encoded `ClientMessage` held to `max_message_bytes`.
    ///
    /// # Errors
    /// [`InputError::MessageTooLarge`] for more bytes than the limit (they
    /// are not decoded) and [`InputError::Malformed`] for bytes that are not
    /// a `ClientMessage`. Prepared against the core's own limit, these are
    /// the errors `handle_bytes` returns for the same bytes; against a
    /// smaller one, bytes the core would take are refused here.
    pub fn decode(bytes: &'a [u8], max_message_bytes: usize) -> Result<Self, InputError> {
        if bytes.len() > max_message_bytes {
            return Err(InputError::MessageTooLarge {
                size: bytes.len(),
                limit: max_message_bytes,
            });
        }
        let view = ClientView::decode(bytes).map_err(|e| InputError::Malformed(e.to_string()))?;
        Ok(Self {
            args: call_args(&view),
            source: Source::View(view),
            limit: max_message_bytes,
            size: Some(bytes.len()),
            reservation: None,
        })
    }
}

impl PreparedInput<'_> {
    /// Parses a call's arguments longer than [`MAX_PREPARSED_ARGS`] now,
    /// before the core is locked, if `budget` has room for their text; the
    /// room is held until this input is dropped. Without room, or for
    /// anything else, it does nothing, and the core parses them under its
    /// lock. Either way the input's effect is the same.
    pub fn parse_ahead(&mut self, budget: &ArgsBudget) {
        if self.args.is_some() || self.size.is_some_and(|size| size > self.limit) {
            return;
        }
        let view = match &self.source {
            Source::View(view) => *view,
            Source::Message(message) => ClientView::from(message),
        };
        let Some(ClientKindView::Call(call)) = view.kind else {
            return;
        };
        if let Some(reservation) = budget.reserve(call.args_json.len()) {
            self.args = Some(parse_args(call.args_json));
            self.reservation = Some(reservation);
        }
    }
}

impl PreparedInput<'static> {
    /// An envelope that was never encoded, sized as it would be encoded
    /// against `max_message_bytes`.
    pub fn message(message: ClientMessage, max_message_bytes: usize) -> Self {
        let size = size_near_limit(&message, max_message_bytes);
        let within = size.is_none_or(|size| size <= max_message_bytes);
        let args = within
            .then(|| call_args(&ClientView::from(&message)))
            .flatten();
        Self {
            source: Source::Message(message),
            limit: max_message_bytes,
            size,
            args,
            reservation: None,
        }
    }
}

/// The longest `args_json` that [`PreparedInput::decode`] and
/// [`PreparedInput::message`] parse on their own; longer arguments are
/// parsed ahead only within an [`ArgsBudget`]
/// ([`PreparedInput::parse_ahead`]), and otherwise by the core, under its
/// lock.
///
/// Parsed JSON takes up to ~16× its text (`[0,0,…]`: a 32-byte `Value` per
/// 2 bytes, and the array's spare capacity), and every session may hold
/// one prepared input while another session's method has the core. Parsed
/// ahead without a bound, a 4 MiB call would hold 64 MiB per session that
/// sends one; up to this length, a waiting session holds ~4 MiB at most,
/// about what its envelope's bytes take anyway.
pub const MAX_PREPARSED_ARGS: usize = 256 * 1024;

/// How many bytes of arguments longer than [`MAX_PREPARSED_ARGS`] a host's
/// sessions may hold parsed ahead at once, in all: 8 MiB of text, at most
/// ~128 MiB parsed. A few large calls are parsed outside the lock, as
/// shorter ones are; a flood of them is parsed one at a time under it.
pub const ARGS_BUDGET_BYTES: usize = 8 * 1024 * 1024;

/// The room a host's sessions share for parsing long arguments ahead of
/// the lock ([`PreparedInput::parse_ahead`]). Cloning shares the room.
#[derive(Debug, Clone)]
pub struct ArgsBudget {
    held: Arc<AtomicUsize>,
    limit: usize,
}

impl ArgsBudget {
    /// Room for `limit` bytes of argument text at once.
    pub fn new(limit: usize) -> Self {
        Self {
            held: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Bytes of argument text now held parsed within this budget.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Takes `bytes` of the room, if that much is free.
    fn reserve(&self, bytes: usize) -> Option<Reservation> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .ok()?;
        Some(Reservation {
            held: self.held.clone(),
            bytes,
        })
    }
}

impl Default for ArgsBudget {
    /// [`ARGS_BUDGET_BYTES`].
    fn default() -> Self {
        Self::new(ARGS_BUDGET_BYTES)
    }
}

/// Room taken in an [`ArgsBudget`], given back when the input holding it
/// is dropped.
#[derive(Debug)]
struct Reservation {
    held: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The arguments of `view` if it is a call whose arguments are short
/// enough to parse ahead unbudgeted ([`MAX_PREPARSED_ARGS`]).
fn call_args(view: &ClientView<'_>) -> Option<Result<Vec<Value>, MethodError>> {
    match view.kind {
        Some(ClientKindView::Call(call)) if call.args_json.len() <= MAX_PREPARSED_ARGS => {
            Some(parse_args(call.args_json))
        }
        _ => None,
    }
}

/// A call's `args_json` as its positional arguments.
pub(super) fn parse_args(args_json: &str) -> Result<Vec<Value>, MethodError> {
    // Only the proto3 default `""` means `[]` (J4); whitespace alone is not
    // JSON text, so it is refused like any other non-array.
    if args_json.is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str::<Value>(args_json) {
        Ok(Value::Array(args)) => Ok(args),
        Ok(_) => Err(MethodError::invalid_argument(
            "args_json must be a JSON array of positional arguments",
        )),
        Err(e) => Err(MethodError::invalid_argument(format!(
            "args_json is not valid JSON: {e}"
        ))),
    }
}

/// Bytes an envelope's encoding can take beyond its strings' own lengths:
/// every tag, length prefix and integer at its longest (a Call's envelope
/// needs at most 71, a SyncRequest's at most 75, with 5-byte length prefixes).
const ENVELOPE_OVERHEAD: usize = 128;

/// The envelope's encoded size if it may be over `limit`; `None` when the
/// lengths of its strings alone show it is within. Exact measuring walks
/// every field, which the per-call path of in-process transports would pay
/// for nothing: almost every envelope is far below the limit.
pub(super) fn size_near_limit(message: &ClientMessage, limit: usize) -> Option<usize> {
    let header = message.header.as_ref().map_or(0, |h| {
        h.epoch.len() + h.source.len() + h.target.len() + h.capability.len()
    });
    let kind = match &message.kind {
        Some(client_message::Kind::Call(c)) => c.module.len() + c.method.len() + c.args_json.len(),
        Some(client_message::Kind::SyncRequest(_)) | None => 0,
    };
    let bound = header
        .saturating_add(kind)
        .saturating_add(ENVELOPE_OVERHEAD);
    (bound > limit).then(|| message.encoded_len())
}

#[cfg(test)]
mod preparse_tests {
    use super::{ArgsBudget, MAX_PREPARSED_ARGS, PreparedInput};
    use crate::wire::{Call, ClientMessage, Header, client_message};
    use prost::Message;

    const LIMIT: usize = 4 * 1024 * 1024;

    /// A call whose `args_json` is `[0,0,…]`, padded with spaces to exactly
    /// `len` bytes (at least 3), encoded.
    fn call_with_args_of(len: usize) -> Vec<u8> {
        let zeros = (len - 1) / 2;
        let mut args_json = format!("[0{}", ",0".repeat(zeros - 1));
        args_json.push_str(&" ".repeat(len - 1 - args_json.len()));
        args_json.push(']');
        assert_eq!(args_json.len(), len);
        ClientMessage {
            header: Some(Header::v1("", "c", "")),
            kind: Some(client_message::Kind::Call(Call {
                call_id: 1,
                module: "m".into(),
                method: "f".into(),
                args_json,
            })),
        }
        .encode_to_vec()
    }

    #[test]
    fn arguments_up_to_the_bound_are_parsed_ahead_and_longer_ones_left_to_the_core() {
        for len in [MAX_PREPARSED_ARGS - 1, MAX_PREPARSED_ARGS] {
            let bytes = call_with_args_of(len);
            let prepared = PreparedInput::decode(&bytes, LIMIT).expect("a call");
            assert!(matches!(&prepared.args, Some(Ok(_))), "{len}");
        }
        let over = call_with_args_of(MAX_PREPARSED_ARGS + 1);
        let prepared = PreparedInput::decode(&over, LIMIT).expect("a call");
        assert!(prepared.args.is_none());
    }

    #[test]
    fn longer_arguments_are_parsed_ahead_within_the_budget_and_give_its_room_back() {
        let long = call_with_args_of(MAX_PREPARSED_ARGS + 1);
        let budget = ArgsBudget::new(MAX_PREPARSED_ARGS * 3 / 2);
        let mut first = PreparedInput::decode(&long, LIMIT).expect("a call");
        first.parse_ahead(&budget);
        assert!(matches!(&first.args, Some(Ok(_))));
        assert_eq!(budget.held(), MAX_PREPARSED_ARGS + 1);
        // No room for a second while the first is held: the core parses it.
        let mut second = PreparedInput::decode(&long, LIMIT).expect("a call");
        second.parse_ahead(&budget);
        assert!(second.args.is_none());
        drop(first);
        assert_eq!(budget.held(), 0);
        second.parse_ahead(&budget);
        assert!(matches!(&second.args, Some(Ok(_))));
        drop(second);
        assert_eq!(budget.held(), 0);
    }
}

#[cfg(test)]
mod size_tests {
    use super::{ENVELOPE_OVERHEAD, size_near_limit};
    use crate::wire::{Call, ClientMessage, Header, SyncRequest, client_message};
    use proptest::prelude::*;
    use prost::Message;

    proptest! {
        /// The cheap bound never lets an envelope over the limit through,
        /// and is exact whenever it measures.
        #[test]
        fn size_near_limit_never_misses_an_envelope_over_the_limit(
            message in crate::wire::view::tests::client_message(),
            limit in 0usize..400,
        ) {
            let exact = message.encoded_len();
            match size_near_limit(&message, limit) {
                Some(size) => prop_assert_eq!(size, exact),
                None => prop_assert!(exact <= limit, "{} > {}", exact, limit),
            }
        }
    }

    #[test]
    fn the_overhead_covers_the_largest_fixed_fields() {
        let max = ClientMessage {
            header: Some(Header {
                protocol_version: u32::MAX,
                ..Header::default()
            }),
            kind: Some(client_message::Kind::SyncRequest(SyncRequest {
                sync_id: u64::MAX,
                have_version: u64::MAX,
                reason: -1,
            })),
        };
        assert!(
            max.encoded_len() <= ENVELOPE_OVERHEAD,
            "{}",
            max.encoded_len()
        );
        let call = ClientMessage {
            header: Some(Header {
                protocol_version: u32::MAX,
                ..Header::default()
            }),
            kind: Some(client_message::Kind::Call(Call {
                call_id: u64::MAX,
                ..Call::default()
            })),
        };
        assert!(
            call.encoded_len() <= ENVELOPE_OVERHEAD,
            "{}",
            call.encoded_len()
        );
    }
}
