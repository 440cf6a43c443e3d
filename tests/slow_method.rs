//! A method that takes long holds up its own host's sessions (commits are
//! serialised), but not the other tasks or sockets of the runtime the host
//! shares, and not the host's shutdown.

mod common;

use common::{Gate, app_with_gate};

use std::sync::mpsc;
use std::time::Duration;

use cosystem_worker::client::{Client, ClientConfig};
use cosystem_worker::demo;
use cosystem_worker::host::Host;
use cosystem_worker::transport::memory;
use cosystem_worker::wire::ErrorCode;
use serde_json::json;

/// A client of `host` over the in-memory transport, served on `rt`.
fn client_of(rt: &tokio::runtime::Runtime, host: &Host) -> Client {
    served_client_of(rt, host).0
}

/// [`client_of`], with the task serving its session.
fn served_client_of(rt: &tokio::runtime::Runtime, host: &Host) -> (Client, Served) {
    let (link, connector) = memory::pair();
    let host = host.clone();
    let served = rt.spawn(async move { host.serve(link).await });
    let _enter = rt.enter();
    (Client::new(connector, ClientConfig::default()), served)
}

/// Starts `holder`'s call of the gated method and waits until it is inside
/// the gate (holding the host's core); then starts `waiter`'s call, which
/// needs that core too. Both calls' tasks.
fn hold_and_wait(
    rt: &tokio::runtime::Runtime,
    gate: &Gate,
    holder: &Client,
    waiter: &Client,
) -> (Call, Call) {
    let held = rt.spawn({
        let c = holder.clone();
        async move { c.call("slow", "hold", vec![]).await }
    });
    gate.wait_entered();
    let call = {
        let _enter = rt.enter();
        waiter.call("counter", "increase", vec![json!(1)])
    };
    let id = call.id().expect("the call was made");
    let waiting = rt.spawn(call);
    // Sent, the call is the host's to answer: a shutdown then leaves its
    // outcome unknown, where an unsent one would never have run. The
    // watchdog bounds the wait.
    while waiter.call_sent(id) == Some(false) {
        std::thread::sleep(Duration::from_millis(1));
    }
    (held, waiting)
}

/// A client of the gRPC host at `addr`, driven on `rt`.
fn grpc_client_on(rt: &tokio::runtime::Runtime, addr: std::net::SocketAddr) -> Client {
    use cosystem_worker::transport::grpc::GrpcConnector;
    let _enter = rt.enter();
    Client::new(
        GrpcConnector::new(format!("http://{addr}")).unwrap(),
        ClientConfig::default(),
    )
}

/// `host` served over gRPC on loopback, on `rt`.
fn serve_on(rt: &tokio::runtime::Runtime, host: &Host) -> common::ServedGrpc {
    use cosystem_worker::transport::grpc::GrpcServer;
    rt.block_on(common::serve_grpc_on_loopback(GrpcServer::builder(
        host.clone(),
    )))
}

type Call = tokio::task::JoinHandle<Result<serde_json::Value, cosystem_worker::app::MethodError>>;

/// Readies every client.
fn ready(rt: &tokio::runtime::Runtime, clients: &[&Client]) {
    rt.block_on(async {
        for c in clients {
            c.ready().await.unwrap();
        }
    });
}

type Served = tokio::task::JoinHandle<Result<(), cosystem_worker::host::InputError>>;

fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Fails the test instead of hanging it: without the guarantee under test
/// every worker ends up blocked and nothing can time out.
fn watchdog(limit: Duration) -> mpsc::Sender<()> {
    let (done, finished) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(limit) {
            eprintln!("the runtime stopped making progress while a method was held");
            std::process::exit(101);
        }
    });
    done
}

#[test]
fn a_slow_method_holds_up_its_own_host_but_not_other_tasks_on_the_runtime() {
    let done = watchdog(Duration::from_secs(60));
    let rt = two_workers();
    let gate = Gate::default();
    let slow_host = Host::builder(app_with_gate("s", gate.clone())).build();
    let other_host = Host::builder(demo::app("s")).build();
    let holder = client_of(&rt, &slow_host);
    let waiter = client_of(&rt, &slow_host);
    let bystander = client_of(&rt, &other_host);
    ready(&rt, &[&holder, &waiter, &bystander]);
    // One worker runs the held method (holding the host's core), and the
    // session of a second call to that host waits for the core on the other.
    let (held, waiting) = hold_and_wait(&rt, &gate, &holder, &waiter);

    // Another host on the same runtime is still served.
    let answered = rt.block_on(bystander.call("counter", "increase", vec![json!(5)]));
    assert_eq!(answered, Ok(json!(5)));
    assert!(!held.is_finished() && !waiting.is_finished());

    gate.open();
    assert_eq!(rt.block_on(held).unwrap(), Ok(json!(1)));
    assert_eq!(rt.block_on(waiting).unwrap(), Ok(json!(1)));
    let _ = done.send(());
}

