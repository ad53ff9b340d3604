//! A minimal i8042 (PS/2) controller with a keyboard behind it: enough for the guest's
//! "reset through the keyboard controller" (`reboot=k`), for Linux's i8042 and atkbd drivers
//! to probe and bind without timeouts, and for the VMM to send Ctrl-Alt-Del (the stop request
//! for guests without ACPI).
//!
//! One [`BusDevice`] covers ports 0x60..=0x64 (insert it at [`I8042_BASE`] with length
//! [`I8042_LEN`]): offset 0 is the data port (0x60), offset 4 the command/status port (0x64).
//! Offsets 1..=3 (ports 0x61..=0x63, e.g. the legacy NMI status port) read 0 and ignore
//! writes. The bus passes offsets relative to the base, so two separate one-port ranges could
//! not be told apart by the device.
//!
//! Controller commands on port 0x64: 0x20 read / 0x60 write the control byte, 0xAA self test
//! (0x55), 0xAB keyboard interface test (0x00), 0xA9 aux interface test (0x01: "clock line
//! stuck", so the guest decides there is no aux port; the aux loopback 0xD3 answers without
//! the aux-data status bit for the same reason), 0xA7/0xA8/0xAD/0xAE disable/enable a port
//! (the control byte's disable bits), 0xFE pulse the reset line → machine reboot.
//!
//! Bytes written to port 0x60 that are not a controller command's argument go to the
//! keyboard, which answers the PS/2 keyboard commands Linux's atkbd sends (ACK 0xFA, reset
//! 0xAA, id 0xAB 0x83, echo 0xEE). Every keyboard byte raises IRQ 1 when the control byte
//! enables the keyboard interrupt; the next queued byte raises it again once the guest has
//! read the previous one.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitKind, ExitRequest};
use crate::interrupt::Interrupt;

/// First port of the controller (data port).
pub const I8042_BASE: u64 = 0x60;
/// Ports covered, up to and including the command/status port 0x64.
pub const I8042_LEN: u64 = 5;
/// The controller's GSI (keyboard interrupt).
pub const I8042_GSI: u32 = 1;

const OFFSET_DATA: u64 = 0;
const OFFSET_COMMAND: u64 = 4;

/// Status register: output buffer full (a byte waits on port 0x60).
pub const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Status register: system flag (self test passed); set like real firmware leaves it.
pub const STATUS_SYSTEM_FLAG: u8 = 0x04;
/// Status register: keyboard not inhibited (no keylock).
pub const STATUS_NOT_INHIBITED: u8 = 0x10;
/// Status register: the last write was a command (port 0x64), not data.
pub const STATUS_COMMAND: u8 = 0x08;
/// Status register: the byte in the output buffer comes from the aux (mouse) port.
pub const STATUS_AUX_DATA: u8 = 0x20;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_WRITE_KBD_OUTPUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUTPUT: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
/// Pulse output line 0 (the CPU reset line) low.
pub const CMD_RESET_CPU: u8 = 0xfe;

/// Control byte: keyboard interrupt enabled.
pub const CTR_KBD_INT: u8 = 0x01;
/// Control byte: keyboard port disabled.
pub const CTR_KBD_DISABLE: u8 = 0x10;
/// Control byte: aux port disabled.
pub const CTR_AUX_DISABLE: u8 = 0x20;
/// Control byte: translate keyboard scan codes to set 1.
pub const CTR_TRANSLATE: u8 = 0x40;
/// Control byte after power-on: keyboard interrupt on, system flag, translation on.
const DEFAULT_CTR: u8 = 0x45;

/// Reply of the aux interface test: clock line stuck low, i.e. no aux port.
const AUX_TEST_NO_PORT: u8 = 0x01;

