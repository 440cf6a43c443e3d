//! Client cases: the vector plays the host and the application; the client
//! under test is fed host envelopes and local inputs, and its state, events
//! and outgoing envelopes are compared after every step.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cosystem_worker::app::MethodError;
use cosystem_worker::client::{CallId, ClientConfig, ClientCore, ClientEvent, Notice};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::matcher::{Bindings, json_eq, match_list, substitute};
use super::{CaseInfo, Failure, split_step, u64_of};
use crate::wirejson::{client_message_to_json, host_message_from_json};

/// A member that may be JSON `null`, as opposed to absent (`None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// How the client under test is configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSetup {
    /// The client's peer id.
    #[serde(default = "default_peer")]
    pub peer_id: String,
    /// The host's peer id; empty accepts any source.
    #[serde(default)]
    pub host_id: String,
    /// Capability token; empty for none.
    #[serde(default)]
    pub capability: String,
    /// Local limit of pending calls (default 1024).
    #[serde(default)]
    pub max_calls_in_flight: Option<usize>,
    /// Sync retry interval in milliseconds (default 2000).
    #[serde(default)]
    pub sync_retry_ms: Option<u64>,
}

fn default_peer() -> String {
    "c1".to_owned()
}

/// A call the application makes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallSpec {
    /// The label the vector uses for this call: `$label` is its `call_id`.
    pub id: String,
    /// Module name.
    pub module: String,
    /// Method name.
    pub method: String,
    /// Positional arguments (default none).
    #[serde(default)]
    pub args: Option<Vec<Value>>,
    /// Arguments as raw JSON text, instead of `args`.
    #[serde(default)]
    pub args_json: Option<String>,
    /// Deadline, in milliseconds from the client's start.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

/// One input to the client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientAction {
    /// Create the client (always the first step).
    Start,
    /// Hand it a host envelope (canonical JSON, `$label`s substituted).
    Deliver(Value),
    /// The application makes a call.
    Call(CallSpec),
    /// The application cancels a call, by label.
    Cancel(String),
    /// The driver reports the time (`at_ms`) to the client's timers.
    Timeout,
    /// The transport broke.
    ConnectionLost,
    /// The transport is back.
    Reconnected,
    /// The application disposes of the client.
    Dispose,
}

/// What a settled call is expected to have settled with.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettledExpect {
    /// The call's label.
    pub call: String,
    /// The value of an ok outcome.
    #[serde(default, deserialize_with = "present")]
    pub ok: Option<Value>,
    /// The kebab-case error code of an error outcome.
    #[serde(default)]
    pub error: Option<String>,
    /// The exact error message, when it is specified.
    #[serde(default)]
    pub message: Option<String>,
    /// The state version the result named (`null`: settled locally).
    #[serde(default, deserialize_with = "present")]
    pub state_version: Option<Value>,
}

/// What the client must have done after a step. Absent lists mean "none";
/// absent scalars are not checked.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientExpect {
    /// The mirrored view, or `null` for EMPTY.
    #[serde(default, deserialize_with = "present")]
    pub mirror: Option<Value>,
    /// The mirror's version, or `null` for EMPTY.
    #[serde(default, deserialize_with = "present")]
    pub version: Option<Value>,
    /// The mirror's epoch.
    #[serde(default)]
    pub epoch: Option<String>,
    /// Whether `ready` was reported during this step.
    #[serde(default)]
    pub ready: bool,
    /// Envelopes sent during this step, as patterns, in order.
    #[serde(default)]
    pub outbound: Vec<Value>,
    /// Conflicts reported, as patterns, in order.
    #[serde(default)]
    pub conflicts: Vec<Value>,
    /// Notices reported, as patterns, in order.
    #[serde(default)]
    pub notices: Vec<Value>,
    /// Calls settled, in order.
    #[serde(default)]
    pub settled: Vec<SettledExpect>,
    /// Versions of the `state-changed` reports, when checked.
    #[serde(default)]
    pub state_changed: Option<Vec<Value>>,
    /// Number of unsettled calls, when checked.
    #[serde(default)]
    pub pending: Option<usize>,
    /// When the client next needs the time, in ms from its start, or
    /// `null` for never; when checked.
    #[serde(default, deserialize_with = "present")]
    pub timer_ms: Option<Value>,
}

