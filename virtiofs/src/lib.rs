//! tinyvmm's virtio-fs server.
//!
//! - [`Server`]: a FUSE server (the request format of `linux/fuse.h`, virtio-fs flavour) over
//!   a passthrough file system rooted at one host directory. It takes one descriptor chain at
//!   a time (the readable part holds the request, the writable part receives the reply) and
//!   never panics on guest input: malformed requests get an error reply.
//! - `daemon`: the vhost-user-fs backend (vhost-user-backend crate) that serves a
//!   [`Server`] to a VMM over a unix socket; also `tinyvmm virtiofsd`.

pub mod abi;
pub mod daemon;
mod dispatch;
mod passthrough;
mod ratelimit;
mod server;
#[cfg(test)]
mod tests;

pub use server::{CachePolicy, IdMap, Server, ServerError, ShareOptions, DEFAULT_MAX_WRITE};