const KBD_ACK: u8 = 0xfa;
const KBD_RESEND: u8 = 0xfe;
const KBD_BAT_OK: u8 = 0xaa;
const KBD_ECHO: u8 = 0xee;
const KBD_CMD_SET_LEDS: u8 = 0xed;
const KBD_CMD_ECHO: u8 = 0xee;
const KBD_CMD_SCANCODE_SET: u8 = 0xf0;
const KBD_CMD_GET_ID: u8 = 0xf2;
const KBD_CMD_SET_REPEAT: u8 = 0xf3;
const KBD_CMD_ENABLE: u8 = 0xf4;
const KBD_CMD_DISABLE: u8 = 0xf5;
const KBD_CMD_RESET: u8 = 0xff;
/// An MF2 keyboard's id (second byte 0x41 when the controller translates).
const KBD_ID: [u8; 2] = [0xab, 0x83];
const KBD_ID_TRANSLATED: [u8; 2] = [0xab, 0x41];

/// Ctrl, Alt, Del pressed then released, scan code set 1 (what the guest reads when the
/// controller translates).
const CTRL_ALT_DEL_SET1: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
/// The same in scan code set 2 (no translation).
const CTRL_ALT_DEL_SET2: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];

/// Bytes the output buffer holds at most; a guest that never reads cannot grow it further.
const OUTPUT_MAX: usize = 32;

/// What the next byte on the data port is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// A command for the keyboard.
    Keyboard,
    /// The new control byte (after 0x60).
    Ctr,
    /// A byte to echo as if the keyboard sent it (after 0xD2).
    KbdOutput,
    /// A byte to echo as if the aux port sent it (after 0xD3).
    AuxOutput,
    /// A byte for the (absent) aux device (after 0xD4).
    Aux,
    /// The argument of a keyboard command (0xED, 0xF0, 0xF3).
    KeyboardArg(u8),
}

/// The controller. Writing 0xFE to port 0x64 requests [`ExitKind::Reboot`].
pub struct I8042 {
    exit: Arc<ExitRequest>,
    irq: Arc<dyn Interrupt>,
    status: u8,
    ctr: u8,
    output: VecDeque<u8>,
    pending: Pending,
    dropped: u64,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042")
            .field("status", &self.status)
            .field("ctr", &self.ctr)
            .field("output", &self.output)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl I8042 {
    /// A controller that stops the machine through `exit` and raises IRQ 1 through `irq`.
    pub fn new(exit: Arc<ExitRequest>, irq: Arc<dyn Interrupt>) -> Self {
        Self {
            exit,
            irq,
            status: STATUS_SYSTEM_FLAG | STATUS_NOT_INHIBITED,
            ctr: DEFAULT_CTR,
            output: VecDeque::new(),
            pending: Pending::Keyboard,
            dropped: 0,
        }
    }

    /// Queues Ctrl+Alt+Del presses and releases from the keyboard (in the scan code set the
    /// guest reads) and raises IRQ 1. Linux turns it into `ctrl_alt_del()`: an immediate
    /// reboot, or SIGINT to init once init has disabled that (busybox init and systemd do).
    pub fn send_ctrl_alt_del(&mut self) {
        if self.ctr & (CTR_KBD_INT | CTR_KBD_DISABLE) != CTR_KBD_INT {
            log::warn!(
                "i8042: the guest has not enabled the keyboard (control byte {:#x}); \
                 Ctrl-Alt-Del may be lost",
                self.ctr
            );
        }
        if self.ctr & CTR_TRANSLATE != 0 {
            self.push_keyboard(&CTRL_ALT_DEL_SET1);
        } else {
            self.push_keyboard(&CTRL_ALT_DEL_SET2);
        }
    }

    fn status(&self) -> u8 {
        let full = if self.output.is_empty() {
            0
        } else {
            STATUS_OUTPUT_FULL
        };
        self.status | full
    }

    /// Queues a controller reply (the guest polls for it; no interrupt).
    fn push_reply(&mut self, byte: u8) {
        self.push(byte);
    }

    /// Queues bytes from the keyboard and raises the keyboard interrupt for the first one if
    /// the buffer was empty.
    fn push_keyboard(&mut self, bytes: &[u8]) {
        let was_empty = self.output.is_empty();
        for &b in bytes {
            self.push(b);
        }
        if was_empty && !self.output.is_empty() {
            self.raise_kbd_irq();
        }
    }

    fn push(&mut self, byte: u8) {
        if self.output.len() >= OUTPUT_MAX {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                log::warn!(
                    "i8042: output buffer full, {} byte(s) dropped so far",
                    self.dropped
                );
            }
            return;
        }
        self.output.push_back(byte);
    }

