//! Port I/O and MMIO dispatch: a map of non-overlapping address ranges to devices.
//!
//! The VMM builds one [`Bus`] for port I/O and one for MMIO while setting the machine up
//! (`&mut Bus`), then shares it read-only with every vCPU thread (`Arc<Bus>`). Each device sits
//! behind its own `Mutex`, so two vCPUs touching different devices never contend.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A device reachable through a [`Bus`].
///
/// `offset` is relative to the base address the device was inserted at, so a device does not
/// need to know where the VMM placed it. Accesses are guest-controlled: implementations must
/// never panic on an unexpected offset or length (log and ignore instead; fill reads with 0 or
/// leave them untouched).
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// An address range `[base, base + len)` on a bus. `len` is never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BusRange {
    /// First address of the range.
    pub base: u64,
    /// Number of addresses in the range.
    pub len: u64,
}

impl BusRange {
    /// The last address inside the range (inclusive), so ranges ending at `u64::MAX` work.
    fn last(&self) -> u64 {
        self.base + (self.len - 1)
    }

    fn overlaps(&self, other: &BusRange) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }
}

impl fmt::Display for BusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..={:#x}", self.base, self.last())
    }
}

/// Why a device could not be added to a [`Bus`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range has length 0 (it would never match an access).
    #[error("cannot insert an empty bus range at {base:#x}")]
    InsertEmpty {
        /// Base address of the rejected range.
        base: u64,
    },
    /// `base + len` does not fit in 64 bits.
    #[error("bus range at {base:#x} with length {len:#x} wraps around the address space")]
    InsertWraps {
        /// Base address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The range overlaps a range that is already on the bus.
    #[error("bus range {new} overlaps existing range {existing}")]
    InsertOverlap {
        /// The range that was rejected.
        new: BusRange,
        /// The range already on the bus that it collides with.
        existing: BusRange,
    },
}

/// A shared, lockable bus device, as stored in a [`Bus`].
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

