//! The process's open-file limit, which bounds the connections a host can
//! hold: each takes a descriptor, and the common default soft limit (1024)
//! is far below the host's connection and session limits. Raised to the
//! hard limit at start, as Go's runtime does, so that the host's own
//! limits are the ones that bind.

/// The limit the soft limit is raised to when the hard limit is unlimited:
/// some kernels refuse an unlimited soft limit for descriptors.
#[cfg(unix)]
const CEILING: u64 = 1 << 20;

/// The largest soft limit some systems accept whatever the hard limit is.
#[cfg(unix)]
const OPEN_MAX: u64 = 10_240;

/// Raises the soft open-file limit to the hard one and returns the limit
/// now in force (`None` where it is unlimited or there is none). Never
/// lowers it.
#[cfg(unix)]
pub fn raise() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(CEILING);
    // Unlimited already: nothing to raise, nothing to warn about.
    let soft = limit.current?;
    if soft < hard {
        let raised = Rlimit {
            current: Some(hard),
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::debug!(from = soft, to = hard, "raised the open-file limit");
                return Some(hard);
            }
            // macOS refuses soft limits above its per-process maximum
            // (OPEN_MAX, 10240), whatever the hard limit says.
            Err(error) if soft < OPEN_MAX && hard > OPEN_MAX => {
                let fallback = Rlimit {
                    current: Some(OPEN_MAX),
                    maximum: limit.maximum,
                };
                if setrlimit(Resource::Nofile, fallback).is_ok() {
                    return Some(OPEN_MAX);
                }
                tracing::debug!(%error, soft, hard, "cannot raise the open-file limit");
            }
            Err(error) => tracing::debug!(%error, soft, hard, "cannot raise the open-file limit"),
        }
    }
    Some(soft)
}

/// No descriptor limit to raise here.
#[cfg(not(unix))]
pub fn raise() -> Option<u64> {
    None
}

/// Warns when `limit` descriptors cannot hold `wanted` connections (the
/// value of `flag` in force) and the process's own few files: accepts would
/// then fail with "too many open files" before the host's own limit binds.
pub fn warn_if_short(limit: Option<u64>, wanted: usize, flag: &str) {
    const HEADROOM: u64 = 64;
    let wanted = u64::try_from(wanted).unwrap_or(u64::MAX);
    if let Some(limit) = limit
        && limit < wanted.saturating_add(HEADROOM)
    {
        tracing::warn!(
            open_files = limit,
            wanted,
            "the open-file limit leaves too little room for {flag} ({wanted}): connections past it fail with \"too many open files\"; raise `ulimit -n` or lower {flag}"
        );
    }
}
