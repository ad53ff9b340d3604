//! The ACPI Generic Event Device (GED): how a hardware-reduced ACPI machine tells the guest about
//! platform events, here only "the power button was pressed".
//!
//! Lifecycle: the VMM presses the button (e.g. on SIGTERM) → the pending bit is set and the GED's
//! interrupt (GSI 5) fires → the guest's GED driver runs the DSDT's `_EVT` method, which reads
//! the byte at offset 0 of this register block → the read returns the pending events and clears
//! them → `_EVT` sees bit 0 and does `Notify (\_SB.PWRB, 0x80)` → the guest shuts down.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::bus::BusDevice;
use crate::interrupt::Interrupt;

/// Bit in the event register: the power button was pressed.
pub const EVENT_POWER_BUTTON: u8 = 1 << 0;

/// Why a GED event could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum GedError {
    /// Raising the GED's interrupt failed.
    #[error("cannot trigger the GED interrupt")]
    TriggerInterrupt(#[source] std::io::Error),
}

/// The GED register block: one read-to-clear byte of pending events at offset 0.
pub struct Ged {
    interrupt: Arc<dyn Interrupt>,
    // Atomic so that pressing the button needs only `&self` and never races a guest read.
    pending: AtomicU8,
}

impl std::fmt::Debug for Ged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ged")
            .field("pending", &self.pending.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Ged {
    /// Creates the device; `interrupt` raises the GED's GSI in the guest.
    pub fn new(interrupt: Arc<dyn Interrupt>) -> Self {
        Self {
            interrupt,
            pending: AtomicU8::new(0),
        }
    }

    /// Records a power-button press and interrupts the guest.
    ///
    /// The event stays pending if the interrupt fails, so a later press or guest read still
    /// sees it.
    pub fn press_power_button(&self) -> Result<(), GedError> {
        self.notify(EVENT_POWER_BUTTON)
    }

    fn notify(&self, events: u8) -> Result<(), GedError> {
        self.pending.fetch_or(events, Ordering::SeqCst);
        self.interrupt.trigger().map_err(GedError::TriggerInterrupt)
    }

    /// The events not yet read by the guest.
    pub fn pending(&self) -> u8 {
        self.pending.load(Ordering::SeqCst)
    }
}

impl BusDevice for Ged {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match (offset, data) {
            (0, [first, ..]) => *first = self.pending.swap(0, Ordering::SeqCst),
            (_, data) => log::warn!(
                "ged: ignoring {}-byte read at offset {offset:#x}",
                data.len()
            ),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "ged: ignoring {}-byte write at offset {offset:#x}",
            data.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Counter {
        count: AtomicUsize,
        fail: bool,
    }

    impl Interrupt for Counter {
        fn trigger(&self) -> std::io::Result<()> {
            self.count.fetch_add(1, Ordering::SeqCst);
            if self.fail {
                return Err(std::io::Error::from_raw_os_error(libc::EBADF));
            }
            Ok(())
        }
    }

    fn ged() -> (Ged, Arc<Counter>) {
        let counter = Arc::new(Counter::default());
        (Ged::new(counter.clone()), counter)
    }

    #[test]
    fn press_power_button_when_idle_then_interrupt_fires_and_bit0_pending() {
        let (ged, counter) = ged();
        ged.press_power_button().unwrap();
        assert_eq!(counter.count.load(Ordering::SeqCst), 1);
        assert_eq!(ged.pending(), EVENT_POWER_BUTTON);
    }

    #[test]
    fn read_when_button_pressed_then_returns_mask_and_clears_it() {
        let (mut ged, _counter) = ged();
        ged.press_power_button().unwrap();
        let mut data = [0xaa];
        ged.read(0, &mut data);
        assert_eq!(data, [EVENT_POWER_BUTTON]);
        ged.read(0, &mut data);
        assert_eq!(data, [0]);
    }

    #[test]
    fn read_when_nothing_pending_then_zero() {
        let (mut ged, counter) = ged();
        let mut data = [0xaa; 4];
        ged.read(0, &mut data);
        assert_eq!(data, [0; 4]);
        assert_eq!(counter.count.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn read_when_other_offset_then_zero_and_event_kept() {
        let (mut ged, _counter) = ged();
        ged.press_power_button().unwrap();
        let mut data = [0xaa];
        ged.read(4, &mut data);
        assert_eq!(data, [0]);
        assert_eq!(ged.pending(), EVENT_POWER_BUTTON);
    }

    #[test]
    fn write_when_guest_writes_then_pending_unchanged() {
        let (mut ged, _counter) = ged();
        ged.press_power_button().unwrap();
        ged.write(0, &[0]);
        assert_eq!(ged.pending(), EVENT_POWER_BUTTON);
    }

    #[test]
    fn press_power_button_when_twice_before_read_then_two_interrupts_one_event() {
        let (mut ged, counter) = ged();
        ged.press_power_button().unwrap();
        ged.press_power_button().unwrap();
        assert_eq!(counter.count.load(Ordering::SeqCst), 2);
        let mut data = [0];
        ged.read(0, &mut data);
        assert_eq!(data, [EVENT_POWER_BUTTON]);
    }

    #[test]
    fn press_power_button_when_interrupt_fails_then_error_and_event_stays_pending() {
        let counter = Arc::new(Counter {
            fail: true,
            ..Default::default()
        });
        let ged = Ged::new(counter);
        let err = ged.press_power_button().unwrap_err();
        assert!(matches!(err, GedError::TriggerInterrupt(_)));
        assert_eq!(ged.pending(), EVENT_POWER_BUTTON);
    }

    #[test]
    fn press_power_button_when_shared_through_mutex_then_bus_device_sees_event() {
        let counter = Arc::new(Counter::default());
        let ged = Arc::new(Mutex::new(Ged::new(counter)));
        let bus_side: Arc<Mutex<dyn BusDevice>> = ged.clone();
        ged.lock().unwrap().press_power_button().unwrap();
        let mut data = [0];
        bus_side.lock().unwrap().read(0, &mut data);
        assert_eq!(data, [EVENT_POWER_BUTTON]);
    }

    #[test]
    fn press_power_button_when_eventfd_interrupt_then_eventfd_readable() {
        let evt = Arc::new(vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let ged = Ged::new(evt.clone());
        ged.press_power_button().unwrap();
        assert_eq!(evt.read().unwrap(), 1);
    }
}
