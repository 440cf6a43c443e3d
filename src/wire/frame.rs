//! [`HostFrame`]: one host envelope shared by every receiver of it, encoded
//! at most once, with its header shared by every frame of the same sender
//! and target, and for a Snapshot, holding the view's text by reference.

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::view::{HostKindView, HostView, SnapshotView};
use super::{CallResult, Header, HostMessage, Patch, Snapshot, call_result, host_message};

/// A host message shared by every receiver of it.
///
/// Cloning is a reference-count increment. Byte transports call
/// [`HostFrame::encoded`], which serialises the message at most once however
/// many streams write it; in-process transports hand the frame itself over,
/// which a client reads in place ([`HostFrame::view`]).
///
/// The header is a [`SharedHeader`] that a sender shares between all the
/// frames it addresses alike ([`HostFrame::with_header`]), so making a frame
/// copies no string of it and encoding one writes the header's bytes as they
/// were encoded once.
///
/// A Snapshot made with [`HostFrame::snapshot`] shares the view's text with
/// every other Snapshot of the same version: answering many sync requests
/// copies the view once, not once per answer, and however many answers are
/// queued (on a shared bus, for its slowest receiver) they hold one copy.
/// Its text is copied out only when the frame is taken apart
/// ([`HostFrame::into_message`], [`HostFrame::message`]) or encoded.
#[derive(Clone, Debug)]
pub struct HostFrame(Arc<FrameInner>);

/// A header that many frames share, encoded once when it is made: a frame
/// writes these bytes rather than encoding its header again.
#[derive(Debug)]
pub struct SharedHeader {
    header: Header,
    /// Field 1 of a `HostMessage`: key, length and the header's encoding.
    field: Box<[u8]>,
}

impl SharedHeader {
    /// Shares `header`, encoding it now.
    pub fn new(header: Header) -> Arc<Self> {
        let mut field = Vec::new();
        prost::encoding::message::encode(1, &header, &mut field);
        Arc::new(Self {
            header,
            field: field.into_boxed_slice(),
        })
    }

    /// The header itself.
    pub fn header(&self) -> &Header {
        &self.header
    }
}

#[derive(Debug)]
struct FrameInner {
    header: Option<Arc<SharedHeader>>,
    /// For a shared Snapshot, with an empty `state_json`.
    kind: Option<host_message::Kind>,
    /// A shared Snapshot's `state_json`.
    state: Option<Arc<str>>,
    /// The message, once someone asked for it whole.
    whole: OnceLock<HostMessage>,
    encoded: OnceLock<Bytes>,
}

impl HostFrame {
    /// Wraps a message; nothing is encoded yet.
    pub fn new(message: HostMessage) -> Self {
        Self::from_parts(message.header.map(SharedHeader::new), message.kind, None)
    }

    /// A message of `header`, shared with the sender's other frames to the
    /// same target, and `kind`; nothing is encoded yet.
    pub fn with_header(header: Arc<SharedHeader>, kind: host_message::Kind) -> Self {
        Self::from_parts(Some(header), Some(kind), None)
    }

    /// A Snapshot envelope whose `state_json` is `state`, shared rather than
    /// copied; `snapshot`'s own `state_json` is ignored.
    pub fn snapshot(header: Arc<SharedHeader>, mut snapshot: Snapshot, state: Arc<str>) -> Self {
        snapshot.state_json.clear();
        Self::from_parts(
            Some(header),
            Some(host_message::Kind::Snapshot(snapshot)),
            Some(state),
        )
    }

    fn from_parts(
        header: Option<Arc<SharedHeader>>,
        kind: Option<host_message::Kind>,
        state: Option<Arc<str>>,
    ) -> Self {
        Self(Arc::new(FrameInner {
            header,
            kind,
            state,
            whole: OnceLock::new(),
            encoded: OnceLock::new(),
        }))
    }

    /// The envelope's header, without copying anything.
    pub fn header(&self) -> Option<&Header> {
        self.0.header.as_deref().map(SharedHeader::header)
    }

