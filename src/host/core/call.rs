//! The call path: a Call answered, its method run as one atomic commit,
//! and the commit published.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use serde_json::Value;

use super::size_limits::{ViewBound, clamp};
use super::{Direct, HostCore, PeerKey};
use crate::app::MethodError;
use crate::host::caller::{Caller, CallerScope};
use crate::host::config::SyncMode;
use crate::host::encode::ops_json;
use crate::host::error::InputError;
use crate::host::event::{CallRecord, HostEvent, RECORDED_NAME, cut};
use crate::host::history::Entry;
use crate::host::in_method::{CALLED_BACK, InMethod, is_called_back};
use crate::host::input::parse_args;
use crate::host::view_depth::{
    MAX_PRIVATE_DEPTH, MAX_VIEW_DEPTH, private_too_deep, too_deep, value_too_deep,
};
use crate::host::view_size::growth_bound;
use crate::wire::view::{CallView, HeaderView};
use crate::wire::{
    CallResult, ErrorCode, HostFrame, PROTOCOL_VERSION, Patch, call_result, host_message,
};

/// The longest error message a host sends: a method's or a check's message
/// may quote what the peer sent, and must not let it amplify its input.
const MAX_ERROR_MESSAGE: usize = 1024;

/// The most bytes of JSON an error's details may take: with the message and
/// a peer id, a result stays far inside the smallest message limit (§15).
const MAX_ERROR_DETAILS: usize = 64 * 1024;

/// A name a peer chose, for a log line or an error message: escaped, and
/// cut after [`Clipped::KEEP`] bytes (a peer can send names up to the
/// message limit, which neither may repeat: escaping 4 MiB of control
/// characters took ~80 ms under the core's lock).
struct Clipped<'a>(&'a str);

impl Clipped<'_> {
    const KEEP: usize = 128;
}

impl std::fmt::Debug for Clipped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.len() <= Self::KEEP {
            return std::fmt::Debug::fmt(self.0, f);
        }
        let mut end = Self::KEEP;
        while !self.0.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{:?}… ({} bytes)", &self.0[..end], self.0.len())
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if is_called_back(payload) {
        CALLED_BACK.to_owned()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}

