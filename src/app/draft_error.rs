use super::MethodError;
use crate::wire::ErrorCode;

/// Why a [`Draft`](super::Draft) refused an operation. A refused operation
/// changed nothing, and the draft stays usable.
///
/// A method may match on it, to answer a client's bad key as `not_found`
/// rather than as a bug, or let `?` turn it into a [`MethodError`]:
/// [`DraftError::OverBudget`] becomes `RESOURCE_EXHAUSTED` and every other
/// variant `INTERNAL`, since a path that does not fit the state is the
/// method's bug unless it checked what the client named first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DraftError {
    /// The path is not an RFC 6901 JSON pointer (it is not empty and does
    /// not start with `/`, or it has a `~` not followed by `0` or `1`).
    /// `push` reports any path that names no array as
    /// [`DraftError::NotAnArray`], well-formed or not.
    #[error("draft: {path:?} is not a JSON pointer: {why}")]
    InvalidPath {
        /// The path given.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// `add` and `remove` change a member of a container: the root itself
    /// (path `""`) has none.
    #[error("draft: the root cannot be changed by member operations at {path:?}")]
    Root {
        /// The path given.
        path: String,
    },
    /// The parent of the path does not exist.
    #[error("draft: no parent at {path:?}")]
    NoParent {
        /// The path given.
        path: String,
    },
    /// `replace` or `remove` named a value that does not exist: a missing
    /// member, or an array index at or past the end.
    #[error("draft: no value at {path:?}")]
    NoValue {
        /// The path given.
        path: String,
    },
    /// `add` into an array at an index past its end, or one that is not a
    /// decimal index without leading zeros (nor `-`).
    #[error("draft: array index out of range at {path:?}")]
    IndexOutOfRange {
        /// The path given.
        path: String,
    },
    /// `add` under a value that is neither an object nor an array.
    #[error("draft: parent is not a container at {path:?}")]
    NotAContainer {
        /// The path given.
        path: String,
    },
    /// `push` to a path that holds no array.
    #[error("draft: no array at {path:?}")]
    NotAnArray {
        /// The path given.
        path: String,
    },
    /// The value to write is not JSON: a non-finite number, a map with
    /// keys that are not strings, or a `Serialize` impl that failed.
    #[error("{0}")]
    NotJson(String),
    /// The operation would grow the published view past what one snapshot
    /// may carry (spec §15). Unlike the others this one fails the whole
    /// call, whatever the method makes of it: the host answers
    /// `RESOURCE_EXHAUSTED` and commits nothing.
    #[error(
        "the call's changes would grow the published view by more than the {budget} bytes it has room for, too large to send as one snapshot; nothing was committed"
    )]
    OverBudget {
        /// How many bytes the call's changes could still grow the view by.
        budget: i64,
    },
}

impl DraftError {
    /// The path the refused operation named, if the refusal was about one.
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::InvalidPath { path, .. }
            | Self::Root { path }
            | Self::NoParent { path }
            | Self::NoValue { path }
            | Self::IndexOutOfRange { path }
            | Self::NotAContainer { path }
            | Self::NotAnArray { path } => Some(path),
            Self::NotJson(_) | Self::OverBudget { .. } => None,
        }
    }
}

impl From<DraftError> for MethodError {
    fn from(error: DraftError) -> Self {
        let code = match error {
            DraftError::OverBudget { .. } => ErrorCode::ResourceExhausted,
            _ => ErrorCode::Internal,
        };
        MethodError::new(code, error.to_string())
    }
}
