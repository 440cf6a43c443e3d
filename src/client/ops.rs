//! RFC 6902 operations for [`super::apply_patch`]: parsing them, and
//! applying every kind (`add`, `remove`, `replace`, `move`, `copy`, `test`)
//! in place, each step with an undo.
//!
//! Results and errors are json-patch's, with two deliberate differences
//! (see [`apply_in_place`]): a `test` uses the protocol's equality, and a
//! failed `move` changes nothing. Both are written here rather than taken
//! from json-patch because json-patch parses an operation as an internally
//! tagged enum, which buffers every member before reading it, and resolves
//! pointers with `serde_json::Value::pointer_mut`, which allocates two
//! strings per token; together they were most of a small patch's cost on
//! the client. The tests check both against json-patch on arbitrary input.

use std::fmt;

use json_patch::jsonptr::index::Index;
use json_patch::jsonptr::{Pointer, PointerBuf};
use json_patch::{
    AddOperation, CopyOperation, MoveOperation, PatchErrorKind, PatchOperation, RemoveOperation,
    ReplaceOperation, TestOperation,
};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, de::Error as _};
use serde_json::Value;

use super::apply::ApplyError;
use super::equality::json_eq;

/// Parses a JSON array of operations. Accepts exactly what deserialising a
/// `json_patch::Patch` accepts and gives the same operations.
pub(crate) fn parse_ops(patch_json: &str) -> Result<Vec<PatchOperation>, serde_json::Error> {
    match super::canonical::parse(patch_json) {
        Some(ops) => Ok(ops),
        None => parse_general(patch_json),
    }
}

/// [`parse_ops`] for any text, through serde.
pub(crate) fn parse_general(patch_json: &str) -> Result<Vec<PatchOperation>, serde_json::Error> {
    let ops: Vec<Op> = serde_json::from_str(patch_json)?;
    Ok(ops.into_iter().map(|op| op.0).collect())
}

/// One operation, read the way json-patch's `#[serde(tag = "op")]` enum
/// reads it: the tag is a variant name; each variant's own
/// members are required and may not repeat; every other member is ignored,
/// whatever its type and however often it repeats.
struct Op(PatchOperation);

/// An operation's name, read.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Add,
    Remove,
    Replace,
    Move,
    Copy,
    Test,
}

const KINDS: &[&str] = &["add", "remove", "replace", "move", "copy", "test"];

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KindVisitor;
        impl Visitor<'_> for KindVisitor {
            type Value = Kind;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an operation name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
                let kind = match v {
                    "add" => Kind::Add,
                    "remove" => Kind::Remove,
                    "replace" => Kind::Replace,
                    "move" => Kind::Move,
                    "copy" => Kind::Copy,
                    "test" => Kind::Test,
                    _ => return Err(E::unknown_variant(v, KINDS)),
                };
                Ok(kind)
            }
        }
        deserializer.deserialize_str(KindVisitor)
    }
}

/// A member's name. Read without allocating, escaped or not.
enum Field {
    Op,
    Path,
    From,
    Value,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "op" => Field::Op,
                    "path" => Field::Path,
                    "from" => Field::From,
                    "value" => Field::Value,
                    _ => Field::Other,
                })
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

/// A member that a variant may or may not use: its first value, and whether
/// it appeared again.
#[derive(Default)]
struct Member<T> {
    value: Option<T>,
    repeated: bool,
}

impl<T> Member<T> {
    fn set(&mut self, value: T) {
        if self.value.is_some() {
            self.repeated = true;
        } else {
            self.value = Some(value);
        }
    }

    /// The member's value for a variant that uses it.
    fn take<E: de::Error>(self, name: &'static str) -> Result<T, E> {
        if self.repeated {
            return Err(E::duplicate_field(name));
        }
        self.value.ok_or_else(|| E::missing_field(name))
    }
}

fn pointer<E: de::Error>(value: Value) -> Result<PointerBuf, E> {
    match value {
        Value::String(s) => PointerBuf::try_from(s).map_err(E::custom),
        other => Err(E::invalid_type(unexpected(&other), &"a string")),
    }
}

fn unexpected(value: &Value) -> de::Unexpected<'_> {
    match value {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Number(_) => de::Unexpected::Other("number"),
        Value::String(s) => de::Unexpected::Str(s),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Object(_) => de::Unexpected::Map,
    }
}

