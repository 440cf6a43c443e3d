//! Envelopes decoded in place: [`ClientView`] and [`HostView`] borrow every
//! string from the bytes they were decoded from, so decoding allocates
//! nothing.
//!
//! prost decodes each string field into a `String` of its own: seven or
//! eight allocations and frees per call on each side, which made decoding
//! the largest single share of the cores' CPU per call. These decoders read
//! the same bytes by prost's rules, so a view and a prost decode accept and
//! refuse the same inputs and agree on everything they accept:
//! - the last occurrence of a scalar or string field wins;
//! - a repeated embedded message merges into the earlier one;
//! - a oneof member replaces another member, and merges into itself;
//! - unknown fields are skipped whatever their wire type, groups included,
//!   within prost's recursion limit of 100;
//! - strings must be UTF-8; a known field with the wrong wire type, a
//!   truncated field or a malformed key or varint is refused.
//!
//! A proptest here and the `decode_*` fuzz targets hold the two decoders to
//! that.

use super::{CallResult, ClientMessage, Header, HostMessage, SyncRequest, host_message};
use super::{call_result, client_message};

/// Why bytes are not an envelope. The texts follow prost's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// A varint ran past ten bytes, past the end, or over 64 bits.
    #[error("invalid varint")]
    InvalidVarint,
    /// A field key over 32 bits.
    #[error("invalid key value: {0}")]
    InvalidKey(u64),
    /// A field key with wire type 6 or 7.
    #[error("invalid wire type value: {0}")]
    InvalidWireType(u64),
    /// A field key with field number 0.
    #[error("invalid tag value: 0")]
    InvalidTag,
    /// A length or fixed-size field runs past the end of its message.
    #[error("buffer underflow")]
    BufferUnderflow,
    /// An end-group key with no group open, or closing another group.
    #[error("unexpected end group tag")]
    UnexpectedEndGroupTag,
    /// Groups nested deeper than prost's recursion limit.
    #[error("recursion limit reached")]
    RecursionLimitReached,
    /// A known field sent with another wire type than its type has.
    #[error("invalid wire type: {actual} (expected {expected})")]
    WrongWireType {
        /// The wire type the field's type has.
        expected: u8,
        /// The wire type it arrived with.
        actual: u8,
    },
    /// A string field that is not UTF-8.
    #[error("invalid string value: data is not UTF-8 encoded")]
    InvalidUtf8,
}

/// A [`Header`] whose strings borrow from the decoded bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderView<'a> {
    /// `protocol_version`.
    pub protocol_version: u32,
    /// `epoch`.
    pub epoch: &'a str,
    /// `source`.
    pub source: &'a str,
    /// `target`.
    pub target: &'a str,
    /// `capability`.
    pub capability: &'a str,
}

/// A `Call` whose strings borrow from the decoded bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallView<'a> {
    /// `call_id`.
    pub call_id: u64,
    /// `module`.
    pub module: &'a str,
    /// `method`.
    pub method: &'a str,
    /// `args_json`.
    pub args_json: &'a str,
}

/// The kind of a [`ClientView`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKindView<'a> {
    /// A Call.
    Call(CallView<'a>),
    /// A SyncRequest (no strings, so the generated type).
    SyncRequest(SyncRequest),
}

/// A [`ClientMessage`] decoded in place, or borrowed from a decoded one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientView<'a> {
    /// `header`.
    pub header: Option<HeaderView<'a>>,
    /// `kind`.
    pub kind: Option<ClientKindView<'a>>,
}

/// A `Snapshot` whose state borrows from the decoded bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotView<'a> {
    /// `version`.
    pub version: u64,
    /// `state_json`.
    pub state_json: &'a str,
    /// `sync_id`.
    pub sync_id: u64,
    /// `reason`, as sent (an open enum).
    pub reason: i32,
}

/// A `Patch` whose operations borrow from the decoded bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PatchView<'a> {
    /// `base_version`.
    pub base_version: u64,
    /// `version`.
    pub version: u64,
    /// `patch_json`.
    pub patch_json: &'a str,
    /// `sync_id`.
    pub sync_id: u64,
}

/// An `Error` whose strings borrow from the decoded bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorView<'a> {
    /// `code`, as sent (an open enum).
    pub code: i32,
    /// `message`.
    pub message: &'a str,
    /// `details_json`.
    pub details_json: &'a str,
}

