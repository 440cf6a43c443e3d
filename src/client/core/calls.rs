//! Calls made, cancelled and settled locally (R1–R4).

use std::time::Instant;

use prost::Message;
use prost::encoding::{encoded_len_varint, key_len};
use serde_json::Value;

use super::{ClientCore, MAX_EPOCH, Pending, withdraw};
use crate::app::MethodError;
use crate::client::event::{CallId, ClientError, ClientEvent};
use crate::wire::{Call, ClientMessage, ErrorCode, client_message};

/// The max message size every host accepts at least (spec §15).
const MIN_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// How many bytes longer a ClientMessage whose header encodes to
/// `header_len` bytes with no epoch gets once the header carries an epoch
/// of [`MAX_EPOCH`] bytes: the field's key, length and bytes, and what that
/// adds to the header's own length prefix.
fn epoch_margin(header_len: usize) -> usize {
    let epoch = key_len(2) + encoded_len_varint(MAX_EPOCH as u64) + MAX_EPOCH;
    epoch + encoded_len_varint((header_len + epoch) as u64) - encoded_len_varint(header_len as u64)
}

impl ClientCore {
    /// Starts a call of `module.method` with positional `args`.
    ///
    /// Every call whose id is returned settles exactly once, through a
    /// [`ClientEvent::Settled`]. `deadline`, if any, is enforced by
    /// [`ClientCore::handle_timeout`].
    pub fn call(
        &mut self,
        module: &str,
        method: &str,
        args: &[Value],
        deadline: Option<Instant>,
    ) -> Result<CallId, ClientError> {
        let args_json = serde_json::to_string(args)
            .map_err(|e| ClientError::InvalidArguments(e.to_string()))?;
        self.call_json(module, method, args_json, deadline)
    }

    /// Like [`ClientCore::call`], with the arguments already encoded as a
    /// JSON array.
    pub fn call_json(
        &mut self,
        module: &str,
        method: &str,
        args_json: String,
        deadline: Option<Instant>,
    ) -> Result<CallId, ClientError> {
        if self.disposed {
            return Err(ClientError::Disposed);
        }
        if self.pending.len() >= self.config.max_calls_in_flight {
            return Err(ClientError::TooManyCalls {
                limit: self.config.max_calls_in_flight,
            });
        }
        let call_id = self.next_call;
        let message = ClientMessage {
            header: Some(self.header()),
            kind: Some(client_message::Kind::Call(Call {
                call_id,
                module: module.to_owned(),
                method: method.to_owned(),
                args_json,
            })),
        };
        let size = message.encoded_len();
        // In EMPTY the Call leaves stamped with the host's epoch, which it
        // is not measured with (L2's margin), so it is also measured with
        // the longest a host may have. That only matters where the host
        // could refuse it: every host accepts envelopes of up to the 1 MiB
        // minimum, so a client limit under it keeps its every call below.
        let as_sent = match (&self.mirror, &message.header) {
            (None, Some(header)) => size + epoch_margin(header.encoded_len()),
            _ => size,
        };
        let limit = self.config.max_message_bytes;
        if size > limit {
            return Err(ClientError::CallTooLarge { size, limit });
        }
        if as_sent > limit.max(MIN_MAX_MESSAGE_BYTES) {
            return Err(ClientError::CallTooLarge {
                size: as_sent,
                limit,
            });
        }
        self.next_call += 1;
        self.pending.insert(
            call_id,
            Pending {
                epoch: self.mirror.as_ref().map(|m| m.epoch.clone()),
                deadline,
                transmitted: false,
                held: None,
            },
        );
        self.outbox.push_back(message);
        Ok(CallId(call_id))
    }

    /// Cancels a pending call: it settles `cancelled` now. The host may still
    /// run it; its result will then be ignored. Returns whether it was pending.
    pub fn cancel(&mut self, call: CallId) -> bool {
        self.settle_saying_how_far(call.0, ErrorCode::Cancelled, "the call was cancelled")
    }

    /// Settles a pending call locally with `code`, for a driver whose
    /// transport ended for good: a stopped client settles what is pending
    /// with the stop's code (spec §11.1), its message `what` happened
    /// followed by how far the call got. Returns whether it was pending.
    pub fn settle_stopped(&mut self, call: CallId, code: ErrorCode, what: &str) -> bool {
        self.settle_saying_how_far(call.0, code, what)
    }

    /// Settles a pending call locally with `what` happened, followed by how
    /// far the call got (`Pending::progress`): whether it
    /// was sent, and whether its answer had arrived. Returns whether it was
    /// pending.
    pub(super) fn settle_saying_how_far(
        &mut self,
        call_id: u64,
        code: ErrorCode,
        what: &str,
    ) -> bool {
        let Some(pending) = self.pending.get(&call_id) else {
            return false;
        };
        let message = format!("{what} {}", pending.progress());
        self.settle_local(call_id, code, &message)
    }

    pub(super) fn settle_local(&mut self, call_id: u64, code: ErrorCode, message: &str) -> bool {
        let Some(pending) = self.pending.remove(&call_id) else {
            return false;
        };
        if let Some(held) = &pending.held {
            self.held.remove(call_id, held);
        }
        if !pending.transmitted {
            // Never sent, so never run: drop it rather than send it.
            self.withdraw(call_id);
        }
        self.events.push_back(ClientEvent::Settled {
            call: CallId(call_id),
            outcome: Err(MethodError::new(code, message)),
            state_version: None,
            sent: pending.transmitted,
        });
        true
    }

    /// Removes a settled call that was never sent from the outbox: a settled
    /// call must not be sent afterwards.
    pub(super) fn withdraw(&mut self, call_id: u64) {
        withdraw(&mut self.outbox, call_id);
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::{MAX_EPOCH, epoch_margin};
    use crate::wire::{Call, ClientMessage, Header, client_message};

    fn call_with(source_len: usize, epoch: &str) -> ClientMessage {
        ClientMessage {
            header: Some(Header {
                protocol_version: 1,
                epoch: epoch.to_owned(),
                source: "s".repeat(source_len),
                ..Header::default()
            }),
            kind: Some(client_message::Kind::Call(Call {
                call_id: 7,
                module: "counter".into(),
                method: "increase".into(),
                args_json: "[1]".into(),
            })),
        }
    }

    #[test]
    fn the_epoch_margin_is_exactly_what_the_longest_epoch_adds() {
        let longest = "e".repeat(MAX_EPOCH);
        // Sources across the header length's varint boundaries.
        for source_len in (0..200).chain(15_000..15_600).chain([100_000]) {
            let without = call_with(source_len, "");
            let header_len = without.header.as_ref().map_or(0, Message::encoded_len);
            assert_eq!(
                call_with(source_len, &longest).encoded_len(),
                without.encoded_len() + epoch_margin(header_len),
                "source of {source_len} bytes"
            );
        }
    }
}
