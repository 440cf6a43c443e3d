//! How many TCP connections the gRPC server holds at once, in all and per
//! client address.
//!
//! A session is capped by the host (`max_clients`), but a connection costs
//! the server a descriptor and HTTP/2 buffers before any session exists:
//! health needs no token, and a connection may hold no stream at all. The
//! handshake deadline closes connections that never start, yet one that
//! completes TLS, or speaks HTTP/2 and then idles, answers keepalive pings
//! and is held like any legitimate client. Only a count bounds those.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::prometheus::{family, label, plain};

/// Connections a [`GrpcServer`](super::GrpcServer) holds at once unless
/// configured otherwise: above the host's default of 10,000 sessions, with
/// room for health checks.
pub const DEFAULT_MAX_CONNECTIONS: NonZeroUsize = NonZeroUsize::new(16_384).expect("non-zero");

/// Limits on the connections a gRPC server holds at once. A connection over
/// a limit is closed as soon as it is accepted, before TLS or HTTP/2: the
/// client sees the connection end and retries like after any failed
/// connect. Connections already held are never affected.
///
/// Each connection takes a file descriptor: a process whose open-file limit
/// is lower (the common default soft limit is 1024) fails accepts with "too
/// many open files" before these limits bind. The `cosystem-worker host`
/// command raises its soft limit to the hard one at start; an application
/// embedding the server does that itself (as Go's runtime does), or sets
/// limits below its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionLimits {
    max: NonZeroUsize,
    per_address: Option<NonZeroUsize>,
}

impl ConnectionLimits {
    /// At most `max` connections at once, from every address together, and
    /// no per-address limit.
    pub fn new(max: NonZeroUsize) -> Self {
        Self {
            max,
            per_address: None,
        }
    }

    /// Also at most `limit` connections at once from one client address.
    /// IPv6 addresses count by their /64 prefix, the block one subscriber
    /// is usually given, and IPv4-mapped IPv6 addresses as the IPv4
    /// address. Clients behind one proxy or NAT share an address, so there
    /// is no such limit by default.
    pub fn per_address(self, limit: NonZeroUsize) -> Self {
        Self {
            per_address: Some(limit),
            ..self
        }
    }

    /// Connections held at once, from every address together.
    pub fn max(&self) -> NonZeroUsize {
        self.max
    }

    /// Connections held at once from one client address, if limited.
    pub fn max_per_address(&self) -> Option<NonZeroUsize> {
        self.per_address
    }
}

impl Default for ConnectionLimits {
    /// [`DEFAULT_MAX_CONNECTIONS`] in all, none per address.
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CONNECTIONS)
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refusal {
    /// The server holds `max` connections.
    #[error("the server is at its limit of connections ({0})")]
    Total(usize),
    /// The client's address holds its limit.
    #[error("the client's address is at its per-address limit of connections ({0})")]
    PerAddress(usize),
}

/// The counts behind [`ConnectionLimits`], shared by every accepted
/// connection's [`Slot`].
#[derive(Debug)]
pub(super) struct Admission {
    limits: ConnectionLimits,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    refused_total: u64,
    refused_per_address: u64,
    /// Session streams refused for their credentials (§17.2).
    unauthenticated: u64,
    /// Session streams the application's interceptor refused.
    refused_by_interceptor: u64,
    /// Only addresses holding connections; empty without a per-address
    /// limit.
    by_address: HashMap<IpAddr, usize>,
}

impl Admission {
    pub(super) fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counts: Mutex::default(),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a session stream refused `UNAUTHENTICATED`: failed logins are
    /// what an operator watching for attacks or broken clients looks for.
    pub(super) fn note_unauthenticated(&self) {
        self.counts().unauthenticated += 1;
    }

    /// Counts a session stream the application's interceptor refused: its
    /// check is the login there, whatever status it answers.
    pub(super) fn note_refused_by_interceptor(&self) {
        self.counts().refused_by_interceptor += 1;
    }