    fn raise_kbd_irq(&self) {
        if self.ctr & CTR_KBD_INT == 0 {
            return;
        }
        if let Err(e) = self.irq.trigger() {
            log::warn!("i8042: raising IRQ 1 failed: {e}");
        }
    }

    fn read_data(&mut self) -> u8 {
        let byte = self.output.pop_front().unwrap_or(0);
        if !self.output.is_empty() {
            self.raise_kbd_irq();
        }
        byte
    }

    fn command(&mut self, cmd: u8) {
        self.status |= STATUS_COMMAND;
        self.pending = Pending::Keyboard;
        match cmd {
            CMD_READ_CTR => self.push_reply(self.ctr),
            CMD_WRITE_CTR => self.pending = Pending::Ctr,
            CMD_SELF_TEST => self.push_reply(0x55),
            CMD_KBD_TEST => self.push_reply(0x00),
            CMD_AUX_TEST => self.push_reply(AUX_TEST_NO_PORT),
            CMD_DISABLE_AUX => self.ctr |= CTR_AUX_DISABLE,
            CMD_ENABLE_AUX => self.ctr &= !CTR_AUX_DISABLE,
            CMD_DISABLE_KBD => self.ctr |= CTR_KBD_DISABLE,
            CMD_ENABLE_KBD => self.ctr &= !CTR_KBD_DISABLE,
            CMD_WRITE_KBD_OUTPUT => self.pending = Pending::KbdOutput,
            CMD_WRITE_AUX_OUTPUT => self.pending = Pending::AuxOutput,
            CMD_WRITE_AUX => self.pending = Pending::Aux,
            CMD_RESET_CPU => {
                log::info!("i8042: guest pulsed the reset line; rebooting");
                self.exit.request(ExitKind::Reboot);
            }
            other => log::debug!("i8042: command {other:#x} ignored"),
        }
    }

    fn data(&mut self, value: u8) {
        self.status &= !STATUS_COMMAND;
        match std::mem::replace(&mut self.pending, Pending::Keyboard) {
            Pending::Ctr => {
                let enabled = value & CTR_KBD_INT != 0 && self.ctr & CTR_KBD_INT == 0;
                self.ctr = value;
                if enabled && !self.output.is_empty() {
                    self.raise_kbd_irq();
                }
            }
            Pending::KbdOutput => self.push_keyboard(&[value]),
            // Answered without the aux-data status bit: the guest's loopback check fails at
            // once and it concludes there is no aux port (no timeout).
            Pending::AuxOutput => self.push_reply(value),
            Pending::Aux => log::debug!("i8042: byte {value:#x} for the absent aux port"),
            Pending::KeyboardArg(cmd) => self.keyboard_arg(cmd, value),
            Pending::Keyboard => self.keyboard_command(value),
        }
    }

