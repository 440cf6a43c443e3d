//! Compiles `proto/` without a system `protoc`: protox parses the files and
//! tonic-prost-build generates the messages, a standard client and server.
//! A second, hand-described server for the same service uses a codec that
//! writes pre-encoded host messages, so a publication is encoded once and
//! shared by every stream.

use std::{env, error::Error, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let fds = protox::compile(["cosystem/worker/v1/worker.proto"], ["proto"])?;
    std::fs::write(out_dir.join("worker_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    let connect = tonic_build::manual::Method::builder()
        .name("session")
        .route_name("Session")
        .input_type("crate::transport::grpc::codec::ClientEnvelope")
        .output_type("crate::wire::HostFrame")
        .codec_path("crate::transport::grpc::codec::SharedFrameCodec")
        .client_streaming()
        .server_streaming()
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("HostService")
        .package("cosystem.worker.v1")
        .method(connect)
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .build_transport(false)
        .compile(&[service]);
    Ok(())
}
