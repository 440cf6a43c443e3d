//! The `HostService` implementation: each `Session` stream is one host
//! session, read by one task and written at the stream's pace.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use futures::Stream;
use tokio::sync::oneshot;
use tonic::{Code, Request, Response, Status, Streaming};

use super::admission::Admission;
use super::auth::check_bearer;
use super::codec::ClientEnvelope;
use super::partial::BodyBroken;
use crate::host::{Host, InputError, PeerOptions, Principal, Session, SessionEnd};
use crate::transport::throttle::{Throttle, throttled};
use crate::wire::HostFrame;

#[allow(missing_docs, clippy::all)]
mod generated {
    include!(concat!(
        env!("OUT_DIR"),
        "/cosystem.worker.v1.HostService.rs"
    ));
}
use generated::host_service_server::HostService;
pub use generated::host_service_server::HostServiceServer;

/// The full gRPC name of the host's service.
pub const SERVICE_NAME: &str = generated::host_service_server::SERVICE_NAME;

/// Logs a refused stream: as a warning at most once per throttle interval,
/// saying how many were held back since; the others at debug.
pub(super) fn log_refusal(refusals: &Throttle, peer: &str, what: &str, reason: &str) {
    throttled!(refusals, warn, %peer, reason, "{what}");
}

/// The tonic service for `host`, refusing messages over the host's limit.
pub(super) fn session_service(
    host: Host,
    token: Option<Arc<[u8]>>,
    refusals: Arc<Throttle>,
    admission: Option<Arc<Admission>>,
) -> HostServiceServer<SessionService> {
    let limit = host.limits().max_message_bytes;
    HostServiceServer::new(SessionService {
        host,
        token,
        refusals,
        admission,
    })
    .max_decoding_message_size(limit)
}

/// The `HostService` implementation: each `Session` stream is one host
/// session. Obtained from
/// [`GrpcServerBuilder::into_service`](super::GrpcServerBuilder::into_service).
pub struct SessionService {
    host: Host,
    token: Option<Arc<[u8]>>,
    /// Refused streams are logged at most once a second (`held_back`
    /// counts the others): a client looping on a wrong token is cheap to
    /// run and would otherwise write thousands of lines a second.
    refusals: Arc<Throttle>,
    /// Where refusals are counted for metrics: the server's, when it
    /// serves the service itself.
    admission: Option<Arc<Admission>>,
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<HostFrame, Status>> + Send>>;

#[tonic::async_trait]
impl HostService for SessionService {
    type SessionStream = FrameStream;

    async fn session(
        &self,
        request: Request<Streaming<ClientEnvelope>>,
    ) -> Result<Response<FrameStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let principal = request.extensions().get::<Principal>().cloned();
        if let Some(token) = &self.token
            && let Err(status) = check_bearer(request.metadata(), token)
        {
            let what = "client refused: unauthenticated";
            log_refusal(&self.refusals, &peer, what, status.message());
            if let Some(admission) = &self.admission {
                admission.note_unauthenticated();
            }
            return Err(status);
        }
        let session = self
            .host
            .open_session_as_async(
                PeerOptions {
                    peer_id: peer.clone(),
                    publications: true,
                },
                principal.map(|Principal(p)| p),
            )
            .await
            .map_err(|error| {
                // Throttled as refused tokens are: clients retry a refusal
                // (the host is full, or shutting down), so there may be
                // thousands a second.
                log_refusal(&self.refusals, &peer, "client refused", &error.to_string());
                refusal_status(&error)
            })?;
        throttled!(
            self.host.session_logs().comings_and_goings,
            info,
            %peer,
            sessions = session.sessions_at_open(),
            "client connected"
        );
        let session = Arc::new(session);
        let (end_tx, end_rx) = oneshot::channel();
        let ended = Arc::new(OnceLock::new());
        // Absent where the service is embedded (`into_service`): its
        // request bodies are not wrapped.
        let broken = request.extensions().get::<BodyBroken>().cloned();
        let reader = tokio::spawn(read_session(
            self.host.clone(),
            session.clone(),
            (request.into_inner(), broken),
            peer.clone(),
            end_tx,
            ended.clone(),
        ));
        let connection = Connection {
            host: self.host.clone(),
            session: session.clone(),
            peer,
            reader,
            ended,
        };
        Ok(Response::new(Box::pin(outbound(
            session, end_rx, connection,
        ))))
    }
}

