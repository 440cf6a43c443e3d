//! Arbitrary bytes decoded as `HostMessage` and fed to a `ClientCore`,
//! between calls the application makes.
//!
//! Whatever the bytes, the client never panics, its mirror is `None` or a
//! JSON object whose version never goes back within an epoch, and every
//! call settles exactly once by the time the client is disposed. The
//! in-place decoder (`HostView`) agrees with prost on every input.
#![no_main]

use std::time::Instant;

use fuzz_support::{ClientWatch, client, decode_host_both_ways};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Step {
    /// Bytes from the host.
    Bytes(Vec<u8>),
    /// The application calls a method (so results have something to settle).
    Call,
}

fuzz_target!(|steps: Vec<Step>| {
    let now = Instant::now();
    let mut core = client("client", now);
    let mut watch = ClientWatch::default();
    for step in steps {
        match step {
            Step::Bytes(bytes) => {
                if let Ok(message) = decode_host_both_ways(&bytes) {
                    core.handle_message(now, message);
                }
            }
            Step::Call => {
                watch.call(&mut core, "counter", "increase", "[1]".into());
            }
        }
        while core.poll_transmit().is_some() {}
        watch.check(&mut core);
    }
    watch.finish(&mut core);
});
