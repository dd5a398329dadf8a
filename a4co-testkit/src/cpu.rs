//! CPU time of processes, for benchmarks that report what each side spent per message.
//!
//! ```
//! let before = a4co_testkit::cpu::own();
//! let spin: u64 = (0..100_000u64).map(std::hint::black_box).sum();
//! assert!(spin > 0);
//! # #[cfg(target_os = "linux")]
//! assert!(a4co_testkit::cpu::own() >= before);
//! ```

use std::time::Duration;

/// The CPU time process `pid` has used so far, summed over its threads (Linux's
/// `/proc/<pid>/task/*/schedstat`; zero where that cannot be read).
pub fn of(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// This process's CPU time so far.
pub fn own() -> Duration {
    of(std::process::id())
}