    /// Takes a slot for a connection from `peer`, or says which limit it
    /// would exceed. The slot is given back when dropped.
    pub(super) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refusal> {
        let mut counts = self.counts();
        let max = self.limits.max.get();
        if counts.total >= max {
            counts.refused_total += 1;
            return Err(Refusal::Total(max));
        }
        let key = match self.limits.per_address.map(NonZeroUsize::get) {
            Some(limit) => {
                let key = address_key(peer);
                let held = counts.by_address.entry(key).or_default();
                // A limit of at least 1 means a refused address already
                // holds a connection, so no empty entry is left behind.
                if *held >= limit {
                    counts.refused_per_address += 1;
                    return Err(Refusal::PerAddress(limit));
                }
                *held += 1;
                Some(key)
            }
            None => None,
        };
        counts.total += 1;
        Ok(Slot {
            admission: self.clone(),
            key,
        })
    }

    /// Connections held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.counts().total
    }
}

/// A live handle on a server's connection counts, for metrics: from
/// [`GrpcServer::connections`](super::GrpcServer::connections) or
/// [`GuardedIncoming::connections`](super::GuardedIncoming::connections).
#[derive(Debug, Clone)]
pub struct ConnectionGauge(pub(super) Arc<Admission>);

impl ConnectionGauge {
    /// The counts now.
    pub fn counts(&self) -> ConnectionCounts {
        let counts = self.0.counts();
        ConnectionCounts {
            open: counts.total,
            refused_over_max: counts.refused_total,
            refused_over_per_address: counts.refused_per_address,
            unauthenticated: counts.unauthenticated,
            refused_by_interceptor: counts.refused_by_interceptor,
        }
    }
}

/// A server's connections at one moment, and those it has refused since it
/// started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionCounts {
    /// Connections held now.
    pub open: usize,
    /// Connections closed on accept because the server held its maximum.
    pub refused_over_max: u64,
    /// Connections closed on accept because their address held its
    /// per-address maximum.
    pub refused_over_per_address: u64,
    /// Session streams refused `UNAUTHENTICATED`: a missing, repeated or
    /// wrong token.
    pub unauthenticated: u64,
    /// Session streams the interceptor
    /// ([`GrpcServerBuilder::interceptor`](super::GrpcServerBuilder::interceptor))
    /// refused, whatever status it answered.
    pub refused_by_interceptor: u64,
}

impl ConnectionCounts {
    /// The counts in the Prometheus text format, named
    /// `cosystem_worker_grpc_connections` and
    /// `cosystem_worker_grpc_connections_refused_total{limit}` and
    /// `cosystem_worker_grpc_sessions_unauthenticated_total` and
    /// `cosystem_worker_grpc_sessions_refused_by_interceptor_total`; they
    /// follow [`HostStats::to_prometheus`](crate::host::HostStats::to_prometheus)
    /// in one exposition.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        family(
            &mut out,
            "grpc_connections",
            "gauge",
            "TCP connections the gRPC server holds now.",
            &plain(u64::try_from(self.open).unwrap_or(u64::MAX)),
        );
        family(
            &mut out,
            "grpc_connections_refused_total",
            "counter",
            "Connections closed on accept, by the limit they would have exceeded.",
            &[
                (label("limit", "max"), self.refused_over_max),
                (label("limit", "per_address"), self.refused_over_per_address),
            ],
        );
        family(
            &mut out,
            "grpc_sessions_unauthenticated_total",
            "counter",
            "Session streams refused UNAUTHENTICATED: a missing, repeated or wrong token.",
            &plain(self.unauthenticated),
        );
        family(
            &mut out,
            "grpc_sessions_refused_by_interceptor_total",
            "counter",
            "Session streams the application's interceptor refused, whatever status it answered.",
            &plain(self.refused_by_interceptor),
        );
        out
    }
}

/// One admitted connection's place in the counts, held for as long as the
/// connection lives.
#[derive(Debug)]
pub(super) struct Slot {
    admission: Arc<Admission>,
    key: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.admission.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(key) = self.key
            && let Some(held) = counts.by_address.get_mut(&key)
        {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.by_address.remove(&key);
            }
        }
    }
}

