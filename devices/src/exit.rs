//! How a device asks the VMM to stop the machine (guest poweroff, reboot, reset).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the machine stops, as requested by a device or seen by a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// The guest powered off (ACPI S5).
    Poweroff,
    /// The guest asked for a reset (ACPI reset register, i8042 pulse, triple fault).
    Reboot,
    /// The guest crashed or a vCPU failed.
    Crash,
}

impl ExitKind {
    /// The value stored in [`ExitRequest`]'s atomic (0 means "none yet").
    const fn to_u8(self) -> u8 {
        match self {
            ExitKind::Poweroff => 1,
            ExitKind::Reboot => 2,
            ExitKind::Crash => 3,
        }
    }

    const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(ExitKind::Poweroff),
            2 => Some(ExitKind::Reboot),
            3 => Some(ExitKind::Crash),
            _ => None,
        }
    }
}

/// A one-shot request to stop the machine, shared by devices and the VMM's event loop.
///
/// The first request wins; later ones are ignored, so a guest that writes the reset register
/// twice still yields one exit. The event fd becomes readable when a request is made.
#[derive(Debug)]
pub struct ExitRequest {
    evt: EventFd,
    /// 0 until the first request, then its `ExitKind::to_u8`. An atomic, because every vCPU
    /// checks it after every exit.
    kind: AtomicU8,
    /// Set when the VMM stops the vCPUs for its own reasons (hard stop, a signal).
    halted: AtomicBool,
}

impl ExitRequest {
    /// Creates an unsignalled request.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            kind: AtomicU8::new(0),
            halted: AtomicBool::new(false),
        })
    }

    /// Records `kind` unless a request was already made, and wakes the event loop.
    pub fn request(&self, kind: ExitKind) {
        // First request wins: a failed exchange means one was already recorded.
        let _ = self
            .kind
            .compare_exchange(0, kind.to_u8(), Ordering::AcqRel, Ordering::Acquire);
        if let Err(e) = self.evt.write(1) {
            log::error!("exit request: cannot signal event fd: {e}");
        }
    }

    /// The request made so far, if any.
    pub fn kind(&self) -> Option<ExitKind> {
        ExitKind::from_u8(self.kind.load(Ordering::Acquire))
    }

    /// Tells every vCPU not to re-enter the guest (the VMM is stopping the machine).
    pub fn halt(&self) {
        self.halted.store(true, Ordering::Release);
    }

    /// Whether [`halt`](Self::halt) was called.
    pub fn halted(&self) -> bool {
        self.halted.load(Ordering::Acquire)
    }

    /// The fd the event loop watches.
    pub fn event_fd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_when_made_twice_then_first_kind_wins() {
        let req = ExitRequest::new().unwrap();
        assert_eq!(req.kind(), None);
        req.request(ExitKind::Reboot);
        req.request(ExitKind::Poweroff);
        assert_eq!(req.kind(), Some(ExitKind::Reboot));
        assert_eq!(req.event_fd().read().unwrap(), 2);
    }
}
