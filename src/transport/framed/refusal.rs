//! What a framed listener answers a gRPC client, in HTTP/2's own terms.
//!
//! Closing on a client's HTTP/2 preface leaves the client with "connection
//! closed" or a reset, which names neither the mistake nor the fix. So the
//! listener answers as an HTTP/2 server refusing the connection would: an
//! empty SETTINGS frame (the server preface, RFC 9113 §3.4), then a GOAWAY
//! whose debug data says what the address serves (spec FB9). Few gRPC
//! stacks show that text, but the reference's gRPC connector looks for it
//! after an opening fails, and says to connect with `tcp://`.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How a refusal's debug data begins, for a client to recognise it by.
pub(crate) const REFUSAL_PREFIX: &[u8] = b"cosystem-worker framed listener";

/// The refusal's debug data.
const REFUSAL_TEXT: &str = "cosystem-worker framed listener: this address serves length-prefixed frames (PROTOCOL.md section 17.3), not gRPC; connect with tcp://";

/// GOAWAY's error code: the peer broke the protocol (RFC 9113 §7).
const PROTOCOL_ERROR: u32 = 0x1;

/// How long the listener waits, after its answer, for the client to close,
/// reading what it sent meanwhile, and how much it reads at most. Closing
/// with bytes unread would make the kernel reset the connection, and a
/// reset can discard the answer before the client reads it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// An empty SETTINGS frame, then a GOAWAY (last stream 0, PROTOCOL_ERROR)
/// carrying [`REFUSAL_TEXT`].
fn http2_refusal() -> Vec<u8> {
    let mut bytes = vec![0, 0, 0, 0x04, 0, 0, 0, 0, 0];
    let payload = 8 + REFUSAL_TEXT.len();
    let length = u32::try_from(payload).unwrap_or(0).to_be_bytes();
    bytes.extend_from_slice(&[length[1], length[2], length[3], 0x07, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&0u32.to_be_bytes());
    bytes.extend_from_slice(&PROTOCOL_ERROR.to_be_bytes());
    bytes.extend_from_slice(REFUSAL_TEXT.as_bytes());
    bytes
}

/// Answers a peer that sent the HTTP/2 client preface with the refusal,
/// then reads and drops what it sends until it closes, for at most
/// [`LINGER`] and [`LINGER_BYTES`]. Errors end it early: the peer is gone.
pub(super) async fn refuse_http2<R, W>(mut reader: R, mut writer: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let answer = async {
        writer.write_all(&http2_refusal()).await?;
        writer.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut read = 0;
        while read < LINGER_BYTES {
            match reader.read(&mut sink).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(LINGER, answer).await;
}

/// Whether `answer`, what a server sent back to the HTTP/2 client preface,
/// holds a framed listener's refusal: a GOAWAY on stream 0 whose debug data
/// begins with [`REFUSAL_PREFIX`], after any other whole frames.
pub(crate) fn is_framed_refusal(answer: &[u8]) -> bool {
    let mut rest = answer;
    while let Some(header) = rest.get(..9) {
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let Some(payload) = rest.get(9..9 + length) else {
            return false;
        };
        if header[3] == 0x07 && stream == 0 {
            return payload
                .get(8..)
                .is_some_and(|debug| debug.starts_with(REFUSAL_PREFIX));
        }
        rest = &rest[9 + length..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_server_preface_and_a_goaway_a_client_recognises() {
        let bytes = http2_refusal();
        // SETTINGS: empty, no flags, stream 0.
        assert_eq!(bytes[..9], [0, 0, 0, 4, 0, 0, 0, 0, 0]);
        // GOAWAY: its length covers last stream, code and text.
        let length = u32::from_be_bytes([0, bytes[9], bytes[10], bytes[11]]) as usize;
        assert_eq!(bytes[12], 7);
        assert_eq!(bytes.len(), 18 + length);
        assert_eq!(bytes[22..26], PROTOCOL_ERROR.to_be_bytes());
        assert!(is_framed_refusal(&bytes));
    }

    #[test]
    fn other_answers_are_not_a_framed_refusal() {
        let bytes = http2_refusal();
        // Cut short, so the GOAWAY is incomplete.
        assert!(!is_framed_refusal(&bytes[..bytes.len() - 1]));
        // A gRPC server's own GOAWAY, with no such text.
        assert!(!is_framed_refusal(&[
            0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1
        ]));
        // The text on another stream.
        let mut other_stream = bytes.clone();
        other_stream[17] = 1;
        assert!(!is_framed_refusal(&other_stream));
        assert!(!is_framed_refusal(b"HTTP/1.1 400 Bad Request\r\n\r\n"));
        assert!(!is_framed_refusal(&[]));
    }
}
