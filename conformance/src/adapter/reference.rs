//! The reference adapter: the adapter protocol implemented over this
//! workspace's sans-IO [`ClientCore`], in process.
//!
//! The `cosystem-conformance adapter` subcommand serves it on stdin/stdout;
//! the vector runner also drives it directly, so the reference client is
//! checked by the very code path other clients are.
//!
//! For proving that the suite catches broken clients, it can be
//! deliberately broken ([`Breakage`]): the breakage rewrites what the core is
//! given or what it sends, so the core itself stays correct and each
//! breakage models exactly one wrong behaviour.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cosystem_worker::app::MethodError;
use cosystem_worker::client::{CallId, ClientConfig, ClientCore, ClientEvent, Notice};
use cosystem_worker::wire::{HostMessage, client_message, host_message};
use serde_json::{Value, json};

use super::{
    AdapterConfig, CallArgs, ClientState, ClientUnderTest, Command, Event, Reply, Settlement,
};

/// A deliberate defect of the reference adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breakage {
    /// A patch of the mirror's epoch whose base is ahead of the mirror is
    /// applied as if it started at the mirror's version, instead of being
    /// reported as a gap.
    ApplyAcrossGap,
    /// A result naming a version the mirror has not reached settles at
    /// once, instead of waiting for the mirror (read-your-writes).
    SettleBeforeCatchUp,
    /// Envelopes of another epoch are taken for envelopes of the mirror's.
    IgnoreEpoch,
    /// Only the first SyncRequest is sent; the client never heals.
    SkipResync,
    /// Each input's settlements are reported ahead of its other events.
    SettledFirst,
    /// Envelopes without a capability are taken as carrying the one the
    /// client is configured with, which SC7 forbids ("empty included").
    AcceptEmptyCapability,
    /// Calls settled by one input are reported in the reverse of the order
    /// the client settled them, as a client that keeps its calls in a hash
    /// map might report them.
    ReverseSettlements,
}

impl Breakage {
    /// Every breakage, by its command-line name.
    pub const ALL: [(&'static str, Breakage); 7] = [
        ("apply-across-gap", Breakage::ApplyAcrossGap),
        ("settle-before-catch-up", Breakage::SettleBeforeCatchUp),
        ("ignore-epoch", Breakage::IgnoreEpoch),
        ("skip-resync", Breakage::SkipResync),
        ("settled-first", Breakage::SettledFirst),
        ("accept-empty-capability", Breakage::AcceptEmptyCapability),
        ("reverse-settlements", Breakage::ReverseSettlements),
    ];
}

impl std::str::FromStr for Breakage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, b)| *b)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
                format!("unknown breakage {s:?} (one of {})", names.join(", "))
            })
    }
}

/// The reference client behind the adapter protocol.
pub struct ReferenceClient {
    breakage: Option<Breakage>,
    core: Option<ClientCore>,
    t0: Instant,
    now_ms: u64,
    connected: bool,
    labels: BTreeMap<u64, String>,
    ids: BTreeMap<String, CallId>,
    syncs_sent: usize,
}

impl Default for ReferenceClient {
    fn default() -> Self {
        Self::new(None)
    }
}

impl ReferenceClient {
    /// A client that is started by the first [`Command::Start`], broken as
    /// `breakage` says.
    pub fn new(breakage: Option<Breakage>) -> Self {
        Self {
            breakage,
            core: None,
            t0: Instant::now(),
            now_ms: 0,
            connected: true,
            labels: BTreeMap::new(),
            ids: BTreeMap::new(),
            syncs_sent: 0,
        }
    }

    fn now(&self) -> Instant {
        self.t0 + Duration::from_millis(self.now_ms)
    }

    /// Rewrites an incoming envelope as the breakage would misread it.
    fn misread(&self, core: &ClientCore, mut message: HostMessage) -> HostMessage {
        let (Some(breakage), Some(version), Some(epoch)) =
            (self.breakage, core.version(), core.epoch())
        else {
            return message;
        };
        let same_epoch = message.header.as_ref().is_some_and(|h| h.epoch == epoch);
        match (breakage, &mut message.kind) {
            (Breakage::ApplyAcrossGap, Some(host_message::Kind::Patch(p)))
                if same_epoch && p.base_version > version && p.version >= p.base_version =>
            {
                p.base_version = version;
            }
            (Breakage::SettleBeforeCatchUp, Some(host_message::Kind::Result(r)))
                if same_epoch && r.state_version > version =>
            {
                r.state_version = version;
            }
            (Breakage::IgnoreEpoch, _) => {
                if let Some(h) = message.header.as_mut() {
                    h.epoch = epoch.to_owned();
                }
            }
            (Breakage::AcceptEmptyCapability, _) => {
                if let Some(h) = message.header.as_mut()
                    && h.capability.is_empty()
                {
                    h.capability = core.config().capability.clone();
                }
            }
            _ => {}
        }
        message
    }

