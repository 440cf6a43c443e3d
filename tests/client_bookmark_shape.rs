//! PC4 (spec §7.2): a patch whose version equals its base (the shape of a
//! bookmark) must carry no operations; one that does fails like any other
//! patch that cannot be applied.

use std::time::Instant;

use cosystem_worker::client::{ClientConfig, ClientCore, ClientEvent, ConflictReason};
use cosystem_worker::wire::{
    Header, HostMessage, Patch, Snapshot, SnapshotReason, SyncRequest, client_message, host_message,
};

fn patch(base: u64, version: u64, ops: &str) -> HostMessage {
    HostMessage {
        header: Some(Header::v1("e1", "h", "")),
        kind: Some(host_message::Kind::Patch(Patch {
            base_version: base,
            version,
            patch_json: ops.into(),
            sync_id: 0,
        })),
    }
}

fn synced_client(now: Instant) -> ClientCore {
    let mut c = ClientCore::new(ClientConfig::default(), now);
    c.handle_message(
        now,
        HostMessage {
            header: Some(Header::v1("e1", "h", "")),
            kind: Some(host_message::Kind::Snapshot(Snapshot {
                version: 1,
                state_json: r#"{"counter":{"count":0}}"#.into(),
                sync_id: 0,
                reason: SnapshotReason::Commit as i32,
            })),
        },
    );
    while c.poll_transmit().is_some() {}
    while c.poll_event().is_some() {}
    c
}

#[test]
fn bookmark_shaped_patch_with_operations_fails_and_keeps_the_mirror() {
    let now = Instant::now();
    let mut c = synced_client(now);
    let before = c.state().cloned();
    c.handle_message(
        now,
        patch(
            1,
            1,
            r#"[{"op":"replace","path":"/counter/count","value":9}]"#,
        ),
    );
    assert_eq!(c.state().cloned(), before);
    assert_eq!(c.version(), Some(1), "the version stays too");
    assert!(std::iter::from_fn(|| c.poll_event()).any(|e| matches!(
        e,
        ClientEvent::Conflict(c) if c.reason == ConflictReason::PatchApplyFailed
    )));
    assert!(
        c.is_syncing(),
        "the failure is healed with a snapshot request"
    );
    let resync = c.poll_transmit().expect("the client asks to resync");
    assert!(
        matches!(
            resync.kind,
            Some(client_message::Kind::SyncRequest(SyncRequest {
                have_version: 0,
                ..
            }))
        ),
        "{resync:?}"
    );
}

#[test]
fn empty_bookmark_with_whitespace_is_still_a_bookmark() {
    let now = Instant::now();
    let mut c = synced_client(now);
    c.handle_message(now, patch(1, 1, " [ ] "));
    assert_eq!(std::iter::from_fn(|| c.poll_event()).count(), 0);
    assert!(!c.is_syncing());
}
