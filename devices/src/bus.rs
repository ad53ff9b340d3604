//! Port I/O and MMIO dispatch: a map of non-overlapping address ranges to devices.
//!
//! Filled in by the devices work item: `BusDevice`, `Bus::insert` (rejects overlaps and empty
//! ranges), `Bus::read`/`Bus::write` returning whether a device claimed the access.