    /// The message, read in place: what an in-process client takes,
    /// copying nothing, a shared Snapshot's text included.
    pub fn view(&self) -> HostView<'_> {
        let mut view = HostView::from_parts(self.header(), self.0.kind.as_ref());
        if let (Some(state), Some(HostKindView::Snapshot(snapshot))) =
            (&self.0.state, &mut view.kind)
        {
            *snapshot = SnapshotView {
                state_json: state,
                ..*snapshot
            };
        }
        view
    }

    /// The message itself, built on first use and kept (for a shared
    /// Snapshot, a copy of the view for as long as the frame lives), so
    /// transports use [`HostFrame::view`], [`HostFrame::header`],
    /// [`HostFrame::encoded`] or [`HostFrame::into_message`] instead.
    pub fn message(&self) -> &HostMessage {
        self.0.whole.get_or_init(|| self.0.whole_message())
    }

    /// The message's kind without copying anything, except that a shared
    /// Snapshot's `state_json` is empty here: for telling what a frame is.
    pub(crate) fn kind_without_state(&self) -> Option<&host_message::Kind> {
        self.0.kind.as_ref()
    }

    /// The protobuf encoding of the message, computed on first use and then
    /// shared (the returned `Bytes` points at the same allocation every time).
    pub fn encoded(&self) -> Bytes {
        self.encoding().clone()
    }

    /// The length of [`HostFrame::encoded`], without encoding anything.
    pub fn encoded_len(&self) -> usize {
        match self.0.encoded.get() {
            Some(bytes) => bytes.len(),
            None => self.0.parts_len(),
        }
    }

    fn encoding(&self) -> &Bytes {
        self.0.encoded.get_or_init(|| {
            let mut out = Vec::with_capacity(self.0.parts_len());
            self.0.encode_vec(&mut out);
            Bytes::from(out)
        })
    }

    /// Writes [`HostFrame::encoded`]'s bytes into `dst`, consuming this
    /// handle: for a writer that copies the bytes anyway. A frame no other
    /// handle shares (a result, a sync answer) is encoded straight into
    /// `dst`, since nobody else will write it; a shared one is encoded once
    /// and its bytes copied.
    pub fn write_to(self, dst: &mut impl BufMut) {
        match Arc::try_unwrap(self.0) {
            Ok(only) => match only.encoded.get() {
                Some(bytes) => dst.put_slice(bytes),
                None => only.encode(dst),
            },
            Err(shared) => dst.put_slice(HostFrame(shared).encoding()),
        }
    }

    /// The message itself, by value: moved out when this is the frame's only
    /// handle (a result or a sync answer, sent to one session), cloned when
    /// other handles share it (a publication, also held by the history). A
    /// shared Snapshot's text is copied in, and a header other frames share
    /// is copied.
    pub fn into_message(self) -> HostMessage {
        match Arc::try_unwrap(self.0) {
            Ok(FrameInner {
                whole: whole_message,
                header,
                mut kind,
                state,
                ..
            }) => match whole_message.into_inner() {
                Some(message) => message,
                None => {
                    fill_state(&mut kind, state.as_deref());
                    HostMessage {
                        header: header.map(|h| {
                            Arc::try_unwrap(h).map_or_else(|h| h.header.clone(), |h| h.header)
                        }),
                        kind,
                    }
                }
            },
            Err(shared) => match shared.whole.get() {
                Some(message) => message.clone(),
                None => shared.whole_message(),
            },
        }
    }

    /// Whether two frames are the same shared frame (not merely equal).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl From<HostMessage> for HostFrame {
    fn from(message: HostMessage) -> Self {
        Self::new(message)
    }
}

/// Puts a shared Snapshot's text back into its kind.
fn fill_state(kind: &mut Option<host_message::Kind>, state: Option<&str>) {
    if let (Some(state), Some(host_message::Kind::Snapshot(snapshot))) = (state, kind) {
        snapshot.state_json = state.to_owned();
    }
}

impl FrameInner {
    fn whole_message(&self) -> HostMessage {
        let mut kind = self.kind.clone();
        fill_state(&mut kind, self.state.as_deref());
        HostMessage {
            header: self.header.as_ref().map(|h| h.header.clone()),
            kind,
        }
    }

    fn header_len(&self) -> usize {
        self.header.as_ref().map_or(0, |h| h.field.len())
    }

