//! A host's duties on a shared channel (spec §17.4), as a sans-IO policy:
//! which client envelopes it answers ([`admit`]) and the bounded table of
//! reply-only sessions it keeps for the clients it hears from
//! ([`ReplySessions`], SC9 and SC10).
//!
//! Neither touches a clock or a channel: the driver passes the time in, the
//! way it passes envelopes in, so every rule here is testable for all
//! inputs. The in-process bus (`transport::bus`) is one such driver.
//!
//! These checks stay out of [`super::HostCore`] on purpose: on a
//! point-to-point channel `capability` and `target` MUST be ignored (§3.2),
//! so only a shared channel's adapter knows that they mean anything.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::core::MAX_PEER_ID;
use crate::wire::Header;

/// Why a host on a shared channel leaves a client envelope unprocessed.
/// Such an envelope is neither executed nor answered, and opens no session
/// (SC10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unaddressed {
    /// The envelope has no header, so it has no address either. A
    /// point-to-point host would answer it `malformed`; on a shared channel
    /// that answer could only go to everyone.
    #[error("the envelope has no header")]
    NoHeader,
    /// `capability` differs from the channel's token, empty included (SC7).
    #[error("the capability differs from the channel's")]
    OtherCapability,
    /// `target` names another host (SC3).
    #[error("the envelope is addressed to another host")]
    OtherTarget,
    /// `source` is empty: a reply could only be addressed to everyone (SC2).
    #[error("the envelope has no source to reply to")]
    NoSource,
    /// `source` is longer than [`MAX_PEER_ID`], so the host would not answer
    /// it (§2); a session keyed by it would hold the whole id (SC10).
    #[error("the source is {len} bytes, over the limit of {MAX_PEER_ID}")]
    SourceTooLong {
        /// Length of the `source`, in bytes.
        len: usize,
    },
}

/// Decides whether a host whose peer id is `own_id`, on a channel whose
/// capability token is `capability` (`""` for none), processes a client
/// envelope with this header. On success it returns the `source` to key the
/// sender's reply-only session by.
///
/// The checks are those of SC2, SC3 and SC7, and §2's bound on `source`;
/// an envelope that passes them all is handed to the sender's session, whose
/// core judges the rest.
pub fn admit<'h>(
    own_id: &str,
    capability: &str,
    header: Option<&'h Header>,
) -> Result<&'h str, Unaddressed> {
    let header = header.ok_or(Unaddressed::NoHeader)?;
    if !capability.is_empty() && header.capability != capability {
        return Err(Unaddressed::OtherCapability);
    }
    if !header.target.is_empty() && header.target != own_id {
        return Err(Unaddressed::OtherTarget);
    }
    if header.source.is_empty() {
        return Err(Unaddressed::NoSource);
    }
    if header.source.len() > MAX_PEER_ID {
        return Err(Unaddressed::SourceTooLong {
            len: header.source.len(),
        });
    }
    Ok(&header.source)
}

/// A session and when its client was last heard from.
#[derive(Debug)]
struct Entry<S> {
    session: S,
    heard: Instant,
}

/// The reply-only sessions of a host on a shared channel, keyed by client
/// peer id (SC9), and bounded as SC10 requires.
///
/// Guarantees, for every sequence of calls:
/// - it never holds more than `max_sessions` sessions;
/// - [`expire`](Self::expire) keeps exactly the sessions heard from less
///   than `idle_timeout` before the time it is given;
/// - making room drops the session heard from least recently.
///
/// `S` is whatever the driver keeps per client; the table only orders and
/// bounds them.
#[derive(Debug)]
pub struct ReplySessions<S> {
    entries: HashMap<String, Entry<S>>,
    idle_timeout: Duration,
    max_sessions: usize,
}

impl<S> ReplySessions<S> {
    /// An empty table keeping at most `max_sessions` sessions (at least
    /// one), each until `idle_timeout` passes without its client.
    pub fn new(idle_timeout: Duration, max_sessions: usize) -> Self {
        Self {
            entries: HashMap::new(),
            idle_timeout,
            max_sessions: max_sessions.max(1),
        }
    }

    /// The session of `peer`, marked as heard from at `now`; `None` if the
    /// table holds none for it.
    pub fn heard(&mut self, peer: &str, now: Instant) -> Option<&mut S> {
        let entry = self.entries.get_mut(peer)?;
        entry.heard = entry.heard.max(now);
        Some(&mut entry.session)
    }

    /// Whether the table is at its limit, so that inserting a new peer's
    /// session drops another's.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.max_sessions
    }

    /// Keeps `session` for `peer`, heard from at `now`, replacing any it
    /// had. If that would exceed the limit, the session heard from least
    /// recently is dropped first and returned.
    pub fn insert(&mut self, peer: &str, session: S, now: Instant) -> Option<(String, S)> {
        let dropped = if !self.entries.contains_key(peer) && self.is_full() {
            self.drop_least_recent()
        } else {
            None
        };
        self.entries.insert(
            peer.to_owned(),
            Entry {
                session,
                heard: now,
            },
        );
        dropped
    }

    /// Drops and returns the session heard from least recently, if any.
    /// Ties go to the smaller peer id, so the choice never depends on the
    /// table's hashing.
    pub fn drop_least_recent(&mut self) -> Option<(String, S)> {
        let oldest = self
            .entries
            .iter()
            .min_by(|a, b| a.1.heard.cmp(&b.1.heard).then_with(|| a.0.cmp(b.0)))
            .map(|(peer, _)| peer.clone())?;
        self.entries
            .remove_entry(&oldest)
            .map(|(peer, entry)| (peer, entry.session))
    }

    /// Drops the session of `peer`, if any, and returns it.
    pub fn remove(&mut self, peer: &str) -> Option<S> {
        self.entries.remove(peer).map(|entry| entry.session)
    }

    /// Drops every session not heard from for `idle_timeout` or longer as
    /// of `now`, and returns how many were dropped.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        let timeout = self.idle_timeout;
        self.entries
            .retain(|_, entry| now.saturating_duration_since(entry.heard) < timeout);
        before - self.entries.len()
    }

    /// Whether the table holds a session for `peer`. Unlike
    /// [`heard`](Self::heard), this does not count as hearing from it.
    pub fn contains(&self, peer: &str) -> bool {
        self.entries.contains_key(peer)
    }

    /// How many sessions the table holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table holds no session.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
