//! Client cases: the vector plays the host and the application; the client
//! under test is fed host envelopes and local inputs, and its state, events
//! and outgoing envelopes are compared after every step.
//!
//! The client is driven through the adapter protocol ([`crate::adapter`]):
//! the reference client in process, or any implementation behind an adapter
//! program.

use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::matcher::{Bindings, describe_difference, json_eq, match_list, substitute};
use super::{CaseInfo, Failure, split_step, u64_of};
use crate::adapter::process::ThroughJson;
use crate::adapter::reference::ReferenceClient;
use crate::adapter::{
    AdapterConfig, CallArgs, ClientState, ClientUnderTest, Command, Event, Reply, Settlement,
};
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
    /// Host silence in milliseconds (L10); absent for off.
    #[serde(default)]
    pub host_silence_ms: Option<u64>,
    /// The client's max call size in bytes (default §15's 4 MiB).
    #[serde(default)]
    pub max_call_bytes: Option<u64>,
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
    /// The same, with fields no v1 message has added to the envelope, its
    /// header and its kind's message in the bytes (PROTOCOL.md C1).
    DeliverWithUnknownFields(Value),
    /// The application makes a call.
    Call(CallSpec),
    /// The application cancels a call, by label.
    Cancel(String),
    /// The driver reports the time (`at_ms`) to the client's timers.
    Timeout,
    /// The transport broke.
    ConnectionLost,
    /// The shared channel reports this many envelopes lost (SC12, L9).
    EnvelopesLost(u64),
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
    /// Versions of the `state-changed` reports; none when absent.
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

const ACTIONS: [&str; 10] = [
    "start",
    "deliver",
    "deliver_with_unknown_fields",
    "call",
    "cancel",
    "timeout",
    "connection_lost",
    "envelopes_lost",
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
        "deliver_with_unknown_fields" => ClientAction::DeliverWithUnknownFields(body),
        "call" => ClientAction::Call(serde_json::from_value(body).map_err(|e| e.to_string())?),
        "cancel" => {
            ClientAction::Cancel(body.as_str().ok_or("cancel takes a call label")?.to_owned())
        }
        "timeout" => ClientAction::Timeout,
        "connection_lost" => ClientAction::ConnectionLost,
        "envelopes_lost" => ClientAction::EnvelopesLost(
            body.get("count")
                .map(u64_of)
                .transpose()?
                .ok_or("envelopes_lost needs a count")?,
        ),
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
    settled: Vec<(String, Settlement, Option<u64>)>,
    state_changed: Vec<u64>,
    /// The first report out of the order one input must produce them in.
    misordered: Option<String>,
}

impl Observed {
    fn take(&mut self, reply: Reply) {
        self.outbound
            .extend(reply.sent.iter().map(client_message_to_json));
        // Within one input's reports (PROTOCOL.md §8.2, §8.4, P5, RW5):
        // `ready` comes before `state-changed`, and a call settled with the
        // host's outcome (it carries a state_version) after it.
        let mut changed = false;
        let start = self.settled.len();
        for event in reply.events {
            let out_of_order = match &event {
                Event::Ready if changed => Some("ready after state-changed".to_owned()),
                Event::StateChanged(_) if !changed => self.settled[start..]
                    .iter()
                    .find(|(_, _, version)| version.is_some())
                    .map(|(call, _, _)| {
                        format!("call {call} settled with the host's outcome before state-changed")
                    }),
                _ => None,
            };
            if self.misordered.is_none() {
                self.misordered = out_of_order;
            }
            match event {
                Event::Ready => self.ready = true,
                Event::StateChanged(v) => {
                    changed = true;
                    self.state_changed.push(v);
                }
                Event::Conflict {
                    reason,
                    current_version,
                    incoming_version,
                } => self.conflicts.push(json!({
                    "reason": reason,
                    "current_version": current_version.to_string(),
                    "incoming_version": incoming_version.to_string(),
                })),
                Event::Notice(notice) => self.notices.push(notice),
                Event::Settled {
                    call,
                    outcome,
                    state_version,
                } => self.settled.push((call, outcome, state_version)),
            }
        }
    }
}

impl ClientExpect {
    /// Whether the step checks anything only a `report` tells.
    fn needs_state(&self) -> bool {
        self.mirror.is_some()
            || self.version.is_some()
            || self.epoch.is_some()
            || self.pending.is_some()
            || self.timer_ms.is_some()
    }
}

/// The adapter-protocol `start` configuration of a case.
pub fn adapter_config(setup: &ClientSetup) -> AdapterConfig {
    let defaults = AdapterConfig::default();
    AdapterConfig {
        peer_id: setup.peer_id.clone(),
        host_id: setup.host_id.clone(),
        capability: setup.capability.clone(),
        max_calls_in_flight: setup
            .max_calls_in_flight
            .map_or(defaults.max_calls_in_flight, |n| n as u64),
        sync_retry_ms: setup.sync_retry_ms.unwrap_or(defaults.sync_retry_ms),
        host_silence_ms: setup.host_silence_ms,
        max_call_bytes: setup.max_call_bytes.unwrap_or(defaults.max_call_bytes),
    }
}

