//! cosystem-worker: a versioned, language-neutral protocol for sharing
//! application state between a host and its clients, and its Rust reference
//! implementation.
//!
//! - [`wire`]: the protobuf envelopes of `cosystem.worker.v1`.
//! - [`app`]: modules, declared methods, typed and recording state.
//! - [`host`]: the host state machine ([`host::HostCore`]) and its driver.
//! - [`client`]: the client state machine ([`client::ClientCore`]) and its driver.
//! - [`demo`]: the demo app the conformance suite runs against, and that
//!   `cosystem-worker host` serves.
//! - [`transport`]: links between them: in-process pairs and a shared
//!   broadcast bus, framed byte streams (TCP, Unix sockets, stdio) and gRPC
//!   ([`transport::grpc::GrpcServer`], [`transport::grpc::GrpcConnector`]).
//! - [`metrics_server`] and [`prometheus`]: a host's counters in the
//!   Prometheus text format, and a small HTTP endpoint serving them.
//! - [`inherited_signals`]: which signals the crate's programs were started
//!   ignoring, so that they keep ignoring them.
//!
//! The repository's README starts with a quick start: a host and a client
//! in one process, then modules of your own served over gRPC.
#![warn(missing_docs)]

pub mod app;
pub mod client;
pub mod demo;
mod fast_hash;
pub mod host;
pub mod inherited_signals;
pub mod metrics_server;
pub mod prometheus;
pub mod transport;
pub mod wire;

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme_doctests {}
