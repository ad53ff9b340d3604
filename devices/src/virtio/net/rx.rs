//! Receive path: frames from the backend into the guest's receive queue.
//!
//! A frame read from the backend stays in a pending buffer until the guest has buffers for
//! it, so nothing read is lost while the guest is slow. Chains popped for a frame that does
//! not fit yet (mergeable buffers: one frame may span several chains) are held, not pushed
//! back, so the queue's `avail_event` keeps pointing past them and the guest's next refill
//! produces a kick. When the guest runs out of buffers the device reports
//! [`RxOutcome::NeedBuffers`] and its glue stops watching the backend until the next receive
//! queue notification.

use std::io;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};
use virtio_queue::QueueT;

use super::chain::{check_chain, Buffers, Direction};
use super::counters::NetCounters;
use super::device::{Active, Net, NetBackend, MAX_FRAME_LEN, MIN_FRAME_LEN};
use super::tap::VNET_HDR_LEN;

/// Frames moved per call, so that a flooding host side cannot starve the transmit queue;
/// the backend stays readable and the event loop calls again.
pub const RX_BUDGET: usize = 64;

/// Why [`Net::process_rx`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOutcome {
    /// The device is not active.
    Inactive,
    /// The backend has no more frames.
    BackendEmpty,
    /// [`RX_BUDGET`] frames were moved; more may wait.
    Budget,
    /// A frame is pending and the guest has no (more) buffers: stop reading the backend
    /// until the guest notifies the receive queue.
    NeedBuffers,
    /// Reading the backend failed (other than `WouldBlock`); stop watching it.
    BackendFailed,
}

/// A chain popped from the receive queue and checked, not yet returned.
struct Held {
    head: u16,
    buffers: Buffers,
}

/// Receive state that survives between events (not between resets).
pub(super) struct RxState {
    buf: Vec<u8>,
    /// Length of the frame (with header) waiting in `buf`.
    pending: Option<usize>,
    held: Vec<Held>,
}

enum Delivery {
    Done,
    NoBuffers,
    /// The frame cannot be delivered (too large for the guest's buffers): dropped.
    Dropped,
}

impl RxState {
    pub(super) fn new() -> Self {
        Self {
            // One byte more than the largest frame tells an oversized (truncated) read.
            buf: vec![0; VNET_HDR_LEN + MAX_FRAME_LEN + 1],
            pending: None,
            held: Vec::new(),
        }
    }

    /// Forgets the pending frame (counted as dropped) and the held chains (a reset
    /// invalidates them).
    pub(super) fn clear(&mut self, counters: &NetCounters) {
        if self.pending.take().is_some() {
            counters.rx_drop();
        }
        self.held.clear();
    }

    /// Whether a frame waits for guest buffers.
    pub(super) fn has_pending(&self) -> bool {
        self.pending.is_some()
    }
}

/// Why a frame from the backend is not passed on.
fn frame_problem(frame: &[u8], active: &Active) -> Option<&'static str> {
    if frame.len() < VNET_HDR_LEN + MIN_FRAME_LEN {
        return Some("shorter than an Ethernet header");
    }
    if frame.len() > VNET_HDR_LEN + MAX_FRAME_LEN {
        return Some("larger than the largest frame");
    }
    let (flags, gso_type) = (u32::from(frame[0]), u32::from(frame[1]));
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && !active.has(VIRTIO_NET_F_GUEST_CSUM) {
        return Some("needs checksum offload the guest did not accept");
    }
    let accepted = match gso_type {
        VIRTIO_NET_HDR_GSO_NONE => true,
        VIRTIO_NET_HDR_GSO_TCPV4 => active.has(VIRTIO_NET_F_GUEST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => active.has(VIRTIO_NET_F_GUEST_TSO6),
        _ => false,
    };
    (!accepted).then_some("uses a segmentation offload the guest did not accept")
}

/// Keeps only the header flags the guest may see: the TAP marks frames whose checksum the
/// host verified (DATA_VALID) even without checksum offload, but a driver that did not ack
/// GUEST_CSUM must get flags 0.
fn sanitize_flags(frame: &mut [u8], active: &Active) {
    let allowed = if active.has(VIRTIO_NET_F_GUEST_CSUM) {
        VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID
    } else {
        0
    };
    if let Some(flags) = frame.first_mut() {
        // The allowed flags fit in the one-byte field.
        *flags &= allowed as u8;
    }
}

impl<B: NetBackend> Net<B> {
    /// Moves frames from the backend into the receive queue until the backend is empty, the
    /// guest has no buffers, or the budget is spent; interrupts the guest if it asked to be.
    pub fn process_rx(&mut self) -> RxOutcome {
        let Some(active) = self.active.as_mut() else {
            return RxOutcome::Inactive;
        };
        let (rx, backend, counters) = (&mut self.rx, &mut self.backend, &*self.counters);
        let mut used = false;
        let mut frames = 0;
        let outcome = loop {
            let len = match rx.pending {
                Some(len) => len,
                None if frames >= RX_BUDGET => break RxOutcome::Budget,
                None => match backend.read_frame(&mut rx.buf) {
                    Ok(0) => {
                        log::error!("virtio-net: the host side was closed");
                        break RxOutcome::BackendFailed;
                    }
                    Ok(len) => {
                        // Dropped frames count against the budget too.
                        frames += 1;
                        if let Some(problem) = frame_problem(&rx.buf[..len], active) {
                            log::debug!("virtio-net: {len}-byte frame from host {problem}");
                            counters.rx_drop();
                            continue;
                        }
                        sanitize_flags(&mut rx.buf[..len], active);
                        rx.pending = Some(len);
                        len
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        break RxOutcome::BackendEmpty
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::error!("virtio-net: cannot read from the host side: {e}");
                        break RxOutcome::BackendFailed;
                    }
                },
            };
            match rx.deliver(active, counters, len, &mut used) {
                Delivery::Done => {
                    rx.pending = None;
                    counters.rx_frame(len - VNET_HDR_LEN);
                }
                Delivery::Dropped => {
                    rx.pending = None;
                    counters.rx_drop();
                }
                Delivery::NoBuffers => break RxOutcome::NeedBuffers,
            }
        };
        if outcome != RxOutcome::NeedBuffers {
            // Buffers are left (or nothing needs them): kicks would be wasted. When they run
            // out, `deliver` re-enables notifications and re-checks.
            if let Err(e) = active.rx_queue.disable_notification(&active.mem) {
                crate::guest_error!("virtio-net: cannot disable receive notifications: {e}");
            }
        }
        if used
            && active
                .rx_queue
                .needs_notification(&active.mem)
                .unwrap_or(true)
        {
            active.signal_used();
        }
        outcome
    }
}

