//! The interrupt status register of a virtio-mmio device and its interrupt line.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::interrupt::Interrupt;

/// InterruptStatus bit: the device used buffers in at least one queue.
pub const INTERRUPT_STATUS_USED_RING: u32 = 1;
/// InterruptStatus bit: the device configuration changed.
pub const INTERRUPT_STATUS_CONFIG_CHANGED: u32 = 2;

/// Shared between the transport (guest reads InterruptStatus, writes InterruptACK on a vCPU
/// thread) and the device (sets bits and raises the line from the event loop thread).
///
/// The line is edge-triggered (irqfd): the guest's handler reads the status, ACKs the bits it
/// saw, and handles them. A bit set after the read raises a new edge, so nothing is lost.
pub struct VirtioInterrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    irq: Arc<dyn Interrupt>,
}

impl std::fmt::Debug for VirtioInterrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioInterrupt")
            .field("status", &self.status())
            .field("config_generation", &self.config_generation())
            .finish_non_exhaustive()
    }
}

impl VirtioInterrupt {
    /// A status register with no bits set, raising `irq`.
    pub fn new(irq: Arc<dyn Interrupt>) -> Self {
        Self {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            irq,
        }
    }

    /// Tells the guest that buffers were added to a used ring.
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.signal(INTERRUPT_STATUS_USED_RING)
    }

    /// Tells the guest that the device config space changed (and bumps ConfigGeneration).
    pub fn signal_config_change(&self) -> std::io::Result<()> {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.signal(INTERRUPT_STATUS_CONFIG_CHANGED)
    }

    fn signal(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq.trigger()
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The guest's InterruptACK write: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The ConfigGeneration register.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    /// Device reset: no interrupt pending.
    pub(crate) fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn signal_when_acked_then_status_bits_cleared_and_irq_raised_each_time() {
        let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let intr = VirtioInterrupt::new(irq.clone());

        intr.signal_used_queue().unwrap();
        intr.signal_config_change().unwrap();
        assert_eq!(intr.status(), 3);
        assert_eq!(intr.config_generation(), 1);
        assert_eq!(irq.read().unwrap(), 2);

        intr.ack(INTERRUPT_STATUS_USED_RING);
        assert_eq!(intr.status(), INTERRUPT_STATUS_CONFIG_CHANGED);
        intr.clear();
        assert_eq!(intr.status(), 0);
    }
}
