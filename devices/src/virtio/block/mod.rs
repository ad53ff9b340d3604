//! virtio-blk (device type 2): a raw image file or host block device as a guest disk.
//!
//! - [`backend`]: open, lock (`flock`), size, positioned I/O, FLUSH → `fdatasync`,
//!   DISCARD/WRITE_ZEROES → `fallocate`; cache modes.
//! - [`request`]: one chain checked (layout, memory, limits, sector range) and executed.
//! - [`Block`]: the model (features, config space, queue processing over
//!   [`serve_available`](crate::virtio::queue_loop::serve_available)) and its event glue.
//!
//! I/O runs on the event loop thread, never on a vCPU thread: the guest's QueueNotify write
//! is an ioeventfd, the event loop serves the queue with synchronous `pread`/`pwrite`
//! through one bounded bounce buffer, and completion is the irqfd. One queue and synchronous
//! I/O keep the model simple and memory bounded; a worker pool (parallel requests) is the
//! next step if measurements show deep queues waiting on the disk.

pub mod backend;
mod device;
mod event_handler;
pub mod limits;
pub mod request;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod transport_tests;

pub use backend::{Backend, BackendError, CacheMode, VolumeOptions};
pub use device::{Block, BlockCounters};