/// The outcome of a [`ResultView`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeView<'a> {
    /// `value_json`.
    ValueJson(&'a str),
    /// `error`.
    Error(ErrorView<'a>),
}

/// A `CallResult` whose strings borrow from the decoded bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResultView<'a> {
    /// `call_id`.
    pub call_id: u64,
    /// `state_version`.
    pub state_version: u64,
    /// `outcome`.
    pub outcome: Option<OutcomeView<'a>>,
}

/// The kind of a [`HostView`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKindView<'a> {
    /// A Snapshot.
    Snapshot(SnapshotView<'a>),
    /// A Patch.
    Patch(PatchView<'a>),
    /// A CallResult.
    Result(ResultView<'a>),
}

/// A [`HostMessage`] decoded in place, or borrowed from a decoded one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostView<'a> {
    /// `header`.
    pub header: Option<HeaderView<'a>>,
    /// `kind`.
    pub kind: Option<HostKindView<'a>>,
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const DELIMITED: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;
/// prost's `RECURSION_LIMIT`.
const RECURSION_LIMIT: u32 = 100;

/// Reads fields off the front of a message's bytes.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ViewError> {
        // Keys, lengths and most numbers in an envelope take one byte.
        if let Some((&byte, rest)) = self.rest.split_first()
            && byte < 0x80
        {
            self.rest = rest;
            return Ok(u64::from(byte));
        }
        let mut value = 0u64;
        for (i, &byte) in self.rest.iter().take(10).enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                // The tenth byte holds only the 64th bit.
                if i == 9 && byte > 1 {
                    return Err(ViewError::InvalidVarint);
                }
                self.rest = &self.rest[i + 1..];
                return Ok(value);
            }
        }
        Err(ViewError::InvalidVarint)
    }

    /// A field's number and wire type.
    fn key(&mut self) -> Result<(u32, u8), ViewError> {
        let key = self.varint()?;
        let Ok(key32) = u32::try_from(key) else {
            return Err(ViewError::InvalidKey(key));
        };
        let wire = (key32 & 7) as u8;
        if wire > FIXED32 {
            return Err(ViewError::InvalidWireType(u64::from(wire)));
        }
        if key32 >> 3 == 0 {
            return Err(ViewError::InvalidTag);
        }
        Ok((key32 >> 3, wire))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], ViewError> {
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= self.rest.len())
            .ok_or(ViewError::BufferUnderflow)?;
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    /// Skips an unknown field, as prost's `skip_field` with `depth` left.
    fn skip(&mut self, tag: u32, wire: u8, depth: u32) -> Result<(), ViewError> {
        if depth == 0 {
            return Err(ViewError::RecursionLimitReached);
        }
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            FIXED32 => self.take(4).map(drop),
            DELIMITED => {
                let len = self.varint()?;
                self.take(len).map(drop)
            }
            START_GROUP => loop {
                let (inner, inner_wire) = self.key()?;
                if inner_wire == END_GROUP {
                    return if inner == tag {
                        Ok(())
                    } else {
                        Err(ViewError::UnexpectedEndGroupTag)
                    };
                }
                self.skip(inner, inner_wire, depth - 1)?;
            },
            _ => Err(ViewError::UnexpectedEndGroupTag),
        }
    }

    fn expect(wire: u8, expected: u8) -> Result<(), ViewError> {
        if wire == expected {
            Ok(())
        } else {
            Err(ViewError::WrongWireType {
                expected,
                actual: wire,
            })
        }
    }

    fn uint(&mut self, wire: u8) -> Result<u64, ViewError> {
        Self::expect(wire, VARINT)?;
        self.varint()
    }

    fn str(&mut self, wire: u8) -> Result<&'a str, ViewError> {
        Self::expect(wire, DELIMITED)?;
        let len = self.varint()?;
        std::str::from_utf8(self.take(len)?).map_err(|_| ViewError::InvalidUtf8)
    }

    /// Merges an embedded message into `into`, one field at a time, as
    /// prost's `message::merge` does at `depth`.
    fn message<T>(
        &mut self,
        wire: u8,
        depth: u32,
        into: &mut T,
        mut field: impl FnMut(&mut T, &mut Reader<'a>, u32, u8, u32) -> Result<(), ViewError>,
    ) -> Result<(), ViewError> {
        Self::expect(wire, DELIMITED)?;
        if depth == 0 {
            return Err(ViewError::RecursionLimitReached);
        }
        let len = self.varint()?;
        let mut inner = Reader {
            rest: self.take(len)?,
        };
        inner.fields(depth - 1, |r, tag, wire, depth| {
            field(into, r, tag, wire, depth)
        })
    }

    /// Reads every field to the end.
    fn fields(
        &mut self,
        depth: u32,
        mut field: impl FnMut(&mut Reader<'a>, u32, u8, u32) -> Result<(), ViewError>,
    ) -> Result<(), ViewError> {
        while !self.rest.is_empty() {
            let (tag, wire) = self.key()?;
            field(self, tag, wire, depth)?;
        }
        Ok(())
    }
}

/// Merges an embedded oneof member, by prost's rule: into the member
/// already there if it is this one, otherwise into a fresh one that
/// replaces whatever member was there.
macro_rules! member {
    ($r:expr, $wire:expr, $depth:expr, $kind:expr, $variant:path, $field:expr) => {{
        // Merged in place: copying the member out and back for every field
        // cost more than decoding it.
        if !matches!(*$kind, Some($variant(_))) {
            *$kind = Some($variant(Default::default()));
        }
        match $kind {
            Some($variant(value)) => $r.message($wire, $depth, value, $field),
            _ => Ok(()),
        }
    }};
}

fn header_field<'a>(
    h: &mut HeaderView<'a>,
    r: &mut Reader<'a>,
    tag: u32,
    wire: u8,
    depth: u32,
) -> Result<(), ViewError> {
    match tag {
        // uint32 keeps the low 32 bits of the varint, as prost does.
        1 => h.protocol_version = r.uint(wire)? as u32,
        2 => h.epoch = r.str(wire)?,
        3 => h.source = r.str(wire)?,
        4 => h.target = r.str(wire)?,
        5 => h.capability = r.str(wire)?,
        _ => r.skip(tag, wire, depth)?,
    }
    Ok(())
}