impl<'de> Deserialize<'de> for Op {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OpVisitor;
        impl<'de> Visitor<'de> for OpVisitor {
            type Value = Op;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 6902 operation")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Op, A::Error> {
                let mut kind = None;
                // `path` is every variant's, so its type is checked at once.
                let mut path: Option<String> = None;
                let mut from = Member::<Value>::default();
                let mut value = Member::<Value>::default();
                while let Some(key) = map.next_key::<Field>()? {
                    match key {
                        Field::Op => {
                            if kind.is_some() {
                                return Err(A::Error::duplicate_field("op"));
                            }
                            kind = Some(map.next_value::<Kind>()?);
                        }
                        Field::Path => {
                            if path.is_some() {
                                return Err(A::Error::duplicate_field("path"));
                            }
                            path = Some(map.next_value()?);
                        }
                        Field::From => from.set(map.next_value()?),
                        Field::Value => value.set(map.next_value()?),
                        Field::Other => {
                            // Read, not skipped: skipping would let through
                            // what is not JSON (`1e400`, a lone surrogate,
                            // spec J2, J9), which json-patch's buffered
                            // read refuses too.
                            map.next_value::<Value>()?;
                        }
                    }
                }
                let kind = kind.ok_or_else(|| A::Error::missing_field("op"))?;
                let path = path.ok_or_else(|| A::Error::missing_field("path"))?;
                let path = PointerBuf::try_from(path).map_err(A::Error::custom)?;
                let op = match kind {
                    Kind::Add => PatchOperation::Add(AddOperation {
                        path,
                        value: value.take("value")?,
                    }),
                    Kind::Remove => PatchOperation::Remove(RemoveOperation { path }),
                    Kind::Replace => PatchOperation::Replace(ReplaceOperation {
                        path,
                        value: value.take("value")?,
                    }),
                    Kind::Move => PatchOperation::Move(MoveOperation {
                        from: pointer(from.take("from")?)?,
                        path,
                    }),
                    Kind::Copy => PatchOperation::Copy(CopyOperation {
                        from: pointer(from.take("from")?)?,
                        path,
                    }),
                    Kind::Test => PatchOperation::Test(TestOperation {
                        path,
                        value: value.take("value")?,
                    }),
                };
                Ok(Op(op))
            }
        }
        deserializer.deserialize_map(OpVisitor)
    }
}

// ---------------------------------------------------------------------------
// Application.
// ---------------------------------------------------------------------------

/// An array index as `serde_json::Value::pointer` reads one: digits only, no
/// sign, no leading zero.
fn parse_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

/// `doc.pointer_mut(ptr)`, without allocating for tokens that hold no
/// escape. The pointer's text is split here rather than through jsonptr's
/// token iterator, which decodes every token into a `Cow` and cost more than
/// the lookups on a short path.
fn resolve_mut<'v>(doc: &'v mut Value, ptr: &Pointer) -> Option<&'v mut Value> {
    let mut target = doc;
    // A valid pointer is empty or starts with `/`.
    let Some(text) = ptr.as_str().strip_prefix('/') else {
        return Some(target);
    };
    for raw in text.split('/') {
        let decoded;
        let token = if raw.contains('~') {
            // `~1` before `~0`, as RFC 6901 §4 says: `~01` is `~1`.
            decoded = raw.replace("~1", "/").replace("~0", "~");
            decoded.as_str()
        } else {
            raw
        };
        target = match target {
            Value::Object(map) => map.get_mut(token)?,
            Value::Array(list) => list.get_mut(parse_index(token)?)?,
            _ => return None,
        };
    }
    Some(target)
}

fn add(doc: &mut Value, path: &Pointer, value: Value) -> Result<Option<Value>, PatchErrorKind> {
    let Some((parent, last)) = path.split_back() else {
        return Ok(Some(std::mem::replace(doc, value)));
    };
    match resolve_mut(doc, parent).ok_or(PatchErrorKind::InvalidPointer)? {
        Value::Object(obj) => Ok(obj.insert(last.decoded().into_owned(), value)),
        Value::Array(arr) => {
            let idx = last.to_index()?.for_len_incl(arr.len())?;
            arr.insert(idx, value);
            Ok(None)
        }
        _ => Err(PatchErrorKind::InvalidPointer),
    }
}

