//! A minimal MC146818 CMOS RTC at ports 0x70 (index) and 0x71 (data): the current host time
//! (UTC, BCD, 24-hour), no update in progress, no alarms or periodic interrupts, and 128
//! bytes of CMOS RAM. Guests booted without ACPI (`acpi=off`) probe it (Linux `rtc_cmos`);
//! without it each probe read returned 0xff ("update in progress") and the probe polled until
//! it gave up. ACPI guests are told there is no CMOS RTC (FADT) and do not look.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// First port (index register).
pub const CMOS_BASE: u64 = 0x70;
/// Ports covered: index and data.
pub const CMOS_LEN: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Status A: 32.768 kHz time base, 1024 Hz rate; bit 7 (update in progress) clear.
const STATUS_A: u8 = 0x26;
/// Status B: 24-hour mode, BCD, no interrupts enabled.
const STATUS_B: u8 = 0x02;
/// Status D: valid RAM and time (battery good).
const STATUS_D: u8 = 0x80;

/// The RTC and its RAM.
#[derive(Debug)]
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    now: fn() -> u64,
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

impl Cmos {
    /// An RTC showing the host's time.
    pub fn new() -> Self {
        Self::with_clock(host_unix_seconds)
    }

    /// An RTC whose clock reads `now` (seconds since the Unix epoch, UTC).
    pub fn with_clock(now: fn() -> u64) -> Self {
        Self {
            index: 0,
            ram: [0; 128],
            now,
        }
    }

    fn read_register(&self, reg: u8) -> u8 {
        let t = civil_time((self.now)());
        match reg {
            REG_SECONDS => bcd(t.second),
            REG_MINUTES => bcd(t.minute),
            REG_HOURS => bcd(t.hour),
            REG_WEEKDAY => bcd(t.weekday),
            REG_DAY => bcd(t.day),
            REG_MONTH => bcd(t.month),
            REG_YEAR => bcd((t.year % 100) as u8),
            REG_CENTURY => bcd((t.year / 100 % 100) as u8),
            REG_STATUS_A => STATUS_A,
            REG_STATUS_B => STATUS_B,
            REG_STATUS_C => 0,
            REG_STATUS_D => STATUS_D,
            other => self.ram[usize::from(other)],
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        match reg {
            REG_SECONDS..=REG_STATUS_D | REG_CENTURY => {
                log::debug!("cmos: write {value:#x} to clock register {reg:#x} ignored");
            }
            other => self.ram[usize::from(other)] = value,
        }
    }
}

fn host_unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

#[derive(Debug, PartialEq, Eq)]
struct CivilTime {
    year: u32,
    month: u8,
    day: u8,
    weekday: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

/// UTC calendar time of `secs` since the Unix epoch (days-to-civil, proleptic Gregorian).
fn civil_time(secs: u64) -> CivilTime {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
    let weekday = ((days + 4) % 7 + 1) as u8;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
    CivilTime {
        year,
        month,
        day,
        weekday,
        hour: (rem / 3600) as u8,
        minute: (rem / 60 % 60) as u8,
        second: (rem % 60) as u8,
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(byte) = data.first_mut() else {
            return;
        };
        *byte = match offset {
            0 => self.index,
            _ => self.read_register(self.index),
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            // Bit 7 masks NMIs on real hardware; the index is the low 7 bits.
            0 => self.index = value & 0x7f,
            _ => self.write_register(self.index, value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use std::sync::{Arc, Mutex};

    /// 2026-12-02 20:25:07 UTC, a Wednesday.
    const NOW: u64 = 1_796_243_107;

    fn setup() -> Bus {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Cmos::with_clock(|| NOW)));
        bus.insert(dev, CMOS_BASE, CMOS_LEN).unwrap();
        bus
    }

    fn reg(bus: &Bus, index: u8) -> u8 {
        assert!(bus.write(0x70, &[index]));
        let mut b = [0xff];
        assert!(bus.read(0x71, &mut b));
        b[0]
    }

    #[test]
    fn read_when_time_registers_then_bcd_utc_and_no_update_in_progress() {
        let bus = setup();
        let got: Vec<u8> = [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32]
            .iter()
            .map(|&r| reg(&bus, r))
            .collect();
        assert_eq!(got, vec![0x07, 0x25, 0x20, 0x04, 0x02, 0x12, 0x26, 0x20]);
        assert_eq!(reg(&bus, REG_STATUS_A) & 0x80, 0, "UIP clear");
        assert_eq!(reg(&bus, REG_STATUS_B), STATUS_B);
        assert_eq!(reg(&bus, REG_STATUS_D), STATUS_D);
        // NMI-mask bit in the index is ignored.
        assert_eq!(reg(&bus, 0x80), 0x07);
    }

    #[test]
    fn write_when_ram_then_read_back_and_clock_registers_unchanged() {
        let bus = setup();
        bus.write(0x70, &[0x40]);
        bus.write(0x71, &[0xab]);
        bus.write(0x70, &[REG_SECONDS]);
        bus.write(0x71, &[0x59]);
        assert_eq!(reg(&bus, 0x40), 0xab);
        assert_eq!(reg(&bus, REG_SECONDS), 0x07);
    }

    #[test]
    fn civil_time_when_known_dates_then_match_calendar() {
        assert_eq!(
            civil_time(0),
            CivilTime {
                year: 1970,
                month: 1,
                day: 1,
                weekday: 5,
                hour: 0,
                minute: 0,
                second: 0
            }
        );
        // 2000-02-29 12:00:00, a Tuesday.
        let leap = civil_time(951_825_600);
        assert_eq!(
            (leap.year, leap.month, leap.day, leap.weekday),
            (2000, 2, 29, 3)
        );
    }
}
