//! Arbitrary bytes decoded by prost and by the in-place views
//! (`cosystem_worker::wire::view`), for both envelopes.
//!
//! The two always agree: both accept or both refuse, and what they accept
//! reads the same. The `decode_*` targets check this too, but run a whole
//! core per input; this one explores the decoders alone, much faster.
#![no_main]

use cosystem_worker::wire::view::{ClientView, HostView};
use cosystem_worker::wire::{ClientMessage, HostMessage};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let decoded = HostMessage::decode(data);
    let view = HostView::decode(data);
    assert_eq!(
        decoded.is_ok(),
        view.is_ok(),
        "host {decoded:?} vs {view:?}"
    );
    if let (Ok(message), Ok(view)) = (&decoded, view) {
        assert_eq!(HostView::from(message), view);
    }
    let decoded = ClientMessage::decode(data);
    let view = ClientView::decode(data);
    assert_eq!(
        decoded.is_ok(),
        view.is_ok(),
        "client {decoded:?} vs {view:?}"
    );
    if let (Ok(message), Ok(view)) = (&decoded, view) {
        assert_eq!(ClientView::from(message), view);
    }
});
