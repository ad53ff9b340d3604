//! How a device asks the VMM to stop the machine (guest poweroff, reboot, reset).

use std::sync::Mutex;

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

/// A one-shot request to stop the machine, shared by devices and the VMM's event loop.
///
/// The first request wins; later ones are ignored, so a guest that writes the reset register
/// twice still yields one exit. The event fd becomes readable when a request is made.
#[derive(Debug)]
pub struct ExitRequest {
    evt: EventFd,
    kind: Mutex<Option<ExitKind>>,
}

impl ExitRequest {
    /// Creates an unsignalled request.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            kind: Mutex::new(None),
        })
    }

    /// Records `kind` unless a request was already made, and wakes the event loop.
    pub fn request(&self, kind: ExitKind) {
        let mut slot = self.kind.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(kind);
        }
        drop(slot);
        if let Err(e) = self.evt.write(1) {
            log::error!("exit request: cannot signal event fd: {e}");
        }
    }

    /// The request made so far, if any.
    pub fn kind(&self) -> Option<ExitKind> {
        *self.kind.lock().unwrap_or_else(|e| e.into_inner())
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