/// Maps non-overlapping address ranges to devices.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<BusRange, SharedBusDevice>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.devices.keys()).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    ///
    /// The same device may be inserted at several ranges (e.g. i8042 ports 0x60 and 0x64).
    pub fn insert(&mut self, device: SharedBusDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::InsertEmpty { base });
        }
        if base.checked_add(len - 1).is_none() {
            return Err(BusError::InsertWraps { base, len });
        }
        let new = BusRange { base, len };
        // Only the neighbours can overlap: the last range starting at or before `new.last()`
        // is the only candidate, since existing ranges do not overlap each other.
        let candidate = self
            .devices
            .range(
                ..=BusRange {
                    base: new.last(),
                    len: u64::MAX,
                },
            )
            .next_back();
        if let Some((existing, _)) = candidate {
            if existing.overlaps(&new) {
                return Err(BusError::InsertOverlap {
                    new,
                    existing: *existing,
                });
            }
        }
        self.devices.insert(new, device);
        Ok(())
    }

    /// The ranges on the bus, in address order.
    pub fn ranges(&self) -> impl Iterator<Item = BusRange> + '_ {
        self.devices.keys().copied()
    }

    /// Finds the device whose range holds the whole access `[addr, addr + len)`.
    fn resolve(&self, addr: u64, len: usize) -> Option<(u64, &SharedBusDevice)> {
        let (range, device) = self
            .devices
            .range(
                ..=BusRange {
                    base: addr,
                    len: u64::MAX,
                },
            )
            .next_back()?;
        let offset = addr - range.base;
        let len = u64::try_from(len).ok()?;
        // Zero-length accesses still have to start inside the range.
        if offset >= range.len || len > range.len - offset {
            return None;
        }
        Some((offset, device))
    }

    /// Reads `data.len()` bytes at `addr`. Returns false (leaving `data` untouched) if no
    /// device's range contains the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((offset, device)) = self.resolve(addr, data.len()) else {
            return false;
        };
        // A device that panicked while holding its lock is still usable: its state is
        // plain register values, and stopping every vCPU would be worse.
        device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(offset, data);
        true
    }

    /// Writes `data` at `addr`. Returns false if no device's range contains the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((offset, device)) = self.resolve(addr, data.len()) else {
            return false;
        };
        device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(offset, data);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access and answers reads with the offset's low byte.
    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
        last_read: Option<(u64, usize)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.last_read = Some((offset, data.len()));
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn insert_when_empty_range_then_rejected() {
        let mut bus = Bus::new();
        assert_eq!(
            bus.insert(recorder(), 0x10, 0).unwrap_err(),
            BusError::InsertEmpty { base: 0x10 }
        );
    }

    #[test]
    fn insert_when_overlapping_then_error_names_both_ranges() {
        let mut bus = Bus::new();
        bus.insert(recorder(), 0x100, 0x10).unwrap();
        let cases = [
            (0xf8, 0x10),
            (0x108, 0x10),
            (0x104, 2),
            (0xf0, 0x100),
            (0x10f, 1),
        ];
        for (base, len) in cases {
            let err = bus.insert(recorder(), base, len).unwrap_err();
            assert_eq!(
                err,
                BusError::InsertOverlap {
                    new: BusRange { base, len },
                    existing: BusRange {
                        base: 0x100,
                        len: 0x10
                    },
                },
                "case {base:#x}+{len:#x}"
            );
            let msg = err.to_string();
            assert!(msg.contains("0x100..=0x10f"), "{msg}");
        }
    }

    #[test]
    fn insert_when_adjacent_then_accepted() {
        let mut bus = Bus::new();
        bus.insert(recorder(), 0x100, 0x10).unwrap();
        bus.insert(recorder(), 0xf0, 0x10).unwrap();
        bus.insert(recorder(), 0x110, 0x10).unwrap();
        let ranges: Vec<_> = bus.ranges().map(|r| r.base).collect();
        assert_eq!(ranges, vec![0xf0, 0x100, 0x110]);
    }

    #[test]
    fn insert_when_range_wraps_then_rejected_but_end_of_space_ok() {
        let mut bus = Bus::new();
        assert_eq!(
            bus.insert(recorder(), u64::MAX, 2).unwrap_err(),
            BusError::InsertWraps {
                base: u64::MAX,
                len: 2
            }
        );
        bus.insert(recorder(), u64::MAX - 1, 2).unwrap();
        assert!(bus.write(u64::MAX, &[1]));
    }

    #[test]
    fn read_write_when_inside_range_then_device_sees_offset() {
        let mut bus = Bus::new();
        let a = recorder();
        let b = recorder();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(b.clone(), 0x400, 8).unwrap();

        assert!(bus.write(0x3fb, &[7, 8]));
        let mut data = [0u8; 4];
        assert!(bus.read(0x402, &mut data));

        assert_eq!(a.lock().unwrap().last_write, Some((3, vec![7, 8])));
        assert_eq!(b.lock().unwrap().last_read, Some((2, 4)));
        assert_eq!(data, [2; 4]);
        assert!(a.lock().unwrap().last_read.is_none());
    }

    #[test]
    fn read_write_when_no_device_or_crossing_end_then_false() {
        let mut bus = Bus::new();
        let a = recorder();
        bus.insert(a.clone(), 0x100, 0x10).unwrap();

        let mut data = [0xaa; 4];
        assert!(!bus.read(0xff, &mut data));
        assert!(!bus.read(0x110, &mut data));
        assert!(!bus.read(0x10e, &mut data), "crosses the end of the range");
        assert!(!bus.write(0x10d, &[0; 4]));
        assert_eq!(data, [0xaa; 4]);
        assert!(a.lock().unwrap().last_read.is_none());
        assert!(a.lock().unwrap().last_write.is_none());
        // The last full-width access that fits is accepted.
        assert!(bus.read(0x10c, &mut data));
    }

    #[test]
    fn bus_when_shared_across_threads_then_accesses_dispatch() {
        let mut bus = Bus::new();
        let a = recorder();
        bus.insert(a.clone(), 0x100, 0x10).unwrap();
        let bus = Arc::new(bus);
        let handles: Vec<_> = (0..4u8)
            .map(|i| {
                let bus = bus.clone();
                std::thread::spawn(move || assert!(bus.write(0x100 + u64::from(i), &[i])))
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(a.lock().unwrap().last_write.is_some());
    }
}
