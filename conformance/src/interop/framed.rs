//! The runner's framed byte-stream connections (spec/PROTOCOL.md §17.3):
//! one TCP or Unix-socket connection per stream, each envelope one frame of
//! a 4-byte big-endian length and the envelope's bytes (FB1).
//!
//! Frames are written by a task from a channel of bytes that are already
//! framed, so a case can also write bytes that are not a frame (a bare
//! oversize length prefix, half a frame) exactly as a broken peer would.

use std::io;
#[cfg(unix)]
use std::path::PathBuf;
use std::pin::Pin;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

/// The largest host message the runner reads, as a frame or over gRPC:
/// above any host's limit that the cases can meet (the largest snapshot a
/// case provokes is about 6 MiB), and small enough that a host sending a
/// garbage length cannot make the runner hold gigabytes.
pub(super) const MAX_READ_FRAME: usize = 64 * 1024 * 1024;

/// Where a framed host listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramedAddress {
    /// `tcp://HOST:PORT`.
    Tcp(String),
    /// `unix:PATH`.
    #[cfg(unix)]
    Unix(PathBuf),
}

impl FramedAddress {
    /// Reads `tcp://HOST:PORT` or `unix:PATH`, as `cosystem-worker host
    /// --listen` names a framed listener; `None` for any other URL (gRPC's).
    pub fn parse(url: &str) -> Option<Result<Self, String>> {
        let url = url.trim();
        // Schemes are case-insensitive (RFC 3986 §3.1).
        let scheme_end = url.find(':').unwrap_or(0);
        let lowered = format!(
            "{}{}",
            url[..scheme_end].to_ascii_lowercase(),
            &url[scheme_end..]
        );
        let url = lowered.as_str();
        if let Some(address) = url.strip_prefix("tcp://") {
            let address = address.trim_end_matches('/');
            return Some(
                if address
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                {
                    Ok(Self::Tcp(address.to_owned()))
                } else {
                    Err(format!("{url}: expected tcp://HOST:PORT"))
                },
            );
        }
        let path = url.strip_prefix("unix://").or(url.strip_prefix("unix:"))?;
        if path.is_empty() {
            return Some(Err(format!("{url}: expected unix:PATH")));
        }
        #[cfg(unix)]
        return Some(Ok(Self::Unix(PathBuf::from(path))));
        #[cfg(not(unix))]
        return Some(Err(format!(
            "{url}: Unix sockets are not available on this platform"
        )));
    }
}

impl std::fmt::Display for FramedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(address) => write!(f, "tcp://{address}"),
            #[cfg(unix)]
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Reads a connection's frames, each the bytes of one envelope.
pub type FrameReader = FramedRead<Pin<Box<dyn AsyncRead + Send>>, Frames>;

/// The 4-byte big-endian length-prefixed frames of FB1, read by hand:
/// tokio-util's codec consumes a length prefix before its body has come, so
/// a stream that ends right after a prefix would look like one that ended
/// between frames. Here a stream that ends with any byte of a frame unread
/// fails with [`io::ErrorKind::UnexpectedEof`], carrying a [`CutFrame`]
/// when what came could begin a frame, and a length over the runner's limit
/// with [`io::ErrorKind::InvalidData`].
pub struct Frames;

/// A stream that ended amid a frame: what came of it, length prefix
/// included, could begin a frame within the runner's limit. A host that
/// closes a connection may leave a frame it was writing unfinished (FB5):
/// an abortive close drops what its own buffers still held, wherever that
/// cuts. Bytes that cannot begin a frame (text, whose first byte alone
/// announces 512 MiB or more) are no such cut.
#[derive(Debug)]
pub struct CutFrame {
    /// The bytes of the unfinished frame that came.
    pub got: BytesMut,
}

impl std::fmt::Display for CutFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the stream ended amid a frame, {} byte(s) of it come, its length prefix included",
            self.got.len()
        )
    }
}

impl std::error::Error for CutFrame {}

/// The unfinished frame `error` reports, if it is a [`CutFrame`].
pub fn cut_frame(error: &io::Error) -> Option<&CutFrame> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<CutFrame>())
}

/// A frame's length prefix.
const PREFIX: usize = 4;

/// The least length a length prefix that begins with `part` can announce.
fn least_length(part: &[u8]) -> usize {
    let mut length = [0u8; PREFIX];
    for (to, from) in length.iter_mut().zip(part) {
        *to = *from;
    }
    u32::from_be_bytes(length) as usize
}

impl tokio_util::codec::Decoder for Frames {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        let Some(prefix) = src.get(..PREFIX) else {
            return Ok(None);
        };
        let mut length = [0u8; PREFIX];
        length.copy_from_slice(prefix);
        let length = u32::from_be_bytes(length) as usize;
        if length > MAX_READ_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame of {length} bytes, over the runner's limit of {MAX_READ_FRAME}"),
            ));
        }
        if src.len() < PREFIX + length {
            src.reserve(PREFIX + length - src.len());
            return Ok(None);
        }
        src.advance(PREFIX);
        Ok(Some(src.split_to(length)))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            // A whole prefix was judged by `decode`; a part of one is
            // judged as the least length it can begin.
            None if src.len() >= PREFIX || least_length(src) <= MAX_READ_FRAME => Err(
                io::Error::new(io::ErrorKind::UnexpectedEof, CutFrame { got: src.split() }),
            ),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the stream ended with {} byte(s) of an unfinished frame, its length prefix included",
                    src.len()
                ),
            )),
        }
    }
}

