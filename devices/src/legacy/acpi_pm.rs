//! The ACPI power-management register: one byte at I/O port 0x3c0 that the FADT names as the
//! sleep control, sleep status and reset register of this hardware-reduced ACPI machine.
//!
//! Linux powers off by writing `SLP_TYP << 2 | SLP_EN` (with `SLP_TYP` = 5 from the DSDT's
//! `\_S5_` package, so 0x34) to the sleep control register, and resets by writing the FADT's
//! `RESET_VALUE` (0x01) to the reset register. Before sleeping it also clears `WAK_STS` (0x80)
//! in the sleep status register, which is why unrelated writes are ignored quietly.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitKind, ExitRequest};

/// The value the FADT's `RESET_VALUE` field tells the guest to write for a reset.
pub const RESET_VALUE: u8 = 0x01;
/// `SLP_EN` in the ACPI sleep control register.
pub const SLEEP_ENABLE: u8 = 0x20;
/// The `SLP_TYP` of S5 (soft off), as published by the DSDT's `\_S5_` package.
pub const S5_SLEEP_TYPE: u8 = 5;
/// Bit position and mask of `SLP_TYP` in the sleep control register.
const SLEEP_TYPE_SHIFT: u8 = 2;
const SLEEP_TYPE_MASK: u8 = 0x7;
/// `WAK_STS` in the sleep status register (written by the guest to clear it).
const WAKE_STATUS: u8 = 0x80;

/// The ACPI sleep control/status and reset register.
#[derive(Debug)]
pub struct AcpiPm {
    exit: Arc<ExitRequest>,
}

impl AcpiPm {
    /// Creates the register; power-off and reset requests go to `exit`.
    pub fn new(exit: Arc<ExitRequest>) -> Self {
        Self { exit }
    }

    fn handle_write(&self, value: u8) {
        if value == RESET_VALUE {
            log::info!("acpi pm: guest requested reset");
            self.exit.request(ExitKind::Reboot);
            return;
        }
        let sleep_type = (value >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK;
        if value & SLEEP_ENABLE != 0 {
            if sleep_type == S5_SLEEP_TYPE {
                log::info!("acpi pm: guest requested S5 power off");
                self.exit.request(ExitKind::Poweroff);
            } else {
                log::warn!("acpi pm: unsupported sleep type {sleep_type} ({value:#04x}) ignored");
            }
        } else if value == WAKE_STATUS || value == 0 {
            log::debug!("acpi pm: status write {value:#04x} ignored");
        } else {
            log::warn!("acpi pm: unexpected write {value:#04x} ignored");
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // No wake events ever happen: the status register always reads as 0.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, [value]) => self.handle_write(*value),
            _ => log::warn!(
                "acpi pm: ignoring {}-byte write at offset {offset:#x}",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm() -> (AcpiPm, Arc<ExitRequest>) {
        let exit = Arc::new(ExitRequest::new().unwrap());
        (AcpiPm::new(exit.clone()), exit)
    }

    #[test]
    fn write_when_s5_with_sleep_enable_then_poweroff_requested() {
        let (mut pm, exit) = pm();
        pm.write(0, &[(S5_SLEEP_TYPE << 2) | SLEEP_ENABLE]);
        assert_eq!(exit.kind(), Some(ExitKind::Poweroff));
        assert_eq!(exit.event_fd().read().unwrap(), 1);
    }

    #[test]
    fn write_when_literal_0x34_then_poweroff_requested() {
        let (mut pm, exit) = pm();
        pm.write(0, &[0x34]);
        assert_eq!(exit.kind(), Some(ExitKind::Poweroff));
    }

    #[test]
    fn write_when_reset_value_then_reboot_requested() {
        let (mut pm, exit) = pm();
        pm.write(0, &[0x01]);
        assert_eq!(exit.kind(), Some(ExitKind::Reboot));
    }

    #[test]
    fn write_when_wake_status_clear_or_other_value_then_nothing_requested() {
        let (mut pm, exit) = pm();
        for value in [
            0x80,
            0x00,
            0x14,
            0x02,
            !SLEEP_ENABLE,
            (3 << 2) | SLEEP_ENABLE,
        ] {
            pm.write(0, &[value]);
        }
        assert_eq!(exit.kind(), None);
        assert!(
            exit.event_fd().read().is_err(),
            "event fd must not be signalled"
        );
    }

    #[test]
    fn write_when_wrong_width_or_offset_then_ignored() {
        let (mut pm, exit) = pm();
        pm.write(0, &[0x34, 0x00]);
        pm.write(1, &[0x34]);
        pm.write(0, &[]);
        assert_eq!(exit.kind(), None);
    }

    #[test]
    fn read_when_any_width_then_zero() {
        let (mut pm, _exit) = pm();
        let mut byte = [0xaa];
        pm.read(0, &mut byte);
        assert_eq!(byte, [0]);
        let mut dword = [0xaa; 4];
        pm.read(0, &mut dword);
        assert_eq!(dword, [0; 4]);
    }

    #[test]
    fn bus_write_when_pm_port_gets_wake_clear_then_s5_then_poweroff() {
        let (pm, exit) = pm();
        let mut bus = crate::bus::Bus::new();
        bus.insert(Arc::new(std::sync::Mutex::new(pm)), 0x3c0, 1)
            .unwrap();
        // The sequence Linux writes for poweroff on a hardware-reduced ACPI machine.
        assert!(bus.write(0x3c0, &[0x80]));
        assert_eq!(exit.kind(), None);
        assert!(bus.write(0x3c0, &[0x34]));
        assert_eq!(exit.kind(), Some(ExitKind::Poweroff));
    }
}
