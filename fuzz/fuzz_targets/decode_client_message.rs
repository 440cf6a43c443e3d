//! Arbitrary bytes into `HostCore::handle_bytes` on two sessions at once.
//!
//! Whatever the bytes, the host never panics, refuses only with typed
//! errors, answers only with well-formed frames, keeps its view an object
//! whose version counts its commits, and a third, well-behaved session
//! still gets correct service (its call answered right, its mirror equal
//! to the host's view). The in-place decoder the host reads bytes with
//! (`ClientView`) agrees with prost on every input.
#![no_main]

use std::time::Instant;

use cosystem_worker::wire::{ClientMessage, client_message};
use fuzz_support::{
    ClientWatch, PublishedWatch, assert_typed_input_error, bystander_gets_service, client, connect,
    decode_client_both_ways, demo_host, drain_session, small_limits, spells_secret,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    patch_mode: bool,
    steps: Vec<Step>,
}

#[derive(Debug, Arbitrary)]
struct Step {
    /// Which of the two hostile sessions sends the bytes.
    second: bool,
    /// Whether that session then reads what the host queued for it (a
    /// session that never reads is how flooding happens).
    read: bool,
    bytes: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let now = Instant::now();
    let mut host = demo_host(input.patch_mode, small_limits());
    let mut published = PublishedWatch::default();
    let sessions = [connect(&mut host, "first"), connect(&mut host, "second")];
    let bystander = connect(&mut host, "bystander");
    let mut follower = client("bystander", now);
    let mut watch = ClientWatch::default();
    for step in &input.steps {
        let decoded = decode_client_both_ways(&step.bytes);
        // A call that sends the marker itself would have it published as
        // its own data, which the checks cannot tell from a leak.
        if let Ok(ClientMessage {
            kind: Some(client_message::Kind::Call(call)),
            ..
        }) = &decoded
            && spells_secret(&call.args_json)
        {
            continue;
        }
        let session = sessions[usize::from(step.second)];
        if let Err(error) = host.handle_bytes(session, &step.bytes) {
            assert_typed_input_error(&error);
        }
        if step.read {
            drain_session(&mut host, session);
        }
        published.check(&mut host);
    }
    bystander_gets_service(&mut host, bystander, &mut follower, &mut watch, now);
    published.check(&mut host);
    watch.finish(&mut follower);
});
