//! Checking a guest descriptor chain before touching the memory it names.
//!
//! Every check happens up front, so a malformed chain is rejected before the device reads or
//! writes any of it: the guest-controlled data is trusted for nothing.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// Why a descriptor chain was rejected (counted as a bad descriptor).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadChain {
    /// The head descriptor could not be read.
    #[error("chain has no readable descriptor")]
    Empty,
    /// The chain ended on a descriptor that still has NEXT set: it loops, points past the
    /// descriptor table, or a descriptor could not be read.
    #[error("chain is cut off after {0} descriptors (loop or bad next index)")]
    Truncated(usize),
    /// The chain has more descriptors than the queue has entries (indirect tables).
    #[error("chain has more than {max} descriptors")]
    TooManyDescriptors {
        /// The queue size.
        max: u16,
    },
    /// A descriptor points the wrong way: driver-readable in a receive buffer, or
    /// device-writable in a transmit buffer.
    #[error("descriptor {index} is {}", if *.writable { "device-writable in a transmit chain" } else { "read-only in a receive chain" })]
    WrongDirection {
        /// Position in the chain.
        index: usize,
        /// Whether the descriptor was device-writable.
        writable: bool,
    },
    /// A buffer lies (partly) outside guest memory.
    #[error("descriptor {index}: buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory {
        /// Position in the chain.
        index: usize,
        /// Guest address of the buffer.
        addr: u64,
        /// Length of the buffer.
        len: u32,
    },
    /// The chain cannot even hold the virtio-net header.
    #[error("chain holds {len} bytes, less than the {min}-byte virtio-net header")]
    TooShort {
        /// Bytes in the chain.
        len: u64,
        /// The minimum.
        min: usize,
    },
    /// A transmit chain carries a frame larger than the device accepts.
    #[error("chain holds {len} bytes, more than the {max} bytes of header + largest frame")]
    TooLarge {
        /// Bytes in the chain.
        len: u64,
        /// The maximum.
        max: usize,
    },
}

/// Which way the buffers of a chain go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The device reads (transmit queue).
    DeviceReads,
    /// The device writes (receive queue).
    DeviceWrites,
}

/// The checked buffers of one chain.
#[derive(Debug, Clone, Default)]
pub struct Buffers {
    parts: Vec<(GuestAddress, usize)>,
    len: usize,
}

impl Buffers {
    /// Total bytes of all buffers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Copies the buffers, in order, into `out` (cleared first).
    pub fn read_all(
        &self,
        mem: &GuestMemoryMmap,
        out: &mut Vec<u8>,
    ) -> Result<(), vm_memory::GuestMemoryError> {
        out.clear();
        out.resize(self.len, 0);
        let mut at = 0;
        for &(addr, len) in &self.parts {
            mem.read_slice(&mut out[at..at + len], addr)?;
            at += len;
        }
        Ok(())
    }

    /// Writes `data` into the buffers, in order; `data` must not be longer than
    /// [`len`](Self::len). Returns the bytes written.
    pub fn write_all(
        &self,
        mem: &GuestMemoryMmap,
        mut data: &[u8],
    ) -> Result<usize, vm_memory::GuestMemoryError> {
        let mut written = 0;
        for &(addr, len) in &self.parts {
            if data.is_empty() {
                break;
            }
            let n = len.min(data.len());
            mem.write_slice(&data[..n], addr)?;
            data = &data[n..];
            written += n;
        }
        Ok(written)
    }
}

/// Checks a whole chain: its shape, the direction of every buffer, that every buffer is
/// inside guest memory, and that it holds between `min_len` and `max_len` bytes.
pub fn check_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    queue_size: u16,
    direction: Direction,
    (min_len, max_len): (usize, usize),
) -> Result<Buffers, BadChain> {
    // The iterator stops after queue-size descriptors (or an indirect table's length) and on
    // unreadable entries; a last descriptor that still wants a successor tells us it stopped
    // early. One more than the queue size is enough to tell "too many".
    let descs: Vec<Descriptor> = chain.take(usize::from(queue_size) + 1).collect();
    if descs.len() > usize::from(queue_size) {
        return Err(BadChain::TooManyDescriptors { max: queue_size });
    }
    match descs.last() {
        None => return Err(BadChain::Empty),
        Some(last) if last.has_next() => return Err(BadChain::Truncated(descs.len())),
        Some(_) => {}
    }
    let mut total: u64 = 0;
    let mut parts = Vec::with_capacity(descs.len());
    for (index, desc) in descs.iter().enumerate() {
        let writable = desc.is_write_only();
        if writable != (direction == Direction::DeviceWrites) {
            return Err(BadChain::WrongDirection { index, writable });
        }
        let outside = || BadChain::OutsideMemory {
            index,
            addr: desc.addr().0,
            len: desc.len(),
        };
        let len = usize::try_from(desc.len()).map_err(|_| outside())?;
        let access = match direction {
            Direction::DeviceReads => Permissions::Read,
            Direction::DeviceWrites => Permissions::Write,
        };
        if !mem.check_range(desc.addr(), len, access) {
            return Err(outside());
        }
        total += u64::from(desc.len());
        if len > 0 {
            parts.push((desc.addr(), len));
        }
    }
    if total < min_len as u64 {
        return Err(BadChain::TooShort {
            len: total,
            min: min_len,
        });
    }
    if total > max_len as u64 {
        return Err(BadChain::TooLarge {
            len: total,
            max: max_len,
        });
    }
    // total <= max_len, which is a usize.
    let len = total as usize;
    Ok(Buffers { parts, len })
}
