//! The virtio-rng model: fills device-writable buffers with host entropy.

use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap, Permissions};

use crate::ratelimit::{guest_error, guest_warn};
use crate::virtio::features::{VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use crate::virtio::queue_loop::{serve_available_budget, Served};
use crate::virtio::{
    device_type, ActivateArgs, ActivateError, EventGlue, VirtioDevice, VirtioInterrupt,
};

/// The size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// At most this many bytes are served per request, so one greedy driver cannot stall the
/// event loop (the Linux driver asks for at most a page or so at a time).
pub const MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;
/// Chains served per event-loop dispatch; the rest wait for the device's own re-kick, so a
/// guest that refills the queue forever cannot keep the event thread (signals, exit
/// requests, the grace deadline, other devices) from being served.
pub const BUDGET: u32 = 64;

/// Why a descriptor chain was rejected. The chain is still returned to the guest (used
/// length 0) so that its buffers are not lost.
#[derive(Debug, thiserror::Error)]
pub enum BadChain {
    /// The head index or the first descriptor could not be read.
    #[error("chain has no readable descriptor")]
    Empty,
    /// The chain ended on a descriptor that still has NEXT set: it loops, is longer than the
    /// queue, points past the descriptor table, or a descriptor could not be read.
    #[error("chain is truncated after {0} descriptors (loop, too long or bad next index)")]
    Truncated(usize),
    /// A descriptor the device must write into is driver-readable only.
    #[error("descriptor {index} of the chain is not device-writable")]
    ReadOnly {
        /// Position in the chain.
        index: usize,
    },
    /// A buffer lies (partly) outside guest memory.
    #[error("descriptor {index} buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory {
        /// Position in the chain.
        index: usize,
        /// Guest address of the buffer.
        addr: u64,
        /// Length of the buffer.
        len: u32,
    },
    /// The host entropy source failed.
    #[error("host entropy source failed: {0}")]
    Entropy(getrandom::Error),
    /// Writing to guest memory failed although the range was checked.
    #[error("cannot write to guest memory: {0}")]
    WriteMemory(#[source] vm_memory::GuestMemoryError),
}

/// What the device has while activated.
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// A virtio entropy device (device type 4) with one request queue.
pub struct Rng {
    pub(super) glue: EventGlue,
    active: Option<Active>,
    queue_sizes: [u16; 1],
    buf: Vec<u8>,
    bad_descriptors: u64,
    bytes_served: u64,
    requests_served: u64,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng")
            .field("active", &self.active.is_some())
            .field("bad_descriptors", &self.bad_descriptors)
            .field("bytes_served", &self.bytes_served)
            .finish_non_exhaustive()
    }
}

impl Rng {
    /// An inactive device.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            glue: EventGlue::new()?,
            active: None,
            queue_sizes: [QUEUE_SIZE],
            buf: Vec::new(),
            bad_descriptors: 0,
            bytes_served: 0,
            requests_served: 0,
        })
    }

    /// Malformed descriptor chains seen since creation.
    pub fn bad_descriptors(&self) -> u64 {
        self.bad_descriptors
    }

    /// Random bytes written to the guest since creation.
    pub fn bytes_served(&self) -> u64 {
        self.bytes_served
    }

    /// Chains returned to the guest (good or bad) since creation.
    pub fn requests_served(&self) -> u64 {
        self.requests_served
    }

    /// Serves up to [`BUDGET`] available chains (re-kicking its own queue eventfd when more
    /// may remain), then signals the guest if it asked to be. Returns
    /// whether the guest was interrupted. Does nothing while the device is not active.
    pub fn process_queue(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let (buf, bad, served) = (
            &mut self.buf,
            &mut self.bad_descriptors,
            &mut self.bytes_served,
        );
        let drained = serve_available_budget(
            "virtio-rng",
            &mut active.queue,
            &active.mem,
            BUDGET,
            |chain| {
                let head = chain.head_index();
                match fill_chain(chain, &active.mem, buf) {
                    Ok(len) => {
                        *served += u64::from(len);
                        Served::Used(len)
                    }
                    Err(e) => {
                        guest_warn!("virtio-rng: bad descriptor chain at head {head}: {e}");
                        *bad += 1;
                        // Returned empty so the guest gets its buffers back.
                        Served::Used(0)
                    }
                }
            },
        );
        self.bad_descriptors += u64::from(drained.bad_heads);
        self.requests_served += u64::from(drained.used);
        if drained.notify {
            if let Err(e) = active.interrupt.signal_used_queue() {
                guest_error!("virtio-rng: cannot interrupt the guest: {e}");
            }
        }
        if drained.exhausted {
            // The chains left behind raise no new kick: come back after the loop's other
            // events.
            if let Err(e) = self.glue.kick_queue(0) {
                guest_error!("virtio-rng: cannot reschedule the queue: {e}");
            }
        }
        drained.notify
    }
}

/// Checks the whole chain before writing anything, so a bad chain leaves guest memory as it
/// was; then fills the buffers in order, up to [`MAX_BYTES_PER_REQUEST`].
fn fill_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    buf: &mut Vec<u8>,
) -> Result<u32, BadChain> {
    // The chain iterator stops after queue-size descriptors (loops) and on unreadable
    // entries; a last descriptor that still wants a successor tells us it stopped early.
    let descs: Vec<Descriptor> = chain.collect();
    match descs.last() {
        None => return Err(BadChain::Empty),
        Some(last) if last.has_next() => return Err(BadChain::Truncated(descs.len())),
        Some(_) => {}
    }
    for (index, desc) in descs.iter().enumerate() {
        if !desc.is_write_only() {
            return Err(BadChain::ReadOnly { index });
        }
        let in_memory = usize::try_from(desc.len())
            .map(|len| mem.check_range(desc.addr(), len, Permissions::Write))
            .unwrap_or(false);
        if !in_memory {
            return Err(BadChain::OutsideMemory {
                index,
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
    }
    let mut written = 0u32;
    for desc in &descs {
        let n = desc.len().min(MAX_BYTES_PER_REQUEST - written);
        if n == 0 {
            break;
        }
        // u32 always fits in usize on the 64-bit hosts KVM runs on.
        buf.resize(n as usize, 0);
        getrandom::fill(buf).map_err(BadChain::Entropy)?;
        mem.write_slice(buf, desc.addr())
            .map_err(BadChain::WriteMemory)?;
        written += n;
    }
    Ok(written)
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio-rng has no config space.
        guest_warn!("virtio-rng: config read at {offset:#x}: the device has no config space");
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        guest_warn!("virtio-rng: config write at {offset:#x} ignored: no config space");
    }

    fn activate(&mut self, args: ActivateArgs) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let ActivateArgs {
            mem,
            mut queues,
            queue_evts,
            interrupt,
            acked_features: _,
        } = args;
        if queues.len() != 1 || queue_evts.len() != 1 {
            return Err(ActivateError::QueueCount {
                expected: 1,
                queues: queues.len(),
                evts: queue_evts.len(),
            });
        }
        let queue = queues.remove(0);
        self.glue
            .activate(queue_evts)
            .map_err(ActivateError::SignalActivate)?;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.glue.reset();
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}