/// One step of a client case.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientStep {
    /// The time of the step, in ms from the client's start; defaults to
    /// the previous step's.
    pub at_ms: Option<u64>,
    /// A remark for readers.
    pub note: Option<String>,
    /// The input.
    pub action: ClientAction,
    /// What must follow.
    pub expect: ClientExpect,
}

/// A client case.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientCase {
    /// Name, tier, description.
    pub info: CaseInfo,
    /// The client's configuration.
    pub config: ClientSetup,
    /// The steps, starting with `start`.
    pub steps: Vec<ClientStep>,
}

const ACTIONS: [&str; 8] = [
    "start",
    "deliver",
    "call",
    "cancel",
    "timeout",
    "connection_lost",
    "reconnected",
    "dispose",
];

impl ClientCase {
    pub(crate) fn parse(info: CaseInfo, value: Value) -> Result<Self, String> {
        let allowed = ["name", "tier", "description", "spec", "config", "steps"];
        if let Some(k) = value
            .as_object()
            .and_then(|m| m.keys().find(|k| !allowed.contains(&k.as_str())))
        {
            return Err(format!("unknown case member {k:?}"));
        }
        let config: ClientSetup =
            serde_json::from_value(value.get("config").cloned().unwrap_or_else(|| json!({})))
                .map_err(|e| format!("config: {e}"))?;
        let steps = value
            .get("steps")
            .and_then(Value::as_array)
            .ok_or("a case needs steps")?
            .iter()
            .enumerate()
            .map(|(i, s)| parse_step(s).map_err(|e| format!("step {i}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if steps.first().map(|s| &s.action) != Some(&ClientAction::Start) {
            return Err("the first step must be start".into());
        }
        Ok(Self {
            info,
            config,
            steps,
        })
    }
}

fn parse_step(step: &Value) -> Result<ClientStep, String> {
    let (name, body) = split_step(step, &ACTIONS, &["at_ms", "expect", "note"])?;
    let action = match name.as_str() {
        "start" => ClientAction::Start,
        "deliver" => ClientAction::Deliver(body),
        "call" => ClientAction::Call(serde_json::from_value(body).map_err(|e| e.to_string())?),
        "cancel" => {
            ClientAction::Cancel(body.as_str().ok_or("cancel takes a call label")?.to_owned())
        }
        "timeout" => ClientAction::Timeout,
        "connection_lost" => ClientAction::ConnectionLost,
        "reconnected" => ClientAction::Reconnected,
        _ => ClientAction::Dispose,
    };
    let expect = match step.get("expect") {
        Some(e) => serde_json::from_value(e.clone()).map_err(|e| format!("expect: {e}"))?,
        None => ClientExpect::default(),
    };
    Ok(ClientStep {
        at_ms: step.get("at_ms").map(u64_of).transpose()?,
        note: step.get("note").and_then(Value::as_str).map(str::to_owned),
        action,
        expect,
    })
}

/// What one step made the client do.
#[derive(Debug, Default)]
struct Observed {
    ready: bool,
    outbound: Vec<Value>,
    conflicts: Vec<Value>,
    notices: Vec<Value>,
    settled: Vec<(String, Result<Value, MethodError>, Option<u64>)>,
    state_changed: Vec<u64>,
}

/// Plays a client case against the reference [`ClientCore`].
pub fn run(case: &ClientCase) -> Result<(), Failure> {
    let t0 = Instant::now();
    let defaults = ClientConfig::default();
    let config = ClientConfig {
        peer_id: case.config.peer_id.clone(),
        host_id: case.config.host_id.clone(),
        capability: case.config.capability.clone(),
        max_calls_in_flight: case
            .config
            .max_calls_in_flight
            .unwrap_or(defaults.max_calls_in_flight),
        sync_retry: case
            .config
            .sync_retry_ms
            .map_or(defaults.sync_retry, Duration::from_millis),
    };
    let mut vars = Bindings::default();
    let mut labels: BTreeMap<u64, String> = BTreeMap::new();
    let mut core: Option<ClientCore> = None;
    let mut connected = true;
    let mut last_ms = 0;
    for (i, step) in case.steps.iter().enumerate() {
        let fail = |m: String| Failure::at(i, m);
        let ms = step.at_ms.unwrap_or(last_ms);
        if ms < last_ms {
            return Err(fail(format!("at_ms {ms} is before the previous step's")));
        }
        last_ms = ms;
        let now = t0 + Duration::from_millis(ms);
        let mut seen = Observed::default();
        if step.action == ClientAction::Start {
            if core.is_some() {
                return Err(fail("start twice".into()));
            }
            core = Some(ClientCore::new(config.clone(), now));
        }
        let Some(c) = core.as_mut() else {
            return Err(fail("the client was not started".into()));
        };
        match &step.action {
            ClientAction::Start => {}
            ClientAction::Deliver(message) => {
                let message = substitute(message, &vars).map_err(&fail)?;
                let message = host_message_from_json(&message)
                    .map_err(|e| fail(format!("vector error: {e}")))?;
                c.handle_message(now, message);
            }
            ClientAction::Call(spec) => {
                let args_json = match (&spec.args_json, &spec.args) {
                    (Some(text), _) => text.clone(),
                    (None, args) => Value::Array(args.clone().unwrap_or_default()).to_string(),
                };
                let deadline = spec.deadline_ms.map(|d| t0 + Duration::from_millis(d));
                match c.call_json(&spec.module, &spec.method, args_json, deadline) {
                    Ok(CallId(id)) => {
                        vars.bind(&spec.id, id.to_string());
                        labels.insert(id, spec.id.clone());
                    }
                    // A call refused at once has settled at once.
                    Err(e) => seen
                        .settled
                        .push((spec.id.clone(), Err(MethodError::from(e)), None)),
                }
            }
            ClientAction::Cancel(label) => {
                let id = vars
                    .get(label)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| fail(format!("no call labelled {label:?}")))?;
                c.cancel(CallId(id));
            }
            ClientAction::Timeout => c.handle_timeout(now),
            ClientAction::ConnectionLost => {
                c.connection_lost();
                connected = false;
            }
            ClientAction::Reconnected => {
                c.reconnected(now);
                connected = true;
            }
            ClientAction::Dispose => c.dispose(),
        }
        // A driver hands envelopes to the transport only while connected.
        if connected {
            while let Some(m) = c.poll_transmit() {
                seen.outbound.push(client_message_to_json(&m));
            }
        }
        while let Some(event) = c.poll_event() {
            observe(&mut seen, event, &labels).map_err(&fail)?;
        }
        check(&step.expect, &seen, c, t0, &mut vars).map_err(&fail)?;
    }
    Ok(())
}

fn observe(
    seen: &mut Observed,
    event: ClientEvent,
    labels: &BTreeMap<u64, String>,
) -> Result<(), String> {
    match event {
        ClientEvent::Ready { .. } => seen.ready = true,
        ClientEvent::StateChanged { version } => seen.state_changed.push(version),
        ClientEvent::EpochChanged { old, new } => seen
            .notices
            .push(json!({"kind": "epoch-changed", "old": old, "new": new})),
        ClientEvent::Conflict(c) => seen.conflicts.push(json!({
            "reason": c.reason.kebab_name(),
            "current_version": c.current_version.unwrap_or(0).to_string(),
            "incoming_version": c.incoming_version.to_string(),
        })),
        ClientEvent::Notice(Notice::UnexpectedResult { call_id }) => seen
            .notices
            .push(json!({"kind": "unexpected-result", "call_id": call_id.to_string()})),
        ClientEvent::Notice(Notice::Malformed { .. }) => {
            seen.notices.push(json!({"kind": "malformed-message"}))
        }
        ClientEvent::Notice(Notice::Overflow { version }) => seen
            .notices
            .push(json!({"kind": "overflow", "version": version.to_string()})),
        ClientEvent::Notice(other) => return Err(format!("unknown notice {other:?}")),
        ClientEvent::Settled {
            call,
            outcome,
            state_version,
        } => {
            let label = labels
                .get(&call.0)
                .cloned()
                .unwrap_or_else(|| format!("#{}", call.0));
            seen.settled.push((label, outcome, state_version));
        }
        other => return Err(format!("unknown event {other:?}")),
    }
    Ok(())
}

fn describe_outcome(outcome: &Result<Value, MethodError>) -> String {
    match outcome {
        Ok(v) => format!("ok {v}"),
        Err(e) => format!("error {} ({:?})", e.code.kebab_name(), e.message),
    }
}

fn check_settled(
    expect: &[SettledExpect],
    seen: &[(String, Result<Value, MethodError>, Option<u64>)],
) -> Result<(), String> {
    let listing = || {
        seen.iter()
            .map(|(l, o, _)| format!("{l}: {}", describe_outcome(o)))
            .collect::<Vec<_>>()
            .join("; ")
    };
    if expect.len() != seen.len() {
        return Err(format!(
            "expected {} settled calls, got {}: [{}]",
            expect.len(),
            seen.len(),
            listing()
        ));
    }
    for (e, (label, outcome, state_version)) in expect.iter().zip(seen) {
        let ctx = |m: String| format!("settled {label}: {m}");
        if &e.call != label {
            return Err(format!(
                "expected call {} to settle, got [{}]",
                e.call,
                listing()
            ));
        }
        match (&e.ok, &e.error, outcome) {
            (Some(want), None, Ok(got)) if json_eq(want, got) => {}
            (None, Some(code), Err(err)) if err.code.kebab_name() == code => {
                if let Some(m) = &e.message
                    && m != &err.message
                {
                    return Err(ctx(format!("message {:?}, expected {m:?}", err.message)));
                }
            }
            _ => {
                return Err(ctx(format!(
                    "got {}, expected {}",
                    describe_outcome(outcome),
                    e.ok.as_ref().map_or_else(
                        || format!("error {}", e.error.as_deref().unwrap_or("?")),
                        |v| format!("ok {v}")
                    )
                )));
            }
        }
        if let Some(want) = &e.state_version {
            let want = if want.is_null() {
                None
            } else {
                Some(u64_of(want)?)
            };
            if want != *state_version {
                return Err(ctx(format!(
                    "state_version {state_version:?}, expected {want:?}"
                )));
            }
        }
    }
    Ok(())
}

fn check(
    expect: &ClientExpect,
    seen: &Observed,
    core: &ClientCore,
    t0: Instant,
    vars: &mut Bindings,
) -> Result<(), String> {
    match_list("outbound envelopes", &expect.outbound, &seen.outbound, vars)?;
    match_list("conflicts", &expect.conflicts, &seen.conflicts, vars)?;
    match_list("notices", &expect.notices, &seen.notices, vars)?;
    check_settled(&expect.settled, &seen.settled)?;
    if expect.ready != seen.ready {
        return Err(format!(
            "ready was {}reported",
            if seen.ready { "" } else { "not " }
        ));
    }
    if let Some(want) = &expect.state_changed {
        let want = want.iter().map(u64_of).collect::<Result<Vec<_>, _>>()?;
        if want != seen.state_changed {
            return Err(format!(
                "state-changed reported {:?}, expected {want:?}",
                seen.state_changed
            ));
        }
    }
    if let Some(want) = &expect.mirror {
        let ok = match (want, core.state()) {
            (Value::Null, None) => true,
            (want, Some(got)) => json_eq(want, got),
            _ => false,
        };
        if !ok {
            return Err(format!(
                "mirror is {}, expected {want}",
                core.state().map_or("EMPTY".to_owned(), Value::to_string)
            ));
        }
    }
    if let Some(want) = &expect.version {
        let want = if want.is_null() {
            None
        } else {
            Some(u64_of(want)?)
        };
        if want != core.version() {
            return Err(format!(
                "version is {:?}, expected {want:?}",
                core.version()
            ));
        }
    }
    if let Some(want) = &expect.epoch
        && core.epoch() != Some(want.as_str())
    {
        return Err(format!("epoch is {:?}, expected {want:?}", core.epoch()));
    }
    if let Some(want) = expect.pending
        && core.pending_calls() != want
    {
        return Err(format!(
            "{} calls pending, expected {want}",
            core.pending_calls()
        ));
    }
    if let Some(want) = &expect.timer_ms {
        let got = core
            .poll_timeout()
            .map(|t| t.saturating_duration_since(t0).as_millis() as u64);
        let want = if want.is_null() {
            None
        } else {
            Some(u64_of(want)?)
        };
        if got != want {
            return Err(format!("timer at {got:?} ms, expected {want:?}"));
        }
    }
    Ok(())
}
