//! The server codec: checks each client envelope and hands over its bytes,
//! and writes each host frame's shared encoding as it is.
//!
//! The standard prost codec would re-encode a publication once per stream;
//! this one writes [`HostFrame::encoded`], which is computed once per frame
//! however many streams carry it ([`HostFrame::write_to`]). Inbound, it hands the session the
//! envelope's own bytes ([`ClientEnvelope`]), which the host core reads in
//! place ([`ClientView`](crate::wire::view::ClientView)), once: a prost
//! decode would copy every string of it into an allocation of its own.

use bytes::{Buf, Bytes};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::wire::HostFrame;

/// Codec of the host's `Session` method: [`ClientEnvelope`]s in, shared
/// [`HostFrame`] bytes out.
#[derive(Debug, Clone, Copy, Default)]
pub struct SharedFrameCodec;

impl Codec for SharedFrameCodec {
    type Encode = HostFrame;
    type Decode = ClientEnvelope;
    type Encoder = SharedFrameEncoder;
    type Decoder = ClientEnvelopeDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        SharedFrameEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ClientEnvelopeDecoder
    }
}

/// Writes a frame's shared encoding into the gRPC message buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct SharedFrameEncoder;

impl Encoder for SharedFrameEncoder {
    type Item = HostFrame;
    type Error = Status;

    fn encode(&mut self, item: HostFrame, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // The buffer grows as needed, so this cannot fail. A frame only
        // this stream holds (a result) is encoded straight into it.
        item.write_to(dst);
        Ok(())
    }
}

/// The bytes of one gRPC message, not yet decoded: the session decodes
/// them, and ends the stream with `INVALID_ARGUMENT` if they are not a
/// `ClientMessage` (spec §17.2).
#[derive(Debug, Clone)]
pub struct ClientEnvelope(Bytes);

impl ClientEnvelope {
    /// The envelope's encoding, as it arrived.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Hands over each message's bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientEnvelopeDecoder;

impl Decoder for ClientEnvelopeDecoder {
    type Item = ClientEnvelope;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ClientEnvelope>, Status> {
        // The message's bytes are split off tonic's buffer, not copied.
        Ok(Some(ClientEnvelope(src.copy_to_bytes(src.remaining()))))
    }
}
