use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::json::to_json;
use super::methods::Methods;
use super::{FromArgs, Invocation, MethodError, Module};

type Method<S> = Box<dyn FnMut(&mut S, &[Value]) -> Result<Value, MethodError> + Send>;

/// A module whose state is a plain serde type, mutated through `&mut S`.
///
/// After each call the host serialises the module and diffs it against the
/// previous JSON, so a call costs O(module size). A failed call whose method
/// mutated the state anyway is rolled back by deserialising the committed
/// JSON, which is why `S` must round-trip through serde: everything in `S`
/// must be in its JSON. A field skipped when serialising is neither
/// published nor restored (keep such data in a module of its own, in a
/// section clients are not sent). [`TypedModule::new`] checks the initial
/// state; should a later rollback still fail, the module refuses every
/// later call with `internal` rather than publish a state no call committed.
pub struct TypedModule<S> {
    state: S,
    committed: Value,
    methods: Methods<Method<S>>,
    /// The committed JSON before the last call, and how much longer the
    /// call made its text, until the host settles it.
    previous: Option<(Value, i64)>,
    /// The diff's pointer buffer, kept between calls so that diffing the
    /// state after each call does not allocate one anew.
    scratch: String,
    /// Why a rollback failed, once one has: `state` then no longer matches
    /// `committed`, and no call may run on it.
    broken: Option<String>,
}

impl<S> TypedModule<S>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    /// A module named `name` with initial state `state`.
    ///
    /// # Panics
    /// If `state` cannot be represented as JSON, a non-finite number
    /// included, or its JSON cannot be read back as an `S` that writes the
    /// same JSON (a field skipped when serialising but required when
    /// deserialising, say): programming errors found at start-up, never on
    /// an input path.
    pub fn new(name: impl Into<String>, state: S) -> Self {
        let name = name.into();
        let committed = to_json(&state, "the initial state")
            .expect("a module's initial state must be representable as JSON");
        let round_trip = S::deserialize(&committed)
            .map_err(|e| e.to_string())
            .and_then(|back| to_json(&back, "the state").map_err(|e| e.message));
        match round_trip {
            Ok(json) if json == committed => {}
            Ok(json) => panic!(
                "module {name}: its state does not round-trip through serde \
                 ({committed} reads back as {json}), so a failed call could not be rolled back"
            ),
            Err(why) => panic!(
                "module {name}: its state's JSON does not read back as its type ({why}), \
                 so a failed call could not be rolled back"
            ),
        }
        Self {
            state,
            committed,
            methods: Methods::new(name),
            previous: None,
            scratch: String::new(),
            broken: None,
        }
    }

    /// Declares a method. `A` decodes the positional arguments (see
    /// [`FromArgs`]); the return value is serialised to JSON. A later
    /// declaration of the same name replaces this one.
    pub fn method<A, R, F>(mut self, name: impl Into<String>, mut f: F) -> Self
    where
        A: FromArgs,
        R: Serialize,
        F: FnMut(&mut S, A) -> Result<R, MethodError> + Send + 'static,
    {
        let method: Method<S> = Box::new(move |state, args| {
            let args = A::from_args(args)?;
            let value = f(state, args)?;
            to_json(&value, "the result")
        });
        self.methods.declare(name, method);
        self
    }

    /// The typed state as of the last commit.
    pub fn typed_state(&self) -> &S {
        &self.state
    }

    /// Puts `state` back to `committed`. A state type that reads back only
    /// some of what it writes can fail here even after `new`'s check; the
    /// module is then broken for good rather than left diverged.
    fn restore(&mut self) {
        match S::deserialize(&self.committed) {
            Ok(state) => self.state = state,
            Err(e) => {
                let why = format!(
                    "module {} is out of service: its committed state did not read back \
                     as its type after a failed call",
                    self.methods.module_name()
                );
                // serde's message may quote the state, which callers of a
                // private module must not see: it goes to the log alone.
                tracing::error!(error = %e, "{why}");
                self.broken = Some(why);
            }
        }
    }
}

impl<S> Module for TypedModule<S>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
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
        &self.committed
    }

    fn invoke(&mut self, method: &str, args: &[Value]) -> Result<Invocation, MethodError> {
        self.previous = None;
        let f = self.methods.get_mut(method)?;
        if let Some(why) = &self.broken {
            return Err(MethodError::internal(why.clone()));
        }
        match f(&mut self.state, args) {
            Ok(value) => match to_json(&self.state, "the state") {
                Ok(next) => {
                    let (ops, size_change) =
                        super::diff::diff_in(&mut self.scratch, &self.committed, &next);
                    let previous = std::mem::replace(&mut self.committed, next);
                    self.previous = Some((previous, size_change));
                    Ok(Invocation { value, ops })
                }
                Err(error) => {
                    self.restore();
                    Err(error)
                }
            },
            Err(err) => {
                if to_json(&self.state, "the state").ok().as_ref() != Some(&self.committed) {
                    self.restore();
                }
                Err(err)
            }
        }
    }

    fn rollback(&mut self) {
        self.restore();
    }

    fn size_change(&self) -> Option<i64> {
        self.previous.as_ref().map(|(_, size_change)| *size_change)
    }

    fn settle(&mut self, keep: bool) -> bool {
        match self.previous.take() {
            Some((previous, _)) if !keep => {
                self.committed = previous;
                self.restore();
            }
            _ => {}
        }
        true
    }
}
