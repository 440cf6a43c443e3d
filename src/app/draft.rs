use json_patch::{
    AddOperation, PatchOperation, RemoveOperation, ReplaceOperation, jsonptr::PointerBuf,
};
use serde::Serialize;
use serde_json::Value;

use super::json::to_json;
use super::methods::Methods;
use super::{FromArgs, Invocation, MethodError, Module};

/// A mutable view of a module's JSON state that records every change as an
/// RFC 6902 operation.
///
/// Each operation costs O(depth of the path + size of the value written), not
/// O(state). Paths are RFC 6901 pointers relative to the module's root, such
/// as `/items/3/done`. An operation that does not fit the state (missing
/// parent, index out of range, wrong container) fails with an `internal`
/// error and changes nothing; when a method fails, every operation it made is
/// undone.
pub struct Draft<'a> {
    root: &'a mut Value,
    ops: Vec<PatchOperation>,
    undo: Vec<Undo>,
}

enum Undo {
    /// Overwrite the value at the path with this one (it was replaced).
    Overwrite(String, Value),
    /// Insert this value at the path again (it was removed).
    Reinsert(String, Value),
    /// Remove what was added at the path.
    Remove(String),
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn bad_path(path: &str, why: &str) -> MethodError {
    MethodError::internal(format!("draft: {why} at {path:?}"))
}

fn pointer(path: &str) -> Result<PointerBuf, MethodError> {
    PointerBuf::parse(path.to_owned()).map_err(|e| bad_path(path, &e.to_string()))
}

/// Parses an array index: decimal, no leading zeros (RFC 6901).
fn index(token: &str) -> Option<usize> {
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    if !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

impl<'a> Draft<'a> {
    fn new(root: &'a mut Value) -> Self {
        Self {
            root,
            ops: Vec::new(),
            undo: Vec::new(),
        }
    }

    /// The whole current state.
    pub fn root(&self) -> &Value {
        self.root
    }

    /// The value at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Value> {
        self.root.pointer(path)
    }

    fn parent_mut(&mut self, path: &str) -> Result<(&mut Value, String), MethodError> {
        let (parent, last) = path
            .rsplit_once('/')
            .ok_or_else(|| bad_path(path, "the root cannot be changed by member operations"))?;
        let parent = self
            .root
            .pointer_mut(parent)
            .ok_or_else(|| bad_path(path, "no parent"))?;
        Ok((parent, unescape(last)))
    }

    /// Replaces the value at `path`, which must exist. Returns the old value.
    /// Writing an equal value records nothing.
    pub fn replace(&mut self, path: &str, value: impl Serialize) -> Result<Value, MethodError> {
        let value = to_json(&value, "the value")?;
        let ptr = pointer(path)?;
        let target = self
            .root
            .pointer_mut(path)
            .ok_or_else(|| bad_path(path, "no value"))?;
        if *target == value {
            // Writing what is already there changes nothing, so it records
            // nothing: a call that changes nothing publishes no version.
            return Ok(value);
        }
        let old = std::mem::replace(target, value.clone());
        self.undo
            .push(Undo::Overwrite(path.to_owned(), old.clone()));
        self.ops.push(PatchOperation::Replace(ReplaceOperation {
            path: ptr,
            value,
        }));
        Ok(old)
    }

    /// Adds `value` at `path` with RFC 6902 `add` semantics: sets an object
    /// member (replacing any old value) or inserts into an array at an index
    /// (`-` appends).
    pub fn add(&mut self, path: &str, value: impl Serialize) -> Result<(), MethodError> {
        let value = to_json(&value, "the value")?;
        // Checked before anything changes: a failed add must change nothing.
        pointer(path)?;
        let (parent, last) = self.parent_mut(path)?;
        let (recorded, undo) = match parent {
            Value::Object(map) => {
                let old = map.insert(last, value.clone());
                let undo = match old {
                    Some(old) => Undo::Overwrite(path.to_owned(), old),
                    None => Undo::Remove(path.to_owned()),
                };
                (path.to_owned(), undo)
            }
            Value::Array(items) => {
                let at = if last == "-" {
                    items.len()
                } else {
                    index(&last)
                        .filter(|&i| i <= items.len())
                        .ok_or_else(|| bad_path(path, "array index out of range"))?
                };
                items.insert(at, value.clone());
                let prefix = &path[..path.len() - escape(&last).len()];
                let concrete = format!("{prefix}{at}");
                (concrete.clone(), Undo::Remove(concrete))
            }
            _ => return Err(bad_path(path, "parent is not a container")),
        };
        self.undo.push(undo);
        self.ops.push(PatchOperation::Add(AddOperation {
            path: pointer(&recorded)?,
            value,
        }));
        Ok(())
    }

    /// Appends `value` to the array at `array_path`. Returns its index.
    pub fn push(&mut self, array_path: &str, value: impl Serialize) -> Result<usize, MethodError> {
        let len = match self.root.pointer(array_path) {
            Some(Value::Array(items)) => items.len(),
            _ => return Err(bad_path(array_path, "no array")),
        };
        self.add(&format!("{array_path}/{len}"), value)?;
        Ok(len)
    }

    /// Removes the value at `path`, which must exist. Returns it.
    pub fn remove(&mut self, path: &str) -> Result<Value, MethodError> {
        let ptr = pointer(path)?;
        let (parent, last) = self.parent_mut(path)?;
        let old = match parent {
            Value::Object(map) => map.remove(&last),
            Value::Array(items) => match index(&last) {
                Some(i) if i < items.len() => Some(items.remove(i)),
                _ => None,
            },
            _ => None,
        }
        .ok_or_else(|| bad_path(path, "no value"))?;
        self.undo.push(Undo::Reinsert(path.to_owned(), old.clone()));
        self.ops
            .push(PatchOperation::Remove(RemoveOperation { path: ptr }));
        Ok(old)
    }

    /// Keeps every change: the recorded operations become the call's
    /// patch, and the undo log is handed over in case the host refuses the
    /// commit after all.
    fn commit(mut self) -> (Vec<PatchOperation>, Vec<Undo>) {
        (
            std::mem::take(&mut self.ops),
            std::mem::take(&mut self.undo),
        )
    }
}

/// A draft that is dropped without being committed (the method failed, or
/// panicked and unwound through it) undoes its changes, newest first, so the
/// module's state is exactly what it was before the call.
impl Drop for Draft<'_> {
    fn drop(&mut self) {
        revert(self.root, &mut self.undo);
    }
}

