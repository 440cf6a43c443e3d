//! Naming what a host speaks when a plaintext gRPC opening fails.
//!
//! Two mistakes fail with errors that point nowhere near them: `http://` to
//! a host that serves TLS (h2's frame-size error, a broken pipe or a reset,
//! depending on which side acts first), and a gRPC URL for a framed
//! listener ("connection closed"). After such a failure the connector
//! sends the HTTP/2 client preface on one short connection of its own and
//! reads the answer: a TLS record, or a framed listener's refusal (spec
//! FB9), and says how to connect instead.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::transport::TransportError;
use crate::transport::framed::refusal::read_refusal;

/// What a host reached over plaintext was found to speak instead of gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Speaks {
    /// TLS: connect with `https://`.
    Tls,
    /// Length-prefixed frames: connect with `tcp://`.
    Framed,
}

/// How long the probe waits for the answer, and how much of it it reads.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_BYTES: usize = 1024;

/// `error` with a hint added if it is a connection error of a plaintext
/// opening to `authority` (`HOST:PORT`; `None` for TLS openings) and the
/// host answers the HTTP/2 preface with TLS or as a framed listener. The
/// probe runs at every such failure, so a hint is never stale: the address
/// may be served by something else by the next one. A gRPC host's answer
/// tells at its first bytes, so the probe costs a round trip, not its
/// timeout.
pub(super) async fn hint(error: TransportError, authority: Option<&str>) -> TransportError {
    let (TransportError::Connection(mut message), Some(authority)) = (error.clone(), authority)
    else {
        return error;
    };
    match answer_to_preface(authority).await {
        Some(Speaks::Tls) => {
            message.push_str(" (the host answers with TLS: connect with https://)");
        }
        Some(Speaks::Framed) => message.push_str(&format!(
            " (the host serves framed streams, not gRPC: connect with tcp://{authority})"
        )),
        None => return error,
    }
    TransportError::Connection(message)
}

/// What the host at `authority` answers the HTTP/2 client preface with: a
/// TLS record (content type 21 or 22, version 3.x), as a TLS server sends
/// for bytes that are not a handshake, or a framed listener's refusal.
/// `None` as soon as the answer can be neither, or when none comes within
/// [`PROBE_TIMEOUT`].
pub(super) async fn answer_to_preface(authority: &str) -> Option<Speaks> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.ok()?;
        stream.write_all(PREFACE).await.ok()?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 256];
        while answer.len() < PROBE_BYTES {
            let n = stream.read(&mut chunk).await.ok()?;
            answer.extend_from_slice(&chunk[..n]);
            match answer[..] {
                [21 | 22, 3, ..] => return Some(Speaks::Tls),
                // A TLS record's version may be in the next read.
                [21 | 22] => {}
                _ => match read_refusal(&answer) {
                    Some(true) => return Some(Speaks::Framed),
                    Some(false) => return None,
                    None => {}
                },
            }
            if n == 0 {
                break;
            }
        }
        None
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-connection server that reads the client's first bytes and
    /// answers `reply`.
    async fn answering(reply: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut preface = [0u8; 24];
                let _ = socket.read_exact(&mut preface).await;
                let _ = socket.write_all(reply).await;
            }
        });
        address
    }

    #[tokio::test]
    async fn a_host_answering_the_preface_with_a_tls_record_is_named_as_tls() {
        // A TLS alert record, as a TLS server sends for bytes it cannot read.
        let tls = answering(&[21, 3, 3, 0, 2, 2, 50]).await;
        assert_eq!(answer_to_preface(&tls).await, Some(Speaks::Tls));
        let http1 = answering(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        assert_eq!(answer_to_preface(&http1).await, None);
        assert_eq!(
            answer_to_preface("127.0.0.1:1").await,
            None,
            "nothing listening"
        );
        let tls = answering(&[21, 3, 3, 0, 2, 2, 50]).await;
        let hinted = hint(
            TransportError::Connection("Unknown: broken pipe".into()),
            Some(&tls),
        )
        .await;
        assert!(
            hinted.to_string().ends_with("connect with https://)"),
            "{hinted}"
        );
    }

    #[tokio::test]
    async fn a_grpc_host_is_told_apart_by_its_first_frame_without_waiting() {
        let host = crate::host::Host::builder(crate::demo::app("probe-secret")).build();
        let server = crate::transport::grpc::GrpcServer::builder(host.clone())
            .bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let authority = server.local_addr().to_string();
        tokio::spawn(server.serve(std::future::pending()));
        // The probe's own timeout would say None too, but only after it:
        // a shorter one here tells which.
        let answer = tokio::time::timeout(PROBE_TIMEOUT / 2, answer_to_preface(&authority)).await;
        assert_eq!(answer, Ok(None));
        host.shutdown();
    }

    #[tokio::test]
    async fn a_framed_listener_is_named_with_the_url_to_use() {
        let host = crate::host::Host::builder(crate::demo::app("probe-secret")).build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        tokio::spawn(crate::transport::framed::serve_tcp(host.clone(), listener));
        let hinted = hint(
            TransportError::Connection("connection closed".into()),
            Some(&authority),
        )
        .await;
        assert_eq!(
            hinted.to_string(),
            format!(
                "connection failed: connection closed (the host serves framed streams, not gRPC: connect with tcp://{authority})"
            )
        );
        host.shutdown();
    }
}
