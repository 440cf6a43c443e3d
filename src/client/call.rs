//! Call futures and module handles.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::CallId;
use super::driver::{CallOutcome, Client, Settlement};
use crate::app::MethodError;
use crate::wire::ErrorCode;

/// Per-call options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// Settle `deadline-exceeded` if the call has not settled this long after
    /// it started (waiting for the mirror to catch up included). `None`: the
    /// client's [`ClientConfig::call_timeout`](super::ClientConfig::call_timeout).
    /// `Some(Duration::MAX)` (or any timeout past what the clock can
    /// express): no deadline, whatever the client's default.
    ///
    /// A call that times out after it was sent may still run on the host
    /// (spec CL4), however short the timeout: even `Duration::ZERO` leaves
    /// the call queued until the driver next looks at the clock, and it
    /// may be sent before then. [`Settlement::sent`] says whether it was.
    pub timeout: Option<Duration>,
}

/// A pending call. Resolves to the method's value or error once the mirror
/// has reached the state the call produced. Dropping it before it resolves
/// cancels the call (it settles `cancelled`; if it was already sent, the host
/// may still run it, and if not, it never runs), so there is no fire and
/// forget: await it, or keep it until it resolves.
#[must_use = "dropping a CallFuture cancels the call, which may then never run"]
pub struct CallFuture {
    client: Client,
    id: Option<CallId>,
    receiver: Option<oneshot::Receiver<Settlement>>,
    immediate: Option<MethodError>,
}

impl CallFuture {
    pub(super) fn start(
        client: Client,
        module: &str,
        method: &str,
        args: Vec<Value>,
        options: CallOptions,
    ) -> Self {
        let now = Instant::now().into_std();
        let shared = client.shared().clone();
        let (sender, receiver) = oneshot::channel();
        let started = {
            let mut core = shared.core();
            // A timeout past what the clock can express is no deadline at all.
            let deadline = options
                .timeout
                .or(core.config().call_timeout)
                .and_then(|t| now.checked_add(t));
            let started = core.call(module, method, &args, deadline);
            // Registered while the core is locked, so the outcome cannot be
            // dispatched before its receiver exists.
            if let Ok(id) = started {
                shared.register_call(id, sender);
            }
            started
        };
        // A driver that stopped for good (not disposed) will never send it.
        shared.fail_stranded_calls();
        shared.transmit();
        match started {
            Ok(id) => Self {
                client,
                id: Some(id),
                receiver: Some(receiver),
                immediate: None,
            },
            Err(error) => Self {
                client,
                id: None,
                receiver: None,
                immediate: Some(error.into()),
            },
        }
    }

    /// The call's id, unless it was refused before being made.
    pub fn id(&self) -> Option<CallId> {
        self.id
    }

    /// Resolves to the [`Settlement`] instead of the bare outcome: the same
    /// outcome plus the state version the host's result observed.
    /// Dropping it before it resolves cancels the call, as with `CallFuture`.
    pub fn with_version(self) -> VersionedCall {
        VersionedCall(self)
    }

    fn poll_settled(&mut self, cx: &mut Context<'_>) -> Poll<Settlement> {
        if let Some(error) = self.immediate.take() {
            return Poll::Ready(Settlement {
                outcome: Err(error),
                state_version: None,
                sent: false,
            });
        }
        let Some(receiver) = self.receiver.as_mut() else {
            return Poll::Ready(Settlement {
                outcome: Err(MethodError::internal("call future polled after completion")),
                state_version: None,
                sent: false,
            });
        };
        match Pin::new(receiver).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                self.receiver = None;
                self.id = None;
                Poll::Ready(result.unwrap_or_else(|_| Settlement {
                    outcome: Err(MethodError::new(
                        ErrorCode::Disposed,
                        "the client was disposed",
                    )),
                    state_version: None,
                    // Not known any more: said the way that cannot lead
                    // to a call run twice.
                    sent: true,
                }))
            }
        }
    }
}

impl Future for CallFuture {
    type Output = CallOutcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_settled(cx).map(|settled| settled.outcome)
    }
}

/// A pending call that resolves to its [`Settlement`]; see
/// [`CallFuture::with_version`]. Dropping it cancels the call, as dropping
/// a [`CallFuture`] does.
#[must_use = "dropping a VersionedCall cancels the call, which may then never run"]
pub struct VersionedCall(CallFuture);

impl Future for VersionedCall {
    type Output = Settlement;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_settled(cx)
    }
}

impl Drop for CallFuture {
    fn drop(&mut self) {
        if let (Some(id), Some(_)) = (self.id, self.receiver.as_ref()) {
            let shared = self.client.shared();
            if shared.core().cancel(id) {
                shared.dispatch();
            }
        }
    }
}

