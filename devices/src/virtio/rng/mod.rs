//! virtio-rng (device type 4): an entropy source for the guest, backed by `getrandom`.

mod device;
mod event_handler;
#[cfg(test)]
mod tests;

pub use device::{BadChain, Rng, BUDGET, MAX_BYTES_PER_REQUEST, QUEUE_SIZE};