impl RxState {
    /// Puts the pending frame of `len` bytes into held and newly popped chains.
    fn deliver(
        &mut self,
        active: &mut Active,
        counters: &NetCounters,
        len: usize,
        used: &mut bool,
    ) -> Delivery {
        let mergeable = active.has(VIRTIO_NET_F_MRG_RXBUF);
        loop {
            let capacity: usize = if mergeable {
                self.held.iter().map(|h| h.buffers.len()).sum()
            } else {
                self.held.first().map_or(0, |h| h.buffers.len())
            };
            if capacity >= len {
                return self.write_frame(active, len, used);
            }
            if !self.held.is_empty()
                && (!mergeable || self.held.len() >= usize::from(active.rx_queue.size()))
            {
                // Without mergeable buffers one chain must hold the whole frame; with them,
                // holding every entry of the queue and still lacking room means it never fits.
                log::debug!("virtio-net: {len}-byte frame does not fit the guest's buffers");
                return Delivery::Dropped;
            }
            if !self.pop_chain(active, counters, used) {
                return Delivery::NoBuffers;
            }
        }
    }

    /// Pops and checks one receive chain; bad ones are returned empty and counted. Returns
    /// false when the queue is empty (with notifications re-enabled) or its available index
    /// is invalid.
    fn pop_chain(&mut self, active: &mut Active, counters: &NetCounters, used: &mut bool) -> bool {
        let (mem, q) = (&active.mem, &mut active.rx_queue);
        let mut rechecked = false;
        loop {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                match q.enable_notification(mem) {
                    // Buffers arrived while notifications were off: pop again.
                    Ok(true) if !rechecked => {
                        rechecked = true;
                        continue;
                    }
                    // Still nothing to pop although the ring claims entries: the guest
                    // published an available index more than a queue size ahead. Wait for
                    // the next kick instead of spinning.
                    Ok(true) => {
                        crate::guest_warn!(
                            "virtio-net: invalid receive ring index; receive stalled"
                        );
                        return false;
                    }
                    Ok(false) => return false,
                    Err(e) => {
                        crate::guest_error!("virtio-net: cannot enable receive notifications: {e}");
                        return false;
                    }
                }
            };
            let head = chain.head_index();
            if head >= q.size() {
                crate::guest_warn!("virtio-net: receive ring names descriptor {head}; skipped");
                counters.bad_descriptor(1);
                continue;
            }
            let limits = (VNET_HDR_LEN, usize::MAX);
            match check_chain(chain, mem, q.size(), Direction::DeviceWrites, limits) {
                Ok(buffers) => {
                    self.held.push(Held { head, buffers });
                    return true;
                }
                Err(e) => {
                    crate::guest_warn!("virtio-net: bad receive chain at head {head}: {e}");
                    counters.bad_descriptor(1);
                    add_used(q, mem, head, 0, used);
                }
            }
        }
    }

    /// Writes the frame across the held chains (header's `num_buffers` set to the number of
    /// chains used) and returns them to the guest.
    fn write_frame(&mut self, active: &mut Active, len: usize, used: &mut bool) -> Delivery {
        let mut chains = 0usize;
        let mut covered = 0usize;
        for h in &self.held {
            if covered >= len {
                break;
            }
            covered += h.buffers.len();
            chains += 1;
        }
        // At most the queue size (<= 32768) chains are ever held.
        let num_buffers = u16::try_from(chains).unwrap_or(u16::MAX);
        self.buf[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        let mut offset = 0;
        for h in self.held.drain(..chains) {
            let part = &self.buf[offset..len];
            let n = match h.buffers.write_all(&active.mem, part) {
                Ok(n) => n,
                Err(e) => {
                    // The range was checked; only a racing memory change could get here.
                    crate::guest_error!("virtio-net: cannot write a received frame: {e}");
                    0
                }
            };
            offset += n.min(part.len());
            // n <= the chain's length, which came from a u32 sum bounded by the frame size.
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            add_used(&mut active.rx_queue, &active.mem, h.head, n, used);
        }
        Delivery::Done
    }
}

fn add_used(
    q: &mut virtio_queue::Queue,
    mem: &vm_memory::GuestMemoryMmap,
    head: u16,
    len: u32,
    used: &mut bool,
) {
    match q.add_used(mem, head, len) {
        Ok(()) => *used = true,
        Err(e) => crate::guest_error!("virtio-net: cannot return receive chain {head}: {e}"),
    }
}
