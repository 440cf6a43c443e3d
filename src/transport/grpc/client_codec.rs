//! The client codec: encodes the client's envelopes with prost, checks each
//! host message and hands over its bytes.
//!
//! The client core reads the bytes in place
//! ([`ClientCore::handle_bytes`](crate::client::ClientCore::handle_bytes)):
//! prost's codec would copy every string of every patch and result into an
//! allocation of its own first.

use bytes::{Buf, Bytes};
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::wire::ClientMessage;
use crate::wire::view::HostView;

/// Codec of the client's side of `Session`: [`ClientMessage`]s out, the
/// checked bytes of each `HostMessage` in.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostBytesCodec;

impl Codec for HostBytesCodec {
    type Encode = ClientMessage;
    type Decode = Bytes;
    type Encoder = ClientMessageEncoder;
    type Decoder = HostBytesDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ClientMessageEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        HostBytesDecoder
    }
}

/// Encodes a [`ClientMessage`] with prost.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientMessageEncoder;

impl Encoder for ClientMessageEncoder {
    type Item = ClientMessage;
    type Error = Status;

    fn encode(&mut self, item: ClientMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // The buffer grows as needed, so prost finds room.
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding a ClientMessage: {e}")))
    }
}

/// Checks that a message decodes as a `HostMessage` and hands over its
/// bytes; bytes that are not one fail the stream with `INTERNAL`, as
/// tonic's prost decoder does.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostBytesDecoder;

impl Decoder for HostBytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        // The message's bytes are split off tonic's buffer, not copied.
        let bytes = src.copy_to_bytes(src.remaining());
        HostView::decode(&bytes)
            .map_err(|e| Status::internal(format!("malformed HostMessage: {e}")))?;
        Ok(Some(bytes))
    }
}
