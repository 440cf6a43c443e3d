//! [`HostFrame`]: one host envelope shared by every receiver of it, encoded
//! at most once, and for a Snapshot, holding the view's text by reference.

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::{Header, HostMessage, Snapshot, host_message};

/// A host message shared by every receiver of it.
///
/// Cloning is a reference-count increment. Byte transports call
/// [`HostFrame::encoded`], which serialises the message at most once however
/// many streams write it; in-memory transports hand over the message, or the
/// encoding of a frame made by [`HostFrame::encode`].
///
/// A Snapshot made with [`HostFrame::snapshot`] shares the view's text with
/// every other Snapshot of the same version: answering many sync requests
/// copies the view once, not once per answer, and however many answers are
/// queued (on a shared bus, for its slowest receiver) they hold one copy.
/// Its text is copied out only when the frame is taken apart
/// ([`HostFrame::into_message`], [`HostFrame::message`]) or encoded.
#[derive(Clone, Debug)]
pub struct HostFrame(Arc<FrameInner>);

#[derive(Debug)]
struct FrameInner {
    /// The message, whole unless `rest` says what it lacks.
    message: HostMessage,
    rest: Rest,
    /// The whole message, once someone asked for it, when `message` is not.
    whole: OnceLock<HostMessage>,
    encoded: OnceLock<Bytes>,
}

/// What a frame's `message` lacks.
#[derive(Debug)]
enum Rest {
    /// Nothing.
    Nothing,
    /// A shared Snapshot's `state_json`.
    State(Arc<str>),
    /// The header, which only the encoding holds ([`HostFrame::encode`]).
    Header,
}

/// A header's fields, borrowed: what [`HostFrame::encode`] writes without
/// building a [`Header`] of copied strings.
#[derive(Debug, Clone, Copy)]
pub struct HeaderFields<'a> {
    /// [`Header::protocol_version`].
    pub protocol_version: u32,
    /// [`Header::epoch`].
    pub epoch: &'a str,
    /// [`Header::source`].
    pub source: &'a str,
    /// [`Header::target`].
    pub target: &'a str,
    /// [`Header::capability`].
    pub capability: &'a str,
}

impl HeaderFields<'_> {
    const STRINGS: [u32; 4] = [2, 3, 4, 5];

    fn strings(&self) -> [&str; 4] {
        [self.epoch, self.source, self.target, self.capability]
    }

    /// The length of the Header message's own fields, as prost encodes them.
    fn body_len(&self) -> usize {
        let version = match self.protocol_version {
            0 => 0,
            v => key_len(1) + encoded_len_varint(u64::from(v)),
        };
        let strings: usize = Self::STRINGS
            .iter()
            .zip(self.strings())
            .filter(|(_, text)| !text.is_empty())
            .map(|(tag, text)| key_len(*tag) + encoded_len_varint(text.len() as u64) + text.len())
            .sum();
        version + strings
    }

    /// Writes the Header message's fields (prost's order and rules: fields
    /// by number, proto3 defaults left out).
    fn write(&self, out: &mut Vec<u8>) {
        if self.protocol_version != 0 {
            encode_key(1, WireType::Varint, out);
            encode_varint(u64::from(self.protocol_version), out);
        }
        for (tag, text) in Self::STRINGS.iter().zip(self.strings()) {
            if !text.is_empty() {
                encode_key(*tag, WireType::LengthDelimited, out);
                encode_varint(text.len() as u64, out);
                out.put_slice(text.as_bytes());
            }
        }
    }
}

impl HostFrame {
    /// Wraps a message; nothing is encoded yet.
    pub fn new(message: HostMessage) -> Self {
        Self(Arc::new(FrameInner {
            message,
            rest: Rest::Nothing,
            whole: OnceLock::new(),
            encoded: OnceLock::new(),
        }))
    }

    /// A message of `header` and `kind`, encoded at once, byte for byte as
    /// prost encodes the same [`HostMessage`], without copying the header's
    /// strings: the host's patches and results, which every transport but
    /// an in-process one writes as bytes anyway. The header is decoded
    /// again only if someone asks for the message itself.
    pub fn encode(header: HeaderFields<'_>, kind: host_message::Kind) -> Self {
        let body = header.body_len();
        let mut out = Vec::with_capacity(
            key_len(1) + encoded_len_varint(body as u64) + body + kind.encoded_len(),
        );
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(body as u64, &mut out);
        header.write(&mut out);
        kind.encode(&mut out);
        Self(Arc::new(FrameInner {
            message: HostMessage {
                header: None,
                kind: Some(kind),
            },
            rest: Rest::Header,
            whole: OnceLock::new(),
            encoded: OnceLock::from(Bytes::from(out)),
        }))
    }

