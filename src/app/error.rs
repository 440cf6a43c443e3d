use serde_json::Value;

use crate::wire::view::ErrorView;
use crate::wire::{self, ErrorCode};

/// A structured error a method returns, or the host reports for a call.
///
/// It travels as the `Error` message: a code from the fixed set, a message
/// for humans and optional JSON details.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {message}", code.kebab_name())]
pub struct MethodError {
    /// The category.
    pub code: ErrorCode,
    /// What went wrong, for humans.
    pub message: String,
    /// Optional structured details.
    pub details: Option<Value>,
}

impl MethodError {
    /// An error with the given code and message and no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// The method ran and failed for a reason of its own.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Failed, message)
    }

    /// Something the call names does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// The call's arguments do not fit the method.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// The caller may not do this: a method authorising by
    /// [`Caller`](crate::host::Caller) refuses with it.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PermissionDenied, message)
    }

    /// The call does not fit the state it finds (an order already shipped,
    /// a stock too low); the same call may succeed later.
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::FailedPrecondition, message)
    }

    /// The call would take more than the method allows (a quota, a size).
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ResourceExhausted, message)
    }

    /// The method cannot serve the call now (a service it depends on is
    /// down); the same call may succeed later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// The host broke while running the call; nothing was committed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// Attaches structured details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The wire form.
    pub fn to_wire(&self) -> wire::Error {
        wire::Error {
            code: self.code as i32,
            message: self.message.clone(),
            details_json: self
                .details
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default(),
        }
    }

    /// Reads the wire form. Unknown codes (and 0) become `internal`, with
    /// the number received kept at the start of the message for diagnostics
    /// (spec C3); undecodable details are kept as a JSON string rather than
    /// dropped.
    pub fn from_wire(error: &wire::Error) -> Self {
        Self::from_view(ErrorView {
            code: error.code,
            message: &error.message,
            details_json: &error.details_json,
        })
    }

    /// [`MethodError::from_wire`] of an error read in place.
    pub fn from_view(error: ErrorView<'_>) -> Self {
        let (code, message) = match ErrorCode::try_from(error.code) {
            Ok(ErrorCode::Unspecified) | Err(_) => (
                ErrorCode::Internal,
                format!("error code {}: {}", error.code, error.message),
            ),
            Ok(code) => (code, error.message.to_owned()),
        };
        let details = if error.details_json.is_empty() {
            None
        } else {
            Some(
                serde_json::from_str(error.details_json)
                    .unwrap_or_else(|_| Value::String(error.details_json.to_owned())),
            )
        };
        Self {
            code,
            message,
            details,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(code: i32, message: &str) -> wire::Error {
        wire::Error {
            code,
            message: message.to_owned(),
            details_json: String::new(),
        }
    }

    #[test]
    fn unknown_and_unspecified_codes_read_as_internal_keeping_the_number() {
        for code in [0, 99, -1] {
            let error = MethodError::from_wire(&wire(code, "from the future"));
            assert_eq!(error.code, ErrorCode::Internal);
            assert_eq!(error.message, format!("error code {code}: from the future"));
        }
    }

    #[test]
    fn known_codes_keep_their_message_unchanged() {
        let error = MethodError::from_wire(&wire(ErrorCode::NotFound as i32, "no todo"));
        assert_eq!(error.code, ErrorCode::NotFound);
        assert_eq!(error.message, "no todo");
    }
}
