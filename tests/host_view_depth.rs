//! A method that stores what a client sent cannot nest the published view
//! deeper than clients can mirror: such a call is refused and reverted, so
//! every client can still sync, and no chain of calls can make the host's
//! own serialisation of the view recurse without bound. A private module's
//! state has a limit of its own, since the host walks it as well.

use std::time::Instant;

use cosystem_worker::app::{App, Draft, JsonModule, MethodError};
use cosystem_worker::client::{ClientConfig, ClientCore};
use cosystem_worker::host::{
    HostConfig, HostCore, MAX_PRIVATE_DEPTH, MAX_VIEW_DEPTH, PeerKey, PeerOptions, SyncMode,
};
use cosystem_worker::wire::{
    Call, ClientMessage, ErrorCode, Header, HostMessage, call_result, client_message, host_message,
};
use prost::Message;
use serde_json::{Value, json};

/// `kv.set(path, value)` adds `value` at `path` below the section;
/// `kv.echo(n, value)` sets `/echoed` to `n` and returns `value`.
fn kv_host() -> HostCore {
    kv_host_publishing(None)
}

/// [`kv_host`] publishing only `sections` (`None`: every module).
fn kv_host_publishing(sections: Option<Vec<String>>) -> HostCore {
    let app = App::new().with(
        JsonModule::new("kv", json!({}))
            .method(
                "set",
                |d: &mut Draft<'_>, (path, value): (String, Value)| -> Result<(), MethodError> {
                    Ok(d.add(&path, value)?)
                },
            )
            .method(
                "echo",
                |d: &mut Draft<'_>, (n, value): (u64, Value)| -> Result<Value, MethodError> {
                    d.add("/echoed", json!(n))?;
                    Ok(value)
                },
            ),
    );
    let config = HostConfig {
        sync: SyncMode::Patch,
        sections,
        ..HostConfig::default()
    };
    HostCore::new(config, app, "e1")
}

fn nested(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, _| json!([inner]))
}

/// Sends `kv.set(path, value)` on `peer`; the result's error code, if any.
fn set(
    host: &mut HostCore,
    peer: PeerKey,
    id: u64,
    path: &str,
    value: &Value,
) -> Option<ErrorCode> {
    call(host, peer, id, "set", &json!([path, value]))
}

/// Sends `kv.<method>(args…)` on `peer`; the result's error code, if any.
fn call(
    host: &mut HostCore,
    peer: PeerKey,
    id: u64,
    method: &str,
    args: &Value,
) -> Option<ErrorCode> {
    let call = ClientMessage {
        header: Some(Header::v1("", "caller", "")),
        kind: Some(client_message::Kind::Call(Call {
            call_id: id,
            module: "kv".into(),
            method: method.into(),
            args_json: args.to_string(),
        })),
    };
    host.handle_message(peer, call).expect("accepted");
    let mut code = None;
    while let Some(frame) = host.poll_transmit(peer) {
        if let Some(host_message::Kind::Result(result)) = frame.into_message().kind
            && let Some(call_result::Outcome::Error(error)) = result.outcome
        {
            code = Some(error.code());
        }
    }
    code
}

fn session(host: &mut HostCore, peer_id: &str) -> PeerKey {
    host.connect(PeerOptions {
        peer_id: peer_id.into(),
        publications: true,
    })
    .expect("session")
}

/// A new client syncs to `host` through encoded bytes; whether it got ready.
fn a_new_client_syncs(host: &mut HostCore) -> bool {
    let now = Instant::now();
    let peer = session(host, "newcomer");
    let mut client = ClientCore::new(
        ClientConfig {
            peer_id: "newcomer".into(),
            ..ClientConfig::default()
        },
        now,
    );
    for _ in 0..3 {
        while let Some(message) = client.poll_transmit() {
            host.handle_bytes(peer, &message.encode_to_vec())
                .expect("accepted");
        }
        while let Some(frame) = host.poll_transmit(peer) {
            let message = HostMessage::decode(frame.encoded()).expect("decodes");
            client.handle_message(now, message);
        }
    }
    host.disconnect(peer);
    client.is_ready()
}

#[test]
fn a_value_that_would_nest_the_view_too_deep_is_refused_and_nothing_commits() {
    let mut host = kv_host();
    let peer = session(&mut host, "caller");
    // The view's object, the section, then `/k`'s array levels: a value of
    // depth d at `/k` reaches level 2 + d.
    let fits = MAX_VIEW_DEPTH - 2;
    assert_eq!(set(&mut host, peer, 1, "/k", &nested(fits)), None);
    assert_eq!(host.version(), 2);
    assert_eq!(
        set(&mut host, peer, 2, "/j", &nested(fits + 1)),
        Some(ErrorCode::ResourceExhausted)
    );
    assert_eq!(host.version(), 2, "a refused call commits nothing");
    assert!(host.module_state("kv").expect("kv").get("j").is_none());
    assert!(a_new_client_syncs(&mut host));
}