/// Why a typed call ([`ModuleHandle::call_as`]) gave no value of the type
/// asked for. The variants differ in what happened on the host, which is
/// what a caller deciding whether to call again needs to know.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallAsError {
    /// The arguments did not serialise to JSON, or held a number JSON has no
    /// form for (NaN, an infinity); nothing was sent.
    #[error("{module}.{method}: arguments could not be serialised, nothing was sent: {error}")]
    Arguments {
        /// The module called.
        module: String,
        /// The method called.
        method: String,
        /// What serde reported.
        #[source]
        error: serde_json::Error,
    },
    /// The call settled with an error, exactly as [`Client::call`] reports
    /// it: its code says whether the method ran (spec §14).
    #[error(transparent)]
    Failed(#[from] MethodError),
    /// The method ran and its changes were committed and are in the mirror,
    /// but the value it returned does not deserialise as the type asked for.
    /// Calling again runs the method again.
    #[error(
        "{module}.{method} ran and committed, but its value is not of the type expected: {error}"
    )]
    UnexpectedValue {
        /// The module called.
        module: String,
        /// The method called.
        method: String,
        /// The value the method returned.
        value: Value,
        /// What serde reported.
        #[source]
        error: serde_json::Error,
    },
}

impl CallAsError {
    /// The error the call settled with, if it settled with one; `None` for
    /// the local failures on either side of a call that did not.
    pub fn method_error(&self) -> Option<&MethodError> {
        match self {
            Self::Failed(error) => Some(error),
            Self::Arguments { .. } | Self::UnexpectedValue { .. } => None,
        }
    }
}

/// Calls the methods of one module by name.
#[derive(Clone)]
pub struct ModuleHandle {
    client: Client,
    name: String,
}

impl ModuleHandle {
    pub(super) fn new(client: Client, name: &str) -> Self {
        Self {
            client,
            name: name.to_owned(),
        }
    }

    /// The module's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls `method` with positional `args`; see [`Client::call`].
    pub fn call(&self, method: &str, args: Vec<Value>) -> CallFuture {
        self.client.call(&self.name, method, args)
    }

    /// Calls `method` with typed arguments and a typed result: `args` is
    /// serialised, and what it becomes is the argument list. A tuple, or
    /// anything else that serialises to a JSON array (a `Vec`, an array, a
    /// tuple struct), is the positional arguments; `()` or `None` (JSON
    /// `null`) is none; any other value is the one argument. So a single
    /// argument that is itself a list or may be `None` goes in a 1-tuple:
    /// `(items,)`, not `items`. The value is deserialised as `R`. A value that does not fit `R` is
    /// [`CallAsError::UnexpectedValue`]: the method ran and committed.
    ///
    /// Being an `async fn`, it queues the call when first polled, not when
    /// called as [`Client::call`] does; from then on the two behave alike.
    ///
    /// ```no_run
    /// # async fn f(client: cosystem_worker::client::Client) -> Result<(), cosystem_worker::client::CallAsError> {
    /// let count: i64 = client.module("counter").call_as("increase", (1,)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn call_as<A, R>(&self, method: &str, args: A) -> Result<R, CallAsError>
    where
        A: serde::Serialize,
        R: serde::de::DeserializeOwned,
    {
        self.call_as_with(method, args, CallOptions::default())
            .await
    }

    /// [`ModuleHandle::call_as`] with options (a timeout).
    pub async fn call_as_with<A, R>(
        &self,
        method: &str,
        args: A,
        options: CallOptions,
    ) -> Result<R, CallAsError>
    where
        A: serde::Serialize,
        R: serde::de::DeserializeOwned,
    {
        // serde_json writes a NaN or an infinity as `null`: the method would
        // run with another argument than the one given.
        let converted = crate::app::check_finite(&args)
            .map_err(<serde_json::Error as serde::ser::Error>::custom)
            .and_then(|()| serde_json::to_value(args));
        let args = match converted {
            Ok(Value::Array(args)) => args,
            Ok(Value::Null) => Vec::new(),
            Ok(other) => vec![other],
            Err(error) => {
                return Err(CallAsError::Arguments {
                    module: self.name.clone(),
                    method: method.to_owned(),
                    error,
                });
            }
        };
        let value = self.call_with(method, args, options).await?;
        R::deserialize(&value).map_err(|error| CallAsError::UnexpectedValue {
            module: self.name.clone(),
            method: method.to_owned(),
            value,
            error,
        })
    }

    /// Calls `method` with options; see [`Client::call_with`].
    pub fn call_with(&self, method: &str, args: Vec<Value>, options: CallOptions) -> CallFuture {
        self.client.call_with(&self.name, method, args, options)
    }
}