#[test]
fn a_shutdown_ends_the_other_in_memory_sessions_while_a_method_still_runs() {
    let done = watchdog(Duration::from_secs(60));
    let rt = two_workers();
    let gate = Gate::default();
    let host = Host::builder(app_with_gate("s", gate.clone())).build();
    let (holder, holder_served) = served_client_of(&rt, &host);
    let (waiter, waiter_served) = served_client_of(&rt, &host);
    let (idle, idle_served) = served_client_of(&rt, &host);
    ready(&rt, &[&holder, &waiter, &idle]);
    // The waiter's session has input it cannot hand to the held core.
    let (held, waiting) = hold_and_wait(&rt, &gate, &holder, &waiter);

    host.shutdown();
    // Both end while the method is still inside the gate: without the
    // guarantee these awaits never return and the watchdog fails the test.
    assert_eq!(rt.block_on(waiter_served).unwrap(), Ok(()));
    assert_eq!(rt.block_on(idle_served).unwrap(), Ok(()));
    assert!(!held.is_finished(), "the method is still held");
    let outcome = rt.block_on(waiting).unwrap();
    assert_eq!(outcome.unwrap_err().code, ErrorCode::OutcomeUnknown);

    // The session running the method ends once it returns, after writing
    // the output it then has: the call's own patch and result.
    gate.open();
    assert_eq!(rt.block_on(holder_served).unwrap(), Ok(()));
    assert_eq!(rt.block_on(held).unwrap(), Ok(json!(1)));
    assert_eq!(host.module_state("slow"), Some(json!({"runs": 1})));
    assert_eq!(host.module_state("counter"), Some(json!({"count": 0})));
    assert_eq!(host.session_count(), 0, "every session was disconnected");
    let _ = done.send(());
}

