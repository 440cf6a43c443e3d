//! A deterministic simulation of one host and several clients.
//!
//! One [`HostCore`] serving the demo app and N [`ClientCore`]s are wired
//! through in-memory channels. Client-to-host traffic is delivered in order;
//! each host-to-client channel applies a per-client fault schedule (drop,
//! duplicate, reorder, delay) to the frames it carries. Time is simulated:
//! nothing reads a clock, so a run is a pure function of its inputs and any
//! failure replays exactly.
//!
//! Everything observable is recorded in a [`Trace`] for properties to check:
//! every delivery with the client's state before it and the events it caused,
//! every lost frame, every envelope a client sent, every client event in
//! order, the host's publications, and whether any frame carried the private
//! section's marker.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use cosystem_worker::client::{CallId, ClientConfig, ClientCore, ClientError, ClientEvent};
use cosystem_worker::demo;
use cosystem_worker::host::{
    HostConfig, HostCore, HostEvent, HostLimits, PeerKey, PeerOptions, SyncMode,
};
use cosystem_worker::wire::{ClientMessage, HostFrame, HostMessage};
use prost::Message;
use serde_json::Value;

/// What a channel does to the next frame it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Deliver it.
    Pass,
    /// Lose it.
    Drop,
    /// Deliver it twice.
    Duplicate,
    /// Deliver it this much later; frames sent meanwhile overtake it.
    Delay(Duration),
    /// Deliver it after the next frame.
    Reorder,
}

/// How a simulation is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Number of clients.
    pub clients: usize,
    /// The host's sync mode.
    pub sync: SyncMode,
    /// The host's history window, in versions.
    pub history_entries: usize,
    /// The initial token of the private `secret` module; no frame may carry it.
    pub secret_marker: String,
    /// The clients' sync retry interval.
    pub sync_retry: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            clients: 2,
            sync: SyncMode::Patch,
            history_entries: 1024,
            secret_marker: "SIM-SECRET-MARKER-5d1c".to_owned(),
            sync_retry: Duration::from_secs(2),
        }
    }
}

/// One host envelope handed to a client.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The client.
    pub client: usize,
    /// The envelope.
    pub message: HostMessage,
    /// The client's mirror version before it (None: EMPTY).
    pub version_before: Option<u64>,
    /// Whether a sync request was outstanding before it.
    pub syncing_before: bool,
    /// The events it caused, in order.
    pub events: Vec<ClientEvent>,
    /// The mirror version after it.
    pub version_after: Option<u64>,
}

/// A host frame a faulty channel lost.
#[derive(Debug, Clone)]
pub struct Loss {
    /// The client it was for.
    pub client: usize,
    /// The envelope.
    pub message: HostMessage,
    /// The client's mirror version when it was lost.
    pub version_at_loss: Option<u64>,
    /// Whether a sync request was outstanding when it was lost.
    pub syncing_at_loss: bool,
    /// Index in [`Trace::deliveries`] of the next delivery to any client.
    pub next_delivery: usize,
    /// Index in [`Trace::sent`] of the next envelope any client sends.
    pub next_sent: usize,
}

/// Everything a run produced.
#[derive(Debug, Default)]
pub struct Trace {
    /// Every delivery, in order.
    pub deliveries: Vec<Delivery>,
    /// Every lost frame, in order.
    pub losses: Vec<Loss>,
    /// Every envelope a client handed to its transport: (client, envelope).
    pub sent: Vec<(usize, ClientMessage)>,
    /// Every event of each client, in order, whatever caused it.
    pub events: Vec<Vec<ClientEvent>>,
    /// Calls each client made: (id, outcome if refused at once).
    pub calls: Vec<Vec<(CallId, Option<ClientError>)>>,
    /// Versions the host published because of commits, in order.
    pub published: Vec<u64>,
    /// Frames (either direction) whose bytes contained the secret marker.
    pub marker_leaks: usize,
    /// Frames carried host to client.
    pub frames: usize,
}

struct InFlight {
    at: Duration,
    seq: u64,
    frame: HostFrame,
}

struct SimClient {
    core: ClientCore,
    peer: PeerKey,
    peer_id: String,
    connected: bool,
    schedule: VecDeque<Fault>,
    in_flight: Vec<InFlight>,
    held: Option<HostFrame>,
}

/// The simulation. See the module docs.
pub struct Sim {
    config: SimConfig,
    /// The host.
    pub host: HostCore,
    clients: Vec<SimClient>,
    t0: Instant,
    elapsed: Duration,
    seq: u64,
    /// What happened so far.
    pub trace: Trace,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("host", &self.host)
            .field("elapsed", &self.elapsed)
            .finish_non_exhaustive()
    }
}

/// The host epoch of every simulation.
pub const EPOCH: &str = "sim-epoch";

