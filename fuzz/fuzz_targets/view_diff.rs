//! Arbitrary bytes decoded by prost and by the in-place views
//! (`cosystem_worker::wire::view`), for both envelopes.
//!
//! The two always agree: both accept or both refuse, and what they accept
//! reads the same. The `decode_*` targets check this too, but run a whole
//! core per input; this one explores the decoders alone, much faster.
#![no_main]

use fuzz_support::{decode_client_both_ways, decode_host_both_ways};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_host_both_ways(data);
    let _ = decode_client_both_ways(data);
});
