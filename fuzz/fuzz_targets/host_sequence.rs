//! Arbitrary calls to the demo app and sync requests from several sessions,
//! one of which is followed by a well-behaved `ClientCore`. The last raw
//! session receives only replies, as a shared channel's per-client session
//! does.
//!
//! Invariants: no panic; refusals are typed; every frame is well-formed;
//! the view is always an object whose version is 1 + the number of
//! published commits, and never shows the private section; and once the
//! traffic stops, the following client converges to the host's view.
#![no_main]

use std::time::Instant;

use cosystem_worker::wire::{Call, ClientMessage, Header, SyncRequest, client_message};
use fuzz_support::{
    Args, ClientWatch, MethodName, ModuleName, PublishedWatch, Version, assert_typed_input_error,
    client, connect, connect_reply_only, demo_host, drain_session, pump, small_limits,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    patch_mode: bool,
    steps: Vec<Step>,
}

#[derive(Debug, Arbitrary)]
enum EpochChoice {
    Host,
    None,
    Other,
}

#[derive(Debug, Arbitrary)]
enum Step {
    /// A raw session calls a method.
    Call {
        session: u8,
        call_id: u8,
        epoch: EpochChoice,
        module: ModuleName,
        method: MethodName,
        args: Args,
    },
    /// A raw session asks to sync.
    Sync {
        session: u8,
        sync_id: u8,
        epoch: EpochChoice,
        have_version: Version,
    },
    /// A raw session reads what is queued for it.
    Read { session: u8 },
    /// A raw session disconnects and a new one takes its place.
    Reconnect { session: u8 },
    /// The followed client calls a method.
    FollowerCall {
        module: ModuleName,
        method: MethodName,
        args: Args,
    },
    /// The followed client and its session exchange what they have queued.
    FollowerPump,
    /// The host's idle timer fires.
    Bookmark,
}

const SESSIONS: usize = 3;

fn epoch(choice: &EpochChoice, host_epoch: &str) -> String {
    match choice {
        EpochChoice::Host => host_epoch.to_owned(),
        EpochChoice::None => String::new(),
        EpochChoice::Other => "another-epoch".to_owned(),
    }
}

fuzz_target!(|input: Input| {
    let now = Instant::now();
    let mut host = demo_host(input.patch_mode, small_limits());
    let host_epoch = host.epoch().to_owned();
    let mut published = PublishedWatch::default();
    let open = |host: &mut _, i: usize| {
        let peer = format!("raw-{i}");
        if i == SESSIONS - 1 {
            connect_reply_only(host, &peer)
        } else {
            connect(host, &peer)
        }
    };
    let mut sessions: Vec<_> = (0..SESSIONS).map(|i| open(&mut host, i)).collect();
    let follower_key = connect(&mut host, "follower");
    let mut follower = client("follower", now);
    let mut watch = ClientWatch::default();
    for step in &input.steps {
        match step {
            Step::Call {
                session,
                call_id,
                epoch: e,
                module,
                method,
                args,
            } => {
                let key = sessions[usize::from(*session) % SESSIONS];
                let message = ClientMessage {
                    header: Some(Header::v1(epoch(e, &host_epoch), "raw", "host")),
                    kind: Some(client_message::Kind::Call(Call {
                        call_id: u64::from(*call_id),
                        module: module.0.clone(),
                        method: method.0.clone(),
                        args_json: args.0.clone(),
                    })),
                };
                if let Err(error) = host.handle_message(key, message) {
                    assert_typed_input_error(&error);
                }
            }
            Step::Sync {
                session,
                sync_id,
                epoch: e,
                have_version,
            } => {
                let key = sessions[usize::from(*session) % SESSIONS];
                let message = ClientMessage {
                    header: Some(Header::v1(epoch(e, &host_epoch), "raw", "host")),
                    kind: Some(client_message::Kind::SyncRequest(SyncRequest {
                        sync_id: u64::from(*sync_id),
                        have_version: have_version.0,
                        reason: 0,
                    })),
                };
                if let Err(error) = host.handle_message(key, message) {
                    assert_typed_input_error(&error);
                }
            }
            Step::Read { session } => {
                drain_session(&mut host, sessions[usize::from(*session) % SESSIONS]);
            }
            Step::Reconnect { session } => {
                let i = usize::from(*session) % SESSIONS;
                host.disconnect(sessions[i]);
                sessions[i] = open(&mut host, i);
            }
            Step::FollowerCall {
                module,
                method,
                args,
            } => {
                watch.call(&mut follower, &module.0, &method.0, args.0.clone());
            }
            Step::FollowerPump => pump(&mut host, follower_key, &mut follower, &mut watch, now),
            Step::Bookmark => host.bookmark(),
        }
        published.check(&mut host);
    }
    pump(&mut host, follower_key, &mut follower, &mut watch, now);
    published.check(&mut host);
    assert_eq!(
        follower.state(),
        Some(&host.view()),
        "the follower did not converge"
    );
    assert_eq!(follower.version(), Some(host.version()));
    // Every call the follower made was answered once the traffic stopped.
    assert_eq!(
        follower.pending_calls(),
        0,
        "a follower call is still pending"
    );
    watch.finish(&mut follower);
});
