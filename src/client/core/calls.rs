//! Calls made, cancelled and settled locally (R1–R4).

use std::time::Instant;

use prost::Message;
use serde_json::Value;

use super::{ClientCore, Pending, withdraw};
use crate::app::MethodError;
use crate::client::event::{CallId, ClientError, ClientEvent};
use crate::wire::{Call, ClientMessage, ErrorCode, client_message};

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
        if size > self.config.max_message_bytes {
            return Err(ClientError::CallTooLarge {
                size,
                limit: self.config.max_message_bytes,
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
        });
        true
    }

    /// Removes a settled call that was never sent from the outbox: a settled
    /// call must not be sent afterwards.
    pub(super) fn withdraw(&mut self, call_id: u64) {
        withdraw(&mut self.outbox, call_id);
    }
}
