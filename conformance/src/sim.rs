//! Deterministic simulation (placeholder).
