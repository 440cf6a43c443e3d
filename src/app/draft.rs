use json_patch::{
    AddOperation, PatchOperation, RemoveOperation, ReplaceOperation, jsonptr::PointerBuf,
};
use serde::Serialize;
use serde_json::Value;

use super::draft_error::DraftError;
use super::json::to_json;
use super::json_len::{change, joined, json_len, left, member_len, signed};
use super::methods::Methods;
use super::{FromArgs, Invocation, MethodError, Module};

/// A mutable view of a module's JSON state that records every change as an
/// RFC 6902 operation.
///
/// Each operation costs O(depth of the path + size of the value written,
/// replaced or removed), not O(state); inserting into or removing from an
/// array also shifts its later elements. Paths are RFC 6901 pointers relative to the module's root, such
/// as `/items/3/done`; build one from data with [`pointer`](super::pointer),
/// which escapes each name. An operation that does not fit the state (missing
/// parent, index out of range, wrong container) fails with a [`DraftError`]
/// saying which, and changes nothing; when a method fails, every operation
/// it made is undone.
pub struct Draft<'a> {
    root: &'a mut Value,
    ops: Vec<PatchOperation>,
    undo: Vec<Undo>,
    /// How much the operations so far changed the root's JSON text length.
    size_change: i64,
    /// How far the operations may grow the root's text, if anything limits it.
    budget: Option<i64>,
    /// Why an operation was refused for going past `budget`: the call then
    /// fails whatever the method makes of that operation's error.
    over_budget: Option<DraftError>,
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

fn pointer(path: &str) -> Result<PointerBuf, DraftError> {
    PointerBuf::parse(path.to_owned()).map_err(|e| DraftError::InvalidPath {
        path: path.to_owned(),
        why: e.to_string(),
    })
}

/// The value to write, as JSON.
fn json_of(value: impl Serialize) -> Result<Value, DraftError> {
    to_json(&value, "the value").map_err(|e| DraftError::NotJson(e.message))
}

