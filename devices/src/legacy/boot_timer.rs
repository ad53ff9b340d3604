//! Boot timer (Firecracker-compatible): the guest's init writes the byte 123 at offset 0 of
//! this MMIO page, and the VMM learns how long the boot took since it started.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bus::BusDevice;

/// The magic value the guest writes.
pub const BOOT_MAGIC: u8 = 123;
/// Bytes of MMIO space the device occupies.
pub const BOOT_TIMER_LEN: u64 = 0x1000;

/// Called with the elapsed time each time the guest signals.
pub type BootCallback = Box<dyn FnMut(Duration) + Send>;

/// Records the time from `start` to the guest's signal.
pub struct BootTimer {
    start: Instant,
    recorded: Arc<Mutex<Option<Duration>>>,
    callback: Option<BootCallback>,
}

impl std::fmt::Debug for BootTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootTimer")
            .field("start", &self.start)
            .field("recorded", &self.boot_time())
            .finish_non_exhaustive()
    }
}

impl BootTimer {
    /// A timer counting from `start` (the VMM's own start, to include its setup time).
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            recorded: Arc::new(Mutex::new(None)),
            callback: None,
        }
    }

    /// Also calls `callback` (on the vCPU thread) with the elapsed time, e.g. to print the
    /// VMM's `boot_timer` JSON line.
    pub fn with_callback(mut self, callback: BootCallback) -> Self {
        self.callback = Some(callback);
        self
    }

    /// The latest recorded boot time, if the guest signalled.
    pub fn boot_time(&self) -> Option<Duration> {
        *self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handle to read the boot time without locking the device.
    pub fn boot_time_handle(&self) -> Arc<Mutex<Option<Duration>>> {
        self.recorded.clone()
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&BOOT_MAGIC) {
            log::debug!("boot timer: write {data:?} at {offset:#x} ignored");
            return;
        }
        let elapsed = self.start.elapsed();
        log::info!("Guest-boot-time = {:>6} us", elapsed.as_micros());
        *self.recorded.lock().unwrap_or_else(|e| e.into_inner()) = Some(elapsed);
        if let Some(cb) = self.callback.as_mut() {
            cb(elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_when_magic_at_offset_zero_then_elapsed_recorded_and_callback_called() {
        let start = Instant::now() - Duration::from_millis(50);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let mut timer =
            BootTimer::new(start).with_callback(Box::new(move |d| seen2.lock().unwrap().push(d)));
        let handle = timer.boot_time_handle();

        timer.write(0, &[BOOT_MAGIC]);

        let t = timer.boot_time().unwrap();
        assert!(t >= Duration::from_millis(50), "{t:?}");
        assert!(t < Duration::from_secs(60), "{t:?}");
        assert_eq!(*handle.lock().unwrap(), Some(t));
        assert_eq!(*seen.lock().unwrap(), vec![t]);
    }

    #[test]
    fn write_when_other_value_or_offset_then_nothing_recorded() {
        let mut timer = BootTimer::new(Instant::now());
        timer.write(0, &[122]);
        timer.write(1, &[BOOT_MAGIC]);
        timer.write(0, &[]);
        assert_eq!(timer.boot_time(), None);
        let mut data = [0xff; 4];
        timer.read(0, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