    fn handle(&mut self, command: &Command, reply: &mut Reply) -> Result<(), String> {
        if let Command::Start(config) = command {
            if self.core.is_some() {
                return Err("start twice".into());
            }
            self.core = Some(ClientCore::new(client_config(config), self.now()));
            return Ok(());
        }
        let now = self.now();
        let Some(mut core) = self.core.take() else {
            return Err("the client was not started".into());
        };
        let result = match command {
            Command::Start(_) => Ok(()),
            Command::Deliver(message) => {
                let message = self.misread(&core, message.clone());
                core.handle_message(now, message);
                Ok(())
            }
            // Read as received, by the client's own reader of envelopes.
            Command::DeliverWithUnknownFields(message) => core
                .handle_bytes(now, &super::with_unknown_fields(message))
                .map_err(|e| format!("the envelope did not decode: {e}")),
            Command::Call {
                call,
                module,
                method,
                args,
                timeout_ms,
            } => {
                let args_json = match args {
                    CallArgs::List(list) => Value::Array(list.clone()).to_string(),
                    CallArgs::Text(text) => text.clone(),
                };
                let deadline = timeout_ms.map(|t| now + Duration::from_millis(t));
                match core.call_json(module, method, args_json, deadline) {
                    Ok(id) => {
                        self.labels.insert(id.0, call.clone());
                        self.ids.insert(call.clone(), id);
                        reply.call_id = Some(id.0);
                    }
                    Err(e) => {
                        reply
                            .events
                            .push(settled(call.clone(), Err(e.into()), None));
                    }
                }
                Ok(())
            }
            Command::Cancel(call) => match self.ids.get(call) {
                Some(id) => {
                    core.cancel(*id);
                    Ok(())
                }
                // A refused call, or a label no call gave: nothing to
                // cancel, and nothing reported (CONFORMANCE §6.2).
                None => Ok(()),
            },
            Command::Advance(ms) => {
                self.now_ms = self.now_ms.saturating_add(*ms);
                core.handle_timeout(self.now());
                Ok(())
            }
            Command::ConnectionLost => {
                core.connection_lost();
                self.connected = false;
                Ok(())
            }
            Command::EnvelopesLost(count) => {
                core.envelopes_lost(now, *count);
                Ok(())
            }
            Command::Reconnected => {
                core.reconnected(now);
                self.connected = true;
                Ok(())
            }
            Command::Dispose => {
                core.dispose();
                Ok(())
            }
            Command::Report => {
                reply.state = Some(ClientState {
                    mirror: core.state().cloned(),
                    version: core.version(),
                    epoch: core.epoch().map(str::to_owned),
                    pending: Some(core.pending_calls() as u64),
                    timer_ms: Some(
                        core.poll_timeout()
                            .map(|t| t.saturating_duration_since(self.t0).as_millis() as u64),
                    ),
                });
                Ok(())
            }
        };
        self.core = Some(core);
        result
    }

    fn drain(&mut self, reply: &mut Reply) -> Result<(), String> {
        let Some(core) = self.core.as_mut() else {
            return Ok(());
        };
        // A driver hands envelopes to the transport only while connected.
        while self.connected
            && let Some(message) = core.poll_transmit()
        {
            if matches!(message.kind, Some(client_message::Kind::SyncRequest(_))) {
                self.syncs_sent += 1;
                if self.breakage == Some(Breakage::SkipResync) && self.syncs_sent > 1 {
                    continue;
                }
            }
            reply.sent.push(message);
        }
        while let Some(event) = core.poll_event() {
            reply.events.push(translate(event, &self.labels)?);
        }
        if self.breakage == Some(Breakage::SettledFirst) {
            // A stable sort: settlements first, each group in its order.
            reply
                .events
                .sort_by_key(|e| !matches!(e, Event::Settled { .. }));
        }
        if self.breakage == Some(Breakage::ReverseSettlements) {
            // Settlements trade places among themselves; every other event
            // keeps its place.
            let slots: Vec<usize> = (0..reply.events.len())
                .filter(|&i| matches!(reply.events[i], Event::Settled { .. }))
                .collect();
            for k in 0..slots.len() / 2 {
                reply.events.swap(slots[k], slots[slots.len() - 1 - k]);
            }
        }
        Ok(())
    }
}

