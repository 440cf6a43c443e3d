//! Host cases: the vector plays one or more clients; the host under test is
//! fed client envelopes (or raw bytes), and what it sends each session is
//! compared after every step.
//!
//! Besides the listed envelopes, the runner keeps a mirror per session built
//! only from what that session received, so a case can check the content of
//! patches by their effect (hosts may choose different operations). A
//! session that asks to resume from a version some session was shown starts
//! its mirror from that view, so resume patches are checked the same way.
//! In every step of every case the runner also checks that the private
//! `secret` section's token never appears in any byte sent.
//!
//! After each step every session that is not paused is read until the host
//! has nothing more for it; a paused session models a slow consumer.

use std::collections::BTreeMap;

use base64::Engine;
use cosystem_worker::client::apply_patch;
use cosystem_worker::demo;
use cosystem_worker::host::{HostConfig, HostCore, HostLimits, PeerKey, PeerOptions, SyncMode};
use cosystem_worker::wire::{client_message, host_message};
use prost::Message;
use serde::Deserialize;
use serde_json::Value;

use super::matcher::{Bindings, describe_difference, json_eq, match_list};
use super::{CaseInfo, Failure, split_step, u64_of};
use crate::wirejson::{client_message_from_json, host_message_to_json};

/// How the host under test is set up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSetup {
    /// The app to serve; only `demo` (spec §19) exists.
    pub app: String,
    /// `patch` or `snapshot`.
    pub sync: String,
    /// Published sections; default `counter` and `todos`.
    #[serde(default)]
    pub sections: Option<Vec<String>>,
    /// The host's epoch (the host under test is started with it).
    pub epoch: String,
    /// The host's peer id.
    #[serde(default = "default_host")]
    pub peer_id: String,
    /// The initial token of `secret`.
    #[serde(default = "default_token")]
    pub secret_token: String,
    /// History window in versions, when the case depends on it.
    #[serde(default)]
    pub history_entries: Option<usize>,
    /// Per-session in-flight call limit, when the case depends on it.
    #[serde(default)]
    pub max_calls_in_flight: Option<usize>,
}

fn default_host() -> String {
    "h".to_owned()
}

fn default_token() -> String {
    "conformance-secret-token-1b7e".to_owned()
}

/// Where a session's expected mirror is checked.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorExpect {
    /// Version of the session's mirror.
    pub version: Value,
    /// The view.
    pub view: Value,
}

/// What the host must have sent after a step.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostExpect {
    /// Envelopes each session received during the step, as patterns, in
    /// order. A connected session not listed must have received nothing.
    #[serde(default)]
    pub sent: BTreeMap<String, Vec<Value>>,
    /// Mirrors built from what each listed session has received so far.
    #[serde(default)]
    pub mirror: BTreeMap<String, MirrorExpect>,
}

