//! Recognising a peer that speaks another protocol, from the first bytes a
//! framed connection receives.
//!
//! A gRPC client pointed at a framed listener, or a framed client pointed
//! at a gRPC host, otherwise fails with an error about frame lengths or a
//! truncated stream, which says nothing of the real mistake. The codec asks
//! here only before the connection's first complete frame, and only when
//! the bytes already fail as frames, so a framed peer is never misread.

/// A protocol recognised in place of length-prefixed frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Foreign {
    /// The HTTP/2 client preface: a gRPC client.
    Http2Client,
    /// An HTTP/2 frame on the connection's control stream, as a server
    /// sends first: a gRPC host.
    Http2Server,
    /// An HTTP/1 request or response.
    Http1,
    /// A TLS record: a handshake or an alert.
    Tls,
}

impl Foreign {
    /// What the peer speaks, for an error message.
    pub(super) fn describe(self) -> &'static str {
        match self {
            Foreign::Http2Client => "HTTP/2, as a gRPC client does",
            Foreign::Http2Server => {
                "HTTP/2, as a gRPC host does: a gRPC connector reaches one at an http:// or https:// URL"
            }
            Foreign::Http1 => "HTTP/1",
            Foreign::Tls => "TLS",
        }
    }
}

/// HTTP/1 methods and the status line, as their first four bytes.
const HTTP1: [&[u8; 4]; 10] = [
    b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC", b"HTTP",
];

/// The protocol the first bytes of a connection are in, if one is
/// recognised. `ended` says the peer closed the connection after these
/// bytes, which an HTTP/2 server does after refusing what it was sent.
pub(super) fn sniff(first: &[u8], ended: bool) -> Option<Foreign> {
    let head = first.get(..4)?;
    if head == b"PRI " {
        return Some(Foreign::Http2Client);
    }
    if HTTP1.iter().any(|method| head == *method) {
        return Some(Foreign::Http1);
    }
    // Content type 22 (handshake) or 21 (alert), then a 3.x version.
    if matches!(head, [0x15 | 0x16, 0x03, 0x00..=0x04, _]) {
        return Some(Foreign::Tls);
    }
    if ended && is_http2_control_frame(first) {
        return Some(Foreign::Http2Server);
    }
    None
}

/// An HTTP/2 SETTINGS or GOAWAY frame on stream 0 (RFC 9113 §4.1, §6.5,
/// §6.8), whose length fits its type. A server's connection preface starts
/// with SETTINGS; a server refusing a client's preface may send GOAWAY.
fn is_http2_control_frame(first: &[u8]) -> bool {
    let Some(header) = http2_frame_header(first) else {
        return false;
    };
    let fits = match header.kind {
        0x04 => header.length.is_multiple_of(6) && header.flags & !0x01 == 0,
        0x07 => header.length >= 8 && header.flags == 0,
        _ => false,
    };
    fits && header.stream == 0
}

/// The 9-byte header of an HTTP/2 frame (RFC 9113 §4.1).
pub(super) struct Http2FrameHeader {
    /// The payload's length in bytes.
    pub(super) length: usize,
    /// The frame type: 0x04 SETTINGS, 0x07 GOAWAY, …
    pub(super) kind: u8,
    pub(super) flags: u8,
    /// The stream id, its reserved bit cleared.
    pub(super) stream: u32,
}

/// The header of the HTTP/2 frame `bytes` start with, once all 9 bytes of
/// it are there.
pub(super) fn http2_frame_header(bytes: &[u8]) -> Option<Http2FrameHeader> {
    let header = bytes.get(..9)?;
    Some(Http2FrameHeader {
        length: u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize,
        kind: header[3],
        flags: header[4],
        stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http2_client_preface_is_a_grpc_client() {
        assert_eq!(
            sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false),
            Some(Foreign::Http2Client)
        );
    }

    #[test]
    fn a_servers_settings_frame_is_http2_only_once_the_peer_closed() {
        // SETTINGS, 18 bytes, no flags, stream 0, then its payload.
        let settings = [0, 0, 18, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        assert_eq!(sniff(&settings, true), Some(Foreign::Http2Server));
        assert_eq!(sniff(&settings, false), None);
        // GOAWAY with its 8-byte minimum.
        let goaway = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(sniff(&goaway, true), Some(Foreign::Http2Server));
    }

    #[test]
    fn http1_and_tls_are_recognised_by_their_first_four_bytes() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n", false), Some(Foreign::Http1));
        assert_eq!(
            sniff(b"HTTP/1.1 400 Bad Request", true),
            Some(Foreign::Http1)
        );
        assert_eq!(
            sniff(&[0x16, 0x03, 0x01, 0x02, 0x00], false),
            Some(Foreign::Tls)
        );
        assert_eq!(
            sniff(&[0x15, 0x03, 0x03, 0x00, 0x02, 2, 50], true),
            Some(Foreign::Tls)
        );
    }

    #[test]
    fn frames_and_short_or_unknown_bytes_are_not_recognised() {
        // A frame's prefix and the start of an envelope (field 1, bytes).
        assert_eq!(sniff(&[0, 0, 0, 40, 0x0a, 0x26, 8, 1, 0x12], true), None);
        assert_eq!(sniff(b"PRI", true), None);
        assert_eq!(sniff(&[0x16, 0x03], true), None);
        // A SETTINGS frame whose length is no multiple of six, or on a
        // stream other than 0, is no server preface.
        assert_eq!(sniff(&[0, 0, 7, 4, 0, 0, 0, 0, 0], true), None);
        assert_eq!(sniff(&[0, 0, 6, 4, 0, 0, 0, 0, 1], true), None);
    }
}