    /// The length of a shared Snapshot's `snapshot` field, its text in.
    fn snapshot_body_len(snapshot: &Snapshot, state: &str) -> usize {
        let varint = |tag: u32, value: u64| {
            if value == 0 {
                0
            } else {
                key_len(tag) + encoded_len_varint(value)
            }
        };
        let text = if state.is_empty() {
            0
        } else {
            key_len(2) + encoded_len_varint(state.len() as u64) + state.len()
        };
        varint(1, snapshot.version)
            + text
            + varint(3, snapshot.sync_id)
            + varint(4, snapshot.reason as i64 as u64)
    }

    fn parts_len(&self) -> usize {
        self.header_len()
            + match (&self.kind, &self.state) {
                (Some(host_message::Kind::Snapshot(snapshot)), Some(state)) => {
                    let body = Self::snapshot_body_len(snapshot, state);
                    key_len(2) + encoded_len_varint(body as u64) + body
                }
                (kind, _) => kind.as_ref().map_or(0, host_message::Kind::encoded_len),
            }
    }

    /// Encodes the parts as prost encodes the whole message, byte for byte,
    /// without building it: the header from its `Arc`, a shared Snapshot's
    /// text from its `Arc` (so never copied twice).
    fn encode(&self, out: &mut impl BufMut) {
        if let Some(header) = &self.header {
            out.put_slice(&header.field);
        }
        match (&self.kind, &self.state) {
            (Some(host_message::Kind::Snapshot(snapshot)), Some(state)) => {
                let body = Self::snapshot_body_len(snapshot, state);
                encode_key(2, WireType::LengthDelimited, out);
                encode_varint(body as u64, out);
                varint_field(1, snapshot.version, out);
                if !state.is_empty() {
                    encode_key(2, WireType::LengthDelimited, out);
                    encode_varint(state.len() as u64, out);
                    out.put_slice(state.as_bytes());
                }
                varint_field(3, snapshot.sync_id, out);
                varint_field(4, snapshot.reason as i64 as u64, out);
            }
            (Some(kind), _) => kind.encode(out),
            (None, _) => {}
        }
    }

    /// [`FrameInner::encode`] into a `Vec`, as [`HostFrame::encoded`]
    /// writes it, with the two kinds every call sends (a patch, a result
    /// with a value) written here, byte for byte as prost writes them.
    /// prost writes each byte of a varint through `BufMut::put_u8`, which
    /// made their varints cost more than the rest of the frame; pushed onto
    /// the `Vec`, sized beforehand, they cost a few instructions a byte.
    fn encode_vec(&self, out: &mut Vec<u8>) {
        // The patterns name every field, so a field added to either message
        // stops the build here rather than going unwritten.
        match &self.kind {
            Some(host_message::Kind::Patch(
                patch @ Patch {
                    base_version,
                    version,
                    patch_json,
                    sync_id,
                },
            )) => {
                if let Some(header) = &self.header {
                    out.extend_from_slice(&header.field);
                }
                push_key(3, WireType::LengthDelimited, out);
                push_varint(patch.encoded_len() as u64, out);
                push_varint_field(1, *base_version, out);
                push_varint_field(2, *version, out);
                if !patch_json.is_empty() {
                    push_key(3, WireType::LengthDelimited, out);
                    push_varint(patch_json.len() as u64, out);
                    out.extend_from_slice(patch_json.as_bytes());
                }
                push_varint_field(4, *sync_id, out);
            }
            Some(host_message::Kind::Result(
                result @ CallResult {
                    call_id,
                    state_version,
                    outcome: Some(call_result::Outcome::ValueJson(json)),
                },
            )) => {
                if let Some(header) = &self.header {
                    out.extend_from_slice(&header.field);
                }
                push_key(4, WireType::LengthDelimited, out);
                push_varint(result.encoded_len() as u64, out);
                push_varint_field(1, *call_id, out);
                push_varint_field(2, *state_version, out);
                // A oneof member is written even when it is empty.
                push_key(3, WireType::LengthDelimited, out);
                push_varint(json.len() as u64, out);
                out.extend_from_slice(json.as_bytes());
            }
            _ => self.encode(out),
        }
    }
}

/// A varint as prost writes one, pushed a byte at a time.
fn push_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A field's key as prost writes one.
fn push_key(tag: u32, wire: WireType, out: &mut Vec<u8>) {
    push_varint(u64::from(tag << 3 | wire as u32), out);
}

