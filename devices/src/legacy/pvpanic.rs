//! pvpanic (QEMU's ISA pvpanic, ACPI `QEMU0001`): one I/O port through which a guest kernel
//! reports that it panicked, so the VMM can end with "crashed" instead of waiting for the
//! guest's reboot-after-panic (or forever, without `panic=N`).
//!
//! Reading the port returns the events the device supports; the guest's driver only sends
//! those. Writing bit 0 ("panicked") ends the VM as a crash. Bit 1 ("crash kernel loaded",
//! a kdump kernel is about to take over) is acknowledged and logged but does not stop the VM.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitKind, ExitRequest};

/// The guest kernel panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// A crash kernel was loaded and is taking over.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// The pvpanic port.
#[derive(Debug)]
pub struct PvPanic {
    exit: Arc<ExitRequest>,
}

impl PvPanic {
    /// A pvpanic device that ends the VM through `exit`.
    pub fn new(exit: Arc<ExitRequest>) -> Self {
        Self { exit }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(first) = data.first_mut() {
                *first = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (0, Some(&value)) = (offset, data.first()) else {
            log::warn!(
                "pvpanic: ignored write at offset {offset} of {} bytes",
                data.len()
            );
            return;
        };
        if value & PVPANIC_PANICKED != 0 {
            log::error!("pvpanic: the guest kernel panicked");
            self.exit.request(ExitKind::Crash);
        } else if value & PVPANIC_CRASH_LOADED != 0 {
            log::warn!("pvpanic: the guest loaded its crash kernel");
        } else {
            log::debug!("pvpanic: event {value:#x} ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (PvPanic, Arc<ExitRequest>) {
        let exit = Arc::new(ExitRequest::new().unwrap());
        (PvPanic::new(exit.clone()), exit)
    }

    #[test]
    fn read_when_driver_probes_then_supported_events() {
        let (mut dev, _) = device();
        let mut b = [0xffu8];
        dev.read(0, &mut b);
        assert_eq!(b[0], PVPANIC_PANICKED | PVPANIC_CRASH_LOADED);
    }

    #[test]
    fn write_when_panicked_then_crash_requested() {
        let (mut dev, exit) = device();
        dev.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(exit.kind(), Some(ExitKind::Crash));
    }

    #[test]
    fn write_when_crash_kernel_loaded_or_bad_offset_then_vm_keeps_running() {
        let (mut dev, exit) = device();
        dev.write(0, &[PVPANIC_CRASH_LOADED]);
        dev.write(1, &[PVPANIC_PANICKED]);
        dev.write(0, &[]);
        assert_eq!(exit.kind(), None);
    }
}
