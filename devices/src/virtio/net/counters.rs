//! Traffic counters of one virtio-net device, readable from any thread (the control socket)
//! without taking the device lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, updated by the device on the event loop thread.
#[derive(Debug, Default)]
pub struct NetCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
    bad_descriptors: AtomicU64,
}

/// A copy of the counters at one moment. Bytes count Ethernet frames without the
/// virtio-net header.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_packets: u64,
    /// Bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Frames read from the TAP but not delivered (too large for the guest's buffers, with
    /// offloads the guest did not accept, or lost on reset).
    pub rx_dropped: u64,
    /// Frames sent by the guest to the TAP.
    pub tx_packets: u64,
    /// Bytes sent by the guest to the TAP.
    pub tx_bytes: u64,
    /// Well-formed guest frames the TAP refused.
    pub tx_dropped: u64,
    /// Malformed descriptor chains (either queue), returned unused and otherwise ignored.
    pub bad_descriptors: u64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl NetCounters {
    /// A snapshot of all counters (each read atomically; not a consistent cut).
    pub fn snapshot(&self) -> NetStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            rx_packets: get(&self.rx_packets),
            rx_bytes: get(&self.rx_bytes),
            rx_dropped: get(&self.rx_dropped),
            tx_packets: get(&self.tx_packets),
            tx_bytes: get(&self.tx_bytes),
            tx_dropped: get(&self.tx_dropped),
            bad_descriptors: get(&self.bad_descriptors),
        }
    }

    pub(super) fn rx_frame(&self, frame_len: usize) {
        add(&self.rx_packets, 1);
        add(&self.rx_bytes, frame_len as u64);
    }

    pub(super) fn rx_drop(&self) {
        add(&self.rx_dropped, 1);
    }

    pub(super) fn tx_frame(&self, frame_len: usize) {
        add(&self.tx_packets, 1);
        add(&self.tx_bytes, frame_len as u64);
    }

    pub(super) fn tx_drop(&self) {
        add(&self.tx_dropped, 1);
    }

    pub(super) fn bad_descriptor(&self, n: u64) {
        add(&self.bad_descriptors, n);
    }
}
