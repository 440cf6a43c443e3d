//! The frame codec: a 4-byte big-endian length, then that many bytes of one
//! protobuf-encoded envelope.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::length_delimited::LengthDelimitedCodecError;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use super::budget::{FREE_BYTES, FrameBudget};
use super::sniff::{Foreign, sniff};
use crate::transport::TransportError;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(super) enum CodecError {
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    /// The frame in progress would take the listener's connections past
    /// the bytes they may hold in frames still arriving.
    #[error(
        "frames still arriving on this listener's connections would hold more than {limit} bytes"
    )]
    Budget { limit: usize },
    /// Before any frame, bytes of another protocol.
    #[error("the peer does not speak length-prefixed frames but {}", .0.describe())]
    Foreign(Foreign),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<CodecError> for TransportError {
    fn from(error: CodecError) -> Self {
        match error {
            CodecError::TooLarge { size, limit } => TransportError::FrameTooLarge { size, limit },
            CodecError::Budget { limit } => TransportError::ReceiveBudget { limit },
            // The same peer would answer the same way on every reconnect.
            error @ CodecError::Foreign(_) => TransportError::Unsupported(error.to_string()),
            CodecError::Io(error) => TransportError::Connection(error.to_string()),
        }
    }
}

/// Length-delimited frames of at most `limit` bytes (prefix excluded).
#[derive(Debug)]
pub(super) struct FrameCodec {
    inner: LengthDelimitedCodec,
    limit: usize,
    /// Whether a whole frame has been read: from then on the peer is known
    /// to speak frames, and failures are not sniffed for another protocol.
    framed: bool,
    /// The first frame's length prefix, once read: the inner codec consumes
    /// it, and sniffing a peer that hung up needs the connection's first
    /// bytes.
    head: Option<[u8; PREFIX]>,
    /// The listener's budget for frames in progress, on a host's
    /// connection, and what this one holds of it.
    budget: Option<Arc<FrameBudget>>,
    held: usize,
    /// The length the frame in progress announced, once its prefix is
    /// read: the inner codec makes room for all of it then.
    announced: Option<usize>,
}

/// The length prefix's size in bytes.
const PREFIX: usize = 4;

impl FrameCodec {
    pub(super) fn new(limit: usize) -> Self {
        // The prefix cannot express more than u32::MAX.
        let limit = limit.min(u32::MAX as usize);
        Self {
            inner: LengthDelimitedCodec::builder()
                .length_field_length(PREFIX)
                .big_endian()
                .max_frame_length(limit)
                .new_codec(),
            limit,
            framed: false,
            head: None,
            budget: None,
            held: 0,
            announced: None,
        }
    }

    /// [`FrameCodec::new`], counting the frame in progress against
    /// `budget` beyond [`FREE_BYTES`].
    pub(super) fn with_budget(limit: usize, budget: Arc<FrameBudget>) -> Self {
        let mut codec = Self::new(limit);
        codec.budget = Some(budget);
        codec
    }

    /// Counts the frame in progress against `budget` from now on, giving
    /// back what it held of the previous one.
    pub(super) fn set_budget(&mut self, budget: Arc<FrameBudget>) {
        if let Some(old) = self.budget.replace(budget) {
            old.give(self.held);
        }
        self.held = 0;
    }

