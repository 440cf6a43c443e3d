//! Arbitrary bytes decoded as `HostMessage` and fed to a `ClientCore`,
//! between calls the application makes.
//!
//! Whatever the bytes, the client never panics, its mirror is `None` or a
//! JSON object whose version never goes back within an epoch, and every
//! call settles exactly once by the time the client is disposed. The
//! in-place decoder (`HostView`) agrees with prost on every input.
#![no_main]

use std::time::Instant;

use cosystem_worker::wire::HostMessage;
use cosystem_worker::wire::view::HostView;
use fuzz_support::{ClientWatch, client};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use prost::Message;

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
                let decoded = HostMessage::decode(bytes.as_slice());
                let view = HostView::decode(&bytes);
                assert_eq!(
                    decoded.is_ok(),
                    view.is_ok(),
                    "{decoded:?} against {view:?}"
                );
                if let (Ok(message), Ok(view)) = (&decoded, view) {
                    assert_eq!(HostView::from(message), view);
                }
                if let Ok(message) = decoded {
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
