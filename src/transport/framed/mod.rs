//! Framed byte streams: envelopes as length-prefixed protobuf frames over any
//! ordered byte stream — TCP, Unix domain sockets, a child process's
//! stdin/stdout, or the process's own (spec §17.3).
//!
//! Each frame is a 4-byte big-endian length followed by that many bytes: the
//! protobuf encoding of one envelope (`ClientMessage` towards the host,
//! `HostMessage` towards the client). A frame longer than the receiver's
//! limit ([`FramedConfig::max_frame_bytes`], by default the host's max
//! message size, 4 MiB) is refused with [`TransportError::FrameTooLarge`] and
//! that connection is closed; the host keeps serving every other one. One
//! connection is one session. A connection accepted by [`serve_tcp`] or
//! [`serve_unix`] becomes a session only once its first non-empty frame has
//! arrived,
//! and is closed if that takes longer than the host's
//! [`first_envelope_timeout`](crate::host::HostLimits::first_envelope_timeout)
//! (spec FB6). Bytes of another protocol before the first frame (a gRPC client
//! or host at the other end) are named as such (spec FB9): a client's link
//! fails with [`TransportError::Unsupported`], and a host logs the
//! connection.
//!
//! Hosts: [`serve_tcp`], [`serve_unix`], [`serve_stdio`], or [`serve_stream`]
//! for any other stream. Clients: [`TcpConnector`], [`UnixConnector`],
//! [`SpawnConnector`], or [`client_link`] for any other stream.

pub(crate) mod budget;
mod codec;
mod connect;
pub(crate) mod refusal;
mod serve;
mod sniff;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, Stream, StreamExt};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite};

pub use budget::{PARTIAL_FIRST_FRAMES_PER_LISTENER, PARTIAL_FRAMES_PER_LISTENER};
pub use connect::{PipeConnector, SpawnConnector, TcpConnector, UnixConnector, pipe};
pub use serve::{
    MAX_WAITING, bind_unix, serve_stdio, serve_stream, serve_tcp, serve_unix, serve_unix_listener,
};

use self::codec::{CodecError, FrameCodec};
use super::{ClientLink, HostInput, HostLink, TransportError};
use crate::host::{Host, HostLimits};
use crate::wire::view::HostView;
use crate::wire::{ClientMessage, HostFrame};

/// Framing settings for one end of a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramedConfig {
    /// The largest frame (encoded envelope, length prefix excluded) read or
    /// written; a larger one fails with [`TransportError::FrameTooLarge`].
    /// At most `u32::MAX`, the largest length the prefix can express.
    pub max_frame_bytes: usize,
}

impl Default for FramedConfig {
    /// The default host's max message size (4 MiB).
    fn default() -> Self {
        Self {
            max_frame_bytes: HostLimits::default().max_message_bytes,
        }
    }
}

impl FramedConfig {
    /// Frames up to `host`'s own max message size.
    pub fn for_host(host: &Host) -> Self {
        Self {
            max_frame_bytes: host.limits().max_message_bytes,
        }
    }
}

/// The host's end of a session over a byte stream split into its halves.
///
/// Frames are written from [`HostFrame::encoded`], so a publication shared
/// by many sessions is encoded once.
pub fn host_link<R, W>(
    reader: R,
    writer: W,
    peer_id: impl Into<String>,
    config: FramedConfig,
) -> HostLink
where
    R: AsyncRead + Send + 'static,
    W: AsyncWrite + Send + 'static,
{
    let frames = FramedRead::new(reader, FrameCodec::new(config.max_frame_bytes));
    host_link_over(frames, writer, peer_id, config)
}

/// [`host_link`] for a stream whose incoming frames are already being read:
/// serving an accepted connection reads its first frame before the session
/// opens (see `serve`).
fn host_link_over<F, W>(
    frames: F,
    writer: W,
    peer_id: impl Into<String>,
    config: FramedConfig,
) -> HostLink
where
    F: Stream<Item = Result<BytesMut, CodecError>> + Send + 'static,
    W: AsyncWrite + Send + 'static,
{
    let sink = FramedWrite::new(writer, FrameCodec::new(config.max_frame_bytes))
        .sink_map_err(TransportError::from)
        .with(|frame: HostFrame| futures::future::ok::<_, TransportError>(frame.encoded()));
    let stream = frames.map(|item| {
        let bytes = item?;
        ClientMessage::decode(bytes.freeze()).map_err(|e| TransportError::Malformed(e.to_string()))
    });
    HostLink {
        peer_id: peer_id.into(),
        sink: Box::pin(sink),
        stream: Box::pin(stream),
    }
}

/// The client's end of a connection over a byte stream split into its
/// halves.
pub fn client_link<R, W>(reader: R, writer: W, config: FramedConfig) -> ClientLink
where
    R: AsyncRead + Send + 'static,
    W: AsyncWrite + Send + 'static,
{
    let limit = config.max_frame_bytes;
    let sink = FramedWrite::new(writer, FrameCodec::new(limit))
        .sink_map_err(TransportError::from)
        .with(|message: ClientMessage| {
            futures::future::ok::<_, TransportError>(Bytes::from(message.encode_to_vec()))
        });
    let mut frames = Box::pin(FramedRead::new(reader, FrameCodec::new(limit)));
    let frames = futures::stream::poll_fn(move |cx| {
        loop {
            let item = std::task::ready!(frames.poll_next_unpin(cx));
            let item = item.map(|read| match read {
                Err(CodecError::Io(error)) => {
                    Err(frames.decoder().read_failed(frames.read_buffer(), error))
                }
                other => other,
            });
            // FB2: an empty frame is dropped as if it had not arrived: it is
            // neither a malformed envelope to report nor the host speaking.
            if !matches!(&item, Some(Ok(frame)) if frame.is_empty()) {
                return std::task::Poll::Ready(item);
            }
        }
    });
    // Checked here as well as where the client reads them: a spawned
    // child's link must know a frame is an envelope before it counts the
    // child as having spoken (`connect::child_stream`).
    let stream = frames.map(|item| {
        let bytes = item?.freeze();
        HostView::decode(&bytes).map_err(|e| TransportError::Malformed(e.to_string()))?;
        Ok(HostInput::Encoded(bytes))
    });
    ClientLink {
        sink: Box::pin(sink),
        stream: Box::pin(stream),
    }
}
