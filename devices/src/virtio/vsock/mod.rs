//! virtio-vsock (device type 19): stream sockets between the guest and host processes.
//!
//! The host side is a unix-socket multiplexer (the protocol Firecracker documents):
//! - a host process connects to `<socket>` and writes `CONNECT <port>\n`; once the guest
//!   accepts, it reads `OK <host_port>\n` and the stream carries the connection's bytes;
//! - a guest connection to host port `P` (CID 2) connects to the unix socket `<socket>_P`.
//!
//! Flow control is the virtio credit scheme: the device advertises [`CONN_BUF`] bytes per
//! connection and holds at most that much guest data that the host peer has not read; a
//! host peer that stops reading stops the guest. Host→guest data is read from a unix
//! stream only while the guest advertises free space and has receive buffers queued.

mod device;
mod event_handler;
pub mod packet;
#[cfg(test)]
mod tests;

pub use device::{Vsock, VsockError, CONN_BUF, MAX_CONNS, QUEUE_SIZE};
