//! The virtio-mmio transport, version 2 (modern, virtio 1.x only; virtio 1.2 section 4.2.2).
//!
//! The guest sees a 0x200-byte register window (registers up to 0xfc, then the device config
//! space at 0x100); the VMM maps [`MMIO_LEN`] bytes per device. Everything the guest writes is
//! checked: bad offsets and widths, writes to read-only registers, out-of-order status
//! transitions and invalid queue setups are logged and ignored, or set
//! `DEVICE_NEEDS_RESET`. Nothing here panics on guest input.

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1};
use super::{ActivateArgs, VirtioDevice, VirtioInterrupt};
use crate::bus::BusDevice;
use crate::interrupt::Interrupt;

#[cfg(test)]
mod tests;

/// Bytes of MMIO space the VMM reserves per device.
pub const MMIO_LEN: u64 = 0x1000;
/// Offset of QueueNotify: register the queue eventfds as ioeventfds at `base + this`, with
/// the queue index as datamatch (4 bytes).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

/// The kernel command-line argument that makes Linux probe a virtio-mmio device at `base`
/// with interrupt `gsi` (needs CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES; ACPI is the other way).
pub fn kernel_cmdline_arg(base: u64, gsi: u32) -> String {
    format!("virtio_mmio.device={}K@{base:#x}:{gsi}", MMIO_LEN / 1024)
}

/// "virt" in little endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern virtio-mmio layout.
pub const MMIO_VERSION: u32 = 2;
/// Reported VendorID (informational only).
pub const VENDOR_ID: u32 = 0;