fn remove(doc: &mut Value, path: &Pointer, allow_last: bool) -> Result<Value, PatchErrorKind> {
    let Some((parent, last)) = path.split_back() else {
        return Err(PatchErrorKind::InvalidPointer);
    };
    match resolve_mut(doc, parent).ok_or(PatchErrorKind::InvalidPointer)? {
        Value::Object(obj) => obj
            .remove(last.decoded().as_ref())
            .ok_or(PatchErrorKind::InvalidPointer),
        Value::Array(arr) if allow_last && last.is_next() => {
            arr.pop().ok_or(PatchErrorKind::InvalidPointer)
        }
        Value::Array(arr) => {
            let idx = last.to_index()?.for_len(arr.len())?;
            Ok(arr.remove(idx))
        }
        _ => Err(PatchErrorKind::InvalidPointer),
    }
}

fn replace(doc: &mut Value, path: &Pointer, value: Value) -> Result<Value, PatchErrorKind> {
    let target = resolve_mut(doc, path).ok_or(PatchErrorKind::InvalidPointer)?;
    Ok(std::mem::replace(target, value))
}

/// A per-patch budget of array elements shifted (spec §15, "Array
/// shifting"): what inserting into or removing from an array costs, beyond
/// the operation itself, since every later element moves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shifts {
    /// Elements charged so far.
    pub(crate) shifted: usize,
    /// The most the patch may shift.
    pub(crate) budget: usize,
}

impl Shifts {
    pub(crate) fn new(budget: usize) -> Self {
        Shifts { shifted: 0, budget }
    }

    /// Charges `elements`, or says the patch went over the budget (having
    /// charged them, so that the error reports the total).
    fn charge(&mut self, elements: usize) -> Result<(), Failure> {
        self.shifted = self.shifted.saturating_add(elements);
        if self.shifted > self.budget {
            return Err(Failure::Shifts);
        }
        Ok(())
    }

    /// Charges a `move`, before it is applied to `doc`: its removal at
    /// `from`, then its insertion at `path` into an array that removal may
    /// have shortened.
    pub(crate) fn charge_move(
        &mut self,
        doc: &Value,
        from: &Pointer,
        path: &Pointer,
    ) -> Result<(), Failure> {
        if path.starts_with(from) && path.len() != from.len() {
            // Into its own child: the move fails, shifting nothing.
            return Ok(());
        }
        let removed = array_shift(doc, from, false);
        let mut added = array_shift(doc, path, true);
        if removed > 0 && from.split_back().map(|(p, _)| p) == path.split_back().map(|(p, _)| p) {
            // The same array: the insertion happens one element shorter.
            added = added.saturating_sub(1);
        }
        self.charge(removed.saturating_add(added))
    }

    /// Charges a `copy` to `path`, before it is applied to `doc`.
    pub(crate) fn charge_copy(&mut self, doc: &Value, path: &Pointer) -> Result<(), Failure> {
        self.charge(array_shift(doc, path, true))
    }
}

/// Why [`apply_in_place`] or [`apply_step`] stopped.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The operation failed as json-patch's would.
    Patch(PatchErrorKind),
    /// The operation would take the patch over its [`Shifts`] budget.
    Shifts,
    /// The caller's check refused the operation.
    Refused(ApplyError),
}

impl From<PatchErrorKind> for Failure {
    fn from(kind: PatchErrorKind) -> Self {
        Failure::Patch(kind)
    }
}

/// How many elements inserting at `path` (`insert`) or removing the element
/// at `path` would shift: the array's length minus the index, or 0 where
/// `path` is not a valid place in an array (the operation then fails, or
/// does not touch an array).
fn array_shift(doc: &Value, path: &Pointer, insert: bool) -> usize {
    let Some((parent, last)) = path.split_back() else {
        return 0;
    };
    let Some(Value::Array(arr)) = doc.pointer(parent.as_str()) else {
        return 0;
    };
    let index = match last.to_index() {
        Ok(index) if insert => index.for_len_incl(arr.len()),
        Ok(index) => index.for_len(arr.len()),
        Err(_) => return 0,
    };
    index.map_or(0, |i| arr.len() - i)
}

/// How many operations from the start of `ops` make a run: `add`s with the
/// same path, or `remove`s with the same path (at least the first).
fn run_len(ops: &[PatchOperation]) -> usize {
    let Some((first, rest)) = ops.split_first() else {
        return 0;
    };
    let same = |next: &PatchOperation| match (first, next) {
        (PatchOperation::Add(a), PatchOperation::Add(b)) => a.path == b.path,
        (PatchOperation::Remove(a), PatchOperation::Remove(b)) => a.path == b.path,
        _ => false,
    };
    1 + rest.iter().take_while(|op| same(op)).count()
}

