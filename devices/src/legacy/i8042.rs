//! A minimal i8042 (PS/2) controller: enough for the guest's "reset through the keyboard
//! controller" (`reboot=k`) and for a probe to find an idle controller with no devices.
//!
//! One [`BusDevice`] covers ports 0x60..=0x64 (insert it at [`I8042_BASE`] with length
//! [`I8042_LEN`]): offset 0 is the data port (0x60), offset 4 the command/status port (0x64).
//! Offsets 1..=3 (ports 0x61..=0x63, e.g. the legacy NMI status port) read 0 and ignore
//! writes. The bus passes offsets relative to the base, so two separate one-port ranges could
//! not be told apart by the device.
//!
//! Supported commands on port 0x64: 0x20 read the control byte, 0x60 write the control byte,
//! 0xAA self test (0x55), 0xAB keyboard interface test (0x00), 0xA7/0xA8/0xAD/0xAE
//! enable/disable ports (accepted, no effect), 0xFE pulse the reset line → machine reboot.
//! There is no keyboard behind it and it raises no interrupts.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitKind, ExitRequest};

/// First port of the controller (data port).
pub const I8042_BASE: u64 = 0x60;
/// Ports covered, up to and including the command/status port 0x64.
pub const I8042_LEN: u64 = 5;
/// The controller's GSI (unused: no keyboard, so no interrupts).
pub const I8042_GSI: u32 = 1;

const OFFSET_DATA: u64 = 0;
const OFFSET_COMMAND: u64 = 4;

/// Status register: output buffer full (a byte waits on port 0x60).
pub const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Status register: system flag (self test passed); set like real firmware leaves it.
pub const STATUS_SYSTEM_FLAG: u8 = 0x04;
/// Status register: the last write was a command (port 0x64), not data.
pub const STATUS_COMMAND: u8 = 0x08;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
/// Pulse output line 0 (the CPU reset line) low.
pub const CMD_RESET_CPU: u8 = 0xfe;

/// Control byte after power-on: keyboard interrupt on, system flag, translation on.
const DEFAULT_CTR: u8 = 0x45;

/// The controller. Writing 0xFE to port 0x64 requests [`ExitKind::Reboot`].
#[derive(Debug)]
pub struct I8042 {
    exit: Arc<ExitRequest>,
    status: u8,
    ctr: u8,
    output: Option<u8>,
    /// The last command expects its argument on the data port.
    awaiting_ctr: bool,
}

impl I8042 {
    /// A controller that stops the machine through `exit`.
    pub fn new(exit: Arc<ExitRequest>) -> Self {
        Self {
            exit,
            status: STATUS_SYSTEM_FLAG,
            ctr: DEFAULT_CTR,
            output: None,
            awaiting_ctr: false,
        }
    }

    fn status(&self) -> u8 {
        let full = if self.output.is_some() {
            STATUS_OUTPUT_FULL
        } else {
            0
        };
        self.status | full
    }

    fn command(&mut self, cmd: u8) {
        self.status |= STATUS_COMMAND;
        self.awaiting_ctr = false;
        match cmd {
            CMD_READ_CTR => self.output = Some(self.ctr),
            CMD_WRITE_CTR => self.awaiting_ctr = true,
            CMD_SELF_TEST => self.output = Some(0x55),
            CMD_KBD_TEST => self.output = Some(0x00),
            CMD_DISABLE_AUX | CMD_ENABLE_AUX | CMD_DISABLE_KBD | CMD_ENABLE_KBD => {}
            CMD_RESET_CPU => {
                log::info!("i8042: guest pulsed the reset line; rebooting");
                self.exit.request(ExitKind::Reboot);
            }
            other => log::debug!("i8042: command {other:#x} ignored"),
        }
    }

    fn data(&mut self, value: u8) {
        self.status &= !STATUS_COMMAND;
        if std::mem::take(&mut self.awaiting_ctr) {
            self.ctr = value;
        } else {
            // No keyboard: bytes for it go nowhere.
            log::debug!("i8042: data byte {value:#x} for the (absent) keyboard ignored");
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(byte) = data.first_mut() else {
            return;
        };
        *byte = match offset {
            OFFSET_DATA => self.output.take().unwrap_or(0),
            OFFSET_COMMAND => self.status(),
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else {
            log::warn!(
                "i8042: {}-byte write at offset {offset} ignored",
                data.len()
            );
            return;
        };
        match offset {
            OFFSET_DATA => self.data(*value),
            OFFSET_COMMAND => self.command(*value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use std::sync::Mutex;

    fn setup() -> (Bus, Arc<ExitRequest>) {
        let exit = Arc::new(ExitRequest::new().unwrap());
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(I8042::new(exit.clone())));
        bus.insert(dev, I8042_BASE, I8042_LEN).unwrap();
        (bus, exit)
    }

    fn inb(bus: &Bus, port: u64) -> u8 {
        let mut b = [0xff];
        assert!(bus.read(port, &mut b));
        b[0]
    }

    #[test]
    fn write_when_reset_command_then_reboot_requested() {
        let (bus, exit) = setup();
        assert!(bus.write(0x64, &[CMD_RESET_CPU]));
        assert_eq!(exit.kind(), Some(ExitKind::Reboot));
        assert_eq!(exit.event_fd().read().unwrap(), 1);
    }

    #[test]
    fn write_when_other_values_then_no_exit() {
        let (bus, exit) = setup();
        bus.write(0x60, &[CMD_RESET_CPU]);
        bus.write(0x64, &[0xfd]);
        bus.write(0x64, &[CMD_RESET_CPU, 0]);
        bus.write(0x61, &[CMD_RESET_CPU]);
        assert_eq!(exit.kind(), None);
    }

    #[test]
    fn read_when_idle_then_status_ready_and_data_zero() {
        let (bus, _exit) = setup();
        // Input buffer empty (bit 1 clear) so `reboot=k` does not wait; no output pending.
        assert_eq!(inb(&bus, 0x64), STATUS_SYSTEM_FLAG);
        assert_eq!(inb(&bus, 0x60), 0);
        assert_eq!(inb(&bus, 0x61), 0);
    }

    #[test]
    fn commands_when_ctr_written_and_read_then_round_trip() {
        let (bus, _exit) = setup();
        bus.write(0x64, &[CMD_WRITE_CTR]);
        bus.write(0x60, &[0x30]);
        bus.write(0x64, &[CMD_READ_CTR]);
        assert_eq!(inb(&bus, 0x64) & STATUS_OUTPUT_FULL, STATUS_OUTPUT_FULL);
        assert_eq!(inb(&bus, 0x60), 0x30);
        assert_eq!(inb(&bus, 0x64) & STATUS_OUTPUT_FULL, 0);

        bus.write(0x64, &[CMD_SELF_TEST]);
        assert_eq!(inb(&bus, 0x60), 0x55);
    }
}