/// Register offsets.
pub mod regs {
    #![allow(missing_docs)]
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.2 section 2.1).
pub mod status {
    #![allow(missing_docs)]
    pub const ACKNOWLEDGE: u32 = 0x01;
    pub const DRIVER: u32 = 0x02;
    pub const DRIVER_OK: u32 = 0x04;
    pub const FEATURES_OK: u32 = 0x08;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

use status::{ACKNOWLEDGE, DEVICE_NEEDS_RESET, DRIVER, DRIVER_OK, FAILED, FEATURES_OK};

/// Why a transport could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The device reports a queue maximum size that is not a power of two in 1..=32768.
    #[error("queue {index} of device type {device_type}: invalid maximum size {max_size}")]
    CreateQueue {
        /// Device type of the offending device.
        device_type: u32,
        /// The queue index.
        index: usize,
        /// The reported maximum size.
        max_size: u16,
    },
    /// The device does not offer VIRTIO_F_VERSION_1, which this transport requires.
    #[error("device type {0} does not offer VIRTIO_F_VERSION_1")]
    MissingVersion1(u32),
    /// Creating a queue notification eventfd failed.
    #[error("cannot create a queue eventfd: {0}")]
    CreateQueueEventFd(#[source] std::io::Error),
}

/// Why DRIVER_OK did not activate the device (logged; the guest sees DEVICE_NEEDS_RESET).
#[derive(Debug, thiserror::Error)]
enum ActivationFailure {
    #[error("queue {index}: not ready")]
    QueueNotReady { index: usize },
    #[error("queue {index}: size {size} is not a power of two <= {max}")]
    QueueSize { index: usize, size: u16, max: u16 },
    #[error("queue {index}: misaligned ring address: {source}")]
    QueueAlign {
        index: usize,
        source: virtio_queue::Error,
    },
    #[error("queue {index}: rings are not inside guest memory")]
    QueueOutsideMemory { index: usize },
    #[error("cannot clone the eventfd of queue {index}: {source}")]
    CloneQueueEventFd {
        index: usize,
        source: std::io::Error,
    },
    #[error("device activation failed: {0}")]
    Device(#[from] super::ActivateError),
}

/// What the driver wrote for one queue; turned into a `virtio_queue::Queue` at DRIVER_OK.
#[derive(Debug, Clone, Copy)]
struct QueueRegs {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueRegs {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// Sets the low or high 32 bits of a 64-bit register.
fn set_half(reg: &mut u64, high: bool, value: u32) {
    if high {
        *reg = (*reg & 0xffff_ffff) | (u64::from(value) << 32);
    } else {
        *reg = (*reg & !0xffff_ffff) | u64::from(value);
    }
}

/// A virtio device as the guest sees it through MMIO. Put it on the MMIO bus (it is a
/// [`BusDevice`]); see the [module docs](super) for the complete wiring.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queue_evts: Vec<EventFd>,
    device_type: u32,
    avail_features: u64,
    queues: Vec<QueueRegs>,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    status: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device_type)
            .field("status", &self.status)
            .field("acked_features", &self.acked_features)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// A transport for `device`, raising `irq` (the device's irqfd) when the device signals.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
        irq: Arc<dyn Interrupt>,
    ) -> Result<Self, TransportError> {
        let locked = device.lock().unwrap_or_else(|e| e.into_inner());
        let device_type = locked.device_type();
        let avail_features = locked.avail_features();
        if avail_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(TransportError::MissingVersion1(device_type));
        }
        let mut queues = Vec::new();
        for (index, &max_size) in locked.queue_max_sizes().iter().enumerate() {
            // Queue::new applies exactly the checks the spec makes on sizes.
            if Queue::new(max_size).is_err() {
                return Err(TransportError::CreateQueue {
                    device_type,
                    index,
                    max_size,
                });
            }
            queues.push(QueueRegs::new(max_size));
        }
        drop(locked);
        let queue_evts = queues
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(TransportError::CreateQueueEventFd)?;
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(VirtioInterrupt::new(irq)),
            queue_evts,
            device_type,
            avail_features,
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            status: 0,
        })
    }

    /// One eventfd per queue, in queue order. Register each as a KVM ioeventfd at
    /// `base + QUEUE_NOTIFY_OFFSET` with datamatch = its index; QueueNotify writes that reach
    /// the transport through the bus signal them too.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The interrupt status register shared with the device.
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// The device behind this transport.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The virtio device type.
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// The device status register as the guest last saw it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features the driver acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn lock_device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn selected_queue(&mut self) -> Option<&mut QueueRegs> {
        let index = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(index)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            regs::MAGIC_VALUE => MAGIC_VALUE,
            regs::VERSION => MMIO_VERSION,
            regs::DEVICE_ID => self.device_type,
            regs::VENDOR_ID => VENDOR_ID,
            regs::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => self.queue_reg(|q| u32::from(q.max_size)),
            regs::QUEUE_NUM => self.queue_reg(|q| u32::from(q.size)),
            regs::QUEUE_READY => self.queue_reg(|q| u32::from(q.ready)),
            regs::INTERRUPT_STATUS => self.interrupt.status(),
            regs::STATUS => self.status,
            regs::CONFIG_GENERATION => self.interrupt.config_generation(),
            // No shared memory regions: all ones means "no such region" to Linux, which
            // probes them (virtio-fs asks for its DAX window).
            regs::SHM_LEN_LOW | regs::SHM_LEN_HIGH | regs::SHM_BASE_LOW | regs::SHM_BASE_HIGH => {
                u32::MAX
            }
            _ => {
                crate::guest_warn!(
                    "virtio-mmio (type {}): read of unknown or write-only register {offset:#x}",
                    self.device_type
                );
                0
            }
        }
    }

    /// A register of the selected queue; 0 if QueueSel names no queue (as the spec asks for
    /// QueueNumMax).
    fn queue_reg(&self, get: impl Fn(&QueueRegs) -> u32) -> u32 {
        usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| self.queues.get(i))
            .map_or(0, get)
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            regs::DRIVER_FEATURES => self.write_driver_features(value),
            regs::QUEUE_SEL => self.queue_sel = value,
            regs::QUEUE_NUM
            | regs::QUEUE_READY
            | regs::QUEUE_DESC_LOW
            | regs::QUEUE_DESC_HIGH
            | regs::QUEUE_DRIVER_LOW
            | regs::QUEUE_DRIVER_HIGH
            | regs::QUEUE_DEVICE_LOW
            | regs::QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, value),
            regs::QUEUE_NOTIFY => self.notify_queue(value),
            regs::SHM_SEL => {}
            regs::INTERRUPT_ACK => self.interrupt.ack(value),
            regs::STATUS => self.write_status(value),
            _ => crate::guest_warn!(
                "virtio-mmio (type {}): write {value:#x} to unknown or read-only register \
                 {offset:#x} ignored",
                self.device_type
            ),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status != ACKNOWLEDGE | DRIVER {
            crate::guest_warn!(
                "virtio-mmio (type {}): DriverFeatures written in status {:#x}, ignored",
                self.device_type,
                self.status
            );
            return;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            sel => {
                crate::guest_warn!(
                    "virtio-mmio: DriverFeatures page {sel} does not exist, ignored"
                );
                return;
            }
        };
        let page_mask = 0xffff_ffffu64 << shift;
        let wanted = u64::from(value) << shift;
        let unknown = wanted & !self.avail_features;
        if unknown != 0 {
            crate::guest_warn!(
                "virtio-mmio (type {}): driver acked features {unknown:#x} that were not \
                 offered; dropped",
                self.device_type
            );
        }
        self.acked_features = (self.acked_features & !page_mask) | (wanted & self.avail_features);
    }

    fn write_queue_reg(&mut self, offset: u64, value: u32) {
        // Linux clears QueueReady when it deletes queues, whatever the status; that only
        // changes the register (an active device keeps serving until reset).
        let disabling = offset == regs::QUEUE_READY && value == 0;
        if self.status != ACKNOWLEDGE | DRIVER | FEATURES_OK && !disabling {
            crate::guest_warn!(
                "virtio-mmio (type {}): queue register {offset:#x} written in status {:#x}, \
                 ignored",
                self.device_type,
                self.status
            );
            return;
        }
        let (device_type, queue_sel) = (self.device_type, self.queue_sel);
        let Some(q) = self.selected_queue() else {
            crate::guest_warn!(
                "virtio-mmio (type {device_type}): queue register {offset:#x} written for \
                 nonexistent queue {queue_sel}, ignored"
            );
            return;
        };
        match offset {
            // Sizes are checked at DRIVER_OK, where a bad one can be reported.
            regs::QUEUE_NUM => q.size = u16::try_from(value).unwrap_or(0),
            regs::QUEUE_READY => q.ready = value == 1,
            regs::QUEUE_DESC_LOW => set_half(&mut q.desc, false, value),
            regs::QUEUE_DESC_HIGH => set_half(&mut q.desc, true, value),
            regs::QUEUE_DRIVER_LOW => set_half(&mut q.driver, false, value),
            regs::QUEUE_DRIVER_HIGH => set_half(&mut q.driver, true, value),
            regs::QUEUE_DEVICE_LOW => set_half(&mut q.device, false, value),
            regs::QUEUE_DEVICE_HIGH => set_half(&mut q.device, true, value),
            _ => {}
        }
    }

    /// QueueNotify through the bus (no ioeventfd registered, or a write the ioeventfd's
    /// datamatch did not catch): signal the queue's eventfd like KVM would.
    fn notify_queue(&self, value: u32) {
        let evt = usize::try_from(value)
            .ok()
            .and_then(|i| self.queue_evts.get(i));
        match evt {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    crate::guest_error!("virtio-mmio: cannot signal queue {value}: {e}");
                }
            }
            None => crate::guest_warn!(
                "virtio-mmio (type {}): notify for nonexistent queue {value} ignored",
                self.device_type
            ),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & FAILED != 0 {
            crate::guest_warn!(
                "virtio-mmio (type {}): driver set FAILED (status {value:#x})",
                self.device_type
            );
            self.status |= FAILED;
            return;
        }
        if value & old != old {
            crate::guest_warn!(
                "virtio-mmio (type {}): status {value:#x} clears bits of {old:#x}; ignored",
                self.device_type
            );
            return;
        }
        match (old, value & !old) {
            (_, 0) => {}
            (0, ACKNOWLEDGE) | (ACKNOWLEDGE, DRIVER) => self.status = value,
            (s, FEATURES_OK) if s == ACKNOWLEDGE | DRIVER => {
                if self.acked_features & VIRTIO_F_VERSION_1 == 0 {
                    // The driver reads the status back and gives up (legacy drivers).
                    crate::guest_warn!(
                        "virtio-mmio (type {}): FEATURES_OK refused: VIRTIO_F_VERSION_1 not \
                         acked",
                        self.device_type
                    );
                } else {
                    self.status = value;
                }
            }
            (s, DRIVER_OK) if s == ACKNOWLEDGE | DRIVER | FEATURES_OK => match self.activate() {
                Ok(()) => self.status = value,
                Err(e) => {
                    crate::guest_error!(
                        "virtio-mmio (type {}): cannot activate: {e}",
                        self.device_type
                    );
                    self.status |= DEVICE_NEEDS_RESET;
                }
            },
            (_, new) => crate::guest_warn!(
                "virtio-mmio (type {}): invalid status transition {old:#x} -> {value:#x} \
                 (new bits {new:#x}); ignored",
                self.device_type
            ),
        }
    }

    /// Builds and validates the queues, then hands them to the device.
    fn activate(&mut self) -> Result<(), ActivationFailure> {
        let event_idx = self.acked_features & VIRTIO_F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, regs) in self.queues.iter().enumerate() {
            queues.push(self.build_queue(index, regs, event_idx)?);
        }
        let queue_evts = self
            .queue_evts
            .iter()
            .enumerate()
            .map(|(index, e)| {
                e.try_clone()
                    .map_err(|source| ActivationFailure::CloneQueueEventFd { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let args = ActivateArgs {
            mem: self.mem.clone(),
            queues,
            queue_evts,
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
        };
        self.lock_device().activate(args)?;
        Ok(())
    }

    fn build_queue(
        &self,
        index: usize,
        regs: &QueueRegs,
        event_idx: bool,
    ) -> Result<Queue, ActivationFailure> {
        if !regs.ready {
            return Err(ActivationFailure::QueueNotReady { index });
        }
        let bad_size = || ActivationFailure::QueueSize {
            index,
            size: regs.size,
            max: regs.max_size,
        };
        let mut queue = Queue::new(regs.max_size).map_err(|_| bad_size())?;
        queue.try_set_size(regs.size).map_err(|_| bad_size())?;
        let align = |source| ActivationFailure::QueueAlign { index, source };
        queue
            .try_set_desc_table_address(GuestAddress(regs.desc))
            .map_err(align)?;
        queue
            .try_set_avail_ring_address(GuestAddress(regs.driver))
            .map_err(align)?;
        queue
            .try_set_used_ring_address(GuestAddress(regs.device))
            .map_err(align)?;
        queue.set_ready(true);
        queue.set_event_idx(event_idx);
        if !queue.is_valid(&self.mem) {
            return Err(ActivationFailure::QueueOutsideMemory { index });
        }
        Ok(queue)
    }

    /// Status 0: back to the state after creation; the device forgets its queues.
    fn reset(&mut self) {
        {
            let mut device = self.lock_device();
            if device.is_activated() {
                device.reset();
            }
        }
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max_size);
        }
        // Notifications the guest sent before the reset belong to the old queues.
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
        self.interrupt.clear();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.status = 0;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= regs::CONFIG {
            self.lock_device().read_config(offset - regs::CONFIG, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(word) if offset & 3 == 0 => *word = self.read_reg(offset).to_le_bytes(),
            _ => {
                crate::guest_warn!(
                    "virtio-mmio (type {}): {}-byte read at {offset:#x} is not an aligned \
                     32-bit register access",
                    self.device_type,
                    data.len()
                );
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= regs::CONFIG {
            self.lock_device().write_config(offset - regs::CONFIG, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(word) if offset & 3 == 0 => self.write_reg(offset, u32::from_le_bytes(word)),
            _ => crate::guest_warn!(
                "virtio-mmio (type {}): {}-byte write at {offset:#x} is not an aligned 32-bit \
                 register access; ignored",
                self.device_type,
                data.len()
            ),
        }
    }
}