    /// Holds the frame in progress against the budget, if any: the length
    /// it announced, which the inner codec reserves as soon as the prefix
    /// is read (a stalled prefix costs that much, whatever follows), and
    /// nothing for a frame of at most [`FREE_BYTES`] or when no frame is in
    /// progress. Fails when the budget cannot take it.
    fn hold(&mut self) -> Result<(), CodecError> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        let want = self.announced.filter(|&n| n > FREE_BYTES).unwrap_or(0);
        if want > self.held {
            if !budget.take(want - self.held) {
                return Err(CodecError::Budget {
                    limit: budget.limit(),
                });
            }
        } else {
            budget.give(self.held - want);
        }
        self.held = want;
        Ok(())
    }

    /// `error` for bytes that fail as frames, unless they are recognised
    /// as another protocol before the first frame.
    fn refused(&self, src: &[u8], ended: bool, error: CodecError) -> CodecError {
        match sniff(src, ended) {
            Some(foreign) if !self.framed => CodecError::Foreign(foreign),
            _ => error,
        }
    }

    /// The connection's first bytes, from the first frame's consumed prefix
    /// and what is still `buffered`, while no frame has been read.
    fn first_bytes(&self, buffered: &[u8]) -> Vec<u8> {
        let mut first = Vec::with_capacity(16);
        first.extend(self.head.iter().flatten());
        first.extend(buffered.iter().take(16));
        first
    }

    /// `error`, a failed read, as another protocol if the bytes received
    /// before it name one. A server that refuses a client's preface and
    /// closes with the client's bytes unread makes the kernel reset the
    /// connection rather than end it (a tonic host reads exactly the 24
    /// bytes of the HTTP/2 preface), so its hang-up reaches the reader as
    /// a reset, not as the end of the stream.
    pub(super) fn read_failed(&self, buffered: &[u8], error: io::Error) -> CodecError {
        let reset = matches!(
            error.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
        );
        let first = self.first_bytes(buffered);
        let io = CodecError::Io(error);
        if reset {
            self.refused(&first, true, io)
        } else {
            io
        }
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        if !self.framed && self.head.is_none() {
            self.head = src.get(..PREFIX).and_then(|p| p.try_into().ok());
        }
        // Between frames the buffer starts with the next frame's prefix,
        // which the inner codec reads (and makes room for) in this call.
        if self.announced.is_none()
            && let Some(prefix) = src
                .get(..PREFIX)
                .and_then(|p| <[u8; PREFIX]>::try_from(p).ok())
        {
            let n = u32::from_be_bytes(prefix) as usize;
            if n <= self.limit {
                self.announced = Some(n);
            }
        }
        match self.inner.decode(src) {
            Ok(Some(frame)) => {
                self.framed = true;
                // The next frame's prefix is read at the next decode.
                self.announced = None;
                self.hold()?;
                if frame.len() > FREE_BYTES && self.budget.is_some() {
                    // The buffer would keep the room it made for this frame
                    // for the connection's life, where the budget counts it
                    // no more: what follows the frame moves to a buffer of
                    // its own, and the room goes with the frame.
                    *src = BytesMut::from(&src[..]);
                }
                Ok(Some(frame))
            }
            Ok(None) => {
                self.hold()?;
                Ok(None)
            }
            Err(error) if is_length_error(&error) => {
                // The codec refuses a length before consuming the prefix, so
                // the offending length is still at the front of the buffer.
                let size = src
                    .get(..PREFIX)
                    .and_then(|p| <[u8; PREFIX]>::try_from(p).ok())
                    .map_or(usize::MAX, |p| u32::from_be_bytes(p) as usize);
                let too_large = CodecError::TooLarge {
                    size,
                    limit: self.limit,
                };
                Err(self.refused(src, false, too_large))
            }
            Err(error) => Err(CodecError::Io(error)),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            // A truncated frame: a lost connection, unless the peer spoke
            // another protocol and hung up on our frames.
            None => {
                let truncated = CodecError::Io(io::Error::other("bytes remaining on stream"));
                Err(self.refused(&self.first_bytes(src), true, truncated))
            }
        }
    }
}

impl Drop for FrameCodec {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give(self.held);
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        if item.len() > self.limit {
            return Err(CodecError::TooLarge {
                size: item.len(),
                limit: self.limit,
            });
        }
        Ok(self.inner.encode(item, dst)?)
    }
}

