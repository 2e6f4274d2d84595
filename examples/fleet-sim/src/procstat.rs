//! Process figures from `/proc` (RSS and CPU time of this or another process) and the
//! open-file limit.

use std::time::Duration;

/// Raises the soft open-file limit to `want` (up to the hard limit; as root the hard limit
/// is raised too, up to `fs.nr_open`). Never lowers it. Returns the soft limit in force
/// afterwards (0 if it cannot be read).
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if want <= lim.rlim_cur {
            return lim.rlim_cur;
        }
        if want > lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return want;
            }
        }
        let new = libc::rlimit {
            rlim_cur: want.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &new) == 0 {
            return new.rlim_cur;
        }
        lim.rlim_cur
    }
}

/// The hard open-file limit of this process (0 if it cannot be read).
pub fn nofile_hard() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    lim.rlim_max
}

/// Resident set size of a process (`self` or a pid) in KiB.
pub fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a `/proc/.../stat` line, and its comm.
fn parse_stat(s: &str) -> Option<(String, u64)> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_owned();
    let rest: Vec<&str> = s[close + 2..].split_whitespace().collect();
    // Fields after ")": state(0) ... utime(11) stime(12).
    let u: u64 = rest.get(11)?.parse().ok()?;
    let st: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, u + st))
}

/// CPU time of a whole process.
pub fn cpu_time(pid: &str) -> Duration {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_stat(&s))
        .map(|(_, t)| Duration::from_secs_f64(t as f64 / ticks_per_sec()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_stat() {
        let s = "12 (tokio worker) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        assert_eq!(super::parse_stat(s), Some(("tokio worker".into(), 300)));
    }
}