    /// A Snapshot envelope whose `state_json` is `state`, shared rather than
    /// copied; `snapshot`'s own `state_json` is ignored.
    pub fn snapshot(header: Header, mut snapshot: Snapshot, state: Arc<str>) -> Self {
        snapshot.state_json.clear();
        Self(Arc::new(FrameInner {
            message: HostMessage {
                header: Some(header),
                kind: Some(host_message::Kind::Snapshot(snapshot)),
            },
            rest: Rest::State(state),
            whole: OnceLock::new(),
            encoded: OnceLock::new(),
        }))
    }

    /// The envelope's header; copies nothing, except that a frame made by
    /// [`HostFrame::encode`] decodes it on first use.
    pub fn header(&self) -> Option<&Header> {
        match self.0.rest {
            Rest::Header => self.message().header.as_ref(),
            _ => self.0.message.header.as_ref(),
        }
    }

    /// The message itself. A shared Snapshot's frame builds it on first use
    /// and keeps it, a copy of the view for as long as the frame lives, and
    /// a frame made by [`HostFrame::encode`] decodes its header, so
    /// transports use [`HostFrame::header`], [`HostFrame::encoded`] or
    /// [`HostFrame::into_message`] instead.
    pub fn message(&self) -> &HostMessage {
        match &self.0.rest {
            Rest::Nothing => &self.0.message,
            rest => self.0.whole.get_or_init(|| self.0.whole_message(rest)),
        }
    }

    /// The message's kind without copying anything, except that a shared
    /// Snapshot's `state_json` is empty here: for telling what a frame is.
    pub(crate) fn kind_without_state(&self) -> Option<&host_message::Kind> {
        self.0.message.kind.as_ref()
    }

    /// The protobuf encoding of the message, computed on first use and then
    /// shared (the returned `Bytes` points at the same allocation every time).
    pub fn encoded(&self) -> Bytes {
        self.encoding().clone()
    }

    /// [`HostFrame::encoded`], borrowed: for a writer that copies the bytes
    /// anyway, with no reference count taken (the first one made of a
    /// frame's `Bytes` allocates).
    pub fn encoded_slice(&self) -> &[u8] {
        self.encoding()
    }

    /// The length of [`HostFrame::encoded`], without encoding anything.
    pub fn encoded_len(&self) -> usize {
        match (self.0.encoded.get(), &self.0.rest) {
            (Some(bytes), _) => bytes.len(),
            (None, Rest::State(_)) => self.encoding().len(),
            (None, _) => self.0.message.encoded_len(),
        }
    }

    /// Whether the frame was made encoded ([`HostFrame::encode`]): handing
    /// a receiver its bytes then copies nothing, where its message would
    /// be decoded.
    pub fn is_born_encoded(&self) -> bool {
        matches!(self.0.rest, Rest::Header)
    }

    fn encoding(&self) -> &Bytes {
        self.0.encoded.get_or_init(|| {
            Bytes::from(match &self.0.rest {
                Rest::State(state) => encode_snapshot(&self.0.message, state),
                _ => self.0.message.encode_to_vec(),
            })
        })
    }

    /// The message itself, by value: moved out when this is the frame's only
    /// handle (a result or a sync answer, sent to one session), cloned when
    /// other handles share it (a publication, also held by the history). A
    /// shared Snapshot's text is copied in; a frame made by
    /// [`HostFrame::encode`] decodes its header.
    pub fn into_message(self) -> HostMessage {
        match Arc::try_unwrap(self.0) {
            Ok(FrameInner {
                mut message,
                rest,
                whole,
                encoded,
            }) => match (rest, whole.into_inner()) {
                (Rest::Nothing, _) => message,
                (_, Some(whole)) => whole,
                (Rest::State(state), None) => self::whole(&message, &state),
                (Rest::Header, None) => {
                    message.header = encoded.get().and_then(|bytes| decode_header(bytes));
                    message
                }
            },
            Err(shared) => match (&shared.rest, shared.whole.get()) {
                (Rest::Nothing, _) => shared.message.clone(),
                (_, Some(whole)) => whole.clone(),
                (rest, None) => shared.whole_message(rest),
            },
        }
    }

