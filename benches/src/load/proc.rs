//! What Linux says about a process: resident memory (`/proc/PID/status`, `smaps_rollup`) and CPU
//! time (`/proc/PID/stat`). Every reader returns `None` where the file is missing or unreadable.

use std::time::Duration;

use serde::Serialize;

/// Memory of a process, in KiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss_kb: u64,
    /// Peak resident set size since the process started (`VmHWM`).
    pub hwm_kb: u64,
    /// Proportional set size (`smaps_rollup` `Pss`): shared pages split among their users.
    pub pss_kb: u64,
    /// Anonymous memory (`smaps_rollup` `Anonymous`): the heap and stacks, without the mapped
    /// binary and libraries.
    pub anon_kb: u64,
}

fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field(&status, "VmRSS")
}

/// The memory figures of `pid`.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    Some(Memory {
        rss_kb: field(&status, "VmRSS")?,
        hwm_kb: field(&status, "VmHWM").unwrap_or(0),
        pss_kb: field(&rollup, "Pss").unwrap_or(0),
        anon_kb: field(&rollup, "Anonymous").unwrap_or(0),
    })
}

/// CPU time `pid` has used, all threads, user + system.
pub fn cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of the line, 12 and 13 of `rest` (1-based), in clock
    // ticks of 10 ms (USER_HZ is 100 on Linux).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// This machine: logical CPUs, CPU model, RAM in MiB.
pub fn machine() -> (usize, String, u64) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let ram = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| field(&m, "MemTotal"))
        .map_or(0, |kb| kb / 1024);
    (cores, model, ram)
}

/// Raises this process's open-file limit to its hard limit (children inherit it); returns the
/// limit now in force.
pub fn raise_nofile() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let memory = memory(pid).expect("memory");
        assert!(memory.rss_kb > 0 && memory.hwm_kb >= memory.rss_kb);
        assert!(cpu(pid).is_some());
        assert_eq!(field("VmRSS:\t  1234 kB\nVmHWM: 5 kB", "VmHWM"), Some(5));
    }
}