#[test]
fn a_return_value_is_answered_exactly_when_every_client_can_read_it() {
    // Clients read `value_json` to the view's depth (spec §15): a deeper
    // value would settle OK on one client and INTERNAL on another, so the
    // host refuses it, and the call's change with it.
    let mut host = kv_host();
    let peer = session(&mut host, "caller");
    let mixed = |levels: usize| {
        (0..levels).fold(json!("x"), |inner, level| {
            if level % 2 == 0 {
                json!([inner])
            } else {
                json!({ "k": inner })
            }
        })
    };
    // Innermost empty: the shortest text of its depth, two bytes a level,
    // at the edge of the host's length shortcut.
    let empty = |levels: usize| (1..levels).fold(json!([]), |inner, _| json!([inner]));
    let mut id = 0;
    // Arguments nest one level deeper than the value, within what the
    // host parses.
    for levels in 1..=MAX_VIEW_DEPTH + 32 {
        for value in [nested(levels), mixed(levels), empty(levels)] {
            id += 1;
            let version = host.version();
            let code = call(&mut host, peer, id, "echo", &json!([id, value]));
            if levels <= MAX_VIEW_DEPTH {
                assert_eq!(code, None, "a value of {levels} levels");
                assert_eq!(host.version(), version + 1);
            } else {
                assert_eq!(code, Some(ErrorCode::ResourceExhausted), "{levels}");
                assert_eq!(host.version(), version, "a refused call commits nothing");
            }
        }
    }
}

#[test]
fn a_long_path_counts_toward_the_depth_like_a_deep_value() {
    let mut host = kv_host();
    let peer = session(&mut host, "caller");
    // Build a chain of single-member objects, one level per call, until the
    // host refuses to go deeper.
    let mut path = String::new();
    let mut refused_at = None;
    for id in 1..200 {
        let next = format!("{path}/a");
        match set(&mut host, peer, id, &next, &json!({})) {
            None => path = next,
            Some(code) => {
                assert_eq!(code, ErrorCode::ResourceExhausted);
                refused_at = Some(id);
                break;
            }
        }
    }
    // `{}` at n tokens sits at level 1 + n + 1.
    assert_eq!(refused_at, Some(MAX_VIEW_DEPTH as u64 - 1));
    assert!(a_new_client_syncs(&mut host));
}

#[test]
fn deep_values_at_ever_deeper_paths_never_take_the_host_down() {
    // Each call tries to hang a deeply nested value below the last one's
    // innermost level; every one past the limit is refused, so the view
    // never grows deep enough to overflow the host's serialisation.
    let mut host = kv_host();
    let peer = session(&mut host, "caller");
    let chain = |levels: usize| (0..levels).fold(json!({}), |inner, _| json!({ "a": inner }));
    let mut path = String::new();
    let mut refused = 0;
    for id in 1..300 {
        path.push_str("/x");
        if set(&mut host, peer, id, &path, &chain(120)).is_some() {
            refused += 1;
        }
        // The innermost object of the value just sent, if it was kept.
        path.push_str(&"/a".repeat(120));
    }
    assert_eq!(refused, 299);
    assert!(a_new_client_syncs(&mut host));
}

#[test]
fn a_private_modules_state_has_a_depth_limit_of_its_own_so_the_host_survives_it() {
    // Unpublished, the state is still measured, serialised by typed modules,
    // and dropped by the host, all recursively: nested ~40 levels further
    // per call without a limit, it would overflow the stack (at the drop,
    // at the latest). No client mirrors it, so the view's 64 levels do not
    // apply; its own limit does.
    let mut host = kv_host_publishing(Some(Vec::new()));
    let peer = session(&mut host, "caller");
    let chain = |levels: usize| (0..levels).fold(json!({}), |inner, _| json!({ "a": inner }));
    // `{}` wrapped n times nests n + 1 levels; at `/y` below the root, it
    // reaches level n + 2, past what a view may reach.
    assert_eq!(set(&mut host, peer, 1, "/y", &chain(MAX_VIEW_DEPTH)), None);
    // Each call hangs a chain of 40 below the innermost level the last
    // accepted one left, 41 levels further down each time.
    let mut innermost = String::new();
    let mut accepted = 0;
    for id in 2..300 {
        let path = format!("{innermost}/x");
        match set(&mut host, peer, id, &path, &chain(40)) {
            None => {
                innermost = path + &"/a".repeat(40);
                accepted += 1;
            }
            Some(code) => assert_eq!(code, ErrorCode::ResourceExhausted),
        }
    }
    // The k-th chain's innermost level is 1 + 41k.
    assert_eq!(accepted, (MAX_PRIVATE_DEPTH - 1) / 41);
    drop(host);
}

#[test]
#[should_panic(expected = "its initial state nests the published view")]
fn a_published_module_that_starts_too_deep_is_refused_at_start() {
    let app = App::new().with(JsonModule::new("deep", nested(MAX_VIEW_DEPTH)));
    let _ = HostCore::new(HostConfig::default(), app, "e1");
}

#[test]
fn a_private_module_may_start_as_deep_as_it_likes() {
    let app = App::new()
        .with(JsonModule::new("deep", nested(MAX_VIEW_DEPTH)))
        .with(JsonModule::new("open", json!({})));
    let config = HostConfig {
        sections: Some(vec!["open".to_owned()]),
        ..HostConfig::default()
    };
    let host = HostCore::new(config, app, "e1");
    assert_eq!(host.version(), 1);
}