/// One connection to a framed host: what is sent on the channel is written
/// as it is, and dropping the channel's last sender shuts the connection's
/// write side down (the host sees the end of its stream).
pub async fn connect(
    address: &FramedAddress,
) -> io::Result<(mpsc::UnboundedSender<Bytes>, FrameReader)> {
    type Halves = (
        Pin<Box<dyn AsyncRead + Send>>,
        Pin<Box<dyn AsyncWrite + Send>>,
    );
    let (reader, mut writer): Halves = match address {
        FramedAddress::Tcp(address) => {
            let stream = tokio::net::TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            let (r, w) = stream.into_split();
            (Box::pin(r), Box::pin(w))
        }
        #[cfg(unix)]
        FramedAddress::Unix(path) => {
            let (r, w) = tokio::net::UnixStream::connect(path).await?.into_split();
            (Box::pin(r), Box::pin(w))
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            // A host that closed the connection makes every later write
            // fail; what the case reads tells it so.
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    Ok((tx, FramedRead::new(reader, Frames)))
}

/// The bytes of one frame holding `envelope` (FB1). An envelope longer than
/// a length prefix can say is cut to fit: no case sends one.
pub fn frame(envelope: &[u8]) -> Bytes {
    let len = u32::try_from(envelope.len()).unwrap_or(u32::MAX);
    let mut bytes = BytesMut::with_capacity(4 + envelope.len());
    bytes.put_u32(len);
    bytes.put_slice(&envelope[..len as usize]);
    bytes.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::codec::Decoder;

    #[test]
    fn frames_come_whole_however_their_bytes_are_split() {
        let mut src = BytesMut::new();
        let mut frames = Vec::new();
        for byte in [0, 0, 0, 2, 7, 8, 0, 0, 0, 0, 0, 0, 0, 1] {
            src.put_u8(byte);
            while let Some(frame) = Frames.decode(&mut src).unwrap() {
                frames.push(frame.to_vec());
            }
        }
        assert_eq!(frames, [vec![7, 8], vec![]]);
        // A frame's prefix has come, and nothing of its body: a cut frame.
        assert_eq!(src.len(), 4);
        for cut_at in 1..=4 {
            let mut cut = BytesMut::from(&src[..cut_at]);
            let eof = Frames.decode_eof(&mut cut).unwrap_err();
            assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
            let cut = cut_frame(&eof).expect("a cut frame");
            assert_eq!(cut.got.len(), cut_at, "{eof}");
        }
        assert_eq!(Frames.decode_eof(&mut BytesMut::new()).unwrap(), None);
    }

    #[test]
    fn bytes_that_cannot_begin_a_frame_are_no_cut_frame() {
        // Text: its first byte alone announces far over the limit.
        for text in [&b"e"[..], b"err", b"\x04\x00\x01"] {
            let mut src = BytesMut::from(text);
            let eof = Frames.decode_eof(&mut src).unwrap_err();
            assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
            assert!(cut_frame(&eof).is_none(), "{text:?}: {eof}");
        }
        // A part of a prefix within the limit is one.
        let mut src = BytesMut::from(&b"\x04\x00"[..]);
        assert!(cut_frame(&Frames.decode_eof(&mut src).unwrap_err()).is_some());
    }

    #[test]
    fn a_length_over_the_limit_is_refused_before_its_body() {
        let mut src = BytesMut::new();
        src.put_u32(u32::try_from(MAX_READ_FRAME + 1).unwrap());
        let error = Frames.decode(&mut src).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let mut src = BytesMut::new();
        src.put_u32(u32::try_from(MAX_READ_FRAME).unwrap());
        assert_eq!(Frames.decode(&mut src).unwrap(), None);
    }

    #[test]
    fn framed_urls_are_tcp_or_unix_and_anything_else_is_grpc() {
        assert_eq!(
            FramedAddress::parse("tcp://127.0.0.1:4000"),
            Some(Ok(FramedAddress::Tcp("127.0.0.1:4000".into())))
        );
        assert_eq!(
            FramedAddress::parse("tcp://[::1]:4000/"),
            Some(Ok(FramedAddress::Tcp("[::1]:4000".into())))
        );
        #[cfg(unix)]
        assert_eq!(
            FramedAddress::parse("unix:/run/host.sock"),
            Some(Ok(FramedAddress::Unix("/run/host.sock".into())))
        );
        for bad in ["tcp://127.0.0.1", "tcp://:4000", "tcp://host:port", "unix:"] {
            assert!(matches!(FramedAddress::parse(bad), Some(Err(_))), "{bad}");
        }
        for grpc in ["http://127.0.0.1:4000", "https://h:1", "127.0.0.1:4000"] {
            assert_eq!(FramedAddress::parse(grpc), None, "{grpc}");
        }
    }

    #[test]
    fn a_frame_is_a_big_endian_length_then_the_envelope() {
        assert_eq!(frame(b"abc").as_ref(), b"\0\0\0\x03abc");
        assert_eq!(frame(b"").as_ref(), b"\0\0\0\0");
    }
}
