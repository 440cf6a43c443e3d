//! Ctrl-C, SIGTERM and SIGHUP for the host, listened for from the moment
//! [`ShutdownSignals`] is made. A listener made at each wait would miss a
//! signal that arrives between two waits (an operator's second Ctrl-C) or
//! before the first one (the default action would kill the process).

/// The signals that stop the host.
pub struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    /// A closed terminal or a lost SSH session: left to its default action
    /// (which ends the process at once) it would cut every client off
    /// without the graceful stop.
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
    /// Whether SIGHUP still stops the host: only the first signal may be
    /// one. Closing a terminal sends two (the shell forwards one, and the
    /// kernel sends the foreground job another), which must not read as an
    /// operator asking twice.
    #[cfg(unix)]
    hangup_stops: bool,
}

impl ShutdownSignals {
    /// Starts listening for Ctrl-C, and on Unix for SIGTERM and SIGHUP.
    /// Ctrl-C and SIGHUP are left alone where the host was started
    /// ignoring them ([`inherited_signals`]), as `nohup` and a script's
    /// background job start it, and SIGHUP off Linux, where that cannot be
    /// told. Needs the tokio runtime.
    ///
    /// [`inherited_signals`]: cosystem_worker::inherited_signals
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            use cosystem_worker::inherited_signals::{SIGHUP, SIGINT, is_ignored};
            use tokio::signal::unix::{SignalKind, signal};
            // Where the kernel does not say, Ctrl-C is handled, as an
            // operator at a terminal expects, and SIGHUP is left alone:
            // handling it might undo a `nohup`.
            let listen = |ignored: bool, kind| (!ignored).then(|| signal(kind).ok()).flatten();
            Self {
                interrupt: listen(is_ignored(SIGINT).unwrap_or(false), SignalKind::interrupt()),
                terminate: signal(SignalKind::terminate()).ok(),
                hangup: listen(is_ignored(SIGHUP).unwrap_or(true), SignalKind::hangup()),
                hangup_stops: true,
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves at the next Ctrl-C or SIGTERM received since the last one,
    /// or at a SIGHUP if no signal came before.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(signal: &mut Option<tokio::signal::unix::Signal>, listen: bool) {
                match signal {
                    Some(signal) if listen => {
                        signal.recv().await;
                    }
                    _ => std::future::pending().await,
                }
            }
            let Self {
                interrupt,
                terminate,
                hangup,
                hangup_stops,
            } = self;
            tokio::select! {
                _ = recv(interrupt, true) => tracing::info!("interrupted; shutting down"),
                _ = recv(terminate, true) => tracing::info!("terminated; shutting down"),
                _ = recv(hangup, *hangup_stops) => tracing::info!("hung up; shutting down"),
            }
            // Still registered, so later hang-ups are caught and dropped.
            *hangup_stops = false;
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            tracing::info!("interrupted; shutting down");
        }
    }
}
