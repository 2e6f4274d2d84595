//! What the benchmark reads from /proc about a process: memory, threads, CPU time, context
//! switches, and resident memory by mapping.

use anyhow::{Context, Result};
use std::path::Path;

/// Memory and threads from /proc/<pid>/status and /proc/<pid>/task.
#[derive(Debug, Clone)]
pub struct Memory {
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub rss_anon_kb: u64,
    pub rss_file_kb: u64,
    pub threads: u64,
    pub thread_names: Vec<String>,
}

pub fn memory(pid: u32) -> Result<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut thread_names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect();
    thread_names.sort();
    Ok(Memory {
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
        rss_anon_kb: field("RssAnon:"),
        rss_file_kb: field("RssFile:"),
        threads: field("Threads:"),
        thread_names,
    })
}

/// CPU time and context switches of a process so far.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    /// User + system CPU time of the whole process (live and exited threads), ms.
    pub cpu_ms: u64,
    /// Voluntary + involuntary context switches of each live thread, by thread id
    /// (/proc/<pid>/task/<tid>/status).
    pub switches: std::collections::BTreeMap<u32, u64>,
}

impl Activity {
    /// Context switches (voluntary + involuntary) from `self` to `later`, thread by thread:
    /// a thread alive at both moments counts its difference, one born in between all of its
    /// switches. A thread that exited in between is not counted (its last switches are lost:
    /// a slight undercount). Summing over the live threads instead went wrong when a busy
    /// thread (the deploys' blocking pool thread) exited during the idle window: the sum
    /// dropped and the difference showed 0.
    pub fn switches_until(&self, later: &Activity) -> u64 {
        later
            .switches
            .iter()
            .map(|(tid, n)| n.saturating_sub(self.switches.get(tid).copied().unwrap_or(0)))
            .sum()
    }
}

pub fn activity(pid: u32) -> Activity {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // After the command name: state is field 3, utime 14, stime 15 (in clock ticks).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i)?.parse::<u64>().ok())
        .sum();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut a = Activity {
        cpu_ms: ticks * 1000 / hz,
        ..Activity::default()
    };
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let st = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let field = |name: &str| -> u64 {
                st.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let n = field("voluntary_ctxt_switches:") + field("nonvoluntary_ctxt_switches:");
            a.switches.insert(tid, n);
        }
    }
    a
}

/// Resident kB by mapping name from /proc/<pid>/smaps, largest first.
pub fn rss_by_mapping(pid: u32) -> Vec<(String, u64)> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return Vec::new();
    };
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    let mut name = String::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // address perms offset dev inode [path]
            let path = f.nth(4).unwrap_or("[anon]");
            name = Path::new(path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.to_owned());
        } else if first == "Rss:" {
            let kb: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            *by.entry(name.clone()).or_default() += kb;
        }
    }
    let mut v: Vec<(String, u64)> = by.into_iter().filter(|(_, kb)| *kb > 0).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v
}
