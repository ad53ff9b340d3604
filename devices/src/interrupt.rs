//! How a device raises an interrupt, without knowing about KVM.

use vmm_sys_util::eventfd::EventFd;

/// Signals one interrupt line of the guest.
///
/// In the VMM this is an irqfd registered with KVM for the device's GSI (edge-triggered);
/// in tests it is a counter or a plain `EventFd` that the test reads.
pub trait Interrupt: Send + Sync {
    /// Raises the interrupt once.
    fn trigger(&self) -> std::io::Result<()>;
}

impl Interrupt for EventFd {
    fn trigger(&self) -> std::io::Result<()> {
        self.write(1)
    }
}

impl<T: Interrupt + ?Sized> Interrupt for std::sync::Arc<T> {
    fn trigger(&self) -> std::io::Result<()> {
        (**self).trigger()
    }
}
