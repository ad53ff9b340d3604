//! The queue loop every device runs: disable notifications, drain the available ring,
//! re-enable notifications, and go again if re-enabling says more arrived meanwhile.
//!
//! Generic over the guest memory type so that the VMM's devices (`GuestMemoryMmap`) and the
//! vhost-user daemon (the memory the frontend sent, behind a `GuestMemoryAtomic` guard) drain
//! their rings the same way.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;

/// What a device did with one descriptor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Return the chain to the guest with this many bytes written into it.
    Used(u32),
    /// The device cannot take the chain now (e.g. no packet to receive): leave it in the
    /// available ring and stop draining.
    Later,
}

/// The outcome of one [`serve_available`] call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Chains returned to the used ring.
    pub used: u32,
    /// Available-ring entries naming a descriptor outside the queue (nothing to return).
    pub bad_heads: u32,
    /// Whether the guest wants an interrupt for the chains used (EVENT_IDX aware).
    pub notify: bool,
    /// Whether draining stopped on [`Served::Later`].
    pub stopped: bool,
    /// Whether the available ring was unusable (index more than a queue size ahead).
    pub stalled: bool,
    /// Whether draining stopped because the budget was spent while chains may remain: the
    /// caller must call again (after serving its other queues) instead of waiting for a kick.
    pub exhausted: bool,
}

/// Pops every available chain of `queue` and hands it to `serve`. Guest memory errors on the
/// rings are logged (`name` prefixes the messages) and end the loop; nothing panics.
pub fn serve_available<M, F>(name: &str, queue: &mut Queue, mem: &M, serve: F) -> Drained
where
    M: GuestMemory,
    F: FnMut(DescriptorChain<&M>) -> Served,
{
    serve_available_budget(name, queue, mem, u32::MAX, serve)
}

/// [`serve_available`] that stops after `budget` ring entries (chains used plus bad heads),
/// so that one busy queue cannot starve the others a thread serves. When it stops on the
/// budget, [`Drained::exhausted`] is set, notifications are enabled again (correctness never
/// depends on the caller coming back), and the caller should call again soon: entries the
/// guest already published raise no further kick.
pub fn serve_available_budget<M, F>(
    name: &str,
    queue: &mut Queue,
    mem: &M,
    budget: u32,
    mut serve: F,
) -> Drained
where
    M: GuestMemory,
    F: FnMut(DescriptorChain<&M>) -> Served,
{
    let mut out = Drained::default();
    let mut empty_rounds = 0;
    'outer: loop {
        if let Err(e) = queue.disable_notification(mem) {
            crate::guest_error!("{name}: cannot disable queue notifications: {e}");
        }
        let mut popped = false;
        loop {
            if out.used.saturating_add(out.bad_heads) >= budget {
                out.exhausted = true;
                if let Err(e) = queue.enable_notification(mem) {
                    crate::guest_error!("{name}: cannot enable queue notifications: {e}");
                }
                break 'outer;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            popped = true;
            empty_rounds = 0;
            let head = chain.head_index();
            if head >= queue.size() {
                crate::guest_warn!("{name}: available ring names descriptor {head}; skipped");
                out.bad_heads += 1;
                continue;
            }
            match serve(chain) {
                Served::Used(len) => match queue.add_used(mem, head, len) {
                    Ok(()) => out.used += 1,
                    Err(e) => crate::guest_error!("{name}: cannot return chain {head}: {e}"),
                },
                Served::Later => {
                    queue.go_to_previous_position();
                    out.stopped = true;
                    // Keep notifications on: the device retries when the guest adds more
                    // or when its own backend becomes ready.
                    if let Err(e) = queue.enable_notification(mem) {
                        crate::guest_error!("{name}: cannot enable queue notifications: {e}");
                    }
                    break 'outer;
                }
            }
        }
        match queue.enable_notification(mem) {
            // More arrived while notifications were off: go again.
            Ok(true) if popped => continue,
            // Nothing was popped this round, yet the ring now claims entries. If the guest
            // published while notifications were off, one more round pops them (stopping here
            // would lose that kick). If a round still pops nothing — an index more than a
            // queue size ahead, or a ring that cannot be read — going again would spin
            // forever: stop until the next notification.
            Ok(true) if empty_rounds == 0 && avail_index_in_range(queue, mem) => {
                empty_rounds += 1;
                continue;
            }
            Ok(true) => {
                crate::guest_warn!("{name}: invalid available ring index; queue stalled");
                out.stalled = true;
                break;
            }
            Ok(false) => break,
            Err(e) => {
                crate::guest_error!("{name}: cannot enable queue notifications: {e}");
                break;
            }
        }
    }
    if out.used > 0 {
        // If used_event cannot be read, interrupting is the safe choice.
        out.notify = queue.needs_notification(mem).unwrap_or(true);
    }
    out
}

