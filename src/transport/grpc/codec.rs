//! The server codec: decodes client envelopes with prost and writes each
//! host frame's shared encoding as it is.
//!
//! The standard prost codec would re-encode a publication once per stream;
//! this one writes [`HostFrame::encoded`], which is computed once per frame
//! however many streams carry it.

use bytes::BufMut;
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::wire::{ClientMessage, HostFrame};

/// Codec of the host's `Session` method: [`ClientMessage`] in, shared
/// [`HostFrame`] bytes out.
#[derive(Debug, Clone, Copy, Default)]
pub struct SharedFrameCodec;

impl Codec for SharedFrameCodec {
    type Encode = HostFrame;
    type Decode = ClientMessage;
    type Encoder = SharedFrameEncoder;
    type Decoder = ClientMessageDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        SharedFrameEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ClientMessageDecoder
    }
}

/// Writes a frame's shared encoding into the gRPC message buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct SharedFrameEncoder;

impl Encoder for SharedFrameEncoder {
    type Item = HostFrame;
    type Error = Status;

    fn encode(&mut self, item: HostFrame, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // The buffer grows as needed, so this cannot fail.
        dst.put(item.encoded());
        Ok(())
    }
}

/// Decodes one [`ClientMessage`]; bytes that are not one end the stream with
/// `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientMessageDecoder;

impl Decoder for ClientMessageDecoder {
    type Item = ClientMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ClientMessage>, Status> {
        ClientMessage::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed ClientMessage: {e}")))
    }
}
