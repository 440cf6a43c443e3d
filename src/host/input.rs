//! A client's envelope made ready for the core without the core.
//!
//! Decoding an envelope, holding it to the message size limit and parsing a
//! call's arguments depend on nothing the core holds, yet a core that did
//! them itself did them with every other session waiting: a call whose
//! arguments are megabytes of JSON held the whole host for milliseconds
//! while they were parsed. A driver makes a [`PreparedInput`] first, then
//! locks the core for what only the core can do
//! ([`HostCore::handle_input`](super::HostCore::handle_input)).

use serde_json::Value;

use super::core::{InputError, size_near_limit};
use crate::app::MethodError;
use crate::wire::ClientMessage;
use crate::wire::view::{ClientKindView, ClientView};

/// One envelope from a client, decoded and sized, with a call's arguments
/// already parsed.
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
    /// a call within `limit`.
    pub(super) args: Option<Result<Vec<Value>, MethodError>>,
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
        })
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
        }
    }
}

/// The arguments of `view` if it is a call.
fn call_args(view: &ClientView<'_>) -> Option<Result<Vec<Value>, MethodError>> {
    match view.kind {
        Some(ClientKindView::Call(call)) => Some(parse_args(call.args_json)),
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
