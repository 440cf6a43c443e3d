//! The metrics endpoint keeps answering scrapers while peers hold its
//! connections without asking anything.

use cosystem_worker::demo;
use cosystem_worker::host::Host;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// More than the endpoint holds at once.
const SILENT: usize = 24;

#[tokio::test]
async fn silent_connections_make_way_for_a_scrape() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let host = Host::builder(demo::app("s")).build();
    tokio::spawn(cosystem_worker::metrics_server::serve(listener, host, None));
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut scrape = TcpStream::connect(addr).await.unwrap();
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        scrape.read_to_string(&mut answer),
    );
    read.await.expect("the scrape was answered").unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("cosystem_worker_"), "{answer}");
    // The oldest silent connection was the one closed to make room.
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        silent[0].read(&mut byte),
    );
    assert_eq!(closed.await.expect("the oldest was closed").unwrap(), 0);
    // ... and not the newest: it is still open, with nothing to read (only
    // the 10 s header timeout would close it, long after this).
    let newest = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        silent[SILENT - 1].read(&mut byte),
    );
    assert!(
        newest.await.is_err(),
        "the newest silent connection was closed"
    );
}