/// The address a per-address limit counts `peer` under.
fn address_key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("a test address")
    }

    fn limits(max: usize, per_address: Option<usize>) -> ConnectionLimits {
        let non_zero = |n| NonZeroUsize::new(n).expect("a non-zero test limit");
        let limits = ConnectionLimits::new(non_zero(max));
        match per_address {
            Some(n) => limits.per_address(non_zero(n)),
            None => limits,
        }
    }

    #[test]
    fn the_total_limit_refuses_the_connection_over_it_until_one_closes() {
        let admission = Admission::new(limits(2, None));
        let first = admission.admit(ip("10.0.0.1")).expect("first");
        let _second = admission.admit(ip("10.0.0.2")).expect("second");
        assert_eq!(
            admission.admit(ip("10.0.0.3")).map(drop),
            Err(Refusal::Total(2))
        );
        let gauge = ConnectionGauge(admission.clone());
        assert_eq!(
            gauge.counts(),
            ConnectionCounts {
                open: 2,
                refused_over_max: 1,
                refused_over_per_address: 0,
                unauthenticated: 0,
                refused_by_interceptor: 0,
            }
        );
        drop(first);
        assert!(admission.admit(ip("10.0.0.3")).is_ok());
    }

    #[test]
    fn the_per_address_limit_refuses_only_that_address() {
        let admission = Admission::new(limits(10, Some(1)));
        let held = admission.admit(ip("10.0.0.1")).expect("first");
        assert_eq!(
            admission.admit(ip("10.0.0.1")).map(drop),
            Err(Refusal::PerAddress(1))
        );
        let _other = admission.admit(ip("10.0.0.2")).expect("another address");
        let counts = ConnectionGauge(admission.clone()).counts();
        assert_eq!(
            (
                counts.open,
                counts.refused_over_max,
                counts.refused_over_per_address
            ),
            (2, 0, 1)
        );
        let text = counts.to_prometheus();
        assert!(
            text.contains("cosystem_worker_grpc_connections 2\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "cosystem_worker_grpc_connections_refused_total{limit=\"per_address\"} 1\n"
            ),
            "{text}"
        );
        drop(held);
        assert!(admission.admit(ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_bit_prefix_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            address_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(address_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        let admission = Admission::new(limits(10, Some(1)));
        let _v4 = admission.admit(ip("10.0.0.1")).expect("first");
        assert_eq!(
            admission.admit(ip("::ffff:10.0.0.1")).map(drop),
            Err(Refusal::PerAddress(1))
        );
    }

    proptest! {
        /// Whatever connections open and close, the counts never exceed a
        /// limit, and once every slot is dropped nothing is held or
        /// remembered.
        #[test]
        fn counts_stay_within_the_limits_and_return_to_zero(
            max in 1usize..6,
            per_address in proptest::option::of(1usize..4),
            steps in proptest::collection::vec((any::<bool>(), 0u8..4), 0..64),
        ) {
            let admission = Admission::new(limits(max, per_address));
            let mut slots: Vec<(u8, Slot)> = Vec::new();
            for (open, who) in steps {
                if open {
                    let peer = IpAddr::from([10, 0, 0, who]);
                    let from_peer = slots.iter().filter(|(w, _)| *w == who).count();
                    let expected_ok = slots.len() < max
                        && per_address.is_none_or(|limit| from_peer < limit);
                    match admission.admit(peer) {
                        Ok(slot) => {
                            prop_assert!(expected_ok);
                            slots.push((who, slot));
                        }
                        Err(_) => prop_assert!(!expected_ok),
                    }
                } else if let Some(i) = slots.iter().position(|(w, _)| *w == who) {
                    slots.swap_remove(i);
                }
                prop_assert_eq!(admission.held(), slots.len());
            }
            slots.clear();
            prop_assert_eq!(admission.held(), 0);
            prop_assert!(admission.counts().by_address.is_empty());
        }
    }
}
