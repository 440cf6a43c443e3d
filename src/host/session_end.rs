//! Why sessions end, counted for the operator's metrics: a host whose
//! sessions keep ending on refused input has a misbehaving peer, one whose
//! sessions end on lost connections has a network or client problem, and
//! the session gauge alone tells neither.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// How a session ended. The transport that serves a session reports the
/// first of these it sees; a session ended without one is [`Self::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum SessionEnd {
    /// The client closed its side and was answered what it was owed (H8).
    ClientClosed = 1,
    /// The connection or stream went away or failed: a reset, a lost
    /// connection, a write that failed.
    ConnectionLost = 2,
    /// The host ended the session over what the client sent: malformed or
    /// oversize input, a flood, a receive budget passed; or, over gRPC, no
    /// first envelope within the host's deadline.
    RefusedInput = 3,
    /// The host shut down.
    HostShutDown = 4,
    /// Ended by the application that opened it, or on the shared bus, where
    /// a peer has no connection of its own to lose.
    Other = 5,
}

/// Every end, in label order.
const ENDS: [SessionEnd; 5] = [
    SessionEnd::ClientClosed,
    SessionEnd::ConnectionLost,
    SessionEnd::RefusedInput,
    SessionEnd::HostShutDown,
    SessionEnd::Other,
];

impl SessionEnd {
    /// The metric label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::ConnectionLost => "connection_lost",
            Self::RefusedInput => "refused_input",
            Self::HostShutDown => "host_shutdown",
            Self::Other => "other",
        }
    }

    /// Every label, for series shown from the start at 0.
    pub(crate) fn labels() -> [&'static str; 5] {
        ENDS.map(Self::label)
    }

    fn from_u8(value: u8) -> Option<Self> {
        ENDS.into_iter().find(|end| *end as u8 == value)
    }
}

/// The first end reported for one session; later reports are ignored, so
/// that the stream's teardown after an end already decided (a gRPC
/// response stream dropped once a closed client was answered) does not
/// relabel it.
#[derive(Debug, Default)]
pub(crate) struct EndSlot(AtomicU8);

impl EndSlot {
    /// Records `end` unless an end was recorded before.
    pub(crate) fn report(&self, end: SessionEnd) {
        let _ = self
            .0
            .compare_exchange(0, end as u8, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The end recorded, or [`SessionEnd::Other`].
    fn get(&self) -> SessionEnd {
        SessionEnd::from_u8(self.0.load(Ordering::Relaxed)).unwrap_or(SessionEnd::Other)
    }
}

/// A host's sessions opened and ended, by end. Counted outside the core's
/// lock, so that a session ending while a method runs does not wait.
#[derive(Debug, Default)]
pub(crate) struct SessionTally {
    opened: AtomicU64,
    ended: [AtomicU64; ENDS.len()],
}

impl SessionTally {
    /// Counts a session opened.
    pub(crate) fn opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a session ended, as its slot says.
    pub(crate) fn ended(&self, slot: &EndSlot) {
        let end = slot.get();
        if let Some(n) = self.ended.get(usize::from(end as u8 - 1)) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sessions opened so far, and those ended by end label (ends that
    /// never occurred absent).
    pub(crate) fn read(&self) -> (u64, BTreeMap<&'static str, u64>) {
        let ended = ENDS
            .iter()
            .zip(&self.ended)
            .map(|(end, n)| (end.label(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        (self.opened.load(Ordering::Relaxed), ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_end_reported_is_the_one_counted() {
        let tally = SessionTally::default();
        let slot = EndSlot::default();
        slot.report(SessionEnd::ClientClosed);
        slot.report(SessionEnd::HostShutDown);
        tally.opened();
        tally.ended(&slot);
        let (opened, ended) = tally.read();
        assert_eq!(opened, 1);
        assert_eq!(ended, BTreeMap::from([("client_closed", 1)]));
    }

    #[test]
    fn a_session_ended_with_no_end_reported_counts_as_other() {
        let tally = SessionTally::default();
        tally.ended(&EndSlot::default());
        tally.ended(&EndSlot::default());
        assert_eq!(tally.read().1, BTreeMap::from([("other", 2)]));
    }

    #[test]
    fn every_end_has_its_own_label_and_counter() {
        let tally = SessionTally::default();
        for (i, end) in ENDS.iter().enumerate() {
            for _ in 0..=i {
                let slot = EndSlot::default();
                slot.report(*end);
                tally.ended(&slot);
            }
        }
        let (_, ended) = tally.read();
        assert_eq!(ended.len(), ENDS.len());
        for (i, label) in SessionEnd::labels().iter().enumerate() {
            assert_eq!(ended[label], i as u64 + 1, "{label}");
        }
    }
}