impl HostCore {
    /// Answers a Call; `oversize` is its envelope's size when that is over
    /// the max message size.
    pub(super) fn handle_call(
        &mut self,
        peer: PeerKey,
        header: &HeaderView<'_>,
        call: CallView<'_>,
        oversize: Option<usize>,
        args: Option<&Result<Vec<Value>, MethodError>>,
    ) -> Result<(), InputError> {
        let limit = self.config.limits.max_calls_in_flight;
        // Only results count: a queued sync answer is not a call in flight.
        let queued = self.peers.get(&peer).map_or(0, |p| p.direct_results);
        if queued >= limit.saturating_mul(2).max(1) {
            return Err(InputError::Flooding { queued });
        }
        // Like the in-flight limit: past the budget a call is refused
        // unrun; only a session that keeps calling past twice it is closed.
        let backlog = self.peers.get(&peer).map_or(0, |p| p.direct_bytes);
        let backlog_limit = self.backlog_limit();
        if backlog > backlog_limit.saturating_mul(2) {
            return Err(InputError::Backlog {
                bytes: backlog,
                limit: backlog_limit.saturating_mul(2),
            });
        }
        let outcome = if let Some(size) = oversize {
            // Before the other checks (H7): the envelope is not processed,
            // only answered, as §15 allows where the bytes arrive anyway.
            Err(MethodError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "the call's envelope is {size} bytes, over the {}-byte message limit; it was not run",
                    self.config.limits.max_message_bytes
                ),
            ))
        } else if header.protocol_version != PROTOCOL_VERSION {
            Err(MethodError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "protocol version {} is not supported; this host speaks {PROTOCOL_VERSION}",
                    header.protocol_version
                ),
            ))
        } else if call.call_id == 0 {
            Err(MethodError::invalid_argument("call_id must not be 0"))
        } else if !header.epoch.is_empty() && header.epoch != self.epoch {
            Err(MethodError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "the call was made against epoch {:?}; this host's epoch is {:?}",
                    Clipped(header.epoch),
                    self.epoch
                ),
            ))
        } else if queued >= limit {
            Err(MethodError::new(
                ErrorCode::ResourceExhausted,
                format!("more than {limit} calls in flight"),
            ))
        } else if backlog > backlog_limit {
            Err(MethodError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "{backlog} bytes of results are waiting to be sent to this client, more than {backlog_limit}"
                ),
            ))
        } else {
            // A value too large for one result envelope is refused before
            // the call commits, as a view too large for a snapshot is.
            let room = self.message_room(header.source.len());
            let max = self.config.limits.max_message_bytes;
            let mut json = None;
            let _caller = CallerScope::enter(self.peers.get(&peer).map(|p| Caller {
                // The session's shared copy, unless this envelope has no
                // source (then `reply_to` still names an earlier one).
                peer_id: if *p.reply_to == *header.source {
                    p.reply_to.clone()
                } else {
                    Arc::from(header.source)
                },
                principal: p.principal.clone(),
            }));
            let parsed;
            let args = match args {
                Some(args) => args,
                None => {
                    parsed = parse_args(call.args_json);
                    &parsed
                }
            };
            args.as_ref()
                .map_err(Clone::clone)
                .and_then(|args| {
                    self.run(call.module, call.method, args, |value| {
                        let text = value_json(value);
                        if text.len() > room {
                            return Err(MethodError::new(
                                ErrorCode::ResourceExhausted,
                                format!(
                                    "the method's value is {} bytes of JSON, too large for one result within the {}-byte message limit",
                                    text.len(),
                                    max
                                ),
                            ));
                        }
                        // A value deeper than some client reads would
                        // settle differently from one client to the next.
                        if let Some(depth) = value_too_deep(value, text.len()) {
                            return Err(MethodError::new(
                                ErrorCode::ResourceExhausted,
                                format!(
                                    "the method's value nests {depth} levels or more, deeper than the {MAX_VIEW_DEPTH} every client reads"
                                ),
                            ));
                        }
                        json = Some(text);
                        Ok(())
                    })
                })
                .map(|value| json.unwrap_or_else(|| value_json(&value)))
        };
        let result = CallResult {
            call_id: call.call_id,
            state_version: self.version,
            outcome: Some(match outcome {
                Ok(json) => call_result::Outcome::ValueJson(json),
                Err(error) => call_result::Outcome::Error(sendable(error).to_wire()),
            }),
        };
        let gate = result.state_version;
        if !self.peers.contains_key(&peer) {
            return Err(InputError::UnknownPeer);
        }
        let error = match &result.outcome {
            Some(call_result::Outcome::Error(e)) => {
                Some(ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal))
            }
            _ => None,
        };
        // One line per call at debug level (off by default: a level check).
        // What the client wrote is logged escaped (`?`): a newline in it must
        // not forge a line of its own. `session` is the transport's name for
        // the session (a gRPC client's address; on the bus, the id the client
        // claims, so it is escaped too), `peer` the id it claims.
        tracing::debug!(
            session = ?self.peers.get(&peer).map_or("", |p| p.options.peer_id.as_str()),
            peer = ?header.source,
            call_id = call.call_id,
            module = ?Clipped(call.module),
            method = ?Clipped(call.method),
            outcome = error.map_or("ok", ErrorCode::kebab_name),
            version = gate,
            "call answered"
        );
        self.stats.call_answered(error);
        if self.record_calls {
            let (session, principal) = self.peers.get(&peer).map_or_else(
                || (String::new(), None),
                |p| (p.options.peer_id.clone(), p.principal.clone()),
            );
            self.events.push_back(HostEvent::CallAnswered(CallRecord {
                session,
                principal,
                peer: header.source.to_owned(),
                call_id: call.call_id,
                module: cut(call.module, RECORDED_NAME),
                method: cut(call.method, RECORDED_NAME),
                error,
                version: gate,
            }));
        }
        let frame = HostFrame::with_header(
            self.addressed(peer, header.source),
            host_message::Kind::Result(result),
        );
        let bytes = frame.encoded_len();
        if let Some(p) = self.peers.get_mut(&peer) {
            p.direct.push_back(Direct::Result { gate, frame, bytes });
            p.direct_bytes += bytes;
            p.direct_results += 1;
        }
        if header.protocol_version != PROTOCOL_VERSION {
            return Err(InputError::UnsupportedVersion(header.protocol_version));
        }
        Ok(())
    }

    /// Runs a declared method as one atomic commit and returns its value.
    ///
    /// This is the path remote calls take; the host application may also use
    /// it directly. A failed or panicking method commits nothing. A change
    /// to a published module advances the version by exactly one and is
    /// published; a change confined to private modules publishes nothing.
    pub fn invoke(
        &mut self,
        module: &str,
        method: &str,
        args: &[Value],
    ) -> Result<Value, MethodError> {
        self.last_run = None;
        // Run by the host itself, even from inside another host's method.
        let _caller = CallerScope::enter(None);
        self.run(module, method, args, |_| Ok(()))
    }

    /// [`HostCore::invoke`], with `accept` judging the method's value before
    /// anything commits: an error from it reverts the call (a module that
    /// cannot revert keeps its change, and the error says so).
    pub(super) fn run(
        &mut self,
        module: &str,
        method: &str,
        args: &[Value],
        accept: impl FnOnce(&Value) -> Result<(), MethodError>,
    ) -> Result<Value, MethodError> {
        let Some(&i) = self.index.get(module) else {
            return Err(MethodError::not_found(format!(
                "no module {:?}",
                Clipped(module)
            )));
        };
        if !self.modules[i].declares(method) {
            return Err(MethodError::not_found(format!(
                "module {:?} declares no method {:?}",
                Clipped(module),
                Clipped(method)
            )));
        }
        if self.method_timing {
            self.last_run = self.method_times.find(self.id, i, method);
        }
        let room = self.growth_room(i);
        let target = &mut self.modules[i];
        target.limit_growth(room);
        let invocation = match catch_unwind(AssertUnwindSafe(|| {
            let _running = InMethod::enter(self.id);
            target.invoke(method, args)
        })) {
            Ok(result) => result?,
            Err(payload) => {
                target.rollback();
                let message = panic_message(payload.as_ref());
                self.stats.method_panics += 1;
                self.events.push_back(HostEvent::MethodPanicked {
                    module: module.to_owned(),
                    method: method.to_owned(),
                    message: message.clone(),
                });
                // The panic's own message may quote what the method held
                // (a token, a user's data): the caller learns only that it
                // panicked; the message goes to the events and the log. A
                // method calling back into its host is the library's own
                // message, and says what to fix.
                return Err(MethodError::internal(if is_called_back(payload.as_ref()) {
                    format!("method {module}.{method} panicked: {message}")
                } else {
                    format!(
                        "method {module}.{method} panicked (its message is in the host's events)"
                    )
                }));
            }
        };
        // A view nested deeper than clients mirror is one no client could
        // sync to, so such a call is refused like one `accept` refuses. A
        // private module has a limit of its own: each call may nest a
        // stored argument ~127 levels further, and state nested without
        // bound overflows the host's stack when it is measured, serialised
        // or dropped, taking every session down with it.
        let refused = accept(&invocation.value).err().or_else(|| {
            let state = self.modules[i].state();
            let message = if self.published[i] {
                let deep = too_deep(&invocation.ops, state)?;
                format!(
                    "the call would nest the published view {deep} levels deep, deeper than the {MAX_VIEW_DEPTH} every client can mirror; nothing was committed"
                )
            } else {
                let deep = private_too_deep(&invocation.ops, state)?;
                format!(
                    "the call would nest the state of module {module} {deep} levels deep, deeper than the {MAX_PRIVATE_DEPTH} the host allows a module it does not publish; nothing was committed"
                )
            };
            Some(MethodError::new(ErrorCode::ResourceExhausted, message))
        });
        let ops = (!invocation.ops.is_empty() && self.published[i])
            .then(|| ops_json(&self.prefixes[i], &invocation.ops));
        if let Some(mut error) = refused {
            if self.modules[i].settle(false) {
                return Err(error);
            }
            error
                .message
                .push_str("; the module could not revert the call, so its change was committed");
            if let Some(ops) = ops {
                self.view_bound = ViewBound {
                    size: self.published_view_len(),
                    exact: true,
                };
                let ops = self.publishable(i, ops);
                self.commit(ops);
            }
            return Err(error);
        }
        let kept_anyway = match &ops {
            Some(text) => self.admit(i, growth_bound(&invocation.ops, text.len()))?,
            None => {
                // No operation, yet the text may have changed: equal values
                // written apart (0.0 and -0.0) give a typed module's diff
                // nothing to publish. Counted, or the exact length drifts.
                if self.published[i]
                    && let Some(change) = self.modules[i].size_change()
                {
                    self.view_bound.size =
                        self.view_bound.size.saturating_add_signed(clamp(change));
                }
                self.modules[i].settle(true);
                None
            }
        };
        let ops = ops.map(|ops| self.publishable(i, ops));
        if let Some(ops) = ops {
            self.commit(ops);
        }
        match kept_anyway {
            Some(error) => Err(error),
            None => Ok(invocation.value),
        }
    }

    /// Publishes a new version made by `ops`, a JSON array of operations.
    pub(super) fn commit(&mut self, ops: String) {
        self.version += 1;
        let version = self.version;
        let entry = match self.config.sync {
            // The frame's patch is the entry's operations: stored once.
            SyncMode::Patch => Entry::published(
                version,
                HostFrame::with_header(
                    self.broadcast_header.clone(),
                    host_message::Kind::Patch(Patch {
                        base_version: version - 1,
                        version,
                        patch_json: ops,
                        sync_id: 0,
                    }),
                ),
            ),
            SyncMode::Snapshot => {
                self.live_snapshot = None;
                Entry::ops_only(version, ops)
            }
        };
        self.history.push(entry);
        self.events.push_back(HostEvent::Published { version });
    }
}

