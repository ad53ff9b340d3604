//! Rate-limited logging of guest-triggered events — the one limiter every device, the MMIO
//! transport and the virtio-fs server use.
//!
//! A guest can send malformed requests as fast as it likes; logging each one would let it
//! fill the host's disk and burn CPU on the vCPU and event threads. Each kind of event (one
//! [`RateLimiter`], usually one per call site through [`guest_warn!`]) gets at most
//! [`LINES_PER_WINDOW`] lines per [`WINDOW`]; the first line admitted after lines were dropped
//! says how many were suppressed. The counters are atomics, so several threads can log
//! through one limiter without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[doc(hidden)]
pub use log as __log;

/// Lines per kind per window.
pub const LINES_PER_WINDOW: u64 = 10;
/// The window length.
pub const WINDOW: Duration = Duration::from_secs(1);

/// One kind of event.
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// Index of the current window (whole `WINDOW`s since the process's first log, plus 1).
    window: AtomicU64,
    /// Lines logged in the current window.
    logged: AtomicU64,
    /// Lines suppressed since the last line that was logged.
    suppressed: AtomicU64,
    /// All events ever seen (for tests and metrics).
    total: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl RateLimiter {
    /// A limiter with no history (`const`, so a call site can own a `static` one).
    pub const fn new() -> Self {
        Self {
            window: AtomicU64::new(0),
            logged: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// Counts one event; returns `Some(suppressed)` when a line may be logged now, where
    /// `suppressed` is how many lines were dropped since the last logged one.
    pub fn admit(&self) -> Option<u64> {
        self.total.fetch_add(1, Ordering::Relaxed);
        let now = (epoch().elapsed().as_nanos() / WINDOW.as_nanos()) as u64 + 1;
        let seen = self.window.load(Ordering::Relaxed);
        if seen != now
            && self
                .window
                .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.logged.store(0, Ordering::Relaxed);
        }
        if self.logged.fetch_add(1, Ordering::Relaxed) < LINES_PER_WINDOW {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// All events counted so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Events dropped since the last line that was logged.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

/// Logs a guest-triggerable line at `warn` (or the level given first: `error`, `warn`,
/// `info`, `debug`) when the limiter admits it; appends "(suppressed N similar)" when lines
/// were dropped before it.
///
/// `guest_warn!(limiter; "fmt", args)` uses the given [`RateLimiter`];
/// `guest_warn!("fmt", args)` gives the call site its own static limiter.
#[macro_export]
macro_rules! guest_warn {
    ($limiter:expr; $($arg:tt)*) => {
        $crate::guest_log!(warn, $limiter; $($arg)*)
    };
    ($($arg:tt)*) => {{
        static LIMITER: $crate::ratelimit::RateLimiter = $crate::ratelimit::RateLimiter::new();
        $crate::guest_log!(warn, LIMITER; $($arg)*)
    }};
}

/// [`guest_warn!`] at `error` level.
#[macro_export]
macro_rules! guest_error {
    ($limiter:expr; $($arg:tt)*) => {
        $crate::guest_log!(error, $limiter; $($arg)*)
    };
    ($($arg:tt)*) => {{
        static LIMITER: $crate::ratelimit::RateLimiter = $crate::ratelimit::RateLimiter::new();
        $crate::guest_log!(error, LIMITER; $($arg)*)
    }};
}

/// The common body of [`guest_warn!`] and [`guest_error!`].
#[doc(hidden)]
#[macro_export]
macro_rules! guest_log {
    ($level:ident, $limiter:expr; $($arg:tt)*) => {
        if let Some(suppressed) = $limiter.admit() {
            if suppressed > 0 {
                $crate::ratelimit::__log::$level!(
                    "{} (suppressed {} similar)",
                    format_args!($($arg)*),
                    suppressed
                );
            } else {
                $crate::ratelimit::__log::$level!($($arg)*);
            }
        }
    };
}

pub use crate::{guest_error, guest_warn};

#[cfg(test)]
pub(crate) mod capture;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_when_burst_then_caps_lines_and_counts_suppressed() {
        let l = RateLimiter::new();
        let admitted = (0..1000).filter(|_| l.admit().is_some()).count() as u64;
        // A burst may straddle one window boundary, so at most two windows' worth get in.
        assert!((LINES_PER_WINDOW..=2 * LINES_PER_WINDOW).contains(&admitted));
        assert_eq!(l.total(), 1000);
        assert!(l.suppressed() > 0);
    }

    #[test]
    fn guest_warn_when_100k_events_then_logged_bytes_bounded() {
        let cap = capture::install();
        const SITES: usize = 1;
        let before = cap.bytes_from("ratelimit-flood");
        let started = std::time::Instant::now();
        for i in 0..100_000u32 {
            guest_warn!("ratelimit-flood: bad thing number {i}");
        }
        let logged = cap.bytes_from("ratelimit-flood") - before;
        // 100k unthrottled lines would be ~3.5 MB; the limiter lets a few windows through.
        eprintln!("flood: {logged} bytes logged");
        assert!(logged > 0, "nothing was logged at all");
        // At most LINES_PER_WINDOW lines (under 200 bytes each) per call site per window.
        let windows = started.elapsed().as_secs() + 2;
        let bound = windows as usize * crate::ratelimit::LINES_PER_WINDOW as usize * 200 * SITES;
        assert!(logged <= bound, "{logged} bytes logged, bound {bound}");
    }
}
