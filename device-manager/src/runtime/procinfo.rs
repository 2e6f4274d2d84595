//! Reading `/proc`: a process's start time, state and group, a group's live members, and the
//! figures for health reports (RSS, CPU time, uptime).

use std::path::Path;

/// The fields of `/proc/<pid>/stat` the runtime uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub state: char,
    pub pgrp: i32,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Field 22: start time after boot, in clock ticks.
    pub start_time: u64,
}

impl Stat {
    /// A process that has exited but is not reaped yet.
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Parses `/proc/<pid>/stat` (the command name may contain spaces and parentheses).
pub fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<Stat> {
    let pid = text.split(' ').next()?.parse().ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    // rest starts at field 3 (state).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).copied();
    Some(Stat {
        pid,
        state: field(3)?.chars().next()?,
        pgrp: field(5)?.parse().ok()?,
        cpu_ticks: field(14)?.parse::<u64>().ok()? + field(15)?.parse::<u64>().ok()?,
        start_time: field(22)?.parse().ok()?,
    })
}

/// Live (not zombie) members of process group `pgid` that started at or after `since`.
pub fn group_members(pgid: i32, since: u64) -> Vec<Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .filter(|s| s.pgrp == pgid && !s.is_zombie() && s.start_time >= since)
        .collect()
}

/// The process `pid` if it is alive and started at `start_time`.
pub fn same_process(pid: i32, start_time: u64) -> Option<Stat> {
    stat(pid).filter(|s| s.start_time == start_time && !s.is_zombie())
}

/// Live processes that are process-group leaders and whose environment has `key=value`.
pub fn find_tagged_leaders(key: &str, value: &str) -> Vec<Stat> {
    let needle = format!("{key}={value}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .filter(|s| s.pgrp == s.pid && !s.is_zombie())
        .filter(|s| {
            std::fs::read(format!("/proc/{}/environ", s.pid))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Seconds since boot.
pub fn system_uptime() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Seconds the process started at `start_time` ticks has been up.
pub fn uptime_secs(start_time: u64) -> u64 {
    let started = start_time as f64 / clock_ticks() as f64;
    system_uptime()
        .map(|up| (up - started).max(0.0) as u64)
        .unwrap_or(0)
}

/// VmRSS of one process, in KiB.
pub fn rss_kb(pid: i32) -> u64 {
    let path = format!("/proc/{pid}/status");
    read_rss(Path::new(&path)).unwrap_or(0)
}

fn read_rss(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// RSS (KiB) and CPU time (ms) summed over a process group.
pub fn group_usage(pgid: i32, since: u64) -> (u64, u64) {
    let ticks = clock_ticks();
    group_members(pgid, since)
        .iter()
        .fold((0, 0), |(rss, cpu), s| {
            (rss + rss_kb(s.pid), cpu + s.cpu_ticks * 1000 / ticks)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_name() {
        let line =
            "123 (a b) c) S 1 123 123 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 4242 1000 10 0";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s.pid, 123);
        assert_eq!(s.state, 'S');
        assert_eq!(s.pgrp, 123);
        assert_eq!(s.cpu_ticks, 10);
        assert_eq!(s.start_time, 4242);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id() as i32;
        let s = stat(me).expect("own stat");
        assert_eq!(s.pid, me);
        assert!(same_process(me, s.start_time).is_some());
        assert!(rss_kb(me) > 0);
    }
}
