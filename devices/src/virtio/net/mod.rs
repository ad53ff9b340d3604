//! virtio-net (device type 1) on a host TAP device.
//!
//! Like every device here it is three parts: the model ([`Net`]: features, config space,
//! the receive and transmit paths, generic over its [`NetBackend`]), the event glue
//! (`event_handler.rs`: ACTIVATE, the two queue eventfds and the TAP fd under
//! [`PROCESS_TAP`]), and tests driving the model through virtio-queue's mock split queue and
//! against a real TAP inside a throwaway network namespace.
//!
//! The guest gets a modern (virtio 1.x) NIC with a fixed MAC, link status, mergeable
//! receive buffers, checksum and TSO offloads both ways, and EVENT_IDX. The TAP is opened
//! with IFF_VNET_HDR and a 12-byte header, so headers pass through unchanged; at activation
//! the TAP's receive offloads (TUNSETOFFLOAD) are set to what the guest acked.
//!
//! # Wiring in the VMM
//!
//! ```no_run
//! use std::sync::{Arc, Mutex};
//! use devices::virtio::net::{Net, Tap};
//! use devices::virtio::MmioTransport;
//! use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 128 << 20)])?;
//! # let mut event_manager =
//! #     EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()?;
//! // Open the TAP netctl made (as root, a missing one becomes a transient TAP).
//! let tap = Tap::open_or_create_transient("vm-vm1")?;
//! let net = Arc::new(Mutex::new(Net::new(tap, [0x02, 0, 0, 0, 0, 1])?));
//! // Keep the counters for the control socket; they need no device lock.
//! let counters = net.lock().unwrap().counters();
//! let irq = Arc::new(EventFd::new(EFD_NONBLOCK)?);
//! let transport = MmioTransport::new(mem.clone(), net.clone(), irq.clone())?;
//! // ... register transport.queue_evts() as ioeventfds and irq as irqfd, put the transport
//! // on the MMIO bus (see `devices::virtio`) ...
//! event_manager.add_subscriber(net);
//! # let _ = (counters, transport);
//! # Ok(())
//! # }
//! ```

mod chain;
mod counters;
mod device;
mod event_handler;
mod rx;
mod tap;
mod tx;

#[cfg(test)]
mod tests;

pub use counters::{NetCounters, NetStats};
pub use device::{
    format_mac, tun_offload_flags, Net, NetBackend, NetError, AVAIL_FEATURES, MAX_FRAME_LEN,
    MIN_FRAME_LEN, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
pub use event_handler::PROCESS_TAP;
pub use rx::{RxOutcome, RX_BUDGET};
pub use tap::{Tap, TapError, VNET_HDR_LEN};
pub use tx::{TxOutcome, TX_BUDGET};