/// Whether the guest's available index is at most a queue size ahead of the device's.
fn avail_index_in_range<M: GuestMemory>(queue: &Queue, mem: &M) -> bool {
    match queue.avail_idx(mem, Ordering::Acquire) {
        Ok(idx) => (idx - Wrapping(queue.next_avail())).0 <= queue.size(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    fn setup(chains: u16) -> (GuestMemoryMmap, Vec<RawDescriptor>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let descs = (0..chains)
            .map(|i| SplitDescriptor::new(0x10000 + u64::from(i) * 0x100, 0x100, 2, 0).into())
            .collect();
        (mem, descs)
    }

    #[test]
    fn serve_when_device_defers_then_chain_stays_available() {
        let (mem, descs) = setup(3);
        let mock = MockSplitQueue::new(&mem, 16);
        mock.add_desc_chains(&descs, 0).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();

        let mut budget = 1;
        let first = serve_available("test", &mut queue, &mem, |_| {
            if budget == 0 {
                return Served::Later;
            }
            budget -= 1;
            Served::Used(7)
        });
        assert_eq!(first.used, 1);
        assert!(first.stopped && first.notify);

        let second = serve_available("test", &mut queue, &mem, |_| Served::Used(1));
        assert_eq!(
            second.used, 2,
            "the deferred chain is served on the next call"
        );
        assert!(!second.stopped);
        assert_eq!(mock.used().idx().load(), 3);
    }

    #[test]
    fn serve_when_ring_claims_entries_that_cannot_be_popped_then_returns_instead_of_spinning() {
        // A queue that is not ready pops nothing, yet its available index (in range) says
        // there is work: the loop must stop, not go round forever.
        let (mem, descs) = setup(2);
        let mock = MockSplitQueue::new(&mem, 16);
        mock.add_desc_chains(&descs, 0).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        queue.set_ready(false);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let drained = serve_available("test", &mut queue, &mem, |_| Served::Used(1));
            let _ = tx.send(drained);
        });
        let drained = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("serve_available spins on a ring it cannot pop");
        assert_eq!(drained.used, 0);
        assert!(drained.stalled);
    }

    #[test]
    fn serve_when_avail_index_too_far_ahead_then_returns_instead_of_spinning() {
        let (mem, descs) = setup(1);
        let mock = MockSplitQueue::new(&mem, 16);
        mock.add_desc_chains(&descs, 0).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        mock.avail().idx().store(40);

        let out = serve_available("test", &mut queue, &mem, |_| Served::Used(1));

        assert!(out.stalled);
        assert_eq!(out.used, 0);
    }

    #[test]
    fn serve_budget_when_more_chains_than_budget_then_stops_and_next_call_serves_the_rest() {
        let (mem, descs) = setup(5);
        let mock = MockSplitQueue::new(&mem, 16);
        mock.add_desc_chains(&descs, 0).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();

        let first = serve_available_budget("test", &mut queue, &mem, 2, |_| Served::Used(1));
        let second = serve_available_budget("test", &mut queue, &mem, 2, |_| Served::Used(1));
        let third = serve_available_budget("test", &mut queue, &mem, 2, |_| Served::Used(1));

        assert_eq!((first.used, first.exhausted), (2, true));
        assert_eq!((second.used, second.exhausted), (2, true));
        assert_eq!((third.used, third.exhausted), (1, false));
        assert!(first.notify && third.notify);
        assert_eq!(mock.used().idx().load(), 5);
    }

    #[test]
    fn serve_when_nothing_available_then_no_notification() {
        let (mem, _) = setup(0);
        let mock = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = mock.create_queue().unwrap();
        let out = serve_available("test", &mut queue, &mem, |_| Served::Used(1));
        assert_eq!(out, Drained::default());
    }
}
