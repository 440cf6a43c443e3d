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

use super::sniff::http2_frame_header;

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

/// Whether `answer`, the start of what a server sent back to the HTTP/2
/// client preface, is a framed listener's refusal: `Some(true)` once it
/// holds the empty SETTINGS frame and a GOAWAY on stream 0 whose debug data
/// begins with [`REFUSAL_PREFIX`]; `Some(false)` as soon as a byte differs
/// from that (a gRPC server's own SETTINGS carries settings, so its first
/// frame tells at once); `None` while more bytes could still make it one.
pub(crate) fn read_refusal(answer: &[u8]) -> Option<bool> {
    const SETTINGS: [u8; 9] = [0, 0, 0, 0x04, 0, 0, 0, 0, 0];
    let head = answer.len().min(SETTINGS.len());
    if answer[..head] != SETTINGS[..head] {
        return Some(false);
    }
    let goaway = http2_frame_header(answer.get(9..)?)?;
    if goaway.kind != 0x07 || goaway.stream != 0 || goaway.length < 8 + REFUSAL_PREFIX.len() {
        return Some(false);
    }
    let debug = answer.get(26..).unwrap_or_default();
    let seen = debug.len().min(REFUSAL_PREFIX.len());
    if debug[..seen] != REFUSAL_PREFIX[..seen] {
        return Some(false);
    }
    (seen == REFUSAL_PREFIX.len()).then_some(true)
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
        assert_eq!(read_refusal(&bytes), Some(true));
        // Every shorter start of it could still become it.
        for end in 0..26 + REFUSAL_PREFIX.len() {
            assert_eq!(read_refusal(&bytes[..end]), None, "{end} bytes");
        }
    }

    #[test]
    fn other_answers_are_told_apart_at_their_first_difference() {
        let bytes = http2_refusal();
        // A gRPC server's SETTINGS carries settings: its length byte tells.
        assert_eq!(read_refusal(&[0, 0, 6]), Some(false));
        // A gRPC server's own GOAWAY, with no such text.
        assert_eq!(
            read_refusal(&[
                0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1
            ]),
            Some(false)
        );
        // The text on another stream, or other text.
        let mut other_stream = bytes.clone();
        other_stream[17] = 1;
        assert_eq!(read_refusal(&other_stream), Some(false));
        let mut other_text = bytes.clone();
        other_text[26] = b'x';
        assert_eq!(read_refusal(&other_text[..27]), Some(false));
        assert_eq!(
            read_refusal(b"HTTP/1.1 400 Bad Request\r\n\r\n"),
            Some(false)
        );
        assert_eq!(read_refusal(&[]), None);
    }
}
