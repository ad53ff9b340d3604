//! virtio-fs (device type 26) as a vhost-user frontend.
//!
//! The FUSE server runs outside the VMM (tinyvmm's own `virtiofsd` or upstream virtiofsd),
//! behind a vhost-user socket. The VMM only negotiates features, presents the config space
//! (tag + number of request queues), and, on activation, hands the backend the guest memory
//! (the memfd behind guest RAM) and the rings:
//!
//! - **kick**: the backend gets the transport's queue eventfds, which are KVM ioeventfds, so a
//!   guest QueueNotify write wakes the backend directly; the VMM is not on that path;
//! - **call**: virtio-mmio needs the InterruptStatus bit set before the interrupt is raised,
//!   which a backend cannot do. So each queue gets a call eventfd of the device's own; the
//!   event loop watches it ([`EventGlue`](super::EventGlue)) and calls
//!   [`VirtioInterrupt::signal_used_queue`](super::VirtioInterrupt::signal_used_queue). This
//!   costs one event-loop hop per interrupt (not per request: EVENT_IDX batches them).
//!
//! A backend that disconnects or dies is logged once; the device stops forwarding and
//! reports errors on the next activation (the transport then sets DEVICE_NEEDS_RESET). The
//! VMM never panics on it.

mod device;
mod event_handler;
#[cfg(test)]
mod tests;

pub use device::{Fs, FsError, CONFIG_SIZE, NUM_QUEUES, QUEUE_SIZE, TAG_LEN};
