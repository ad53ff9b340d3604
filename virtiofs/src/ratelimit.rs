//! Rate-limited logging of guest-triggered events.
//!
//! A guest can send malformed requests as fast as it likes; logging each one would let it
//! fill the host's disk and burn CPU. Each kind of event gets at most
//! [`LINES_PER_WINDOW`] lines per [`WINDOW`]; the first line after a window with dropped lines
//! says how many were suppressed. The counters are atomics, so logging from several queue
//! threads needs no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Lines per kind per window.
pub const LINES_PER_WINDOW: u64 = 10;
/// The window length.
pub const WINDOW: Duration = Duration::from_secs(1);

/// One kind of event.
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// Index of the current window (whole `WINDOW`s since the process's first log).
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
    /// A limiter with no history.
    #[cfg(test)]
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
}

/// Logs a warning through `limiter` (a `RateLimiter`) when it admits one.
macro_rules! guest_warn {
    ($limiter:expr, $($arg:tt)*) => {
        if let Some(suppressed) = $limiter.admit() {
            if suppressed > 0 {
                log::warn!("{} (suppressed {} similar)", format_args!($($arg)*), suppressed);
            } else {
                log::warn!($($arg)*);
            }
        }
    };
}
pub(crate) use guest_warn;

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
        assert!(l.suppressed.load(Ordering::Relaxed) > 0);
    }
}
