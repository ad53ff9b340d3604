//! FUSE server tests through virtio descriptor chains (mock split queue, real temp dirs).

mod harness;

mod basic;
mod concurrency;
mod hostile;
mod io;
mod malformed;
mod mutate;
mod readonly;