/// The error as a host may send it: a method may choose only the host codes
/// 1-8 (spec §14); `unspecified` and the codes clients produce about their
/// own calls never travel from a host (H9), so they become `internal`.
fn sendable(mut error: MethodError) -> MethodError {
    use ErrorCode::*;
    if error.message.len() > MAX_ERROR_MESSAGE {
        let mut end = MAX_ERROR_MESSAGE;
        while !error.message.is_char_boundary(end) {
            end -= 1;
        }
        error.message.truncate(end);
        error.message.push_str("… (truncated)");
    }
    if let Some(details) = &error.details {
        let len = serde_json::to_string(details).map_or(usize::MAX, |t| t.len());
        if len > MAX_ERROR_DETAILS {
            error.details = None;
            error
                .message
                .push_str(&format!(" (details of {len} bytes dropped)"));
        }
    }
    match error.code {
        NotFound | InvalidArgument | Failed | Unavailable | PermissionDenied
        | ResourceExhausted | Internal | FailedPrecondition => error,
        Unspecified | DeadlineExceeded | Cancelled | Disposed | OutcomeUnknown => {
            let details = error.details.clone();
            let mut internal = MethodError::internal(format!(
                "the method failed with {}, a code hosts do not send: {}",
                error.code.kebab_name(),
                error.message
            ));
            internal.details = details;
            internal
        }
    }
}

/// A value as JSON text: serialised straight into a buffer rather than
/// through `Display`'s formatter.
fn value_json(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::Clipped;

    #[test]
    fn clipped_names_are_escaped_and_cut_at_a_character_boundary() {
        assert_eq!(format!("{:?}", Clipped("a\nb")), "\"a\\nb\"");
        // 127 bytes, then a two-byte character across the cut.
        let long = format!("{}é", "x".repeat(127));
        let shown = format!("{:?}", Clipped(&long));
        assert_eq!(shown, format!("\"{}\"… (129 bytes)", "x".repeat(127)));
    }
}
