//! `counter.increase(1)` through the sans-IO `HostCore` and `ClientCore` by
//! hand, N times (default 20,000), with no transport, runtime or clock
//! reads beyond one: the protocol's own work per call, for profilers.
//!
//! `valgrind --tool=callgrind target/release/examples/core_profile 20000`
//! counts the instructions per call; `benches/README.md` records them.

use std::time::Instant;

use cosystem_worker::client::{ClientConfig, ClientCore, ClientEvent};
use cosystem_worker::demo;
use cosystem_worker::host::{HostConfig, HostCore, PeerOptions, SyncMode};
use prost::Message;

fn main() {
    let calls: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let config = HostConfig {
        sync: SyncMode::Patch,
        sections: Some(
            demo::DEFAULT_SECTIONS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        ),
        ..HostConfig::default()
    };
    let mut host = HostCore::new(
        config,
        demo::app("profile"),
        "00112233445566778899aabbccddeeff",
    );
    let Ok(peer) = host.connect(PeerOptions {
        peer_id: "client".into(),
        publications: true,
    }) else {
        eprintln!("the host refused a session");
        std::process::exit(1);
    };
    let now = Instant::now();
    let mut client = ClientCore::new(ClientConfig::default(), now);
    let args = [serde_json::json!(1)];
    let mut settled = 0u64;
    let mut exchange = |client: &mut ClientCore, host: &mut HostCore| {
        while let Some(message) = client.poll_transmit() {
            if let Err(error) = host.handle_bytes(peer, &message.encode_to_vec()) {
                eprintln!("the host refused the client's envelope: {error}");
                std::process::exit(1);
            }
        }
        while let Some(frame) = host.poll_transmit(peer) {
            if let Err(error) = client.handle_bytes(now, &frame.encoded()) {
                eprintln!("the client refused the host's envelope: {error}");
                std::process::exit(1);
            }
        }
        while let Some(event) = client.poll_event() {
            if matches!(event, ClientEvent::Settled { outcome: Ok(_), .. }) {
                settled += 1;
            }
        }
    };
    exchange(&mut client, &mut host);
    for _ in 0..calls {
        if let Err(error) = client.call("counter", "increase", &args, None) {
            eprintln!("the client refused the call: {error}");
            std::process::exit(1);
        }
        exchange(&mut client, &mut host);
    }
    let elapsed = now.elapsed();
    println!(
        "{settled} calls settled, {:.0} ns per call",
        elapsed.as_nanos() as f64 / calls.max(1) as f64
    );
}
