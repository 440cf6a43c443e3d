//! The adapters running now, so that a runner stopped by a signal (an
//! operator's Ctrl-C, a CI job cancelled) does not leave them running. Each
//! adapter has a process group of its own, which a terminal's Ctrl-C does
//! not reach and which outlives the runner unless the runner kills it.

use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};

/// The process group of every adapter started and not yet reaped.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<u32>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts `command`, which must make a process group of its own, and
/// records the group. Both happen under one lock, so that a signal
/// handled meanwhile either sees the group or comes before it exists.
pub(crate) fn spawn(command: &mut Command) -> std::io::Result<Child> {
    let mut live = live();
    let child = command.spawn()?;
    live.push(child.id());
    Ok(child)
}

/// Forgets the group of `child`, once it has been killed and before it is
/// reaped: after reaping, its id may be another process's.
pub(crate) fn forget(child: &Child) {
    live().retain(|id| *id != child.id());
}

/// Held while a report file is written, so that a signal does not end the
/// runner with the file half written.
pub fn writing_reports() -> MutexGuard<'static, ()> {
    static REPORTS: Mutex<()> = Mutex::new(());
    REPORTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills process group `id` (no-op off Unix). By a system call: a `kill`
/// program is missing from slim images (procps) and a shell from
/// distroless ones, and without either a wrapper's children would outlive
/// the run.
pub(crate) fn kill(id: u32) {
    #[cfg(unix)]
    if let Some(group) = i32::try_from(id)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
    #[cfg(not(unix))]
    let _ = id;
}

/// From now on, SIGINT, SIGTERM and SIGHUP kill every adapter's group and
/// end the runner with the shell's status for that signal (130, 143, 129),
/// once no report file is being written ([`writing_reports`]). SIGINT and
/// SIGHUP are left alone where the runner was started ignoring them
/// (`nohup`, a script's background job), and SIGHUP off Linux, where that
/// cannot be told. Call once, early; without it such a signal ends the
/// runner and leaves a hung adapter running. Does nothing off Unix.
pub fn kill_adapters_on_signal() {
    #[cfg(unix)]
    if let Err(error) = watch() {
        eprintln!(
            "cosystem-conformance: cannot watch for signals ({error}); a signal will leave adapters running"
        );
    }
}

#[cfg(unix)]
fn watch() -> std::io::Result<()> {
    use cosystem_worker::inherited_signals::{SIGHUP, SIGINT, is_ignored};
    use tokio::signal::unix::{Signal, SignalKind, signal};
    // Where the kernel does not say, Ctrl-C is handled and SIGHUP left
    // alone, as the host does.
    let listen = |ignored: bool, kind| -> std::io::Result<Option<Signal>> {
        if ignored {
            Ok(None)
        } else {
            signal(kind).map(Some)
        }
    };
    async fn recv(signal: &mut Option<Signal>) {
        match signal {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    // Listened for before this returns, so that no signal after it takes
    // the default action.
    let (mut interrupt, mut terminate, mut hangup) = {
        let _entered = runtime.enter();
        (
            listen(is_ignored(SIGINT).unwrap_or(false), SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            listen(is_ignored(SIGHUP).unwrap_or(true), SignalKind::hangup())?,
        )
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let code = runtime.block_on(async {
                tokio::select! {
                    () = recv(&mut interrupt) => 130,
                    _ = terminate.recv() => 143,
                    () = recv(&mut hangup) => 129,
                }
            });
            // A report being written is finished first: cut off, it would
            // replace the placeholder that says the run did not finish.
            let _reports = writing_reports();
            // Held until the exit: no adapter starts after the kill.
            let live = live();
            for id in live.iter() {
                kill(*id);
            }
            eprintln!(
                "cosystem-conformance: stopped by a signal; killed {} adapter(s)",
                live.len()
            );
            std::process::exit(code);
        })?;
    Ok(())
}