/// One input to the host.
#[derive(Debug, Clone, PartialEq)]
pub enum HostAction {
    /// A session opens.
    Connect {
        /// The label of the session in this case.
        session: String,
        /// The client's peer id on it.
        peer_id: String,
    },
    /// A session sends envelopes (canonical JSON), one after the other.
    Send {
        /// The session.
        session: String,
        /// The envelopes.
        messages: Vec<Value>,
    },
    /// A session sends raw bytes as one envelope.
    SendBytes {
        /// The session.
        session: String,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// A session ends.
    Disconnect(String),
    /// The host's idle interval elapses (bookmarks are due).
    Bookmark,
    /// The session stops reading what the host sends (a slow consumer);
    /// nothing is read from it until `resume`.
    Pause(String),
    /// The session reads again.
    Resume(String),
}

/// One step of a host case.
#[derive(Debug, Clone, PartialEq)]
pub struct HostStep {
    /// A remark for readers.
    pub note: Option<String>,
    /// The input.
    pub action: HostAction,
    /// What must follow.
    pub expect: HostExpect,
}

/// A host case.
#[derive(Debug, Clone, PartialEq)]
pub struct HostCase {
    /// Name, tier, description.
    pub info: CaseInfo,
    /// The host's setup.
    pub host: HostSetup,
    /// The steps.
    pub steps: Vec<HostStep>,
}

const ACTIONS: [&str; 7] = [
    "connect",
    "send",
    "send_bytes",
    "disconnect",
    "bookmark",
    "pause",
    "resume",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnect {
    session: String,
    peer_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSend {
    session: String,
    #[serde(default)]
    message: Option<Value>,
    #[serde(default)]
    messages: Option<Vec<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBytes {
    session: String,
    base64: String,
}

impl HostCase {
    pub(crate) fn parse(info: CaseInfo, value: Value) -> Result<Self, String> {
        let allowed = ["name", "tier", "description", "spec", "host", "steps"];
        if let Some(k) = value
            .as_object()
            .and_then(|m| m.keys().find(|k| !allowed.contains(&k.as_str())))
        {
            return Err(format!("unknown case member {k:?}"));
        }
        let host: HostSetup =
            serde_json::from_value(value.get("host").cloned().ok_or("a case needs host")?)
                .map_err(|e| format!("host: {e}"))?;
        if host.app != "demo" {
            return Err(format!("unknown app {:?}", host.app));
        }
        host.sync.parse::<SyncMode>()?;
        let steps = value
            .get("steps")
            .and_then(Value::as_array)
            .ok_or("a case needs steps")?
            .iter()
            .enumerate()
            .map(|(i, s)| parse_step(s).map_err(|e| format!("step {i}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { info, host, steps })
    }
}

fn parse_step(step: &Value) -> Result<HostStep, String> {
    let (name, body) = split_step(step, &ACTIONS, &["expect", "note"])?;
    let action = match name.as_str() {
        "connect" => {
            let c: RawConnect = serde_json::from_value(body).map_err(|e| e.to_string())?;
            HostAction::Connect {
                session: c.session,
                peer_id: c.peer_id,
            }
        }
        "send" => {
            let s: RawSend = serde_json::from_value(body).map_err(|e| e.to_string())?;
            let messages = match (s.message, s.messages) {
                (Some(m), None) => vec![m],
                (None, Some(ms)) => ms,
                _ => return Err("send takes either message or messages".into()),
            };
            HostAction::Send {
                session: s.session,
                messages,
            }
        }
        "send_bytes" => {
            let b: RawBytes = serde_json::from_value(body).map_err(|e| e.to_string())?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&b.base64)
                .map_err(|e| format!("base64: {e}"))?;
            HostAction::SendBytes {
                session: b.session,
                bytes,
            }
        }
        "disconnect" => HostAction::Disconnect(
            body.as_str()
                .ok_or("disconnect takes a session label")?
                .to_owned(),
        ),
        "pause" | "resume" => {
            let label = body
                .as_str()
                .ok_or("pause and resume take a session label")?
                .to_owned();
            if name == "pause" {
                HostAction::Pause(label)
            } else {
                HostAction::Resume(label)
            }
        }
        _ => HostAction::Bookmark,
    };
    let expect = match step.get("expect") {
        Some(e) => serde_json::from_value(e.clone()).map_err(|e| format!("expect: {e}"))?,
        None => HostExpect::default(),
    };
    Ok(HostStep {
        note: step.get("note").and_then(Value::as_str).map(str::to_owned),
        action,
        expect,
    })
}

struct Session {
    key: PeerKey,
    paused: bool,
    /// The view as rebuilt from what this session received, if it could be.
    mirror: Option<(u64, Value)>,
}

impl Session {
    fn receive(&mut self, message: &cosystem_worker::wire::HostMessage) {
        match &message.kind {
            Some(host_message::Kind::Snapshot(s)) => {
                self.mirror = serde_json::from_str(&s.state_json)
                    .ok()
                    .map(|view| (s.version, view));
            }
            Some(host_message::Kind::Patch(p)) => {
                self.mirror = self.mirror.take().and_then(|(v, mut view)| {
                    (v == p.base_version && apply_patch(&mut view, &p.patch_json).is_ok())
                        .then_some((p.version, view))
                });
            }
            _ => {}
        }
    }
}

/// Builds the host a case describes.
pub fn build_host(setup: &HostSetup) -> Result<HostCore, String> {
    let mut limits = HostLimits::default();
    if let Some(n) = setup.history_entries {
        limits.history_entries = n;
    }
    if let Some(n) = setup.max_calls_in_flight {
        limits.max_calls_in_flight = n;
    }
    let config = HostConfig {
        sync: setup.sync.parse()?,
        sections: Some(
            setup
                .sections
                .clone()
                .unwrap_or_else(demo::default_sections),
        ),
        peer_id: setup.peer_id.clone(),
        capability: String::new(),
        limits,
    };
    Ok(HostCore::new(
        config,
        demo::app(setup.secret_token.clone()),
        setup.epoch.clone(),
    ))
}

/// Plays a host case against the reference [`HostCore`].
pub fn run(case: &HostCase) -> Result<(), Failure> {
    let mut host = build_host(&case.host).map_err(Failure::case)?;
    let secret_private = !case
        .host
        .sections
        .as_ref()
        .is_some_and(|s| s.iter().any(|s| s == "secret"));
    let token = case.host.secret_token.as_bytes();
    let mut sessions: BTreeMap<String, Session> = BTreeMap::new();
    let mut vars = Bindings::default();
    // Every view any session was shown, by version.
    let mut views: BTreeMap<u64, Value> = BTreeMap::new();
    for (i, step) in case.steps.iter().enumerate() {
        let fail = |m: String| Failure::at(i, m);
        let key_of = |sessions: &BTreeMap<String, Session>, label: &str| {
            sessions
                .get(label)
                .map(|s| s.key)
                .ok_or_else(|| Failure::at(i, format!("no open session {label:?}")))
        };
        match &step.action {
            HostAction::Connect { session, peer_id } => {
                let key = host
                    .connect(PeerOptions {
                        peer_id: peer_id.clone(),
                        publications: true,
                    })
                    .map_err(|e| fail(format!("connect refused: {e}")))?;
                sessions.insert(
                    session.clone(),
                    Session {
                        key,
                        paused: false,
                        mirror: None,
                    },
                );
            }
            HostAction::Send { session, messages } => {
                let key = key_of(&sessions, session)?;
                for m in messages {
                    let m = client_message_from_json(m)
                        .map_err(|e| fail(format!("vector error: {e}")))?;
                    // A resume can be checked by its effect only from a base
                    // the runner has seen: seed the mirror with that view.
                    if let (Some(client_message::Kind::SyncRequest(r)), Some(s)) =
                        (&m.kind, sessions.get_mut(session))
                    {
                        let same_epoch = m
                            .header
                            .as_ref()
                            .is_some_and(|h| h.epoch == case.host.epoch);
                        s.mirror = views
                            .get(&r.have_version)
                            .filter(|_| same_epoch)
                            .map(|view| (r.have_version, view.clone()));
                    }
                    // Through bytes, as every transport delivers them; an
                    // input error is the host's business, not an assertion.
                    let _ = host.handle_bytes(key, &m.encode_to_vec());
                }
            }
            HostAction::SendBytes { session, bytes } => {
                let key = key_of(&sessions, session)?;
                let _ = host.handle_bytes(key, bytes);
            }
            HostAction::Disconnect(session) => {
                let key = key_of(&sessions, session)?;
                host.disconnect(key);
                sessions.remove(session);
            }
            HostAction::Bookmark => host.bookmark(),
            HostAction::Pause(session) | HostAction::Resume(session) => {
                let paused = matches!(step.action, HostAction::Pause(_));
                sessions
                    .get_mut(session)
                    .ok_or_else(|| fail(format!("no open session {session:?}")))?
                    .paused = paused;
            }
        }
        while host.poll_event().is_some() {}
        if let Some(unknown) = step
            .expect
            .sent
            .keys()
            .chain(step.expect.mirror.keys())
            .find(|l| !sessions.contains_key(*l))
        {
            return Err(fail(format!("expectation for unknown session {unknown:?}")));
        }
        for (label, session) in sessions.iter_mut() {
            let mut got = Vec::new();
            while let Some(frame) = (!session.paused)
                .then(|| host.poll_transmit(session.key))
                .flatten()
            {
                if secret_private && contains(&frame.encoded(), token) {
                    return Err(fail(format!(
                        "the private secret token was sent to session {label}"
                    )));
                }
                let message = frame.into_message();
                session.receive(&message);
                if let Some((v, view)) = &session.mirror {
                    views.entry(*v).or_insert_with(|| view.clone());
                }
                got.push(host_message_to_json(&message));
            }
            let want = step.expect.sent.get(label).map_or(&[][..], Vec::as_slice);
            match_list("envelopes", want, &got, &mut vars)
                .map_err(|e| fail(format!("session {label}: {e}")))?;
        }
        for (label, want) in &step.expect.mirror {
            let want_version = u64_of(&want.version).map_err(&fail)?;
            match &sessions[label].mirror {
                Some((v, view)) if *v == want_version && json_eq(view, &want.view) => {}
                Some((v, view)) => {
                    let difference = match describe_difference(view, &want.view) {
                        d if d.is_empty() => String::new(),
                        d => format!(" (differing {d})"),
                    };
                    return Err(fail(format!(
                        "session {label}'s mirror{difference} is {view} at {v}, expected {} at {want_version}",
                        want.view
                    )));
                }
                None => {
                    return Err(fail(format!(
                        "session {label} received nothing that builds a mirror"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
