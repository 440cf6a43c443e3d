//! Host and client cores wired back to back, with no runtime.

use std::time::Instant;

use cosystem_worker::client::{ClientConfig, ClientCore, ClientEvent};
use cosystem_worker::demo;
use cosystem_worker::host::{HostConfig, HostCore, PeerOptions, SyncMode};
use serde_json::json;

fn pump(
    host: &mut HostCore,
    peer: cosystem_worker::host::PeerKey,
    client: &mut ClientCore,
    now: Instant,
) {
    loop {
        let mut moved = false;
        while let Some(m) = client.poll_transmit() {
            host.handle_message(peer, m).unwrap();
            moved = true;
        }
        while let Some(f) = host.poll_transmit(peer) {
            client.handle_message(now, f.message().clone());
            moved = true;
        }
        if !moved {
            break;
        }
    }
}

#[test]
fn patch_mode_call_settles_after_mirror_catches_up() {
    let now = Instant::now();
    let config = HostConfig {
        sync: SyncMode::Patch,
        sections: Some(demo::default_sections()),
        ..Default::default()
    };
    let mut host = HostCore::new(config, demo::app("s3cr3t"), "e1");
    let peer = host
        .connect(PeerOptions {
            peer_id: "c1".into(),
            publications: true,
        })
        .unwrap();
    let mut client = ClientCore::new(
        ClientConfig {
            peer_id: "c1".into(),
            ..Default::default()
        },
        now,
    );
    pump(&mut host, peer, &mut client, now);
    assert_eq!(
        client.state(),
        Some(&json!({"counter": {"count": 0}, "todos": {"items": []}}))
    );
    let id = client
        .call("counter", "increase", &[json!(2)], None)
        .unwrap();
    client
        .call("todos", "add_many", &[json!(["a", "b"])], None)
        .unwrap();
    pump(&mut host, peer, &mut client, now);
    let events: Vec<_> = std::iter::from_fn(|| client.poll_event()).collect();
    assert!(events.iter().any(|e| matches!(e, ClientEvent::Settled { call, outcome: Ok(v), state_version: Some(2), sent: true } if *call == id && *v == json!(2))), "{events:#?}");
    assert_eq!(client.version(), Some(3));
    assert_eq!(
        client.state().unwrap()["todos"]["items"][1],
        json!({"id": 2, "text": "b", "done": false})
    );
    assert_eq!(client.state(), Some(&host.view()));
}
