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
/// mutated the state anyway is rolled back to the committed JSON, which is
/// why `S` must round-trip through serde.
pub struct TypedModule<S> {
    state: S,
    committed: Value,
    methods: Methods<Method<S>>,
    /// The committed JSON before the last call, until the host settles it.
    previous: Option<Value>,
    /// The diff's pointer buffer, kept between calls so that diffing the
    /// state after each call does not allocate one anew.
    scratch: String,
}

impl<S> TypedModule<S>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    /// A module named `name` with initial state `state`.
    ///
    /// # Panics
    /// If `state` cannot be represented as JSON, a non-finite number
    /// included (a programming error found at start-up, never on an input
    /// path).
    pub fn new(name: impl Into<String>, state: S) -> Self {
        let committed = to_json(&state, "the initial state")
            .expect("a module's initial state must be representable as JSON");
        Self {
            state,
            committed,
            methods: Methods::new(name),
            previous: None,
            scratch: String::new(),
        }
    }

    /// Declares a method. `A` decodes the positional arguments (see
    /// [`FromArgs`]); the return value is serialised to JSON.
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

    fn restore(&mut self) {
        if let Ok(state) = S::deserialize(&self.committed) {
            self.state = state;
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
        match f(&mut self.state, args) {
            Ok(value) => match to_json(&self.state, "the state") {
                Ok(next) => {
                    let ops = super::diff::diff_in(&mut self.scratch, &self.committed, &next);
                    self.previous = Some(std::mem::replace(&mut self.committed, next));
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

    fn settle(&mut self, keep: bool) -> bool {
        match self.previous.take() {
            Some(previous) if !keep => {
                self.committed = previous;
                self.restore();
            }
            _ => {}
        }
        true
    }
}
