//! The limits the device advertises in its config space, and enforces.
//!
//! A conforming Linux driver never builds a request above SEG_MAX × SIZE_MAX bytes; the
//! device rejects anything larger, so one request never needs a bounce buffer above
//! [`MAX_REQUEST_BYTES`].

/// Queue size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data descriptors per request (VIRTIO_BLK_F_SEG_MAX); header and status come on top.
pub const SEG_MAX: u32 = 64;
/// Bytes per data descriptor (VIRTIO_BLK_F_SIZE_MAX).
pub const SIZE_MAX: u32 = 64 * 1024;
/// The largest request (data bytes) served.
pub const MAX_REQUEST_BYTES: usize = SEG_MAX as usize * SIZE_MAX as usize;
/// Segments per DISCARD or WRITE_ZEROES request.
pub const MAX_DISCARD_SEG: u32 = 16;
/// Sectors per DISCARD segment (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Sectors per WRITE_ZEROES segment (2 GiB).
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 22;
/// DISCARD granularity in sectors (4 KiB, the file systems' block size).
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// Logical block size reported (VIRTIO_BLK_F_BLK_SIZE).
pub const BLK_SIZE: u32 = 512;
/// GET_ID answer length (VIRTIO_BLK_ID_BYTES).
pub const ID_BYTES: usize = 20;
/// Requests served per event-loop dispatch (each may be up to `MAX_REQUEST_BYTES` of I/O);
/// the rest wait for the device's own re-kick, so a flooding guest cannot starve the loop.
pub const BUDGET: u32 = 32;