fn call_field<'a>(
    c: &mut CallView<'a>,
    r: &mut Reader<'a>,
    tag: u32,
    wire: u8,
    depth: u32,
) -> Result<(), ViewError> {
    match tag {
        1 => c.call_id = r.uint(wire)?,
        2 => c.module = r.str(wire)?,
        3 => c.method = r.str(wire)?,
        4 => c.args_json = r.str(wire)?,
        _ => r.skip(tag, wire, depth)?,
    }
    Ok(())
}

fn sync_field(
    s: &mut SyncRequest,
    r: &mut Reader<'_>,
    tag: u32,
    wire: u8,
    depth: u32,
) -> Result<(), ViewError> {
    match tag {
        1 => s.sync_id = r.uint(wire)?,
        2 => s.have_version = r.uint(wire)?,
        // int32 (an enum) keeps the low 32 bits, as prost does.
        3 => s.reason = r.uint(wire)? as i32,
        _ => r.skip(tag, wire, depth)?,
    }
    Ok(())
}

fn snapshot_field<'a>(
    s: &mut SnapshotView<'a>,
    r: &mut Reader<'a>,
    tag: u32,
    wire: u8,
    depth: u32,
) -> Result<(), ViewError> {
    match tag {
        1 => s.version = r.uint(wire)?,
        2 => s.state_json = r.str(wire)?,
        3 => s.sync_id = r.uint(wire)?,
        4 => s.reason = r.uint(wire)? as i32,
        _ => r.skip(tag, wire, depth)?,
    }
    Ok(())
}

fn patch_field<'a>(
    p: &mut PatchView<'a>,
    r: &mut Reader<'a>,
    tag: u32,
    wire: u8,
    depth: u32,
) -> Result<(), ViewError> {
    match tag {
        1 => p.base_version = r.uint(wire)?,
        2 => p.version = r.uint(wire)?,
        3 => p.patch_json = r.str(wire)?,
        4 => p.sync_id = r.uint(wire)?,
        _ => r.skip(tag, wire, depth)?,
    }
    Ok(())
}

fn error_field<'a>(
    e: &mut ErrorView<'a>,
    r: &mut Reader<'a>,
    tag: u32,
    wire: u8,
    depth: u32,
) -> Result<(), ViewError> {
    match tag {
        1 => e.code = r.uint(wire)? as i32,
        2 => e.message = r.str(wire)?,
        3 => e.details_json = r.str(wire)?,
        _ => r.skip(tag, wire, depth)?,
    }
    Ok(())
}

