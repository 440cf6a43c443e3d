//! The client codec: encodes the client's envelopes with prost and hands
//! over each host message's bytes as they are.
//!
//! The client reads the bytes in place, once
//! ([`ClientCore::handle_bytes`](crate::client::ClientCore::handle_bytes)):
//! prost's codec would copy every string of every patch and result into an
//! allocation of its own first. Bytes that are not a `HostMessage` end the
//! link with [`TransportError::Malformed`](crate::transport::TransportError),
//! as on framed streams (spec §17.2, FB5).

use bytes::{Buf, Bytes};
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::wire::ClientMessage;

/// Codec of the client's side of `Session`: [`ClientMessage`]s out, the
/// bytes of each `HostMessage` in.
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

/// Hands over each message's bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostBytesDecoder;

impl Decoder for HostBytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        // The message's bytes are split off tonic's buffer, not copied.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