impl ClientUnderTest for ReferenceClient {
    fn command(&mut self, command: &Command) -> Result<Reply, String> {
        let mut reply = Reply::default();
        self.handle(command, &mut reply)?;
        self.drain(&mut reply)?;
        Ok(reply)
    }
}

fn client_config(c: &AdapterConfig) -> ClientConfig {
    ClientConfig {
        peer_id: c.peer_id.clone(),
        host_id: c.host_id.clone(),
        capability: c.capability.clone(),
        max_calls_in_flight: usize::try_from(c.max_calls_in_flight).unwrap_or(usize::MAX),
        sync_retry: Duration::from_millis(c.sync_retry_ms),
        host_silence: c.host_silence_ms.map(Duration::from_millis),
        // The reference has one limit for both directions; the vectors'
        // host envelopes are far smaller than any call-size limit they set.
        max_message_bytes: usize::try_from(c.max_call_bytes).unwrap_or(usize::MAX),
        ..ClientConfig::default()
    }
}

fn settled(call: String, outcome: Result<Value, MethodError>, state_version: Option<u64>) -> Event {
    Event::Settled {
        call,
        outcome: match outcome {
            Ok(v) => Settlement::Ok(v),
            Err(e) => Settlement::Error {
                code: e.code.kebab_name().to_owned(),
                message: e.message,
            },
        },
        state_version,
    }
}

/// The adapter-protocol form of a core event.
fn translate(event: ClientEvent, labels: &BTreeMap<u64, String>) -> Result<Event, String> {
    Ok(match event {
        ClientEvent::Ready { .. } => Event::Ready,
        ClientEvent::StateChanged { version } => Event::StateChanged(version),
        ClientEvent::EpochChanged { old, new } => {
            Event::Notice(json!({"kind": "epoch-changed", "old": old, "new": new}))
        }
        ClientEvent::Conflict(c) => Event::Conflict {
            reason: c.reason.kebab_name().to_owned(),
            current_version: c.current_version.unwrap_or(0),
            incoming_version: c.incoming_version,
        },
        ClientEvent::Notice(Notice::UnexpectedResult { call_id }) => {
            Event::Notice(json!({"kind": "unexpected-result", "call_id": call_id.to_string()}))
        }
        ClientEvent::Notice(Notice::Malformed { reason }) => {
            Event::Notice(json!({"kind": "malformed-message", "detail": reason}))
        }
        ClientEvent::Notice(Notice::Overflow { version }) => {
            Event::Notice(json!({"kind": "overflow", "version": version.to_string()}))
        }
        ClientEvent::Notice(Notice::EnvelopesLost { count }) => {
            Event::Notice(json!({"kind": "envelopes-lost", "count": count.to_string()}))
        }
        ClientEvent::Notice(Notice::HostSilent { silence }) => Event::Notice(
            json!({"kind": "host-silent", "silence_ms": silence.as_millis().to_string()}),
        ),
        ClientEvent::Settled {
            call,
            outcome,
            state_version,
            ..
        } => {
            let label = labels
                .get(&call.0)
                .cloned()
                .ok_or_else(|| format!("call #{} settled but was never made", call.0))?;
            settled(label, outcome, state_version)
        }
        // The core reports something this protocol has no word for: say so
        // rather than hide it.
        other => return Err(format!("the client reported an unknown event {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancelling_a_label_no_call_gave_reports_nothing() {
        let mut client = ReferenceClient::default();
        client
            .command(&Command::Start(AdapterConfig::default()))
            .expect("started");
        let reply = client
            .command(&Command::Cancel("zzz".into()))
            .expect("a label no call gave is not an error (CONFORMANCE §6.2)");
        assert!(
            reply.sent.is_empty() && reply.events.is_empty(),
            "{reply:?}"
        );
    }
}
