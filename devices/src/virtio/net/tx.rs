//! Transmit path: frames from the guest's transmit queue to the backend.
//!
//! Each chain is checked whole (direction, guest memory, header present, not larger than
//! the largest frame), copied out and written to the backend in one call, so the TAP sees
//! the guest's virtio-net header and applies the offloads it asks for. Chains are always
//! returned to the guest, bad or not, so its buffers are never lost.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::chain::{check_chain, Direction};
use super::device::{Net, NetBackend, MAX_FRAME_LEN};
use super::tap::VNET_HDR_LEN;
use crate::virtio::queue_loop::{serve_available, Served};

/// Chains served per call, so a guest that keeps the transmit queue full cannot starve the
/// receive path; the device then re-signals its own transmit eventfd to continue.
pub const TX_BUDGET: u32 = 256;

/// What one [`Net::process_tx`] call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxOutcome {
    /// Chains returned to the guest.
    pub used: u32,
    /// Whether the guest was interrupted.
    pub notified: bool,
    /// Whether chains were left in the ring (budget spent, or the shared loop stopped on a
    /// re-check race); the device re-signalled itself to continue.
    pub more: bool,
}

/// Whether the guest's available index is more than a queue size ahead of the device.
fn avail_index_invalid(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    match queue.avail_idx(mem, Ordering::Acquire) {
        Ok(idx) => (idx - Wrapping(queue.next_avail())).0 > queue.size(),
        Err(_) => false,
    }
}

impl<B: NetBackend> Net<B> {
    /// Sends the available transmit chains to the backend (up to [`TX_BUDGET`]) and
    /// interrupts the guest if it asked to be. Does nothing while inactive.
    pub fn process_tx(&mut self) -> TxOutcome {
        let Some(active) = self.active.as_mut() else {
            return TxOutcome::default();
        };
        let (backend, buf, counters) = (&mut self.backend, &mut self.tx_buf, &*self.counters);
        let (mem, queue) = (&active.mem, &mut active.tx_queue);
        let size = queue.size();
        if avail_index_invalid(queue, mem) {
            // Serving would find nothing to pop while the ring claims entries; wait for the
            // next kick. (The shared queue loop guards against this too.)
            crate::guest_warn!("virtio-net: invalid transmit ring index; transmit stalled");
            return TxOutcome::default();
        }
        let mut budget = TX_BUDGET;
        let drained = serve_available("virtio-net tx", queue, mem, |chain| {
            if budget == 0 {
                return Served::Later;
            }
            budget -= 1;
            let head = chain.head_index();
            let limits = (VNET_HDR_LEN, VNET_HDR_LEN + MAX_FRAME_LEN);
            let buffers = match check_chain(chain, mem, size, Direction::DeviceReads, limits) {
                Ok(b) => b,
                Err(e) => {
                    crate::guest_warn!("virtio-net: bad transmit chain at head {head}: {e}");
                    counters.bad_descriptor(1);
                    return Served::Used(0);
                }
            };
            if let Err(e) = buffers.read_all(mem, buf) {
                crate::guest_error!("virtio-net: cannot read a transmit chain: {e}");
                counters.tx_drop();
                return Served::Used(0);
            }
            match backend.write_frame(buf) {
                Ok(_) => counters.tx_frame(buf.len() - VNET_HDR_LEN),
                Err(e) => {
                    // The TAP refuses malformed offload requests and runt frames (EINVAL),
                    // and frames while the link is down (EIO).
                    log::debug!(
                        "virtio-net: host side refused a {}-byte frame: {e}",
                        buf.len()
                    );
                    counters.tx_drop();
                }
            }
            Served::Used(0)
        });
        counters.bad_descriptor(u64::from(drained.bad_heads));
        if drained.notify {
            active.signal_used();
        }
        // The shared loop also stops when a re-check finds entries it did not pop in that
        // round; that happens for a valid ring too, when the guest publishes between the
        // last pop and the re-check (and, seeing notifications off, does not kick). Only an
        // index that is really out of range may wait for the guest's next kick.
        let spurious_stall = drained.stalled && !avail_index_invalid(&active.tx_queue, mem);
        if drained.stopped || spurious_stall {
            // The rest waits in the ring; come back after the other event sources had a turn.
            if let Err(e) = active.tx_kick.write(1) {
                crate::guest_error!("virtio-net: cannot reschedule the transmit queue: {e}");
            }
        }
        TxOutcome {
            used: drained.used,
            notified: drained.notify,
            more: drained.stopped || spurious_stall,
        }
    }
}
