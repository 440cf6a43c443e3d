//! The frame codec: a 4-byte big-endian length, then that many bytes of one
//! protobuf-encoded envelope.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::length_delimited::LengthDelimitedCodecError;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::transport::TransportError;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(super) enum CodecError {
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<CodecError> for TransportError {
    fn from(error: CodecError) -> Self {
        match error {
            CodecError::TooLarge { size, limit } => TransportError::FrameTooLarge { size, limit },
            CodecError::Io(error) => TransportError::Connection(error.to_string()),
        }
    }
}

/// Length-delimited frames of at most `limit` bytes (prefix excluded).
#[derive(Debug)]
pub(super) struct FrameCodec {
    inner: LengthDelimitedCodec,
    limit: usize,
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
        }
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        self.inner.decode(src).map_err(|error| {
            if is_length_error(&error) {
                // The codec refuses a length before consuming the prefix, so
                // the offending length is still at the front of the buffer.
                let size = src
                    .get(..PREFIX)
                    .and_then(|p| <[u8; PREFIX]>::try_from(p).ok())
                    .map_or(usize::MAX, |p| u32::from_be_bytes(p) as usize);
                CodecError::TooLarge {
                    size,
                    limit: self.limit,
                }
            } else {
                CodecError::Io(error)
            }
        })
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
