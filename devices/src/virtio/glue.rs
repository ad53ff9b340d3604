//! Event-loop glue shared by virtio devices.
//!
//! Activation and reset happen on a vCPU thread (the guest writes the status register), but
//! the queues are served on the event loop thread, and only that thread may change what the
//! event manager watches. [`EventGlue`] bridges the two: the device hands it the queue
//! eventfds on activation and takes them back on reset, and the glue signals its ACTIVATE
//! eventfd; on that event the loop thread (un)registers the queue eventfds.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Token of the glue's own eventfd: activation or reset happened.
pub const ACTIVATE: u32 = u32::MAX;

/// Tokens below this are queue notifications (`PROCESS_QUEUE_i` = `i`). Devices put their own
/// eventfds (TAP, backend sockets) at tokens from here up to `ACTIVATE - 1`.
pub const FIRST_DEVICE_TOKEN: u32 = 0x1_0000;

/// The token under which queue `index`'s eventfd is registered (`PROCESS_QUEUE_index`).
pub fn process_queue_token(index: usize) -> u32 {
    u32::try_from(index)
        .ok()
        .filter(|t| *t < FIRST_DEVICE_TOKEN)
        .unwrap_or(FIRST_DEVICE_TOKEN - 1)
}

/// The queue index a token stands for, if it is a `PROCESS_QUEUE_i` token.
pub fn queue_index_of_token(token: u32) -> Option<usize> {
    (token < FIRST_DEVICE_TOKEN).then_some(token as usize)
}

/// Registers a device's queue eventfds with the event manager from the event loop thread.
#[derive(Debug)]
pub struct EventGlue {
    activate_evt: EventFd,
    /// Handed over by `activate`, not yet watched.
    pending: Vec<EventFd>,
    /// Watched by the event manager, in queue order.
    registered: Vec<EventFd>,
    /// Handed back by `reset` while still watched; unregistered on the next ACTIVATE event.
    retired: Vec<EventFd>,
}

impl EventGlue {
    /// Glue with its own (non-blocking) ACTIVATE eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            activate_evt: EventFd::new(EFD_NONBLOCK)?,
            pending: Vec::new(),
            registered: Vec::new(),
            retired: Vec::new(),
        })
    }

    /// Called from the subscriber's `init`: watch the ACTIVATE eventfd.
    pub fn init(&self, ops: &mut EventOps) {
        let events = Events::with_data(&self.activate_evt, ACTIVATE, EventSet::IN);
        if let Err(e) = ops.add(events) {
            log::error!("virtio: cannot register the activate eventfd: {e}");
        }
    }

    /// Device activation (vCPU thread): the queue eventfds are to be watched from now on.
    pub fn activate(&mut self, queue_evts: Vec<EventFd>) -> std::io::Result<()> {
        self.pending = queue_evts;
        self.activate_evt.write(1)
    }

    /// Device reset (vCPU thread): stop watching the queue eventfds.
    pub fn reset(&mut self) {
        self.retired.append(&mut self.registered);
        self.pending.clear();
        if let Err(e) = self.activate_evt.write(1) {
            log::error!("virtio: cannot signal the activate eventfd on reset: {e}");
        }
    }

    /// The ACTIVATE event (event loop thread): apply pending (un)registrations.
    pub fn handle_activate(&mut self, ops: &mut EventOps) {
        // The counter only says "something changed"; the lists say what.
        let _ = self.activate_evt.read();
        for evt in self.retired.drain(..) {
            if let Err(e) = ops.remove(Events::empty(&evt)) {
                log::warn!("virtio: cannot unregister a queue eventfd: {e}");
            }
        }
        for (index, evt) in self.pending.drain(..).enumerate() {
            let events = Events::with_data(&evt, process_queue_token(index), EventSet::IN);
            if let Err(e) = ops.add(events) {
                log::error!("virtio: cannot register the eventfd of queue {index}: {e}");
            }
            self.registered.push(evt);
        }
    }

    /// A queue event (event loop thread): consumes the notification and returns the queue
    /// index, or `None` if the event belongs to a queue that was reset in the meantime.
    pub fn queue_event(&mut self, events: &Events) -> Option<usize> {
        let fd = events.fd();
        if let Some(index) = self.registered.iter().position(|e| e.as_raw_fd() == fd) {
            // EAGAIN only means another reader was faster; serving the queue is harmless.
            let _ = self.registered[index].read();
            return Some(index);
        }
        if let Some(stale) = self.retired.iter().find(|e| e.as_raw_fd() == fd) {
            // Drain it so a level-triggered epoll does not spin until ACTIVATE is handled.
            let _ = stale.read();
        }
        None
    }

    /// Re-signals the watched eventfd of queue `index` (event loop thread), so a device that
    /// stopped on its budget is served again after the loop has handled its other events.
    pub fn kick_queue(&self, index: usize) -> std::io::Result<()> {
        match self.registered.get(index) {
            Some(evt) => evt.write(1),
            None => Ok(()),
        }
    }

    /// Whether queue eventfds are currently watched (for tests and diagnostics).
    pub fn watched_queues(&self) -> usize {
        self.registered.len()
    }

    /// The ACTIVATE eventfd.
    pub fn activate_evt(&self) -> &EventFd {
        &self.activate_evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_when_mapped_back_then_round_trip() {
        assert_eq!(queue_index_of_token(process_queue_token(3)), Some(3));
        assert_eq!(queue_index_of_token(ACTIVATE), None);
        assert_eq!(queue_index_of_token(FIRST_DEVICE_TOKEN), None);
    }
}
