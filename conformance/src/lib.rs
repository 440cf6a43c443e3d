//! Conformance kit for the cosystem-worker protocol.
//!
//! - [`vectors`]: language-neutral test vectors (JSON files under
//!   `conformance/vectors/`) and a runner that plays them against the
//!   reference sans-IO cores.
//! - [`sim`]: a deterministic simulation of one host and several clients over
//!   faulty channels, with a simulated clock.
//! - [`report`]: per-case results and their printing.
//! - [`wirejson`]: canonical JSON ⇄ wire types.
//! - [`doc`]: renders spec/CONFORMANCE.md's case catalogue from the vectors.
//!
//! Runner modes that drive implementations in other languages over gRPC plug
//! in beside [`vectors::Case::run_reference`], reusing the same cases,
//! matchers and report.
#![warn(missing_docs)]

pub mod doc;
pub mod report;
pub mod sim;
pub mod vectors;
pub mod wirejson;