    /// Whether two frames are the same shared frame (not merely equal).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl FrameInner {
    /// `message` with what `rest` says it lacks.
    fn whole_message(&self, rest: &Rest) -> HostMessage {
        match rest {
            Rest::Nothing => self.message.clone(),
            Rest::State(state) => whole(&self.message, state),
            Rest::Header => HostMessage {
                header: self.encoded.get().and_then(|bytes| decode_header(bytes)),
                kind: self.message.kind.clone(),
            },
        }
    }
}

/// The header that [`HostFrame::encode`] wrote first in `encoded`. Our own
/// encoding, so it always decodes; if it did not, the frame would read as
/// headerless rather than fail.
fn decode_header(mut encoded: &[u8]) -> Option<Header> {
    let (tag, wire_type) = prost::encoding::decode_key(&mut encoded).ok()?;
    if tag != 1 || wire_type != WireType::LengthDelimited {
        return None;
    }
    let len = usize::try_from(prost::encoding::decode_varint(&mut encoded).ok()?).ok()?;
    Header::decode(encoded.get(..len)?).ok()
}

impl From<HostMessage> for HostFrame {
    fn from(message: HostMessage) -> Self {
        Self::new(message)
    }
}

/// A shared Snapshot's message with its text filled in.
fn whole(message: &HostMessage, state: &str) -> HostMessage {
    let mut whole = message.clone();
    if let Some(host_message::Kind::Snapshot(snapshot)) = &mut whole.kind {
        snapshot.state_json = state.to_owned();
    }
    whole
}