/// The status a refused new session ends with.
fn refusal_status(error: &InputError) -> Status {
    match error {
        InputError::TooManyClients { limit } => {
            Status::resource_exhausted(format!("too many clients: the limit is {limit}"))
        }
        InputError::UnknownPeer | InputError::ShuttingDown => {
            Status::unavailable("the host is shutting down")
        }
        other => Status::internal(other.to_string()),
    }
}

/// The status a session ends with after a fatal input.
fn fatal_status(error: &InputError) -> Status {
    match error {
        InputError::Flooding { .. }
        | InputError::Backlog { .. }
        | InputError::MessageTooLarge { .. } => Status::resource_exhausted(error.to_string()),
        InputError::UnknownPeer | InputError::ShuttingDown => {
            Status::unavailable("the host is shutting down")
        }
        other => Status::internal(other.to_string()),
    }
}

/// The status a session ends with after its request stream failed. tonic
/// reports an oversize message as `OUT_OF_RANGE`; the protocol says
/// `RESOURCE_EXHAUSTED` (spec §15), as other gRPC stacks do. Broken gRPC
/// framing stays `INTERNAL`, as gRPC's own rules have it (§17.2).
fn inbound_status(status: Status) -> Status {
    match status.code() {
        Code::OutOfRange => Status::resource_exhausted(status.message().to_owned()),
        _ => status,
    }
}

/// Feeds the client's envelopes to its session until the client closes its
/// side, breaks the stream, or sends something fatal. Reports how the
/// response stream must end: `None` for a plain end, or a status.
async fn read_session(
    host: Host,
    session: Arc<Session>,
    (mut inbound, broken): (Streaming<ClientEnvelope>, Option<BodyBroken>),
    peer: String,
    end: oneshot::Sender<Option<Status>>,
    ended: Arc<OnceLock<String>>,
) {
    // Each end is labelled where it is decided: a status alone cannot tell
    // the host's refusals from what a client's stream reset maps to.
    let reset = || broken.as_ref().is_some_and(BodyBroken::get);
    // The session holds a client slot from the stream's opening, so a
    // stream that never speaks is ended (spec G2); an honest client sends
    // its SyncRequest at once (G4). Only the first envelope has a deadline:
    // an attached session may idle as long as it likes.
    let mut first = Some(host.limits().first_envelope_timeout);
    let outcome = loop {
        let next = match first.take() {
            Some(deadline) => match tokio::time::timeout(deadline, inbound.message()).await {
                Ok(next) => next,
                Err(_) => {
                    throttled!(
                        host.session_logs().closing,
                        warn,
                        %peer,
                        timeout = ?deadline,
                        "closing a session that sent no envelope in time"
                    );
                    session.end_as(SessionEnd::RefusedInput);
                    break Some(Status::deadline_exceeded(format!(
                        "no envelope arrived within {deadline:?} of the stream opening: a client sends its SyncRequest as soon as it opens the stream, without waiting for response headers (spec G2, G4)"
                    )));
                }
            },
            None => inbound.message().await,
        };
        match next {
            // tonic held the bytes to the max message size already.
            // Never blocking a thread on a core another session's method
            // holds: hundreds of sessions may be waiting at once.
            Ok(Some(envelope)) => match session.handle_bytes_async(envelope.bytes()).await {
                Ok(()) => {}
                // Decoded here rather than in the codec, so once; the
                // status is the one §17.2 gives bytes that are no envelope.
                Err(InputError::Malformed(reason)) => {
                    throttled!(host.session_logs().closing, warn, %peer, %reason, "closing session");
                    session.end_as(SessionEnd::RefusedInput);
                    break Some(Status::invalid_argument(format!(
                        "malformed ClientMessage: {reason}"
                    )));
                }
                // A shutdown while the input waited for the core ends the
                // stream as any shutdown does.
                Err(error) if error.is_fatal() || matches!(error, InputError::ShuttingDown) => {
                    throttled!(host.session_logs().closing, warn, %peer, %error, "closing session");
                    session.end_as(match error {
                        InputError::ShuttingDown | InputError::UnknownPeer => {
                            SessionEnd::HostShutDown
                        }
                        _ => SessionEnd::RefusedInput,
                    });
                    break Some(fatal_status(&error));
                }
                Err(error) => tracing::debug!(%peer, %error, "ignored input"),
            },
            // A half-close is labelled once what it is owed has gone out
            // (`outbound`); a reset, which tonic also ends this way, now.
            Ok(None) if reset() => {
                session.end_as(SessionEnd::ConnectionLost);
                break Some(Status::cancelled("the client reset its stream"));
            }
            Ok(None) => break None,
            Err(status) => {
                tracing::debug!(%peer, %status, "request stream failed");
                // A body that did not fail was refused by tonic (an
                // oversize message, a compression flag with no encoding)
                // or by the budget. Unwrapped (`into_service`), only the
                // size refusals' codes can tell, and resets may map to
                // others.
                let refused = match &broken {
                    Some(broken) => !broken.get(),
                    None => matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
                };
                session.end_as(if refused {
                    SessionEnd::RefusedInput
                } else {
                    SessionEnd::ConnectionLost
                });
                break Some(inbound_status(status));
            }
        }
    };
    let _ = ended.set(match &outcome {
        None => "the client closed its stream".to_owned(),
        // What hyper reports when a client process exits or drops its
        // connection without closing the stream: an everyday end, not a
        // protocol error, so the log says so rather than quote h2.
        Some(status) if matches!(status.code(), Code::Unknown | Code::Cancelled) => {
            format!(
                "the client went away without closing its stream ({})",
                status.message()
            )
        }
        Some(status) => format!("{:?}: {}", status.code(), status.message()),
    });
    let _ = end.send(outcome);
}