impl Sim {
    /// A host at version 1 and `config.clients` connected clients, each with
    /// its initial sync request queued. Nothing has moved yet.
    pub fn new(config: SimConfig) -> Self {
        let host_config = HostConfig {
            sync: config.sync,
            sections: Some(demo::default_sections()),
            peer_id: "h".to_owned(),
            capability: String::new(),
            limits: HostLimits {
                history_entries: config.history_entries,
                ..HostLimits::default()
            },
        };
        let mut host = HostCore::new(host_config, demo::app(config.secret_marker.clone()), EPOCH);
        let t0 = Instant::now();
        let clients = (0..config.clients)
            .map(|i| {
                let peer_id = format!("c{i}");
                let peer = host
                    .connect(PeerOptions {
                        peer_id: peer_id.clone(),
                        publications: true,
                    })
                    .expect("the default client limit admits the simulated clients");
                let core = ClientCore::new(
                    ClientConfig {
                        peer_id: peer_id.clone(),
                        sync_retry: config.sync_retry,
                        ..ClientConfig::default()
                    },
                    t0,
                );
                SimClient {
                    core,
                    peer,
                    peer_id,
                    connected: true,
                    schedule: VecDeque::new(),
                    in_flight: Vec::new(),
                    held: None,
                }
            })
            .collect();
        let n = config.clients;
        Self {
            config,
            host,
            clients,
            t0,
            elapsed: Duration::ZERO,
            seq: 0,
            trace: Trace {
                events: vec![Vec::new(); n],
                calls: vec![Vec::new(); n],
                ..Trace::default()
            },
        }
    }

    fn now(&self) -> Instant {
        self.t0 + self.elapsed
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Number of clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// A client's core, for reading its state.
    pub fn client(&self, client: usize) -> &ClientCore {
        &self.clients[client].core
    }

    /// Client `client` calls `module.method(args)` with a deadline `timeout`
    /// from now. The call is sent at the next pump.
    pub fn call(
        &mut self,
        client: usize,
        module: &str,
        method: &str,
        args: &[Value],
        timeout: Duration,
    ) -> Result<CallId, ClientError> {
        let deadline = self.now() + timeout;
        let result = self.clients[client]
            .core
            .call(module, method, args, Some(deadline));
        let record = match &result {
            Ok(id) => (*id, None),
            Err(e) => (CallId(0), Some(e.clone())),
        };
        self.trace.calls[client].push(record);
        self.drain_events(client);
        result
    }

    /// Replaces client `client`'s fault schedule: the next frames sent to it
    /// get these faults in order, then pass.
    pub fn set_faults(&mut self, client: usize, schedule: Vec<Fault>) {
        self.clients[client].schedule = schedule.into();
    }

    fn drain_events(&mut self, client: usize) -> Vec<ClientEvent> {
        let events: Vec<ClientEvent> =
            std::iter::from_fn(|| self.clients[client].core.poll_event()).collect();
        self.trace.events[client].extend(events.iter().cloned());
        events
    }

    fn enqueue(&mut self, client: usize, frame: HostFrame, delay: Duration) {
        self.seq += 1;
        let at = self.elapsed + delay;
        self.clients[client].in_flight.push(InFlight {
            at,
            seq: self.seq,
            frame,
        });
    }

    fn carry(&mut self, client: usize, frame: HostFrame) {
        self.trace.frames += 1;
        if contains(&frame.encoded(), self.config.secret_marker.as_bytes()) {
            self.trace.marker_leaks += 1;
        }
        let fault = self.clients[client]
            .schedule
            .pop_front()
            .unwrap_or(Fault::Pass);
        let held = self.clients[client].held.take();
        match fault {
            Fault::Pass => self.enqueue(client, frame, Duration::ZERO),
            Fault::Duplicate => {
                self.enqueue(client, frame.clone(), Duration::ZERO);
                self.enqueue(client, frame, Duration::ZERO);
            }
            Fault::Delay(d) => self.enqueue(client, frame, d),
            Fault::Reorder => self.clients[client].held = Some(frame),
            Fault::Drop => {
                let c = &self.clients[client].core;
                self.trace.losses.push(Loss {
                    client,
                    message: frame.into_message(),
                    version_at_loss: c.version(),
                    syncing_at_loss: c.is_syncing(),
                    next_delivery: self.trace.deliveries.len(),
                    next_sent: self.trace.sent.len(),
                });
            }
        }
        // A frame held back for reordering goes right after the next one.
        if let Some(h) = held {
            self.enqueue(client, h, Duration::ZERO);
        }
    }

    fn deliver_due(&mut self, client: usize) -> bool {
        let mut moved = false;
        loop {
            let c = &mut self.clients[client];
            let Some(i) = c
                .in_flight
                .iter()
                .enumerate()
                .filter(|(_, f)| f.at <= self.elapsed)
                .min_by_key(|(_, f)| (f.at, f.seq))
                .map(|(i, _)| i)
            else {
                return moved;
            };
            let frame = c.in_flight.remove(i).frame;
            let version_before = c.core.version();
            let syncing_before = c.core.is_syncing();
            let now = self.t0 + self.elapsed;
            // Taken apart rather than read with `message()`, which would
            // keep a whole copy in a frame the host's history still holds.
            let message = frame.into_message();
            c.core.handle_message(now, message.clone());
            let version_after = c.core.version();
            let events = self.drain_events(client);
            self.trace.deliveries.push(Delivery {
                client,
                message,
                version_before,
                syncing_before,
                events,
                version_after,
            });
            moved = true;
        }
    }

    /// Moves messages until nothing moves: clients' envelopes to the host,
    /// the host's frames into the channels, and due frames to the clients.
    pub fn pump(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.clients.len() {
                if !self.clients[i].connected {
                    continue;
                }
                while let Some(m) = self.clients[i].core.poll_transmit() {
                    if contains(&m.encode_to_vec(), self.config.secret_marker.as_bytes()) {
                        self.trace.marker_leaks += 1;
                    }
                    let peer = self.clients[i].peer;
                    // Refusals are the host's business; the trace shows effects.
                    let _ = self.host.handle_message(peer, m.clone());
                    self.trace.sent.push((i, m));
                    moved = true;
                }
            }
            while let Some(event) = self.host.poll_event() {
                if let HostEvent::Published { version } = event {
                    self.trace.published.push(version);
                }
            }
            for i in 0..self.clients.len() {
                let peer = self.clients[i].peer;
                while let Some(frame) = self.host.poll_transmit(peer) {
                    self.carry(i, frame);
                    moved = true;
                }
            }
            for i in 0..self.clients.len() {
                moved |= self.deliver_due(i);
            }
            if !moved {
                return;
            }
        }
    }