/// A session whose client stops sending while another session's method
/// holds the core is still answered once the core is free, and then ends.
/// The method is on a private module, so its commit wakes no session: the
/// session must look again by itself, not wait for a wake-up.
#[test]
fn a_session_whose_input_ends_while_the_core_is_held_is_answered_then_ends() {
    use cosystem_worker::transport::{ClientLink, Connector};
    use cosystem_worker::wire::{
        Call, ClientMessage, Header, SyncReason, SyncRequest, client_message, host_message,
    };
    use futures::{SinkExt, StreamExt};

    let done = watchdog(Duration::from_secs(60));
    let rt = two_workers();
    let gate = Gate::default();
    let host = Host::builder(app_with_gate("s", gate.clone()))
        .sections(demo::DEFAULT_SECTIONS)
        .build();
    let holder = client_of(&rt, &host);
    ready(&rt, &[&holder]);
    let held = rt.spawn({
        let c = holder.clone();
        async move { c.call("slow", "hold", vec![]).await }
    });
    gate.wait_entered();

    let (link, connector) = memory::pair();
    let served = rt.spawn({
        let host = host.clone();
        async move { host.serve(link).await }
    });
    let ClientLink { mut sink, stream } = rt.block_on(connector.connect()).unwrap();
    let envelope = |kind| ClientMessage {
        header: Some(Header::v1("", "raw", "")),
        kind: Some(kind),
    };
    rt.block_on(async {
        let sync = SyncRequest {
            sync_id: 1,
            have_version: 0,
            reason: SyncReason::Initial as i32,
        };
        sink.send(envelope(client_message::Kind::SyncRequest(sync)))
            .await
            .unwrap();
        let call = Call {
            call_id: 1,
            module: "counter".into(),
            method: "increase".into(),
            args_json: "[2]".into(),
        };
        sink.send(envelope(client_message::Kind::Call(call)))
            .await
            .unwrap();
    });
    // The input ends while the core is still held.
    drop(sink);
    std::thread::sleep(Duration::from_millis(50));
    assert!(!served.is_finished(), "the session still owes its answers");

    gate.open();
    let answers: Vec<_> = rt.block_on(
        stream
            .map(|m| m.unwrap().into_message().unwrap().kind)
            .collect(),
    );
    assert!(
        matches!(answers.first(), Some(Some(host_message::Kind::Snapshot(_)))),
        "{answers:?}"
    );
    let result = answers.iter().find_map(|kind| match kind {
        Some(host_message::Kind::Result(r)) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(result.map(|r| r.call_id), Some(1), "{answers:?}");
    assert_eq!(rt.block_on(served).unwrap(), Ok(()));
    assert_eq!(rt.block_on(held).unwrap(), Ok(json!(1)));
    assert_eq!(host.module_state("counter"), Some(json!({"count": 2})));
    let _ = done.send(());
}

/// Sockets need the runtime's I/O driver, which a worker blocked in a
/// method can leave unpolled while the other workers sleep (tokio issue
/// 4730): with four workers, gRPC calls to another host on the same
/// runtime never arrived. The method runs off the scheduler, so they do.
#[test]
fn a_slow_method_holds_up_no_socket_of_its_runtime() {
    let done = watchdog(Duration::from_secs(60));
    for workers in [2, 4, 8] {
        let servers = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap();
        let gate = Gate::default();
        let slow_host = Host::builder(app_with_gate("s", gate.clone())).build();
        let other_host = Host::builder(demo::app("s")).build();
        // Used first on another runtime, since shut down: the runtime that
        // serves it now is guarded all the same.
        let earlier = two_workers();
        earlier
            .block_on(async { slow_host.invoke("counter", "increase", &[json!(1)]) })
            .unwrap();
        drop(earlier);
        let slow = serve_on(&servers, &slow_host);
        let other = serve_on(&servers, &other_host);
        let clients = two_workers();
        let grpc_client = |addr| grpc_client_on(&clients, addr);
        let holder = grpc_client(slow.addr);
        let bystander = grpc_client(other.addr);
        ready(&clients, &[&holder, &bystander]);
        let held = clients.spawn({
            let c = holder.clone();
            async move { c.call("slow", "hold", vec![]).await }
        });
        gate.wait_entered();
        for i in 1..=3 {
            let answered = clients.block_on(bystander.call("counter", "increase", vec![json!(1)]));
            assert_eq!(answered, Ok(json!(i)), "{workers} workers");
        }
        assert!(!held.is_finished());
        gate.open();
        assert_eq!(clients.block_on(held).unwrap(), Ok(json!(1)));
        drop((slow, other));
        drop(servers);
    }
    let _ = done.send(());
}

/// Sessions whose input waits for a core that a slow method holds wait
/// asleep, not each blocking a thread: with more of them than the runtime
/// has threads to spare (two workers, four blocking threads), another host
/// on the same runtime is still served, and every waiting call is answered
/// once the method returns. Blocking, the waiters would take every thread
/// and the watchdog would fail the test.
#[test]
fn grpc_sessions_waiting_on_a_slow_method_take_no_thread_each() {
    const WAITERS: usize = 16;
    let done = watchdog(Duration::from_secs(60));
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let gate = Gate::default();
    let slow_host = Host::builder(app_with_gate("s", gate.clone())).build();
    let other_host = Host::builder(demo::app("s")).build();
    let slow = serve_on(&servers, &slow_host);
    let other = serve_on(&servers, &other_host);
    let clients = two_workers();
    let grpc_client = |addr| grpc_client_on(&clients, addr);
    let holder = grpc_client(slow.addr);
    let waiters: Vec<Client> = (0..WAITERS).map(|_| grpc_client(slow.addr)).collect();
    let bystander = grpc_client(other.addr);
    let mut everyone: Vec<&Client> = waiters.iter().collect();
    everyone.extend([&holder, &bystander]);
    ready(&clients, &everyone);

    let held = clients.spawn({
        let c = holder.clone();
        async move { c.call("slow", "hold", vec![]).await }
    });
    gate.wait_entered();
    let waiting: Vec<Call> = waiters
        .iter()
        .map(|c| {
            let c = c.clone();
            clients.spawn(async move { c.call("counter", "increase", vec![json!(1)]).await })
        })
        .collect();
    // Time for the calls to reach the host over loopback; any still on the
    // way make the test check less, never fail.
    std::thread::sleep(Duration::from_millis(200));
    for i in 1..=3 {
        let answered = clients.block_on(bystander.call("counter", "increase", vec![json!(1)]));
        assert_eq!(answered, Ok(json!(i)));
    }
    assert!(!held.is_finished());

    gate.open();
    assert_eq!(clients.block_on(held).unwrap(), Ok(json!(1)));
    let mut counts: Vec<i64> = waiting
        .into_iter()
        .map(|call| {
            let answer = clients.block_on(call).unwrap().unwrap();
            answer.as_i64().unwrap()
        })
        .collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=WAITERS as i64).collect::<Vec<_>>());
    drop((slow, other));
    drop(servers);
    let _ = done.send(());
}
