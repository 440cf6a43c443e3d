//! Which signals a process was left ignoring by whoever started it, for
//! the crate's programs (`cosystem-worker host`, the conformance runner):
//! `nohup` leaves SIGHUP ignored, and a shell's background job SIGINT. A
//! program that installs a handler for such a signal undoes that, so it
//! asks here first.

/// SIGINT's number.
pub const SIGINT: u32 = 2;

/// SIGHUP's number.
pub const SIGHUP: u32 = 1;

/// Whether this process ignores signal number `signal` (1 to 64) now,
/// read from Linux's `/proc/self/status` (its `SigIgn` mask); `None` where
/// that cannot be read (another system) or `signal` is out of range. A
/// caller decides what not knowing means: the host still handles Ctrl-C,
/// which a terminal user expects, but leaves SIGHUP alone.
pub fn is_ignored(signal: u32) -> Option<bool> {
    let bit = signal.checked_sub(1).filter(|bit| *bit < 64)?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    ignored_mask(&status).map(|mask| mask & (1 << bit) != 0)
}

/// The `SigIgn` mask of a `/proc/PID/status` text: bit N-1 is signal N.
fn ignored_mask(status: &str) -> Option<u64> {
    let mask = status.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
    u64::from_str_radix(mask.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::ignored_mask;

    #[test]
    fn the_ignored_mask_is_read_from_the_status_text() {
        let status = "Name:\tcosystem-worker\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000001001\nSigCgt:\t0\n";
        assert_eq!(ignored_mask(status), Some(0x1001));
        assert_eq!(ignored_mask("Name:\tx\n"), None);
        assert_eq!(ignored_mask("SigIgn:\tzz\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_signal_this_process_handles_by_default_is_not_ignored() {
        // The test harness leaves SIGTERM at its default action.
        assert_eq!(super::is_ignored(15), Some(false));
        assert_eq!(super::is_ignored(0), None);
        assert_eq!(super::is_ignored(65), None);
    }
}