/// Plays a client case against the reference [`ClientCore`], through the
/// JSON form of the adapter protocol.
///
/// [`ClientCore`]: cosystem_worker::client::ClientCore
pub fn run(case: &ClientCase) -> Result<(), Failure> {
    run_with(case, &mut ThroughJson(ReferenceClient::default()))
}

/// Plays a client case against any client the runner can drive.
///
/// Time is virtual: when a step's `at_ms` is later than the previous
/// step's, the client is first told that the difference has passed
/// (`advance`, which runs its due timers); a `timeout` step always sends
/// `advance`, by 0 ms if the time has not moved. Whatever the client sends
/// or reports during the step, `advance` included, is checked against the
/// step's `expect`. State (`mirror`, `version`, …) is asked for with
/// `report` only when the step checks it.
pub fn run_with(case: &ClientCase, client: &mut dyn ClientUnderTest) -> Result<(), Failure> {
    let mut vars = Bindings::default();
    let mut now_ms = 0;
    for (i, step) in case.steps.iter().enumerate() {
        let fail = |m: String| Failure::at(i, m);
        let ms = step.at_ms.unwrap_or(now_ms);
        if ms < now_ms {
            return Err(fail(format!("at_ms {ms} is before the previous step's")));
        }
        if step.action == ClientAction::Start && ms != 0 {
            return Err(fail("vector error: the client starts at 0 ms".into()));
        }
        let mut seen = Observed::default();
        if ms > now_ms || step.action == ClientAction::Timeout {
            seen.take(
                client
                    .command(&Command::Advance(ms - now_ms))
                    .map_err(&fail)?,
            );
        }
        now_ms = ms;
        let command = match &step.action {
            ClientAction::Start => Some(Command::Start(adapter_config(&case.config))),
            ClientAction::Deliver(message) | ClientAction::DeliverWithUnknownFields(message) => {
                let json = substitute(message, &vars).map_err(&fail)?;
                let message = host_message_from_json(&json)
                    .map_err(|e| fail(format!("vector error: {e}")))?;
                Some(match &step.action {
                    ClientAction::DeliverWithUnknownFields(_) => {
                        Command::DeliverWithUnknownFields(message)
                    }
                    _ => Command::Deliver(message),
                })
            }
            ClientAction::Call(spec) => {
                let args = match (&spec.args_json, &spec.args) {
                    (Some(text), _) => match serde_json::from_str::<Value>(text) {
                        Ok(Value::Array(list)) => CallArgs::List(list),
                        _ => CallArgs::Text(text.clone()),
                    },
                    (None, args) => CallArgs::List(args.clone().unwrap_or_default()),
                };
                Some(Command::Call {
                    call: spec.id.clone(),
                    module: spec.module.clone(),
                    method: spec.method.clone(),
                    args,
                    timeout_ms: spec.deadline_ms.map(|d| d.saturating_sub(now_ms)),
                })
            }
            ClientAction::Cancel(label) => Some(Command::Cancel(label.clone())),
            ClientAction::Timeout => None,
            ClientAction::ConnectionLost => Some(Command::ConnectionLost),
            ClientAction::EnvelopesLost(count) => Some(Command::EnvelopesLost(*count)),
            ClientAction::Reconnected => Some(Command::Reconnected),
            ClientAction::Dispose => Some(Command::Dispose),
        };
        if let Some(command) = command {
            let reply = client.command(&command).map_err(&fail)?;
            if let (ClientAction::Call(spec), Some(id)) = (&step.action, reply.call_id) {
                vars.bind_new(&spec.id, "callId", &id.to_string())
                    .map_err(|e| fail(format!("the reply to call {}: {e}", spec.id)))?;
            }
            seen.take(reply);
        }
        let state = if step.expect.needs_state() {
            let mut reply = client.command(&Command::Report).map_err(&fail)?;
            let state = reply.state.take().ok_or_else(|| {
                fail(format!(
                    "the reply to report has no state (it had {} sent and {} events: if the \
                     adapter answered the command before with more than one line, its replies \
                     are now one behind; print only the reply on stdout, one line per command)",
                    reply.sent.len(),
                    reply.events.len()
                ))
            })?;
            // A report must not make the client do anything; if it does,
            // that shows up below as unexpected output.
            seen.take(reply);
            Some(state)
        } else {
            None
        };
        check(&step.expect, &seen, state.as_ref(), &mut vars).map_err(&fail)?;
    }
    Ok(())
}

fn describe_outcome(outcome: &Settlement) -> String {
    match outcome {
        Settlement::Ok(v) => format!("ok {v}"),
        Settlement::Error { code, message } => format!("error {code} ({message:?})"),
    }
}

