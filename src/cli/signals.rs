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
    /// without the graceful stop. `None` where it was ignored when the
    /// host started, as `nohup` leaves it: that must go on holding.
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    /// Starts listening for Ctrl-C and (on Unix) SIGTERM, and SIGHUP unless
    /// it is ignored ([`hangup_ignored`]). Needs the tokio runtime.
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
                hangup: if hangup_ignored() {
                    None
                } else {
                    signal(SignalKind::hangup()).ok()
                },
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves at the next Ctrl-C, SIGTERM or SIGHUP received since the
    /// last one.
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
                hangup,
            } = self;
            tokio::select! {
                _ = recv(interrupt) => tracing::info!("interrupted; shutting down"),
                _ = recv(terminate) => tracing::info!("terminated; shutting down"),
                _ = recv(hangup) => tracing::info!("hung up; shutting down"),
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

/// Whether SIGHUP was ignored when the host started, as `nohup` leaves it:
/// read from the kernel's mask of ignored signals on Linux. Where that
/// cannot be read, it is taken as ignored, so that SIGHUP keeps whatever
/// action the host was started with.
#[cfg(unix)]
fn hangup_ignored() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| ignored_mask(&status))
        .is_none_or(|mask| mask & 1 != 0)
}

/// The `SigIgn` mask of a `/proc/PID/status` text: bit N-1 is signal N.
#[cfg(unix)]
fn ignored_mask(status: &str) -> Option<u64> {
    let mask = status.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
    u64::from_str_radix(mask.trim(), 16).ok()
}

#[cfg(all(test, unix))]
mod tests {
    use super::ignored_mask;

    #[test]
    fn the_ignored_mask_is_read_from_the_status_text() {
        let status = "Name:\tcosystem-worker\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000001001\nSigCgt:\t0\n";
        assert_eq!(ignored_mask(status), Some(0x1001));
        assert_eq!(ignored_mask("Name:\tx\n"), None);
        assert_eq!(ignored_mask("SigIgn:\tzz\n"), None);
    }
}
