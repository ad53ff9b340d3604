//! A log limiter so a hostile guest cannot flood the host log with bad requests.

use std::time::{Duration, Instant};

/// Lets `burst` messages through per `window`; counts the rest and reports the count with
/// the first message of the next window.
#[derive(Debug)]
pub struct LogLimiter {
    window: Duration,
    burst: u32,
    start: Option<Instant>,
    sent: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub const fn new(window: Duration, burst: u32) -> Self {
        Self {
            window,
            burst,
            start: None,
            sent: 0,
            suppressed: 0,
        }
    }

    /// Whether to log now, at `now`; `Some(n)` with `n` messages suppressed since the last
    /// one logged.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window);
        if fresh {
            self.start = Some(now);
            self.sent = 0;
        }
        if self.sent >= self.burst {
            self.suppressed += 1;
            return None;
        }
        self.sent += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_when_burst_exceeded_then_suppressed_until_next_window_and_counted() {
        let mut l = LogLimiter::new(Duration::from_secs(1), 2);
        let t0 = Instant::now();
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), None);
        assert_eq!(l.allow(t0 + Duration::from_millis(500)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), Some(2));
    }
}