/// Undoes the changes `undo` records, newest first, leaving it empty.
fn revert(root: &mut Value, undo: &mut Vec<Undo>) {
    while let Some(step) = undo.pop() {
        match step {
            Undo::Overwrite(path, old) => {
                if let Some(target) = root.pointer_mut(&path) {
                    *target = old;
                }
            }
            Undo::Reinsert(path, old) => reinsert_at(root, &path, old),
            Undo::Remove(path) => remove_at(root, &path),
        }
    }
}

fn reinsert_at(root: &mut Value, path: &str, old: Value) {
    let Some((parent, last)) = path.rsplit_once('/') else {
        return;
    };
    let last = unescape(last);
    match root.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(last, old);
        }
        Some(Value::Array(items)) => {
            if let Some(i) = index(&last).filter(|&i| i <= items.len()) {
                items.insert(i, old);
            }
        }
        _ => {}
    }
}

fn remove_at(root: &mut Value, path: &str) {
    let Some((parent, last)) = path.rsplit_once('/') else {
        return;
    };
    let last = unescape(last);
    match root.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(&last);
        }
        Some(Value::Array(items)) => {
            if let Some(i) = index(&last).filter(|&i| i < items.len()) {
                items.remove(i);
            }
        }
        _ => {}
    }
}

type DraftMethod = Box<dyn FnMut(&mut Draft<'_>, &[Value]) -> Result<Value, MethodError> + Send>;

/// A module whose state is a JSON tree changed through a recording [`Draft`].
///
/// Publishing a call costs O(size of the change): the draft's recorded
/// operations are the patch, and nothing is diffed.
pub struct JsonModule {
    state: Value,
    methods: Methods<DraftMethod>,
    /// How to undo the last call until the host has settled it: O(size of
    /// the change), like the call itself.
    last_undo: Vec<Undo>,
}

impl JsonModule {
    /// A module named `name` with initial JSON state `state`.
    pub fn new(name: impl Into<String>, state: Value) -> Self {
        Self {
            state,
            methods: Methods::new(name),
            last_undo: Vec::new(),
        }
    }

    /// Declares a method. `A` decodes the positional arguments (see
    /// [`FromArgs`]); the return value is serialised to JSON.
    pub fn method<A, R, F>(mut self, name: impl Into<String>, mut f: F) -> Self
    where
        A: FromArgs,
        R: Serialize,
        F: FnMut(&mut Draft<'_>, A) -> Result<R, MethodError> + Send + 'static,
    {
        let method: DraftMethod = Box::new(move |draft, args| {
            let args = A::from_args(args)?;
            to_json(&f(draft, args)?, "the result")
        });
        self.methods.declare(name, method);
        self
    }
}

impl Module for JsonModule {
    fn name(&self) -> &str {
        self.methods.module_name()
    }

    fn declares(&self, method: &str) -> bool {
        self.methods.declares(method)
    }

    fn methods(&self) -> Vec<String> {
        self.methods.names()
    }

    fn state(&self) -> &Value {
        &self.state
    }

    fn invoke(&mut self, method: &str, args: &[Value]) -> Result<Invocation, MethodError> {
        self.last_undo.clear();
        let f = self.methods.get_mut(method)?;
        let mut draft = Draft::new(&mut self.state);
        let value = f(&mut draft, args)?;
        let (ops, undo) = draft.commit();
        self.last_undo = undo;
        Ok(Invocation { value, ops })
    }

    fn settle(&mut self, keep: bool) -> bool {
        if keep {
            self.last_undo.clear();
        } else {
            revert(&mut self.state, &mut self.last_undo);
        }
        true
    }

    fn rollback(&mut self) {
        // Nothing to do: the draft of a panicking call undid itself when the
        // unwind dropped it.
    }
}