fn check_settled(
    expect: &[SettledExpect],
    seen: &[(String, Settlement, Option<u64>)],
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
            let order = expect
                .iter()
                .map(|e| e.call.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(format!(
                "expected the calls to settle in the order [{order}], got [{}]",
                listing()
            ));
        }
        match (&e.ok, &e.error, outcome) {
            (Some(want), None, Settlement::Ok(got)) if json_eq(want, got) => {}
            (None, Some(want), Settlement::Error { code, message }) if code == want => {
                if let Some(m) = &e.message
                    && m != message
                {
                    return Err(ctx(format!("message {message:?}, expected {m:?}")));
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

fn optional_u64(want: &Value) -> Result<Option<u64>, String> {
    if want.is_null() {
        Ok(None)
    } else {
        u64_of(want).map(Some)
    }
}

fn check(
    expect: &ClientExpect,
    seen: &Observed,
    state: Option<&ClientState>,
    vars: &mut Bindings,
) -> Result<(), String> {
    // Every difference of the step is reported, not just the first: the
    // first is often a symptom (nothing sent) of what a later one shows
    // (the patch was applied).
    let mut problems = Vec::new();
    let mut note = |checked: Result<(), String>| {
        if let Err(problem) = checked {
            problems.push(problem);
        }
    };
    note(match_list(
        "outbound envelopes",
        &expect.outbound,
        &seen.outbound,
        vars,
    ));
    note(match_list(
        "conflicts",
        &expect.conflicts,
        &seen.conflicts,
        vars,
    ));
    note(match_list("notices", &expect.notices, &seen.notices, vars));
    note(check_settled(&expect.settled, &seen.settled));
    note(check_reports(expect, seen));
    if let Some(state) = state {
        note(check_state(expect, state));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The step's reports other than lists: their order, readiness and the
/// versions reported changed.
fn check_reports(expect: &ClientExpect, seen: &Observed) -> Result<(), String> {
    if let Some(misordered) = &seen.misordered {
        return Err(format!("reports out of order: {misordered}"));
    }
    if expect.ready != seen.ready {
        return Err(format!(
            "ready was {}reported",
            if seen.ready { "" } else { "not " }
        ));
    }
    // Like conflicts and notices: none expected unless listed (§8.2: "never
    // otherwise").
    let want = expect
        .state_changed
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(u64_of)
        .collect::<Result<Vec<_>, _>>()?;
    if want != seen.state_changed {
        return Err(format!(
            "state-changed reported {:?}, expected {want:?}",
            seen.state_changed
        ));
    }
    Ok(())
}

/// The client's state after the step, as the adapter reports it.
fn check_state(expect: &ClientExpect, state: &ClientState) -> Result<(), String> {
    let mut problems = Vec::new();
    if let Some(want) = &expect.mirror {
        let ok = match (want, &state.mirror) {
            (Value::Null, None) => true,
            (want, Some(got)) => json_eq(want, got),
            _ => false,
        };
        if !ok {
            // Where they differ first: the whole documents after it may be
            // cut from a long report (CONFORMANCE.md §8).
            let difference = match &state.mirror {
                Some(got) if want.is_object() && got.is_object() => {
                    format!("differs {}: ", describe_difference(got, want))
                }
                _ => String::new(),
            };
            problems.push(format!(
                "mirror {difference}is {}, expected {want}",
                state
                    .mirror
                    .as_ref()
                    .map_or("EMPTY".to_owned(), Value::to_string)
            ));
        }
    }
    if let Some(want) = &expect.version {
        let want = optional_u64(want)?;
        if want != state.version {
            problems.push(format!(
                "version is {}, expected {}",
                shown(state.version, "none (no mirror)"),
                shown(want, "none (no mirror)")
            ));
        }
    }
    if let Some(want) = &expect.epoch
        && state.epoch.as_deref() != Some(want.as_str())
    {
        problems.push(format!(
            "epoch is {}, expected {want:?}",
            shown(
                state.epoch.as_deref().map(|e| format!("{e:?}")),
                "none (no mirror)"
            )
        ));
    }
    // An adapter whose library cannot tell its pending calls or its next
    // timer leaves them out; those checks are then skipped (what the client
    // does when time passes is still checked through what it sends).
    if let (Some(want), Some(got)) = (expect.pending, state.pending)
        && got != want as u64
    {
        problems.push(format!("{got} calls pending, expected {want}"));
    }
    if let (Some(want), Some(got)) = (&expect.timer_ms, state.timer_ms) {
        let want = optional_u64(want)?;
        if got != want {
            // The timer is the earliest of a call's deadline, the retry of
            // an outstanding sync request and the host silence (§3.2): a
            // timer where none is due most often means a request the
            // client should have cleared (K6).
            let hint = if want.is_none() && got.is_some() {
                " (the case expects no call deadline, sync retry or host silence: a sync request left outstanding after its reply, K6, is the usual cause)"
            } else {
                ""
            };
            problems.push(format!(
                "next timer {}, expected {}{hint}",
                shown(got.map(|ms| format!("at {ms} ms")), "never (null)"),
                shown(want.map(|ms| format!("at {ms} ms")), "never (null)")
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// `value` as a reader expects it, or `none` for its absence: no Rust
/// `Some(…)` in messages other implementers read.
fn shown<T: std::fmt::Display>(value: Option<T>, none: &str) -> String {
    value.map_or_else(|| none.to_owned(), |v| v.to_string())
}
