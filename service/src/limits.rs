//! Process limits: the open-file (descriptor) budget every listener is sized from.
//!
//! `hammer serve` and `hammer broker` raise the soft `RLIMIT_NOFILE` to the hard limit on
//! start ([`raise_nofile`]): each HTTP connection, each device's MQTT connection and each
//! file of the store uses a descriptor, and the common default soft limit (1,024) is what a
//! flood of half-sent requests used up before the caps of [`crate::http`] existed.

/// Descriptors kept aside for the store, the CA files, logs and the runtime itself.
pub const RESERVED_DESCRIPTORS: u64 = 128;

/// The largest default connection cap of one HTTP listener.
pub const MAX_HTTP_CONNECTIONS: usize = 1024;

/// The smallest default connection cap of one HTTP listener.
pub const MIN_HTTP_CONNECTIONS: usize = 16;

/// The current soft limit on open files, when the platform has one.
// `rlim_t` is not `u64` on every platform.
#[allow(clippy::unnecessary_cast)]
pub fn nofile_soft() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            return Some(lim.rlim_cur as u64);
        }
        None
    }
    #[cfg(not(unix))]
    None
}

/// Raises the soft open-file limit to the hard limit and returns the new soft limit (the old
/// one when it cannot be raised; the reason is logged).
#[allow(clippy::unnecessary_cast)]
pub fn raise_nofile() -> std::io::Result<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur >= lim.rlim_max {
            return Ok(lim.rlim_cur as u64);
        }
        let old = lim.rlim_cur;
        let mut want = lim.rlim_max;
        // macOS refuses more than OPEN_MAX for the soft limit even when the hard one is
        // unlimited.
        #[cfg(target_os = "macos")]
        {
            want = want.min(libc::OPEN_MAX as libc::rlim_t);
        }
        let new = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass; raising the soft limit up to the hard
        // one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            let e = std::io::Error::last_os_error();
            tracing::warn!(soft = old as u64, hard = lim.rlim_max as u64, error = %e, "cannot raise the open-file limit; connection caps are sized from the current one");
            return Ok(old as u64);
        }
        want = want.max(old);
        Ok(want as u64)
    }
    #[cfg(not(unix))]
    Ok(u64::MAX)
}

/// The default connection cap of one HTTP listener for a soft open-file limit of `nofile`:
/// a quarter of what is left after [`RESERVED_DESCRIPTORS`] (the broker's device connections
/// need the rest), between [`MIN_HTTP_CONNECTIONS`] and [`MAX_HTTP_CONNECTIONS`].
pub fn http_connection_cap(nofile: u64) -> usize {
    let quarter = nofile.saturating_sub(RESERVED_DESCRIPTORS) / 4;
    usize::try_from(quarter)
        .unwrap_or(usize::MAX)
        .clamp(MIN_HTTP_CONNECTIONS, MAX_HTTP_CONNECTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_cap_is_a_quarter_of_the_budget_within_bounds() {
        assert_eq!(http_connection_cap(1024), (1024 - 128) / 4);
        assert_eq!(http_connection_cap(1_048_576), MAX_HTTP_CONNECTIONS);
        assert_eq!(http_connection_cap(100), MIN_HTTP_CONNECTIONS);
        assert_eq!(http_connection_cap(u64::MAX), MAX_HTTP_CONNECTIONS);
    }

    #[test]
    fn raising_never_lowers_the_soft_limit() {
        let before = nofile_soft().unwrap_or(0);
        let after = raise_nofile().unwrap_or(before);
        assert!(after >= before, "{after} < {before}");
    }
}
