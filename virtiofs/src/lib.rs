//! tinyvmm's virtio-fs server.
//!
//! - [`Server`]: a FUSE server (the request format of `linux/fuse.h`, virtio-fs flavour) over
//!   a passthrough file system rooted at one host directory. It takes one descriptor chain at
//!   a time (the readable part holds the request, the writable part receives the reply) and
//!   never panics on guest input: malformed requests get an error reply.
//! - `daemon`: the vhost-user-fs backend (vhost-user-backend crate) that serves a
//!   [`Server`] to a VMM over a unix socket; also `tinyvmm virtiofsd`.
//!
//! Conventions of the server (the guest-visible contract):
//! - Requests before INIT, and a second INIT, get EIO; DESTROY ends the session (all node
//!   ids and handles dropped) and a new INIT may follow.
//! - An unknown node id gets ENOENT, an unknown or mismatched file handle EBADF, a stale
//!   node (its file replaced on the host) ESTALE. On an immutable share a LOOKUP of a
//!   missing name succeeds with node id 0 (a cached negative entry) instead of ENOENT.
//! - Names must be one component: "", ".", "..", anything with '/' or an embedded NUL get
//!   EINVAL, more than 255 bytes ENAMETOOLONG. EXPORT_SUPPORT is therefore not offered.
//! - INTERRUPT gets no reply and does nothing: each request is served to completion before
//!   the next is read from the queue.
//! - POSIX locks, flock, ioctl, poll, bmap, DAX mappings and TMPFILE get ENOSYS (the guest
//!   falls back to local locks / no DAX).
//! - Malformed chains get an error reply when an out header fits, else nothing; each is
//!   counted and logged rate-limited ([`Server::malformed_requests`]).
//!
//! Known limits: mounts beneath the share are served as one file system (SUBMOUNTS is not
//! offered), so inode numbers of different host file systems may collide in `st_ino`;
//! xattrs of symlinks and special files are not served (ENODATA / empty list / EPERM);
//! without root (no file handles) a node whose parent was forgotten first cannot be
//! re-walked (ENOENT), which the Linux client does not do, since it keeps parents of live
//! dentries.

pub mod abi;
pub mod daemon;
mod dispatch;
mod passthrough;
mod ratelimit;
mod server;

pub use server::{CachePolicy, IdMap, Server, ServerError, ShareOptions, DEFAULT_MAX_WRITE};