/// The parent of `path` in `root`, and the last token of `path` unescaped.
fn parent_mut<'v>(root: &'v mut Value, path: &str) -> Result<(&'v mut Value, String), DraftError> {
    let (parent, last) = path.rsplit_once('/').ok_or_else(|| DraftError::Root {
        path: path.to_owned(),
    })?;
    let parent = root
        .pointer_mut(parent)
        .ok_or_else(|| DraftError::NoParent {
            path: path.to_owned(),
        })?;
    Ok((parent, unescape(last)))
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
    fn new(root: &'a mut Value, budget: Option<usize>) -> Self {
        Self {
            root,
            ops: Vec::new(),
            undo: Vec::new(),
            size_change: 0,
            budget: budget.map(signed),
            over_budget: None,
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

    /// Replaces the value at `path`, which must exist. Returns the old value.
    /// Writing an equal value records nothing.
    pub fn replace(&mut self, path: &str, value: impl Serialize) -> Result<Value, DraftError> {
        let value = json_of(value)?;
        let ptr = pointer(path)?;
        let target = self
            .root
            .pointer_mut(path)
            .ok_or_else(|| DraftError::NoValue {
                path: path.to_owned(),
            })?;
        if *target == value {
            // Writing what is already there changes nothing, so it records
            // nothing: a call that changes nothing publishes no version.
            return Ok(value);
        }
        let grew = change(json_len(target), json_len(&value));
        charge(
            &mut self.size_change,
            self.budget,
            &mut self.over_budget,
            grew,
        )?;
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
    pub fn add(&mut self, path: &str, value: impl Serialize) -> Result<(), DraftError> {
        let value = json_of(value)?;
        // Checked before anything changes: a failed add must change nothing.
        pointer(path)?;
        let (parent, last) = parent_mut(self.root, path)?;
        let value_len = json_len(&value);
        let (size_change, budget, over) =
            (&mut self.size_change, self.budget, &mut self.over_budget);
        let (recorded, undo) = match parent {
            Value::Object(map) => {
                let grew = match map.get(&last) {
                    Some(old) => change(json_len(old), value_len),
                    None => joined(member_len(&last, value_len), map.len()),
                };
                charge(size_change, budget, over, grew)?;
                let undo = match map.insert(last, value.clone()) {
                    Some(old) => Undo::Overwrite(path.to_owned(), old),
                    None => Undo::Remove(path.to_owned()),
                };
                (path.to_owned(), undo)
            }
            Value::Array(items) => {
                let at = if last == "-" {
                    items.len()
                } else {
                    index(&last).filter(|&i| i <= items.len()).ok_or_else(|| {
                        DraftError::IndexOutOfRange {
                            path: path.to_owned(),
                        }
                    })?
                };
                charge(size_change, budget, over, joined(value_len, items.len()))?;
                items.insert(at, value.clone());
                let prefix = &path[..path.len() - escape(&last).len()];
                let concrete = format!("{prefix}{at}");
                (concrete.clone(), Undo::Remove(concrete))
            }
            _ => {
                return Err(DraftError::NotAContainer {
                    path: path.to_owned(),
                });
            }
        };
        self.undo.push(undo);
        self.ops.push(PatchOperation::Add(AddOperation {
            path: pointer(&recorded)?,
            value,
        }));
        Ok(())
    }

    /// Appends `value` to the array at `array_path`. Returns its index.
    pub fn push(&mut self, array_path: &str, value: impl Serialize) -> Result<usize, DraftError> {
        let len = match self.root.pointer(array_path) {
            Some(Value::Array(items)) => items.len(),
            _ => {
                return Err(DraftError::NotAnArray {
                    path: array_path.to_owned(),
                });
            }
        };
        self.add(&format!("{array_path}/{len}"), value)?;
        Ok(len)
    }

    /// Removes the value at `path`, which must exist. Returns it.
    pub fn remove(&mut self, path: &str) -> Result<Value, DraftError> {
        let ptr = pointer(path)?;
        let (parent, last) = parent_mut(self.root, path)?;
        let (old, shrank) = match parent {
            Value::Object(map) => map.remove(&last).map(|old| {
                let shrank = left(member_len(&last, json_len(&old)), map.len());
                (old, shrank)
            }),
            Value::Array(items) => match index(&last) {
                Some(i) if i < items.len() => {
                    let old = items.remove(i);
                    let shrank = left(json_len(&old), items.len());
                    Some((old, shrank))
                }
                _ => None,
            },
            _ => None,
        }
        .ok_or_else(|| DraftError::NoValue {
            path: path.to_owned(),
        })?;
        self.size_change += shrank;
        self.undo.push(Undo::Reinsert(path.to_owned(), old.clone()));
        self.ops
            .push(PatchOperation::Remove(RemoveOperation { path: ptr }));
        Ok(old)
    }

    /// Keeps every change: the recorded operations become the call's
    /// patch, and the undo log is handed over in case the host refuses the
    /// commit after all, with how much the changes grew the root's text.
    fn commit(mut self) -> (Vec<PatchOperation>, Vec<Undo>, i64) {
        (
            std::mem::take(&mut self.ops),
            std::mem::take(&mut self.undo),
            self.size_change,
        )
    }
}

/// Adds `grew` to a draft's `size_change`, unless that takes it past
/// `budget`: the operation is then refused, before it changes anything, and
/// `over` keeps the refusal so that the whole call fails.
fn charge(
    size_change: &mut i64,
    budget: Option<i64>,
    over: &mut Option<DraftError>,
    grew: i64,
) -> Result<(), DraftError> {
    let total = size_change.saturating_add(grew);
    if let Some(budget) = budget
        && grew > 0
        && total > budget
    {
        let error = DraftError::OverBudget { budget };
        *over = Some(error.clone());
        return Err(error);
    }
    *size_change = total;
    Ok(())
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
    /// How much the last call changed the state's text, until it is settled.
    last_size_change: Option<i64>,
    /// How far the next call may grow the state's text (`Module::limit_growth`).
    growth_limit: Option<usize>,
}

impl JsonModule {
    /// A module named `name` with initial JSON state `state`.
    pub fn new(name: impl Into<String>, state: Value) -> Self {
        Self {
            state,
            methods: Methods::new(name),
            last_undo: Vec::new(),
            last_size_change: None,
            growth_limit: None,
        }
    }

    /// Declares a method. `A` decodes the positional arguments (see
    /// [`FromArgs`]); the return value is serialised to JSON. A later
    /// declaration of the same name replaces this one.
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
        self.last_size_change = None;
        let budget = self.growth_limit.take();
        let f = self.methods.get_mut(method)?;
        let mut draft = Draft::new(&mut self.state, budget);
        let value = f(&mut draft, args);
        if let Some(error) = draft.over_budget.take() {
            // The method went on past a refused operation, or answered it
            // with an error of its own: either way the call is refused for
            // its size, and dropping the draft undoes what it did.
            return Err(error.into());
        }
        let value = value?;
        let (ops, undo, size_change) = draft.commit();
        self.last_undo = undo;
        self.last_size_change = Some(size_change);
        Ok(Invocation { value, ops })
    }

    fn size_change(&self) -> Option<i64> {
        self.last_size_change
    }

    fn limit_growth(&mut self, limit: Option<usize>) {
        self.growth_limit = limit;
    }

    fn settle(&mut self, keep: bool) -> bool {
        self.last_size_change = None;
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::wire::ErrorCode;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-5i64..500).prop_map(Value::from),
            "[a-z\"é/~]{0,4}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-c~/]{0,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Every pointer in `value`, the root's included, and each container's
    /// pointer with one more token: a new key, an index one past the end, `-`.
    fn pointers(value: &Value, at: &str, out: &mut Vec<String>) {
        out.push(at.to_owned());
        match value {
            Value::Object(map) => {
                out.push(format!("{at}/new"));
                for (key, member) in map {
                    pointers(member, &format!("{at}/{}", escape(key)), out);
                }
            }
            Value::Array(items) => {
                out.push(format!("{at}/-"));
                out.push(format!("{at}/{}", items.len()));
                for (i, item) in items.iter().enumerate() {
                    pointers(item, &format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// What the draft adds up is the change in the root's text length,
        /// whichever operations succeed or fail along the way.
        #[test]
        fn the_size_change_is_exactly_how_much_the_text_grew(
            start in value(),
            steps in prop::collection::vec((0u8..3, any::<prop::sample::Index>(), value()), 1..12),
        ) {
            let mut root = start.clone();
            let mut draft = Draft::new(&mut root, None);
            for (kind, at, value) in steps {
                let mut paths = Vec::new();
                pointers(draft.root(), "", &mut paths);
                let path = at.get(&paths).clone();
                let _ = match kind {
                    0 => draft.add(&path, value).map(|_| ()),
                    1 => draft.replace(&path, value).map(|_| ()),
                    _ => draft.remove(&path).map(|_| ()),
                };
                let grew = draft.root().to_string().len() as i64 - start.to_string().len() as i64;
                prop_assert_eq!(draft.size_change, grew);
            }
            let (_, _, size_change) = draft.commit();
            let grew = root.to_string().len() as i64 - start.to_string().len() as i64;
            prop_assert_eq!(size_change, grew);
        }
    }

    #[test]
    fn an_operation_past_the_budget_is_refused_and_changes_nothing() {
        let mut root = json!({"a": [1]});
        let mut draft = Draft::new(&mut root, Some(5));
        draft.push("/a", 2).unwrap(); // ,2
        draft.replace("/a/0", 100).unwrap(); // 1 -> 100
        let error = draft.push("/a", 3).unwrap_err();
        assert_eq!(error, DraftError::OverBudget { budget: 5 });
        assert_eq!(MethodError::from(error).code, ErrorCode::ResourceExhausted);
        assert_eq!(draft.root(), &json!({"a": [100, 2]}));
        // Shrinking is never refused, and growth within the budget is not
        // either; the refusal stays on record for the call.
        draft.remove("/a/0").unwrap();
        draft.push("/a", 3).unwrap();
        assert_eq!(draft.root(), &json!({"a": [2, 3]}));
        assert_eq!(draft.size_change, 2);
        assert!(draft.over_budget.is_some());
    }

    #[test]
    fn a_call_that_went_past_its_budget_fails_even_if_the_method_ignores_it() {
        let mut module = JsonModule::new("m", json!({"items": []})).method(
            "fill",
            |d: &mut Draft<'_>, (n,): (usize,)| {
                let added = (0..n).take_while(|_| d.push("/items", "x").is_ok()).count();
                Ok(added)
            },
        );
        module.limit_growth(Some(40));
        let error = module.invoke("fill", &[json!(1000)]).unwrap_err();
        assert_eq!(error.code, ErrorCode::ResourceExhausted);
        assert_eq!(module.state(), &json!({"items": []}));
        assert_eq!(module.size_change(), None);
        // The limit was for that call only.
        assert_eq!(
            module.invoke("fill", &[json!(100)]).unwrap().value,
            json!(100)
        );
    }

    #[test]
    fn a_call_past_its_budget_fails_for_its_size_whatever_error_the_method_returns() {
        let mut module = JsonModule::new("m", json!({"items": []})).method(
            "fill",
            |d: &mut Draft<'_>, (n,): (usize,)| -> Result<usize, MethodError> {
                for _ in 0..n {
                    d.push("/items", "x")
                        .map_err(|e| MethodError::not_found(e.to_string()))?;
                }
                Ok(n)
            },
        );
        module.limit_growth(Some(40));
        let error = module.invoke("fill", &[json!(1000)]).unwrap_err();
        assert_eq!(error.code, ErrorCode::ResourceExhausted, "{error}");
        assert_eq!(module.state(), &json!({"items": []}));
    }

    #[test]
    fn a_new_member_counts_its_key_and_a_comma() {
        let mut root = json!({"a": 1});
        let mut draft = Draft::new(&mut root, None);
        draft.add("/b", "x").unwrap();
        // ,"b":"x"
        assert_eq!(draft.size_change, 8);
    }

    #[test]
    fn each_refused_operation_says_why_and_changes_nothing() {
        let start = json!({"a": [1, 2], "o": {"k": "v"}, "s": "text"});
        let mut root = start.clone();
        let mut draft = Draft::new(&mut root, None);
        let path = |p: &str| p.to_owned();
        let refusals = [
            (
                draft.replace("no slash", 1).map(drop),
                DraftError::InvalidPath {
                    path: path("no slash"),
                    why: String::new(),
                },
            ),
            (
                draft.remove("").map(drop),
                DraftError::Root { path: path("") },
            ),
            (
                draft.add("/missing/child", 1),
                DraftError::NoParent {
                    path: path("/missing/child"),
                },
            ),
            (
                draft.replace("/o/missing", 1).map(drop),
                DraftError::NoValue {
                    path: path("/o/missing"),
                },
            ),
            (
                draft.remove("/a/2").map(drop),
                DraftError::NoValue { path: path("/a/2") },
            ),
            (
                draft.add("/a/3", 1),
                DraftError::IndexOutOfRange { path: path("/a/3") },
            ),
            (
                draft.add("/a/01", 1),
                DraftError::IndexOutOfRange {
                    path: path("/a/01"),
                },
            ),
            (
                draft.add("/s/under", 1),
                DraftError::NotAContainer {
                    path: path("/s/under"),
                },
            ),
            (
                draft.push("/o", 1).map(drop),
                DraftError::NotAnArray { path: path("/o") },
            ),
            (
                draft.add("/o/nan", f64::NAN),
                DraftError::NotJson(String::new()),
            ),
        ];
        for (got, want) in refusals {
            let got = got.expect_err("the operation must be refused");
            assert_eq!(
                std::mem::discriminant(&got),
                std::mem::discriminant(&want),
                "{got:?}"
            );
            assert_eq!(got.path(), want.path(), "{got:?}");
            assert_eq!(MethodError::from(got).code, ErrorCode::Internal);
        }
        assert!(draft.ops.is_empty() && draft.undo.is_empty());
        assert_eq!(draft.root(), &start);
    }
}
