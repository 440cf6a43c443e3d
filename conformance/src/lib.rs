//! Conformance kit for the cosystem-worker protocol.
//!
//! - [`adapter`]: the adapter protocol through which client cases drive a
//!   client in any language, and the reference adapter.
//! - [`vectors`]: language-neutral test vectors (JSON files under
//!   `conformance/vectors/`) and a runner that plays them against the
//!   reference sans-IO cores.
//! - [`interop`]: the host interop runner, which tests a host in any
//!   language over gRPC or framed byte streams.
//! - [`sim`]: a deterministic simulation of one host and several clients over
//!   faulty channels, with a simulated clock.
//! - [`report`]: per-case results and their printing.
//! - [`wirejson`]: canonical JSON ⇄ wire types.
//! - [`doc`]: renders spec/CONFORMANCE.md's case catalogue from the vectors.
//! - [`coverage`]: which cases cite each rule id of spec/PROTOCOL.md.
//!
//! The client vectors run through [`adapter::ClientUnderTest`], so the same
//! runner checks the reference client in process and any client behind an
//! adapter program; every mode reports through [`report::Report`].
#![warn(missing_docs)]

pub mod adapter;
pub mod coverage;
pub mod doc;
pub mod interop;
pub mod report;
pub mod select;
pub mod sim;
pub mod suite;
pub mod vectors;
pub mod wirejson;