/// How to take back one applied step. The paths are those of the step's
/// first operation, which the caller keeps.
#[derive(Debug)]
pub(crate) enum Undo {
    /// Nothing changed (a `test`, a `move` onto itself).
    Nothing,
    /// Take the value a `move` put at its `path` back to its `from`,
    /// restoring what it replaced at `path`, if anything.
    MoveBack { replaced: Option<Value> },
    /// Remove what the step added at its path.
    Remove,
    /// Put this value back at the step's path.
    Add(Value),
    /// Put this value back in place of what the step's path now holds.
    Replace(Value),
    /// Remove the elements a run of `add`s inserted into the array holding
    /// the path: how many, from which index.
    Unsplice(usize, usize),
    /// Put back the elements a run of `remove`s took from the array holding
    /// the path, at that index.
    Unremove(usize, Vec<Value>),
}

impl Undo {
    /// The values the step took out of the document, if any.
    #[cfg(test)]
    pub(crate) fn values(&self) -> &[Value] {
        match self {
            Undo::MoveBack {
                replaced: Some(value),
            }
            | Undo::Add(value)
            | Undo::Replace(value) => std::slice::from_ref(value),
            Undo::Unremove(_, values) => values,
            Undo::Nothing
            | Undo::MoveBack { replaced: None }
            | Undo::Remove
            | Undo::Unsplice(..) => &[],
        }
    }
}

/// The value an `add` or `replace` carries, taken out of it: applying moves
/// it into the document rather than copying it.
fn take_value(op: &mut PatchOperation) -> Option<Value> {
    match op {
        PatchOperation::Add(o) => Some(std::mem::take(&mut o.value)),
        PatchOperation::Replace(o) => Some(std::mem::take(&mut o.value)),
        _ => None,
    }
}

/// The path an operation changes.
fn path_of(op: &PatchOperation) -> &Pointer {
    match op {
        PatchOperation::Add(o) => &o.path,
        PatchOperation::Remove(o) => &o.path,
        PatchOperation::Replace(o) => &o.path,
        PatchOperation::Move(o) => &o.path,
        PatchOperation::Copy(o) => &o.path,
        PatchOperation::Test(o) => &o.path,
    }
}

/// The array holding `path`'s last token.
fn parent_array<'v>(doc: &'v mut Value, path: &Pointer) -> Option<&'v mut Vec<Value>> {
    match resolve_mut(doc, path.split_back()?.0)? {
        Value::Array(arr) => Some(arr),
        _ => None,
    }
}

