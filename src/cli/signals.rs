//! Ctrl-C and SIGTERM for the host, listened for from the moment
//! [`ShutdownSignals`] is made. A listener made at each wait would miss a
//! signal that arrives between two waits (an operator's second Ctrl-C) or
//! before the first one (the default action would kill the process).

/// The signals that stop the host.
pub struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    /// Starts listening for Ctrl-C and (on Unix) SIGTERM. Needs the tokio
    /// runtime.
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves at the next Ctrl-C or SIGTERM received since the last one.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            let Self {
                interrupt,
                terminate,
            } = self;
            tokio::select! {
                _ = recv(interrupt) => tracing::info!("interrupted; shutting down"),
                _ = recv(terminate) => tracing::info!("terminated; shutting down"),
            }
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
