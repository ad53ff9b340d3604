//! A process-wide test logger that counts the bytes logged per message prefix, so flood
//! tests can measure what a guest managed to write into the host log.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Bytes logged, keyed by the text before the first ':' of each message.
#[derive(Debug, Default)]
pub struct Capture {
    bytes: Mutex<HashMap<String, usize>>,
}

impl Capture {
    /// Bytes logged so far by messages starting with `prefix:`.
    pub fn bytes_from(&self, prefix: &str) -> usize {
        let map = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        map.get(prefix).copied().unwrap_or(0)
    }

    /// Bytes logged so far by messages whose prefix contains `part`.
    pub fn bytes_matching(&self, part: &str) -> usize {
        let map = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(k, _)| k.contains(part))
            .map(|(_, v)| v)
            .sum()
    }
}

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let line = record.args().to_string();
        let prefix = line.split(':').next().unwrap_or("").to_string();
        let mut map = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(prefix).or_default() += line.len() + 1;
    }

    fn flush(&self) {}
}

/// Installs the capture logger (once per test process) and returns it.
pub fn install() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let cap: &'static Capture = Box::leak(Box::default());
        // Another logger may already be set by a test; then counts stay at zero and the
        // flood tests' "something was logged" assertion fails loudly.
        let _ = log::set_logger(cap);
        log::set_max_level(log::LevelFilter::Trace);
        cap
    })
}
