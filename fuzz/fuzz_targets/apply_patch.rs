//! An arbitrary JSON object and arbitrary patch text into
//! `cosystem_worker::client::apply_patch`.
//!
//! On error the document is exactly as it was; on success it is an object
//! that survives a round trip through JSON text (as a snapshot must).
#![no_main]

use cosystem_worker::client::apply_patch;
use fuzz_support::{JsonObject, PatchText};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[derive(Debug, Arbitrary)]
struct Input {
    doc: JsonObject,
    patch: PatchText,
}

fuzz_target!(|input: Input| {
    let text = input.patch.render();
    let mut doc = input.doc.0.clone();
    match apply_patch(&mut doc, &text) {
        Ok(()) => {
            assert!(doc.is_object(), "{text} made {doc}");
            let round: Value = serde_json::from_str(&doc.to_string()).expect("the result is JSON");
            assert_eq!(round, doc);
        }
        Err(error) => assert_eq!(doc, input.doc.0, "{error} changed the document: {text}"),
    }
});