/// Lives as long as the response stream: logs the disconnect with its
/// reason and stops the reader, so the session is closed however the
/// stream ends.
struct Connection {
    host: Host,
    session: Arc<Session>,
    peer: String,
    reader: tokio::task::JoinHandle<()>,
    /// Why the session ended, once known: set by the reader (the client's
    /// side ended or failed) or by the response stream (host shutdown).
    ended: Arc<OnceLock<String>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        // A stream dropped with no end reported was reset or lost.
        self.session.end_as(SessionEnd::ConnectionLost);
        let reason = self.ended.get().map_or(
            "the client went away without closing its stream (stream reset or connection lost)",
            String::as_str,
        );
        throttled!(
            self.host.session_logs().comings_and_goings,
            info,
            peer = %self.peer,
            reason,
            "client disconnected"
        );
    }
}

struct Outbound {
    session: Arc<Session>,
    end: oneshot::Receiver<Option<Status>>,
    /// The client closed its side: answer what it sent, then end.
    draining: bool,
    connection: Connection,
}

impl Outbound {
    /// Ends the response stream because the host is shutting down.
    fn shut_down(self) -> Option<(Result<HostFrame, Status>, Option<Outbound>)> {
        self.session.end_as(SessionEnd::HostShutDown);
        let _ = self
            .connection
            .ended
            .set("the host is shutting down".to_owned());
        Some((Err(Status::unavailable("the host is shutting down")), None))
    }
}

enum Step {
    Frame(Option<HostFrame>),
    End(Option<Status>),
}

/// The response stream: the session's frames, pulled at the stream's pace,
/// until the reader reports an end or the host shuts down.
fn outbound(
    session: Arc<Session>,
    end: oneshot::Receiver<Option<Status>>,
    connection: Connection,
) -> impl Stream<Item = Result<HostFrame, Status>> + Send {
    let state = Outbound {
        session,
        end,
        draining: false,
        connection,
    };
    futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        loop {
            if state.draining {
                return match state.session.next_answer().await {
                    Some(frame) => Some((Ok(frame), Some(state))),
                    None if state.session.is_closed() => state.shut_down(),
                    None => {
                        state.session.end_as(SessionEnd::ClientClosed);
                        None
                    }
                };
            }
            let step = tokio::select! {
                // An end decided by the reader wins over frames still queued.
                biased;
                ended = &mut state.end => Step::End(ended.ok().flatten()),
                frame = state.session.next_frame() => Step::Frame(frame),
            };
            return match step {
                Step::Frame(Some(frame)) => Some((Ok(frame), Some(state))),
                Step::Frame(None) => state.shut_down(),
                Step::End(Some(status)) => Some((Err(status), None)),
                // A half-close: the calls already sent are still answered
                // (H8), then the stream ends.
                Step::End(None) => {
                    state.draining = true;
                    continue;
                }
            };
        }
    })
}