    /// Pumps, lets `d` pass, reports the time to every client whose timer
    /// is due, and pumps again.
    pub fn advance(&mut self, d: Duration) {
        self.pump();
        self.elapsed += d;
        let now = self.now();
        for i in 0..self.clients.len() {
            if self.clients[i]
                .core
                .poll_timeout()
                .is_some_and(|t| t <= now)
            {
                self.clients[i].core.handle_timeout(now);
                self.drain_events(i);
            }
        }
        self.pump();
    }

    /// Client `client`'s connection breaks and is re-established: the host
    /// ends the old session (frames in flight on it are lost), the client
    /// is told, and a new session opens.
    pub fn reconnect(&mut self, client: usize) {
        self.pump();
        let c = &mut self.clients[client];
        self.host.disconnect(c.peer);
        c.in_flight.clear();
        c.held = None;
        c.core.connection_lost();
        c.connected = false;
        self.drain_events(client);
        let now = self.now();
        let c = &mut self.clients[client];
        c.peer = self
            .host
            .connect(PeerOptions {
                peer_id: c.peer_id.clone(),
                publications: true,
            })
            .expect("a session slot was just freed");
        c.core.reconnected(now);
        c.connected = true;
        self.drain_events(client);
        self.pump();
    }

    fn settled(&self) -> bool {
        self.clients.iter().all(|c| {
            !c.core.is_syncing()
                && c.in_flight.is_empty()
                && c.held.is_none()
                && c.core.pending_calls() == 0
                && c.core.version() == Some(self.host.version())
        })
    }

    /// Stops every fault, then brings the system to rest: releases held
    /// frames, asks the host for bookmarks (so a client that lost the last
    /// publication notices), and advances time past sync retries and call
    /// deadlines, pumping, until every client is idle at the host's version
    /// with no pending call.
    ///
    /// # Panics
    /// If the system does not come to rest within `max_rounds` bookmark
    /// rounds: that is a liveness failure of the cores, reported with the
    /// state of every client.
    pub fn quiesce(&mut self, max_rounds: usize) {
        for i in 0..self.clients.len() {
            self.clients[i].schedule.clear();
            if let Some(frame) = self.clients[i].held.take() {
                self.enqueue(i, frame, Duration::ZERO);
            }
        }
        for _ in 0..max_rounds {
            self.pump();
            self.host.bookmark();
            // A bookmark republishes the current version; it is not a commit.
            while self.host.poll_event().is_some() {}
            self.pump();
            if self.settled() {
                return;
            }
            self.advance(self.config.sync_retry + Duration::from_millis(1));
            if self.settled() {
                return;
            }
        }
        let states: Vec<String> = self
            .clients
            .iter()
            .map(|c| {
                format!(
                    "{}: version {:?}, syncing {}, pending {}, in flight {}",
                    c.peer_id,
                    c.core.version(),
                    c.core.is_syncing(),
                    c.core.pending_calls(),
                    c.in_flight.len()
                )
            })
            .collect();
        panic!(
            "no rest after {max_rounds} rounds; host at {}; {}",
            self.host.version(),
            states.join("; ")
        );
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
