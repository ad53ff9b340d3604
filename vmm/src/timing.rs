//! Machine-readable boot timing: one JSON line per milestone on stderr.
//!
//! Each line is `{"tinyvmm_timing":"<event>","us":<since main>,"mono_us":<CLOCK_MONOTONIC>}`.
//! `us` counts from the start of `main`; `mono_us` lets a harness that noted the monotonic clock
//! before `exec` compute exec → event without trusting our own start point.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The boot-timer time of this process's guest (µs since start, 0 = not seen yet), for the
/// control socket.
static BOOT_TIMER_US: AtomicU64 = AtomicU64::new(0);

/// When the guest wrote the boot-timer port, if it has.
pub fn boot_timer_us() -> Option<u64> {
    match BOOT_TIMER_US.load(Ordering::Relaxed) {
        0 => None,
        us => Some(us),
    }
}

/// Milestones a run reports, in the order they normally happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Milestone {
    ConfigParsed,
    VmCreated,
    MemoryReady,
    KernelLoaded,
    FirstVcpuEntry,
    BootTimer,
    Exit,
}

impl Milestone {
    /// The name printed in the JSON line.
    pub fn name(self) -> &'static str {
        match self {
            Milestone::ConfigParsed => "config_parsed",
            Milestone::VmCreated => "vm_created",
            Milestone::MemoryReady => "memory_ready",
            Milestone::KernelLoaded => "kernel_loaded",
            Milestone::FirstVcpuEntry => "first_vcpu_entry",
            Milestone::BootTimer => "boot_timer",
            Milestone::Exit => "exit",
        }
    }
}

/// Prints milestones when enabled; cheap to copy into vCPU threads.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    start: Instant,
    enabled: bool,
}

impl Timing {
    /// A clock started at `start` (the top of `main`).
    pub fn new(start: Instant, enabled: bool) -> Self {
        Self { start, enabled }
    }

    /// When the clock started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Turns printing on or off once the config has said which.
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
    }

    /// Whether lines are printed.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Microseconds since the clock started.
    pub fn elapsed_us(&self) -> u128 {
        self.start.elapsed().as_micros()
    }

    /// Prints the line for `milestone`, if enabled.
    pub fn mark(&self, milestone: Milestone) {
        if self.enabled {
            self.mark_at(milestone, self.elapsed_us());
        }
    }

    /// Prints the line for `milestone` with an already measured time.
    pub fn mark_at(&self, milestone: Milestone, us: u128) {
        if milestone == Milestone::BootTimer {
            let us = u64::try_from(us).unwrap_or(u64::MAX).max(1);
            let _ = BOOT_TIMER_US.compare_exchange(0, us, Ordering::Relaxed, Ordering::Relaxed);
        }
        if !self.enabled {
            return;
        }
        let line = format_line(milestone, us, monotonic_us());
        // One write call per line so lines from several threads never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

fn format_line(milestone: Milestone, us: u128, mono_us: u128) -> String {
    format!(
        "{{\"tinyvmm_timing\":\"{}\",\"us\":{},\"mono_us\":{}}}\n",
        milestone.name(),
        us,
        mono_us
    )
}

/// CLOCK_MONOTONIC in microseconds.
pub fn monotonic_us() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes into it.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000 + ts.tv_nsec as u128 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_line_when_called_then_is_one_json_object() {
        let line = format_line(Milestone::FirstVcpuEntry, 1234, 99);
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["tinyvmm_timing"], "first_vcpu_entry");
        assert_eq!(v["us"], 1234);
        assert_eq!(v["mono_us"], 99);
        assert!(line.ends_with('\n'));
    }

    #[test]
    fn monotonic_us_when_read_twice_then_never_goes_back() {
        let a = monotonic_us();
        let b = monotonic_us();
        assert!(b >= a && a > 0);
    }
}
