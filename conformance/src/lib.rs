//! Conformance kit for cosystem-worker.