/// [`varint_field`], pushed.
fn push_varint_field(tag: u32, value: u64, out: &mut Vec<u8>) {
    if value != 0 {
        push_key(tag, WireType::Varint, out);
        push_varint(value, out);
    }
}

/// A varint field as prost writes one: not at all when it is zero.
fn varint_field(tag: u32, value: u64, out: &mut impl BufMut) {
    if value != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(value, out);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::super::Patch;
    use super::*;

    fn message(patch_json: &str) -> HostMessage {
        HostMessage {
            header: Some(Header::v1("e", "host", "")),
            kind: Some(host_message::Kind::Patch(Patch {
                base_version: 1,
                version: 2,
                patch_json: patch_json.to_owned(),
                sync_id: 0,
            })),
        }
    }

    #[test]
    fn into_message_gives_the_message_whether_or_not_the_frame_is_shared() {
        let only = HostFrame::new(message("[1]"));
        assert_eq!(only.into_message(), message("[1]"));

        let shared = HostFrame::new(message("[2]"));
        let other = shared.clone();
        assert_eq!(shared.into_message(), message("[2]"));
        // The other handle still holds the same message.
        assert_eq!(other.message(), &message("[2]"));
    }

    proptest! {
        /// However a frame was made (from a message, from a shared header,
        /// as a shared Snapshot), it encodes byte for byte as prost encodes
        /// the message it stands for, and reads, measures and takes apart as
        /// that message, whether or not its handle is shared and whatever
        /// was asked of it first.
        #[test]
        fn a_frame_is_the_message_it_stands_for(
            whole in super::super::view::tests::host_message(),
            made in 0..3u8,
            ask_first in 0..3u8,
        ) {
            let make = || match (made, whole.header.clone(), whole.kind.clone()) {
                (1, Some(header), Some(kind)) => HostFrame::with_header(SharedHeader::new(header), kind),
                (2, Some(header), Some(host_message::Kind::Snapshot(mut snapshot))) => {
                    let state = Arc::from(std::mem::take(&mut snapshot.state_json));
                    snapshot.state_json = "ignored".to_owned();
                    HostFrame::snapshot(SharedHeader::new(header), snapshot, state)
                }
                (_, header, kind) => HostFrame::new(HostMessage { header, kind }),
            };
            let encoding = whole.encode_to_vec();
            // Written by a handle of its own, then by one of two.
            let mut written = Vec::new();
            make().write_to(&mut written);
            prop_assert_eq!(&written[..], &encoding[..]);
            let frame = make();
            written.clear();
            frame.clone().write_to(&mut written);
            prop_assert_eq!(&written[..], &encoding[..]);
            prop_assert_eq!(frame.view(), HostView::from(&whole));
            prop_assert_eq!(frame.header(), whole.header.as_ref());
            match ask_first {
                0 => prop_assert_eq!(frame.message(), &whole),
                1 => prop_assert_eq!(frame.encoded_len(), whole.encoded_len()),
                _ => {}
            }
            prop_assert_eq!(&frame.encoded()[..], &encoding[..]);
            prop_assert_eq!(frame.encoded_len(), whole.encoded_len());
            prop_assert_eq!(frame.clone().into_message(), whole.clone());
            prop_assert_eq!(frame.into_message(), whole);
        }
    }

    #[test]
    fn snapshots_of_one_view_share_its_text() {
        let view: Arc<str> = Arc::from("{\"a\":1}");
        let header = SharedHeader::new(Header::v1("e", "host", "c"));
        let snapshot = |sync_id| Snapshot {
            version: 7,
            state_json: String::new(),
            sync_id,
            reason: 2,
        };
        let frames: Vec<HostFrame> = (1..=3)
            .map(|sync_id| HostFrame::snapshot(header.clone(), snapshot(sync_id), view.clone()))
            .collect();
        // Three answers, one text and one header: each frame holds a reference.
        assert_eq!(Arc::strong_count(&view), 4);
        assert_eq!(Arc::strong_count(&header), 4);
        // Read in place, every answer is the view itself, not a copy.
        assert!(frames.iter().all(|f| matches!(
            f.view().kind,
            Some(HostKindView::Snapshot(s)) if std::ptr::eq(s.state_json, &*view)
        )));
    }
}