fn is_length_error(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A frame's length prefix for `len` bytes, and `body` bytes of it.
    fn partial(len: u32, body: usize) -> Vec<u8> {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.resize(PREFIX + body, 0x0a);
        bytes
    }

    #[test]
    fn a_large_frame_leaves_no_room_behind_in_the_read_buffer() {
        // A host's codec, which counts its frames against a budget.
        let mut codec = FrameCodec::with_budget(1 << 20, Arc::new(FrameBudget::new(1 << 22)));
        let mut src = BytesMut::new();
        src.extend_from_slice(&(500_000u32).to_be_bytes());
        src.resize(PREFIX + 500_000, 7);
        src.extend_from_slice(&[0, 0, 0, 2, 1]);
        let frame = codec.decode(&mut src).unwrap().unwrap();
        assert_eq!(frame.len(), 500_000);
        assert_eq!(&src[..], &[0, 0, 0, 2, 1]);
        assert!(src.capacity() < FREE_BYTES, "{}", src.capacity());
    }

    #[test]
    fn frames_in_progress_share_their_listeners_budget_and_give_it_back() {
        let budget = Arc::new(FrameBudget::new(100 * 1024));
        let (mut a, mut b) = (
            FrameCodec::with_budget(1 << 20, budget.clone()),
            FrameCodec::with_budget(1 << 20, budget.clone()),
        );
        let mut a_buffer = BytesMut::from(&partial(80 * 1024, 60 * 1024)[..]);
        assert!(a.decode(&mut a_buffer).unwrap().is_none());
        assert_eq!(budget.used(), 80 * 1024);
        // Small frames in progress take nothing.
        let mut small = FrameCodec::with_budget(1 << 20, budget.clone());
        let mut small_buffer = BytesMut::from(&partial(16 * 1024, 15 * 1024)[..]);
        assert!(small.decode(&mut small_buffer).unwrap().is_none());
        assert_eq!(budget.used(), 80 * 1024);
        // One more that would pass the budget is refused, holding nothing.
        let mut b_buffer = BytesMut::from(&partial(80 * 1024, 50 * 1024)[..]);
        assert!(matches!(
            b.decode(&mut b_buffer),
            Err(CodecError::Budget { limit }) if limit == 100 * 1024
        ));
        assert_eq!(budget.used(), 80 * 1024);
        drop(b);
        assert_eq!(budget.used(), 80 * 1024);
        // A frame completed gives its part back; a codec dropped mid-frame
        // gives back what it held.
        a_buffer.resize(PREFIX + 80 * 1024, 0x0a);
        assert!(a.decode(&mut a_buffer).unwrap().is_some());
        assert_eq!(budget.used(), 0);
        let mut a_buffer = BytesMut::from(&partial(80 * 1024, 70 * 1024)[..]);
        assert!(a.decode(&mut a_buffer).unwrap().is_none());
        assert_eq!(budget.used(), 80 * 1024);
        drop(a);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_stalled_prefix_counts_the_length_it_announces() {
        // The inner codec makes room for the whole frame on reading the
        // prefix, so four bytes cost what they announce.
        let budget = Arc::new(FrameBudget::new(1 << 20));
        let mut codec = FrameCodec::with_budget(1 << 20, budget.clone());
        let mut buffer = BytesMut::from(&partial(900 * 1024, 0)[..]);
        assert!(codec.decode(&mut buffer).unwrap().is_none());
        assert_eq!(budget.used(), 900 * 1024);
        let mut other = FrameCodec::with_budget(1 << 20, budget.clone());
        let mut buffer = BytesMut::from(&partial(900 * 1024, 0)[..]);
        assert!(matches!(
            other.decode(&mut buffer),
            Err(CodecError::Budget { .. })
        ));
        // A prefix not yet whole announces nothing.
        let mut partial_prefix = FrameCodec::with_budget(1 << 20, budget.clone());
        let mut buffer = BytesMut::from(&[0u8, 0x0e][..]);
        assert!(partial_prefix.decode(&mut buffer).unwrap().is_none());
        assert_eq!(budget.used(), 900 * 1024);
    }

    #[test]
    fn a_new_budget_takes_over_from_the_old_one() {
        let (first, sessions) = (
            Arc::new(FrameBudget::new(1 << 20)),
            Arc::new(FrameBudget::new(1 << 20)),
        );
        let mut codec = FrameCodec::with_budget(1 << 20, first.clone());
        let mut buffer = BytesMut::from(&partial(80 * 1024, 60 * 1024)[..]);
        assert!(codec.decode(&mut buffer).unwrap().is_none());
        assert_eq!(first.used(), 80 * 1024);
        codec.set_budget(sessions.clone());
        assert_eq!(first.used(), 0, "the old budget is given back");
        buffer.extend_from_slice(&[0x0a; 1024]);
        assert!(codec.decode(&mut buffer).unwrap().is_none());
        assert_eq!(sessions.used(), 80 * 1024, "counted anew");
        drop(codec);
        assert_eq!((first.used(), sessions.used()), (0, 0));
    }

    /// Decodes `chunks` arriving one after another, then the end of the
    /// stream: the frames read, and the error that ended it, if any.
    fn decode_chunks(limit: usize, chunks: &[Vec<u8>]) -> (Vec<BytesMut>, Option<CodecError>) {
        let mut codec = FrameCodec::new(limit);
        let mut buffer = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in chunks {
            buffer.extend_from_slice(chunk);
            loop {
                match codec.decode(&mut buffer) {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(error) => return (frames, Some(error)),
                }
            }
        }
        loop {
            match codec.decode_eof(&mut buffer) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return (frames, None),
                Err(error) => return (frames, Some(error)),
            }
        }
    }

    /// `bodies` as frames on the wire.
    fn framed(bodies: &[Vec<u8>]) -> Vec<u8> {
        let mut wire = Vec::new();
        for body in bodies {
            wire.extend_from_slice(&(body.len() as u32).to_be_bytes());
            wire.extend_from_slice(body);
        }
        wire
    }

    /// Cuts `bytes` at the given points (each taken modulo the length).
    fn cut(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.extend([0, bytes.len()]);
        points.sort_unstable();
        points
            .windows(2)
            .map(|w| bytes[w[0]..w[1]].to_vec())
            .collect()
    }

    proptest! {
        /// Frames within the limit read back as sent, whatever their
        /// bodies (an HTTP request line, a TLS record) and however the
        /// bytes are split.
        #[test]
        fn frames_within_the_limit_read_back_whatever_their_bodies_and_splits(
            bodies in prop::collection::vec(
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..64),
                    Just(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
                    Just(b"GET / HTTP/1.1\r\n\r\n".to_vec()),
                    Just(vec![0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5]),
                    Just(vec![0, 0, 18, 4, 0, 0, 0, 0, 0]),
                ],
                0..6,
            ),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let wire = framed(&bodies);
            let (frames, error) = decode_chunks(64, &cut(&wire, &cuts));
            prop_assert!(error.is_none(), "{:?}", error);
            let read: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
            let sent: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(read, sent);
        }

        /// A framed peer is never taken for another protocol, even where
        /// sniffing runs: its stream of envelopes cut off anywhere (as a
        /// peer that hangs up mid-frame leaves it) or reset is a lost
        /// connection, never "another protocol".
        #[test]
        fn envelopes_cut_off_or_reset_anywhere_are_never_taken_for_another_protocol(
            envelopes in prop::collection::vec(crate::wire::view::tests::client_message(), 1..4),
            end in any::<usize>(),
            cuts in prop::collection::vec(any::<usize>(), 0..4),
        ) {
            let bodies: Vec<Vec<u8>> = envelopes.iter().map(prost::Message::encode_to_vec).collect();
            let wire = framed(&bodies);
            let wire = &wire[..end % (wire.len() + 1)];
            let (_, error) = decode_chunks(1 << 22, &cut(wire, &cuts));
            prop_assert!(!matches!(error, Some(CodecError::Foreign(_))), "{:?}", error);
            let mut codec = FrameCodec::new(1 << 22);
            let mut buffer = BytesMut::from(wire);
            while let Ok(Some(_)) = codec.decode(&mut buffer) {}
            let reset = io::Error::from(io::ErrorKind::ConnectionReset);
            let error = codec.read_failed(&buffer, reset);
            prop_assert!(!matches!(error, CodecError::Foreign(_)), "{:?}", error);
        }

        /// Any bytes at all end in frames, a clean end, or a typed error,
        /// and another protocol is named only before the first frame.
        #[test]
        fn any_bytes_give_frames_or_a_typed_error_and_foreign_only_first(
            bytes in prop::collection::vec(any::<u8>(), 0..80),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let (frames, error) = decode_chunks(32, &cut(&bytes, &cuts));
            if matches!(error, Some(CodecError::Foreign(_))) {
                prop_assert!(frames.is_empty());
            }
        }
    }

    #[test]
    fn a_frame_round_trips_through_the_codec() {
        let mut codec = FrameCodec::new(16);
        let mut buffer = BytesMut::new();
        codec
            .encode(Bytes::from_static(b"hello"), &mut buffer)
            .unwrap();
        assert_eq!(&buffer[..PREFIX], &[0, 0, 0, 5]);
        let frame = codec.decode(&mut buffer).unwrap().unwrap();
        assert_eq!(&frame[..], b"hello");
        assert!(buffer.is_empty());
    }

    #[test]
    fn an_oversize_length_prefix_reports_its_size_and_the_limit() {
        let mut codec = FrameCodec::new(16);
        let mut buffer = BytesMut::from(&[0u8, 0, 0, 17, 1, 2][..]);
        match codec.decode(&mut buffer) {
            Err(CodecError::TooLarge { size, limit }) => assert_eq!((size, limit), (17, 16)),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn a_frame_at_the_limit_is_accepted() {
        let mut codec = FrameCodec::new(4);
        let mut buffer = BytesMut::from(&[0u8, 0, 0, 4, 9, 9, 9, 9][..]);
        assert_eq!(&codec.decode(&mut buffer).unwrap().unwrap()[..], &[9; 4]);
    }

    #[test]
    fn a_grpc_client_before_any_frame_is_named_and_after_one_is_a_size_error() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let mut codec = FrameCodec::new(16);
        let mut buffer = BytesMut::from(&preface[..]);
        assert!(matches!(
            codec.decode(&mut buffer),
            Err(CodecError::Foreign(Foreign::Http2Client))
        ));

        let mut codec = FrameCodec::new(16);
        let mut buffer = BytesMut::from(&[0u8, 0, 0, 1, 9][..]);
        buffer.extend_from_slice(preface);
        assert!(codec.decode(&mut buffer).unwrap().is_some());
        assert!(matches!(
            codec.decode(&mut buffer),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_grpc_host_hanging_up_is_named_and_a_truncated_frame_is_a_lost_connection() {
        // A server's SETTINGS frame reads as the start of a 4612-byte frame.
        let settings = [0u8, 0, 0x12, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        let mut codec = FrameCodec::new(1 << 20);
        let mut buffer = BytesMut::from(&settings[..]);
        assert!(codec.decode(&mut buffer).unwrap().is_none());
        let error = codec.decode_eof(&mut buffer).unwrap_err();
        assert!(matches!(error, CodecError::Foreign(Foreign::Http2Server)));
        assert!(matches!(
            TransportError::from(error),
            TransportError::Unsupported(message) if message.contains("gRPC host")
        ));

        let mut codec = FrameCodec::new(1 << 20);
        let mut buffer = BytesMut::from(&[0u8, 0, 0, 9, 1, 2][..]);
        assert!(matches!(
            codec.decode_eof(&mut buffer),
            Err(CodecError::Io(_))
        ));
        assert!(codec.decode_eof(&mut BytesMut::new()).unwrap().is_none());
    }

    #[test]
    fn a_reset_after_a_grpc_hosts_settings_names_it_and_other_failures_stay_io() {
        let settings = [0u8, 0, 0x12, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        let mut codec = FrameCodec::new(1 << 20);
        let mut buffer = BytesMut::from(&settings[..]);
        assert!(codec.decode(&mut buffer).unwrap().is_none());
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(matches!(
            codec.read_failed(&buffer, reset),
            CodecError::Foreign(Foreign::Http2Server)
        ));
        let timed_out = io::Error::from(io::ErrorKind::TimedOut);
        assert!(matches!(
            codec.read_failed(&buffer, timed_out),
            CodecError::Io(_)
        ));
    }

    #[test]
    fn a_frame_of_exactly_the_limit_is_written() {
        let mut codec = FrameCodec::new(3);
        let mut buffer = BytesMut::new();
        codec
            .encode(Bytes::from_static(b"abc"), &mut buffer)
            .unwrap();
        assert_eq!(&buffer[..], &[0, 0, 0, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn an_oversize_frame_is_not_written() {
        let mut codec = FrameCodec::new(2);
        let mut buffer = BytesMut::new();
        assert!(matches!(
            codec.encode(Bytes::from_static(b"abc"), &mut buffer),
            Err(CodecError::TooLarge { size: 3, limit: 2 })
        ));
        assert!(buffer.is_empty());
    }
}