/// The encoding of `message`, a Snapshot envelope whose `state_json` is
/// `state`, written without building the message: byte for byte what prost
/// writes for the whole message (fields in number order, defaults left out).
fn encode_snapshot(message: &HostMessage, state: &str) -> Vec<u8> {
    let Some(host_message::Kind::Snapshot(snapshot)) = &message.kind else {
        return message.encode_to_vec();
    };
    // Snapshot: version = 1, state_json = 2, sync_id = 3, reason = 4.
    let varint = |tag: u32, value: u64| {
        if value == 0 {
            0
        } else {
            key_len(tag) + encoded_len_varint(value)
        }
    };
    // An int32 is written as its sign-extended 64-bit value.
    let reason = snapshot.reason as i64 as u64;
    let text = if state.is_empty() {
        0
    } else {
        key_len(2) + encoded_len_varint(state.len() as u64) + state.len()
    };
    let body = varint(1, snapshot.version) + text + varint(3, snapshot.sync_id) + varint(4, reason);
    let header = message.header.as_ref();
    let header_len = header.map_or(0, |h| {
        key_len(1) + encoded_len_varint(h.encoded_len() as u64) + h.encoded_len()
    });
    let mut out =
        Vec::with_capacity(header_len + key_len(2) + encoded_len_varint(body as u64) + body);
    if let Some(header) = header {
        prost::encoding::message::encode(1, header, &mut out);
    }
    encode_key(2, WireType::LengthDelimited, &mut out);
    encode_varint(body as u64, &mut out);
    let field = |tag: u32, value: u64, out: &mut Vec<u8>| {
        if value != 0 {
            encode_key(tag, WireType::Varint, out);
            encode_varint(value, out);
        }
    };
    field(1, snapshot.version, &mut out);
    if !state.is_empty() {
        encode_key(2, WireType::LengthDelimited, &mut out);
        encode_varint(state.len() as u64, &mut out);
        out.put_slice(state.as_bytes());
    }
    field(3, snapshot.sync_id, &mut out);
    field(4, reason, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

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

    fn snapshot(version: u64, state: &str, sync_id: u64, reason: i32) -> Snapshot {
        Snapshot {
            version,
            state_json: state.to_owned(),
            sync_id,
            reason,
        }
    }

    proptest! {
        /// A shared Snapshot reads, takes apart and encodes exactly as the
        /// same Snapshot built whole, byte for byte.
        #[test]
        fn a_shared_snapshot_is_the_snapshot_it_stands_for(
            version in prop_oneof![Just(0u64), any::<u64>()],
            state in prop_oneof![Just(String::new()), ".{0,300}"],
            sync_id in prop_oneof![Just(0u64), any::<u64>()],
            reason in prop_oneof![Just(0i32), any::<i32>()],
            epoch in ".{0,40}",
            target in prop_oneof![Just(String::new()), "[a-z]{1,8}"],
            headless in any::<bool>(),
        ) {
            let header = Header::v1(epoch, "host", target);
            let whole = HostMessage {
                header: (!headless).then(|| header.clone()),
                kind: Some(host_message::Kind::Snapshot(snapshot(version, &state, sync_id, reason))),
            };
            let mut frame = HostFrame::snapshot(
                header,
                snapshot(version, "ignored", sync_id, reason),
                Arc::from(state.as_str()),
            );
            if headless {
                let inner = Arc::get_mut(&mut frame.0).expect("one handle");
                inner.message.header = None;
            }
            prop_assert_eq!(&frame.encoded()[..], &whole.encode_to_vec()[..]);
            prop_assert_eq!(frame.message(), &whole);
            prop_assert_eq!(frame.clone().into_message(), whole.clone());
            prop_assert_eq!(frame.into_message(), whole);
        }
    }

    fn kind_strategy() -> impl Strategy<Value = host_message::Kind> {
        use super::super::{CallResult, call_result};
        let small = || prop_oneof![Just(0u64), any::<u64>()];
        let text = || prop_oneof![Just(String::new()), ".{0,40}"];
        prop_oneof![
            (small(), small(), text(), small()).prop_map(
                |(base_version, version, patch_json, sync_id)| {
                    host_message::Kind::Patch(Patch {
                        base_version,
                        version,
                        patch_json,
                        sync_id,
                    })
                }
            ),
            (
                small(),
                small(),
                proptest::option::of(text()),
                any::<i32>(),
                text()
            )
                .prop_map(|(call_id, state_version, value, code, message)| {
                    let outcome = match value {
                        Some(value) => call_result::Outcome::ValueJson(value),
                        None => call_result::Outcome::Error(super::super::Error {
                            code,
                            message,
                            details_json: String::new(),
                        }),
                    };
                    host_message::Kind::Result(CallResult {
                        call_id,
                        state_version,
                        outcome: Some(outcome),
                    })
                }),
        ]
    }

    proptest! {
        /// A frame made encoded encodes byte for byte as prost encodes the
        /// same message, and reads, measures and takes apart as that
        /// message, whether or not its handle is shared.
        #[test]
        fn a_frame_made_encoded_is_the_message_it_stands_for(
            protocol_version in prop_oneof![Just(0u32), Just(1u32), any::<u32>()],
            epoch in prop_oneof![Just(String::new()), ".{0,40}"],
            source in prop_oneof![Just(String::new()), "[a-z]{1,8}"],
            target in prop_oneof![Just(String::new()), ".{1,200}"],
            capability in prop_oneof![Just(String::new()), "[a-z0-9]{1,16}"],
            kind in kind_strategy(),
            ask_first in any::<bool>(),
        ) {
            let fields = HeaderFields {
                protocol_version,
                epoch: &epoch,
                source: &source,
                target: &target,
                capability: &capability,
            };
            let whole = HostMessage {
                header: Some(Header {
                    protocol_version,
                    epoch: epoch.clone(),
                    source: source.clone(),
                    target: target.clone(),
                    capability: capability.clone(),
                }),
                kind: Some(kind.clone()),
            };
            let frame = HostFrame::encode(fields, kind);
            prop_assert!(frame.is_born_encoded());
            prop_assert_eq!(&frame.encoded()[..], &whole.encode_to_vec()[..]);
            prop_assert_eq!(frame.encoded_len(), whole.encoded_len());
            prop_assert_eq!(frame.kind_without_state(), whole.kind.as_ref());
            if ask_first {
                prop_assert_eq!(frame.header(), whole.header.as_ref());
                prop_assert_eq!(frame.message(), &whole);
            }
            prop_assert_eq!(frame.clone().into_message(), whole.clone());
            prop_assert_eq!(frame.into_message(), whole);
        }
    }

    #[test]
    fn snapshots_of_one_view_share_its_text() {
        let view: Arc<str> = Arc::from("{\"a\":1}");
        let header = || Header::v1("e", "host", "c");
        let frames: Vec<HostFrame> = (1..=3)
            .map(|sync_id| HostFrame::snapshot(header(), snapshot(7, "", sync_id, 2), view.clone()))
            .collect();
        // Three answers, one text: the view and each frame's reference.
        assert_eq!(Arc::strong_count(&view), 4);
        assert!(frames.iter().all(|f| f.header() == Some(&header())));
    }
}
