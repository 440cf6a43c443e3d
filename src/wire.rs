//! Generated protobuf types of `cosystem.worker.v1`.
#[allow(clippy::all, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/cosystem.worker.v1.rs"));
}
pub use generated::*;
pub struct HostFrame;