fn result_field<'a>(
    c: &mut ResultView<'a>,
    r: &mut Reader<'a>,
    tag: u32,
    wire: u8,
    depth: u32,
) -> Result<(), ViewError> {
    match tag {
        1 => c.call_id = r.uint(wire)?,
        2 => c.state_version = r.uint(wire)?,
        3 => c.outcome = Some(OutcomeView::ValueJson(r.str(wire)?)),
        4 => member!(
            r,
            wire,
            depth,
            &mut c.outcome,
            OutcomeView::Error,
            error_field
        )?,
        _ => r.skip(tag, wire, depth)?,
    }
    Ok(())
}

impl<'a> ClientView<'a> {
    /// Decodes a `ClientMessage` without copying its strings.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, ViewError> {
        use ClientKindView::{Call, SyncRequest};
        let mut view = ClientView::default();
        Reader { rest: bytes }.fields(RECURSION_LIMIT, |r, tag, wire, depth| {
            let kind = &mut view.kind;
            match tag {
                1 => r.message(
                    wire,
                    depth,
                    view.header.get_or_insert_default(),
                    header_field,
                ),
                2 => member!(r, wire, depth, kind, Call, call_field),
                3 => member!(r, wire, depth, kind, SyncRequest, sync_field),
                _ => r.skip(tag, wire, depth),
            }
        })?;
        Ok(view)
    }
}

impl<'a> HostView<'a> {
    /// Decodes a `HostMessage` without copying its strings.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, ViewError> {
        use HostKindView::{Patch, Result as CallResult, Snapshot};
        let mut view = HostView::default();
        Reader { rest: bytes }.fields(RECURSION_LIMIT, |r, tag, wire, depth| {
            let kind = &mut view.kind;
            match tag {
                1 => r.message(
                    wire,
                    depth,
                    view.header.get_or_insert_default(),
                    header_field,
                ),
                2 => member!(r, wire, depth, kind, Snapshot, snapshot_field),
                3 => member!(r, wire, depth, kind, Patch, patch_field),
                4 => member!(r, wire, depth, kind, CallResult, result_field),
                _ => r.skip(tag, wire, depth),
            }
        })?;
        Ok(view)
    }
}

impl<'a> From<&'a Header> for HeaderView<'a> {
    fn from(h: &'a Header) -> Self {
        Self {
            protocol_version: h.protocol_version,
            epoch: &h.epoch,
            source: &h.source,
            target: &h.target,
            capability: &h.capability,
        }
    }
}

impl<'a> From<&'a ClientMessage> for ClientView<'a> {
    fn from(m: &'a ClientMessage) -> Self {
        Self {
            header: m.header.as_ref().map(HeaderView::from),
            kind: m.kind.as_ref().map(|kind| match kind {
                client_message::Kind::Call(c) => ClientKindView::Call(CallView {
                    call_id: c.call_id,
                    module: &c.module,
                    method: &c.method,
                    args_json: &c.args_json,
                }),
                client_message::Kind::SyncRequest(s) => ClientKindView::SyncRequest(*s),
            }),
        }
    }
}

impl<'a> From<&'a CallResult> for ResultView<'a> {
    fn from(r: &'a CallResult) -> Self {
        Self {
            call_id: r.call_id,
            state_version: r.state_version,
            outcome: r.outcome.as_ref().map(|outcome| match outcome {
                call_result::Outcome::ValueJson(json) => OutcomeView::ValueJson(json),
                call_result::Outcome::Error(e) => OutcomeView::Error(ErrorView {
                    code: e.code,
                    message: &e.message,
                    details_json: &e.details_json,
                }),
            }),
        }
    }
}

impl<'a> From<&'a HostMessage> for HostView<'a> {
    fn from(m: &'a HostMessage) -> Self {
        Self::from_parts(m.header.as_ref(), m.kind.as_ref())
    }
}

impl<'a> HostView<'a> {
    /// The view of a message with this header and kind, borrowed.
    pub fn from_parts(header: Option<&'a Header>, kind: Option<&'a host_message::Kind>) -> Self {
        Self {
            header: header.map(HeaderView::from),
            kind: kind.map(|kind| match kind {
                host_message::Kind::Snapshot(s) => HostKindView::Snapshot(SnapshotView {
                    version: s.version,
                    state_json: &s.state_json,
                    sync_id: s.sync_id,
                    reason: s.reason,
                }),
                host_message::Kind::Patch(p) => HostKindView::Patch(PatchView {
                    base_version: p.base_version,
                    version: p.version,
                    patch_json: &p.patch_json,
                    sync_id: p.sync_id,
                }),
                host_message::Kind::Result(r) => HostKindView::Result(ResultView::from(r)),
            }),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
