//! A client without a host: a link the host closes without a word (a host
//! refusing the session) is retried with the same growing backoff as a
//! failed connect, a link the host spoke on resets it, and call deadlines
//! run out while no link is up. Time is tokio's paused clock, so the counts
//! are exact and the tests take no real time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::EndingLinks;
use cosystem_worker::client::{CallOptions, Client, ClientConfig, Reconnect};
use cosystem_worker::transport::{ClientLink, Connector, TransportError};
use cosystem_worker::wire::ErrorCode;
use futures::FutureExt;
use futures::future::BoxFuture;

/// Connects made in `seconds` by a client whose links each carry `says`
/// host envelopes and end `lasts` after they open.
async fn connects_in(seconds: u64, says: usize, lasts: Duration) -> usize {
    let connects = Arc::new(AtomicUsize::new(0));
    let connector = EndingLinks {
        says,
        lasts,
        connects: connects.clone(),
    };
    let policy = Reconnect {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(5),
        // The waits are checked exactly.
        jitter: false,
    };
    let client = Client::with_reconnect(connector, ClientConfig::default(), policy);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    client.dispose();
    connects.load(Ordering::SeqCst)
}

#[tokio::test(start_paused = true)]
async fn a_link_closed_before_the_host_says_anything_backs_off_like_a_failed_connect() {
    // Waits of 50 ms doubling to 5 s: connects at 0, 0.05, 0.15, 0.35, 0.75,
    // 1.55, 3.15 and 6.35 s.
    assert_eq!(connects_in(10, 0, Duration::ZERO).await, 8);
}

#[tokio::test(start_paused = true)]
async fn a_link_the_host_speaks_on_and_then_ends_at_once_backs_off_too() {
    // A host that says one thing and closes would otherwise be reconnected
    // to every 50 ms (and, spawned, restarted 20 times a second).
    assert_eq!(connects_in(10, 1, Duration::ZERO).await, 8);
}

#[tokio::test(start_paused = true)]
async fn a_link_the_host_spoke_on_that_stayed_up_resets_the_backoff() {
    // Links of 6 s, each followed by the initial 50 ms wait: connects at 0,
    // 6.05, 12.1, … 54.45 s. Without the reset the waits would grow from
    // 50 ms to 5 s, and fewer would fit in the minute.
    assert_eq!(connects_in(60, 1, Duration::from_secs(6)).await, 10);
}

/// A host that never answers: every connect is refused, and retried.
struct Unreachable;

impl Connector for Unreachable {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        async { Err(TransportError::Connection("connection refused".into())) }.boxed()
    }
}

/// Records when each connect is attempted, on tokio's clock; every one is
/// refused.
struct TimedUnreachable {
    start: tokio::time::Instant,
    attempts: Arc<Mutex<Vec<Duration>>>,
}

impl Connector for TimedUnreachable {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        if let Ok(mut attempts) = self.attempts.lock() {
            attempts.push(self.start.elapsed());
        }
        Unreachable.connect()
    }
}

/// On a paused clock, which advances only while every task waits: a client
/// retrying in a tight loop would never let it advance, so the client runs
/// on a thread of its own and the test fails if that thread has not
/// finished within 30 s of real time.
#[test]
fn a_zero_backoff_still_waits_between_attempts() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime");
        let attempts = rt.block_on(async {
            let attempts = Arc::new(Mutex::new(Vec::new()));
            let connector = TimedUnreachable {
                start: tokio::time::Instant::now(),
                attempts: attempts.clone(),
            };
            let policy = Reconnect {
                initial: Duration::ZERO,
                max: Duration::from_millis(4),
                jitter: false,
            };
            let client = Client::with_reconnect(connector, ClientConfig::default(), policy);
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.dispose();
            attempts.lock().map(|a| a.clone()).unwrap_or_default()
        });
        let _ = done.send(attempts);
    });
    let attempts = finished
        .recv_timeout(Duration::from_secs(30))
        .expect("the client retried without waiting, so the paused clock never advanced");
    // The initial wait of zero, then waits doubling from the 1 ms floor to
    // the 4 ms max. Doubling zero without a floor would retry at 0 for ever.
    let ms = |ms| Duration::from_millis(ms);
    assert_eq!(
        attempts,
        [ms(0), ms(0), ms(1), ms(3), ms(7), ms(11), ms(15), ms(19)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_times_out_while_the_host_is_unreachable() {
    let client = Client::new(Unreachable, ClientConfig::default());
    let started = tokio::time::Instant::now();
    let options = CallOptions {
        timeout: Some(Duration::from_secs(1)),
    };
    let outcome = client
        .call_with("counter", "increase", vec![serde_json::json!(1)], options)
        .await;
    assert_eq!(outcome.unwrap_err().code, ErrorCode::DeadlineExceeded);
    // Settled by its own deadline, not by a later connect attempt.
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

/// The client's `call_timeout` is the deadline of every call made without
/// one of its own, typed calls included; a call's own timeout wins.
#[tokio::test(start_paused = true)]
async fn the_configured_call_timeout_bounds_calls_without_their_own() {
    let config = ClientConfig {
        call_timeout: Some(Duration::from_secs(3)),
        ..ClientConfig::default()
    };
    let client = Client::new(Unreachable, config);
    let started = tokio::time::Instant::now();
    let outcome = client
        .call("counter", "increase", vec![serde_json::json!(1)])
        .await;
    assert_eq!(outcome.unwrap_err().code, ErrorCode::DeadlineExceeded);
    assert_eq!(started.elapsed(), Duration::from_secs(3));

    let started = tokio::time::Instant::now();
    let typed: Result<i64, _> = client.module("counter").call_as("increase", (1,)).await;
    assert_eq!(
        typed.unwrap_err().method_error().map(|e| e.code),
        Some(ErrorCode::DeadlineExceeded)
    );
    assert_eq!(started.elapsed(), Duration::from_secs(3));

    let started = tokio::time::Instant::now();
    let own = CallOptions {
        timeout: Some(Duration::from_secs(1)),
    };
    let typed: Result<i64, _> = client
        .module("counter")
        .call_as_with("increase", (1,), own)
        .await;
    assert_eq!(
        typed.unwrap_err().method_error().map(|e| e.code),
        Some(ErrorCode::DeadlineExceeded)
    );
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}
