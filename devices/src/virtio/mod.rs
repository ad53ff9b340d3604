//! virtio-mmio transport and virtio devices.
//!
//! A virtio device here is three parts:
//! 1. a model implementing [`VirtioDevice`] (features, config space, queue processing), generic
//!    over nothing but guest memory and [`VirtioInterrupt`];
//! 2. event glue ([`EventGlue`]) that registers the device's eventfds with `event-manager`
//!    under named tokens ([`ACTIVATE`], [`process_queue_token`]) and calls into the model;
//! 3. the shared [`MmioTransport`], which the guest drives through the MMIO bus and which
//!    activates and resets the model.
//!
//! Devices drain their queues with [`queue_loop::serve_available`] (disable notifications,
//! drain, re-enable, repeat if more arrived; a device may defer a chain, e.g. net RX with no
//! packet waiting).
//!
//! # Wiring one device in the VMM
//!
//! ```no_run
//! use std::sync::{Arc, Mutex};
//! use devices::bus::Bus;
//! use devices::virtio::{rng::Rng, MmioTransport, MMIO_LEN, QUEUE_NOTIFY_OFFSET};
//! use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 128 << 20)])?;
//! let mut mmio_bus = Bus::new();
//! let mut event_manager =
//!     EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()?;
//! let (base, gsi) = (0xd000_2000u64, 10u32);
//!
//! // 1. The model; the same Arc goes to the transport and to the event loop.
//! let rng = Arc::new(Mutex::new(Rng::new()?));
//! // 2. The irqfd: the VMM registers it with KVM for `gsi` (vm.register_irqfd(&irq, gsi)).
//! let irq = Arc::new(EventFd::new(EFD_NONBLOCK)?);
//! // 3. The transport owns one eventfd per queue for the guest's QueueNotify writes.
//! let transport = MmioTransport::new(mem.clone(), rng.clone(), irq.clone())?;
//! for (index, evt) in transport.queue_evts().iter().enumerate() {
//!     // vm.register_ioevent(evt, &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
//!     //                     index as u32)?;  (datamatch = queue index)
//!     let _ = (evt, index, QUEUE_NOTIFY_OFFSET);
//! }
//! mmio_bus.insert(Arc::new(Mutex::new(transport)), base, MMIO_LEN)?;
//! // 4. The glue: `init` registers the device's ACTIVATE eventfd; queue eventfds follow
//! //    on the event loop thread once the guest sets DRIVER_OK on a vCPU thread.
//! event_manager.add_subscriber(rng);
//! // The kernel finds the device through ACPI (LNRO0005) or through the command line:
//! let arg = devices::virtio::kernel_cmdline_arg(base, gsi);
//! assert_eq!(arg, "virtio_mmio.device=4K@0xd0002000:10");
//! # Ok(())
//! # }
//! ```

pub mod block;
pub mod fs;
mod glue;
mod interrupt;
pub mod mmio;
pub mod net;
pub mod queue_loop;
pub mod rng;

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use glue::{process_queue_token, queue_index_of_token, EventGlue, ACTIVATE};
pub use interrupt::{VirtioInterrupt, INTERRUPT_STATUS_CONFIG_CHANGED, INTERRUPT_STATUS_USED_RING};
pub use mmio::{kernel_cmdline_arg, MmioTransport, TransportError, MMIO_LEN, QUEUE_NOTIFY_OFFSET};

/// Device type ids (virtio 1.2, section 5).
pub mod device_type {
    /// virtio-net.
    pub const NET: u32 = 1;
    /// virtio-blk.
    pub const BLOCK: u32 = 2;
    /// virtio-rng (entropy source).
    pub const RNG: u32 = 4;
    /// virtio-fs.
    pub const FS: u32 = 26;
}

/// Feature bits common to all devices.
pub mod features {
    /// The device supports indirect descriptors.
    pub const VIRTIO_F_INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event`/`avail_event` interrupt suppression.
    pub const VIRTIO_F_EVENT_IDX: u64 = 1 << 29;
    /// The device complies with virtio 1.x; required by this (modern-only) transport.
    pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
}

/// Everything a device needs to start serving its queues.
pub struct ActivateArgs {
    /// Guest memory the queues and buffers live in.
    pub mem: GuestMemoryMmap,
    /// The queues, validated by the transport (ready, size, addresses inside `mem`), in
    /// the order of [`VirtioDevice::queue_max_sizes`].
    pub queues: Vec<virtio_queue::Queue>,
    /// One eventfd per queue, signalled when the guest notifies that queue. These are clones:
    /// the transport keeps the originals (registered as KVM ioeventfds) across resets.
    pub queue_evts: Vec<EventFd>,
    /// How the device interrupts the guest.
    pub interrupt: Arc<VirtioInterrupt>,
    /// The features the driver acknowledged (a subset of `avail_features`).
    pub acked_features: u64,
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The transport passed a different number of queues or eventfds than the device has.
    #[error("expected {expected} queues, got {queues} queues and {evts} eventfds")]
    QueueCount {
        /// Number of queues the device has.
        expected: usize,
        /// Number of queues passed.
        queues: usize,
        /// Number of queue eventfds passed.
        evts: usize,
    },
    /// The device was activated twice without a reset in between.
    #[error("device is already active")]
    AlreadyActive,
    /// Waking the event loop to register the queue eventfds failed.
    #[error("cannot signal the activate eventfd: {0}")]
    SignalActivate(#[source] std::io::Error),
    /// A device-specific step failed (opening a backend, ...).
    #[error("device-specific activation failed: {0}")]
    Device(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A virtio device model, driven by a transport.
///
/// Lifecycle:
/// 1. **Created** by the VMM with its backend (entropy source, TAP, shared directory). It
///    reports its type, queue sizes, features and config space, all readable at any time.
/// 2. **Features negotiated** by the guest driver through the transport; the device is not
///    involved beyond [`avail_features`](Self::avail_features).
/// 3. **Activated** when the driver sets `DRIVER_OK`: the transport validates the queues and
///    calls [`activate`](Self::activate) on the vCPU thread that wrote the status. The device
///    keeps the queues, memory and interrupt, and wakes its event glue (via its
///    [`EventGlue`]) so that the event loop thread registers the queue eventfds and from then
///    on processes the queues.
/// 4. **Reset** when the driver writes 0 to the status register: the transport calls
///    [`reset`](Self::reset); the device drops its queues and hands the queue eventfds back to
///    its glue for unregistration. It can then be activated again with fresh queues.
///
/// Every method may see guest-controlled data and must not panic.
pub trait VirtioDevice: Send {
    /// The virtio device type ([`device_type`]).
    fn device_type(&self) -> u32;

    /// The maximum size of each queue (powers of two); its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The features the device offers; must include [`features::VIRTIO_F_VERSION_1`].
    fn avail_features(&self) -> u64;

    /// Reads the device-specific config space at `offset`. Out-of-range bytes read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device-specific config space at `offset`; read-only fields are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device with validated queues (see the lifecycle above).
    fn activate(&mut self, args: ActivateArgs) -> Result<(), ActivateError>;

    /// Stops the device and forgets its queues so that it can be activated again.
    fn reset(&mut self);

    /// Whether the device is between [`activate`](Self::activate) and [`reset`](Self::reset).
    fn is_activated(&self) -> bool;
}

/// Copies `config[offset..]` into `data`, zero-filling whatever lies past the end. A helper
/// for [`VirtioDevice::read_config`] of devices whose config space is a byte array.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_config_bytes_when_past_end_then_zero_filled() {
        let config = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&config, 100, &mut data);
        assert_eq!(data, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