    fn keyboard_command(&mut self, cmd: u8) {
        match cmd {
            KBD_CMD_RESET => self.push_keyboard(&[KBD_ACK, KBD_BAT_OK]),
            KBD_CMD_GET_ID => {
                let id = if self.ctr & CTR_TRANSLATE != 0 {
                    KBD_ID_TRANSLATED
                } else {
                    KBD_ID
                };
                self.push_keyboard(&[KBD_ACK, id[0], id[1]]);
            }
            KBD_CMD_ECHO => self.push_keyboard(&[KBD_ECHO]),
            KBD_CMD_SET_LEDS | KBD_CMD_SCANCODE_SET | KBD_CMD_SET_REPEAT => {
                self.pending = Pending::KeyboardArg(cmd);
                self.push_keyboard(&[KBD_ACK]);
            }
            // Enable, disable, defaults and the set-3 key modes: acknowledged, no state.
            KBD_CMD_ENABLE | KBD_CMD_DISABLE | 0xf6..=0xfd => self.push_keyboard(&[KBD_ACK]),
            other => {
                log::debug!("i8042: keyboard command {other:#x} unknown; asking to resend");
                self.push_keyboard(&[KBD_RESEND]);
            }
        }
    }

    fn keyboard_arg(&mut self, cmd: u8, arg: u8) {
        if cmd == KBD_CMD_SCANCODE_SET && arg == 0 {
            // "Which set?": set 2 (0x41 once translated).
            let set = if self.ctr & CTR_TRANSLATE != 0 {
                0x41
            } else {
                0x02
            };
            self.push_keyboard(&[KBD_ACK, set]);
        } else {
            self.push_keyboard(&[KBD_ACK]);
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
            OFFSET_DATA => self.read_data(),
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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[derive(Default)]
    struct CountingIrq(AtomicUsize);

    impl Interrupt for CountingIrq {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    impl CountingIrq {
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    struct Setup {
        bus: Bus,
        exit: Arc<ExitRequest>,
        irq: Arc<CountingIrq>,
        dev: Arc<Mutex<I8042>>,
    }

    fn setup_full() -> Setup {
        let exit = Arc::new(ExitRequest::new().unwrap());
        let irq = Arc::new(CountingIrq::default());
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(I8042::new(exit.clone(), irq.clone())));
        bus.insert(dev.clone(), I8042_BASE, I8042_LEN).unwrap();
        Setup {
            bus,
            exit,
            irq,
            dev,
        }
    }

    fn setup() -> (Bus, Arc<ExitRequest>) {
        let s = setup_full();
        (s.bus, s.exit)
    }

    /// Reads every pending byte the way Linux's i8042 driver does (status, then data).
    fn drain(bus: &Bus) -> Vec<u8> {
        let mut out = Vec::new();
        while inb(bus, 0x64) & STATUS_OUTPUT_FULL != 0 {
            out.push(inb(bus, 0x60));
            assert!(out.len() <= OUTPUT_MAX, "output never empties");
        }
        out
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
        assert_eq!(inb(&bus, 0x64), STATUS_SYSTEM_FLAG | STATUS_NOT_INHIBITED);
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

    #[test]
    fn aux_probe_when_loopback_and_test_then_answers_at_once_as_no_aux_port() {
        let (bus, _exit) = setup();
        bus.write(0x64, &[CMD_WRITE_AUX_OUTPUT]);
        bus.write(0x60, &[0x5a]);
        let status = inb(&bus, 0x64);
        assert_eq!(status & STATUS_OUTPUT_FULL, STATUS_OUTPUT_FULL);
        assert_eq!(
            status & STATUS_AUX_DATA,
            0,
            "loopback must not look like aux data"
        );
        assert_eq!(inb(&bus, 0x60), 0x5a);
        bus.write(0x64, &[CMD_AUX_TEST]);
        assert_eq!(drain(&bus), vec![AUX_TEST_NO_PORT]);
    }

    #[test]
    fn port_commands_when_disable_and_enable_then_control_byte_bits_follow() {
        let (bus, _exit) = setup();
        bus.write(0x64, &[CMD_DISABLE_KBD]);
        bus.write(0x64, &[CMD_DISABLE_AUX]);
        bus.write(0x64, &[CMD_READ_CTR]);
        assert_eq!(
            drain(&bus),
            vec![DEFAULT_CTR | CTR_KBD_DISABLE | CTR_AUX_DISABLE]
        );
        bus.write(0x64, &[CMD_ENABLE_KBD]);
        bus.write(0x64, &[CMD_ENABLE_AUX]);
        bus.write(0x64, &[CMD_READ_CTR]);
        assert_eq!(drain(&bus), vec![DEFAULT_CTR]);
    }

    #[test]
    fn keyboard_when_atkbd_probe_sequence_then_acks_id_and_irq_per_byte() {
        let s = setup_full();
        s.bus.write(0x60, &[KBD_CMD_GET_ID]);
        assert_eq!(s.irq.count(), 1, "first byte raises IRQ 1");
        assert_eq!(inb(&s.bus, 0x60), KBD_ACK);
        assert_eq!(s.irq.count(), 2, "next queued byte raises it again");
        assert_eq!(inb(&s.bus, 0x60), 0xab);
        assert_eq!(inb(&s.bus, 0x60), 0x41, "translated id");
        assert_eq!(s.irq.count(), 3, "no interrupt once the buffer is empty");

        s.bus.write(0x60, &[KBD_CMD_SET_LEDS]);
        assert_eq!(drain(&s.bus), vec![KBD_ACK]);
        s.bus.write(0x60, &[0x00]);
        assert_eq!(drain(&s.bus), vec![KBD_ACK], "LED argument acknowledged");
        s.bus.write(0x60, &[KBD_CMD_SCANCODE_SET]);
        s.bus.write(0x60, &[0x00]);
        assert_eq!(drain(&s.bus), vec![KBD_ACK, KBD_ACK, 0x41]);
        s.bus.write(0x60, &[KBD_CMD_RESET]);
        assert_eq!(drain(&s.bus), vec![KBD_ACK, KBD_BAT_OK]);
        s.bus.write(0x60, &[KBD_CMD_ENABLE]);
        assert_eq!(drain(&s.bus), vec![KBD_ACK]);
        s.bus.write(0x60, &[0x01]);
        assert_eq!(drain(&s.bus), vec![KBD_RESEND], "unknown command");
    }

    #[test]
    fn keyboard_when_interrupt_disabled_then_no_irq_until_enabled() {
        let s = setup_full();
        s.bus.write(0x64, &[CMD_WRITE_CTR]);
        s.bus.write(0x60, &[DEFAULT_CTR & !CTR_KBD_INT]);
        s.bus.write(0x60, &[KBD_CMD_ECHO]);
        assert_eq!(s.irq.count(), 0);
        s.bus.write(0x64, &[CMD_WRITE_CTR]);
        s.bus.write(0x60, &[DEFAULT_CTR]);
        assert_eq!(
            s.irq.count(),
            1,
            "enabling the interrupt with a byte waiting raises it"
        );
        assert_eq!(drain(&s.bus), vec![KBD_ECHO]);
    }

    #[test]
    fn ctrl_alt_del_when_translating_then_set1_presses_and_releases() {
        let s = setup_full();
        s.dev.lock().unwrap().send_ctrl_alt_del();
        assert_eq!(s.irq.count(), 1);
        assert_eq!(drain(&s.bus), CTRL_ALT_DEL_SET1.to_vec());
        assert_eq!(s.irq.count(), CTRL_ALT_DEL_SET1.len());
        assert_eq!(s.exit.kind(), None);
    }

    #[test]
    fn ctrl_alt_del_when_not_translating_then_set2_codes() {
        let s = setup_full();
        s.bus.write(0x64, &[CMD_WRITE_CTR]);
        s.bus.write(0x60, &[DEFAULT_CTR & !CTR_TRANSLATE]);
        s.dev.lock().unwrap().send_ctrl_alt_del();
        assert_eq!(drain(&s.bus), CTRL_ALT_DEL_SET2.to_vec());
    }

    #[test]
    fn output_when_guest_never_reads_then_bounded() {
        let s = setup_full();
        for _ in 0..100 {
            s.bus.write(0x60, &[KBD_CMD_GET_ID]);
        }
        assert_eq!(drain(&s.bus).len(), OUTPUT_MAX);
    }
}