/// Applies the first step of `ops` to `doc` and returns how many operations
/// it took, with its undo; or the failure of the operation at that offset,
/// having changed nothing for it.
///
/// A step is one operation, or a run of `add`s into an array with the same
/// path, or of `remove`s from an array with the same path (see
/// [`run_len`]): a run is one splice or one drain, so it costs the elements
/// after its index once, not once per operation, and is charged so to
/// `shifts`. A host truncating an array emits exactly such a run (its diff
/// removes every element past the new end at the new end's index), and a
/// module that pushes or pops at the front of a list one element at a time
/// emits another; applied one by one they shift the rest of the array per
/// operation, quadratic in the run. The result is what applying the run's
/// operations one by one gives: inserting at one index puts each value
/// before the last, appending (`-`) after it, and a run of removes that
/// outlasts the array stops where the array ends, leaving the next
/// operation to fail with nothing left to remove.
///
/// `test` compares with the protocol's equality ([`json_eq`]); `move` and
/// `copy` are charged to `shifts` like the insertion and removal they make.
/// None of them copies the document: a `move` is taken back by moving the
/// value again, a `copy` by removing what it added.
pub(crate) fn apply_step(
    doc: &mut Value,
    ops: &mut [PatchOperation],
    shifts: &mut Shifts,
) -> Result<(usize, Undo), Failure> {
    // Neither can happen (the caller passes what is left of a patch, and a
    // path with a parent array has a last token), but this is input.
    let unusable = || Failure::Patch(PatchErrorKind::InvalidPointer);
    let Some(first) = ops.first_mut() else {
        return Err(unusable());
    };
    match first {
        PatchOperation::Add(o) => {
            if let Some(arr) = parent_array(doc, &o.path) {
                let (_, last) = o.path.split_back().ok_or_else(unusable)?;
                // Checked first, as `add` checks it: a bad index fails the
                // operation whatever the budget.
                let index = last.to_index().map_err(PatchErrorKind::from)?;
                let at = index
                    .for_len_incl(arr.len())
                    .map_err(PatchErrorKind::from)?;
                shifts.charge(arr.len().saturating_sub(at))?;
                // Runs are only looked for here, where they are applied
                // whole, so each operation is looked at once.
                let run = run_len(ops);
                if run == 1 {
                    arr.insert(at, take_value(&mut ops[0]).unwrap_or_default());
                    return Ok((1, Undo::Remove));
                }
                // A run holds only adds.
                let values = ops[..run].iter_mut().filter_map(take_value);
                if matches!(index, Index::Next) {
                    arr.extend(values);
                } else {
                    arr.splice(at..at, values.rev());
                }
                return Ok((run, Undo::Unsplice(at, run)));
            }
            let undo = match add(doc, &o.path, std::mem::take(&mut o.value))? {
                None => Undo::Remove,
                Some(prev) => Undo::Add(prev),
            };
            Ok((1, undo))
        }
        PatchOperation::Remove(o) => {
            if let Some(arr) = parent_array(doc, &o.path) {
                let (_, last) = o.path.split_back().ok_or_else(unusable)?;
                let at = last
                    .to_index()
                    .map_err(PatchErrorKind::from)?
                    .for_len(arr.len())
                    .map_err(PatchErrorKind::from)?;
                shifts.charge(arr.len().saturating_sub(at))?;
                // Those past the end are left to fail on their own.
                let taken = run_len(ops).min(arr.len().saturating_sub(at));
                let removed: Vec<Value> = arr.drain(at..at + taken).collect();
                return Ok((taken, Undo::Unremove(at, removed)));
            }
            let prev = remove(doc, &o.path, false)?;
            Ok((1, Undo::Add(prev)))
        }
        PatchOperation::Replace(o) => {
            let prev = replace(doc, &o.path, std::mem::take(&mut o.value))?;
            Ok((1, Undo::Replace(prev)))
        }
        PatchOperation::Test(o) => {
            let target = doc
                .pointer(o.path.as_str())
                .ok_or(PatchErrorKind::InvalidPointer)?;
            if !json_eq(target, &o.value) {
                return Err(PatchErrorKind::TestFailed.into());
            }
            Ok((1, Undo::Nothing))
        }
        // §7.4: `from` = `path` is a no-op once `from` is known to exist.
        PatchOperation::Move(o) if o.from == o.path => {
            if doc.pointer(o.from.as_str()).is_none() {
                return Err(PatchErrorKind::InvalidFromPointer.into());
            }
            Ok((1, Undo::Nothing))
        }
        PatchOperation::Move(o) => {
            if o.path.starts_with(&o.from) && o.path.len() != o.from.len() {
                return Err(PatchErrorKind::CannotMoveInsideItself.into());
            }
            shifts.charge_move(doc, &o.from, &o.path)?;
            let value = remove(doc, &o.from, false).map_err(|kind| match kind {
                PatchErrorKind::InvalidPointer => PatchErrorKind::InvalidFromPointer,
                kind => kind,
            })?;
            // Checked before the value goes in, so that a move whose target
            // is not there can put it back where it was, changing nothing.
            if let Err(kind) = addable(doc, &o.path) {
                let _ = add(doc, &o.from, value);
                return Err(kind.into());
            }
            let replaced = add(doc, &o.path, value)?;
            Ok((1, Undo::MoveBack { replaced }))
        }
        PatchOperation::Copy(o) => {
            let value = doc
                .pointer(o.from.as_str())
                .ok_or(PatchErrorKind::InvalidFromPointer)?
                .clone();
            shifts.charge_copy(doc, &o.path)?;
            let undo = match add(doc, &o.path, value)? {
                None => Undo::Remove,
                Some(prev) => Undo::Add(prev),
            };
            Ok((1, undo))
        }
    }
}

/// Whether `add` at `path` would succeed, without adding anything.
fn addable(doc: &mut Value, path: &Pointer) -> Result<(), PatchErrorKind> {
    let Some((parent, last)) = path.split_back() else {
        return Ok(());
    };
    match resolve_mut(doc, parent).ok_or(PatchErrorKind::InvalidPointer)? {
        Value::Object(_) => Ok(()),
        Value::Array(arr) => last
            .to_index()?
            .for_len_incl(arr.len())
            .map(drop)
            .map_err(Into::into),
        _ => Err(PatchErrorKind::InvalidPointer),
    }
}

