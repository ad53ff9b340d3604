//! Rate-limited logging of guest-triggered events: the shared limiter of the `devices` crate.

pub(crate) use devices::ratelimit::{guest_warn, RateLimiter};