/// Applies operations to `doc` in place, all or none: on the first
/// failure, everything applied so far is taken back and the failing
/// operation's index and error returned. Before each operation, `check` is
/// given its index, itself and the document as it then is, and may refuse
/// it; after the last, `finish` may refuse the result (a root operation
/// can leave a document that is not an object), which is then taken back
/// too, reported at index `ops.len()`. Insertions and removals in arrays
/// are charged to `shifts` (see [`apply_step`]); going over it fails the
/// operation that would.
///
/// The values of `add` and `replace` operations are moved into the
/// document, not copied: whatever the outcome, `ops` is spent and only
/// good for freeing. Each step's undo, with the index of the operation
/// whose paths it names, goes into `undo` (emptied first). Applied, the
/// undos stay there: they hold the values the patch took out of the
/// document (replaced, removed), for the caller to free when it likes
/// (keeping them costs no allocation per patch); failed, they have been
/// taken back and `undo` is empty.
///
/// Equivalent to `json_patch::patch` within the budget, except that a
/// `test` uses the protocol's equality and a failed `move` changes nothing
/// (json-patch can lose its source), and whose undo cannot fail: each
/// reverses a step that just succeeded, on the document exactly as that
/// step left it. Nothing copies the document: a root operation's undo
/// keeps the root it replaced.
pub(crate) fn apply_in_place(
    doc: &mut Value,
    ops: &mut [PatchOperation],
    shifts: &mut Shifts,
    mut check: impl FnMut(usize, &PatchOperation, &Value) -> Result<(), ApplyError>,
    finish: impl FnOnce(&Value) -> Result<(), ApplyError>,
    undo: &mut Vec<(usize, Undo)>,
) -> Result<(), (usize, Failure)> {
    undo.clear();
    undo.reserve(ops.len());
    let mut failed = None;
    let mut index = 0;
    while index < ops.len() {
        if let Err(refused) = check(index, &ops[index], doc) {
            failed = Some((index, Failure::Refused(refused)));
            break;
        }
        match apply_step(doc, &mut ops[index..], shifts) {
            Ok((taken, u)) => {
                undo.push((index, u));
                index += taken;
            }
            Err(failure) => {
                failed = Some((index, failure));
                break;
            }
        }
    }
    if failed.is_none()
        && let Err(refused) = finish(doc)
    {
        failed = Some((ops.len(), Failure::Refused(refused)));
    }
    let Some(failure) = failed else {
        return Ok(());
    };
    for (at, u) in undo.drain(..).rev() {
        let op = &ops[at];
        let path = path_of(op);
        // Cannot fail (see above); were it to, the caller reports the patch
        // as failed either way and the client heals with a snapshot.
        let _ = match (u, op) {
            (Undo::Nothing, _) => Ok(()),
            // A move to the root replaced the whole document: put back the
            // root it replaced, then the value where it came from.
            (
                Undo::MoveBack {
                    replaced: Some(root),
                },
                PatchOperation::Move(o),
            ) if path.is_root() => {
                let value = std::mem::replace(doc, root);
                add(doc, &o.from, value).map(drop)
            }
            (Undo::MoveBack { replaced }, PatchOperation::Move(o)) => remove(doc, path, true)
                .and_then(|value| {
                    if let Some(replaced) = replaced {
                        add(doc, path, replaced)?;
                    }
                    add(doc, &o.from, value).map(drop)
                }),
            // Only a `move` step leaves this undo.
            (Undo::MoveBack { .. }, _) => Ok(()),
            (Undo::Remove, _) => remove(doc, path, true).map(drop),
            (Undo::Add(value), _) => add(doc, path, value).map(drop),
            (Undo::Replace(value), _) => replace(doc, path, value).map(drop),
            (Undo::Unsplice(at, count), _) => {
                if let Some(arr) = parent_array(doc, path) {
                    arr.drain(at.min(arr.len())..(at + count).min(arr.len()));
                }
                Ok(())
            }
            (Undo::Unremove(at, values), _) => {
                if let Some(arr) = parent_array(doc, path) {
                    let at = at.min(arr.len());
                    arr.splice(at..at, values);
                }
                Ok(())
            }
        };
    }
    Err(failure)
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    // --- parsing --------------------------------------------------------

    /// JSON texts a member may hold.
    fn member_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(r#""add""#.to_owned()),
            Just(r#""remove""#.to_owned()),
            Just(r#""replace""#.to_owned()),
            Just(r#""move""#.to_owned()),
            Just(r#""copy""#.to_owned()),
            Just(r#""test""#.to_owned()),
            Just(r#""Add""#.to_owned()),
            Just(r#""/a/0""#.to_owned()),
            Just(r#""""#.to_owned()),
            Just(r#""/a~1b/~0""#.to_owned()),
            Just(r#""a/b""#.to_owned()),
            Just(r#""/x~2""#.to_owned()),
            Just(r#""/\u0041\n""#.to_owned()),
            Just("null".to_owned()),
            Just("0".to_owned()),
            Just("2".to_owned()),
            Just("6".to_owned()),
            Just("-1".to_owned()),
            Just("1.5".to_owned()),
            Just("true".to_owned()),
            Just("[1,{}]".to_owned()),
            Just(r#"{"op":"add","a":[null]}"#.to_owned()),
            // Not JSON (spec J2, J9), wherever it stands.
            Just("1e400".to_owned()),
            Just(r#""\ud800""#.to_owned()),
        ]
    }

    fn member() -> impl Strategy<Value = (String, String)> {
        let key = prop_oneof![
            Just("op"),
            Just("path"),
            Just("from"),
            Just("value"),
            Just("other"),
            Just("Op"),
        ];
        (key, member_value()).prop_map(|(k, v)| (format!("\"{k}\""), v))
    }

    fn op_text() -> impl Strategy<Value = String> {
        prop::collection::vec(member(), 0..6).prop_map(|members| {
            let body: Vec<String> = members.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{{{}}}", body.join(","))
        })
    }

    pub(crate) fn patch_text() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => prop::collection::vec(op_text(), 0..3).prop_map(|ops| format!("[{}]", ops.join(","))),
            1 => Just("{}".to_owned()),
            1 => Just("[1]".to_owned()),
            1 => Just("[] x".to_owned()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn parse_accepts_and_yields_what_json_patch_does(text in patch_text()) {
            let ours = parse_ops(&text).ok();
            let theirs = serde_json::from_str::<json_patch::Patch>(&text).ok().map(|p| p.0);
            prop_assert_eq!(ours, theirs, "{}", text);
        }
    }

    /// A member no operation uses is still read: what is not JSON there
    /// refuses the patch (spec J2, J9), as it does in any other member.
    #[test]
    fn parse_refuses_what_is_not_json_in_members_it_does_not_use() {
        for junk in ["1e400", r#""\ud800""#, r#"[1e400]"#] {
            let text = format!(r#"[{{"op":"remove","path":"/a","junk":{junk}}}]"#);
            assert!(parse_ops(&text).is_err(), "{text}");
        }
        assert!(parse_ops(r#"[{"op":"remove","path":"/a","junk":[1e300]}]"#).is_ok());
    }

    /// json-patch's tag must be a name: a variant index is refused (a case
    /// the proptest once found).
    #[test]
    fn parse_refuses_a_numeric_operation_tag() {
        let text = r#"[{"op":0,"path":"/a/0","value":"add"}]"#;
        assert!(serde_json::from_str::<json_patch::Patch>(text).is_err());
        assert!(parse_ops(text).is_err());
    }

    #[test]
    fn parse_handles_escaped_keys_and_any_member_order() {
        let text = r#"[{"value": null, "p\u0061th": "/a", "op": "add"}]"#;
        assert_eq!(
            parse_ops(text).ok(),
            serde_json::from_str::<json_patch::Patch>(text)
                .ok()
                .map(|p| p.0)
        );
        assert!(parse_ops(text).is_ok());
    }

    // --- application ----------------------------------------------------

    fn doc() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            (0i64..4).prop_map(Value::from),
            Just(json!("s")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("a"),
                        Just("b"),
                        Just("~"),
                        Just("/"),
                        Just("0"),
                        Just("~1")
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    fn path() -> impl Strategy<Value = PointerBuf> {
        let token = prop_oneof![
            Just("a"),
            Just("b"),
            Just("~"),
            Just("/"),
            // Encoded `~01`: decoded `~1` first would read it as `/`.
            Just("~1"),
            Just("0"),
            Just("1"),
            Just("3"),
            Just("-"),
            Just("01"),
            Just("+1"),
        ];
        // The root included: every operation may name it.
        prop::collection::vec(token, 0..4).prop_map(PointerBuf::from_tokens)
    }

    pub(crate) fn in_place_op() -> impl Strategy<Value = PatchOperation> {
        let value = prop_oneof![(0i64..3).prop_map(Value::from), Just(json!({"a": 1}))];
        prop_oneof![
            (path(), value.clone())
                .prop_map(|(path, value)| PatchOperation::Add(AddOperation { path, value })),
            path().prop_map(|path| PatchOperation::Remove(RemoveOperation { path })),
            (path(), value.clone()).prop_map(|(path, value)| {
                PatchOperation::Replace(ReplaceOperation { path, value })
            }),
            (path(), value)
                .prop_map(|(path, value)| { PatchOperation::Test(TestOperation { path, value }) }),
            (path(), path())
                .prop_map(|(from, path)| PatchOperation::Move(MoveOperation { from, path })),
            (path(), path())
                .prop_map(|(from, path)| PatchOperation::Copy(CopyOperation { from, path })),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        /// Every operation below the root, `test`, `move` and `copy`
        /// included, applies as json-patch applies it; and a patch that
        /// fails leaves the document as it was, which json-patch does not
        /// always manage (a `move` whose target is not there loses its
        /// source, and undoing some moves panics).
        fn in_place_application_matches_json_patch(
            doc in doc(),
            ops in prop::collection::vec(in_place_op(), 1..5),
        ) {
            // §7.4: moving the root onto itself is a no-op; json-patch
            // tries to remove the root, and fails.
            prop_assume!(!ops.iter().any(
                |op| matches!(op, PatchOperation::Move(m) if m.from == m.path && m.from.is_root())
            ));
            let mut ours = doc.clone();
            let mut theirs = doc.clone();
            let our_result =
                apply_in_place(&mut ours, &mut ops.clone(), &mut Shifts::new(usize::MAX), no_check, no_finish, &mut Vec::new());
            // Without json-patch's undo, which cannot always undo a move
            // (it panics); on failure its document is not compared.
            let their_result = json_patch::patch_unsafe(&mut theirs, &ops)
                .map_err(|e| (e.operation, e.kind.to_string()));
            let failed = their_result.is_err();
            prop_assert_eq!(our_result.map_err(describe), their_result);
            prop_assert_eq!(&ours, if failed { &doc } else { &theirs });
        }

        /// Runs of `add`s or `remove`s with one path, applied as one splice
        /// or drain, give what json-patch gives applying them one by one,
        /// including a run of removes that outlasts its array, appends, and
        /// repeated operations on an object member.
        #[test]
        fn runs_apply_as_json_patch_applies_them_one_by_one(
            len in 0usize..6,
            runs in prop::collection::vec((any::<bool>(), 0usize..8, 1usize..5), 1..5),
        ) {
            let doc = json!({"a": (0..len).collect::<Vec<_>>(), "o": {}});
            let mut ops = Vec::new();
            let mut n = 100;
            for (add, at, count) in runs {
                // Indices in and past the array, appends, and an object
                // member, where a run is no run.
                let path = match at {
                    6 => PointerBuf::from_tokens(["a", "-"]),
                    7 => PointerBuf::from_tokens(["o", "k"]),
                    at => PointerBuf::from_tokens(["a", at.to_string().as_str()]),
                };
                for _ in 0..count {
                    n += 1;
                    ops.push(if add {
                        PatchOperation::Add(AddOperation { path: path.clone(), value: json!(n) })
                    } else {
                        PatchOperation::Remove(RemoveOperation { path: path.clone() })
                    });
                }
            }
            let mut ours = doc.clone();
            let mut theirs = doc.clone();
            let our_result =
                apply_in_place(&mut ours, &mut ops.clone(), &mut Shifts::new(usize::MAX), no_check, no_finish, &mut Vec::new());
            let their_result = json_patch::patch(&mut theirs, &ops)
                .map_err(|e| (e.operation, e.kind.to_string()));
            prop_assert_eq!(our_result.map_err(describe), their_result);
            prop_assert_eq!(&ours, &theirs);
        }
    }

    fn describe((index, failure): (usize, Failure)) -> (usize, String) {
        match failure {
            Failure::Patch(kind) => (index, kind.to_string()),
            Failure::Shifts => (index, "over the shift budget".to_owned()),
            Failure::Refused(error) => (index, error.to_string()),
        }
    }

    fn no_check(_: usize, _: &PatchOperation, _: &Value) -> Result<(), ApplyError> {
        Ok(())
    }

    fn no_finish(_: &Value) -> Result<(), ApplyError> {
        Ok(())
    }
}
