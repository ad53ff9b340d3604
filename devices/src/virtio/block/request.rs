//! One virtio-blk request: the descriptor chain checked and split into header, data and
//! status byte, then executed against the [`Backend`].
//!
//! A chain is `[header (device-readable) | data (readable for OUT, DISCARD, WRITE_ZEROES;
//! writable for IN, GET_ID) | status byte (device-writable, last)]`; the header and data may
//! be split over descriptors in any way. Everything is checked before the backend or guest
//! memory is touched, and the status byte is written after the data.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::backend::{Backend, DIRECT_ALIGN, SECTOR_SIZE};
use super::limits::{
    ID_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_REQUEST_BYTES, MAX_WRITE_ZEROES_SECTORS,
    SEG_MAX,
};

/// Size of `struct virtio_blk_outhdr` (type, reserved, sector).
pub const HEADER_LEN: usize = 16;
/// Size of `struct virtio_blk_discard_write_zeroes`.
const DISCARD_SEG_LEN: usize = 16;

/// Why a request failed. Variants up to [`BadRequest::Unsupported`] mean the guest sent
/// something malformed; the rest are host errors.
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    #[error("chain has no descriptor")]
    Empty,
    #[error("chain is truncated after {0} descriptors (loop, too long or bad next index)")]
    Truncated(usize),
    #[error("descriptor {index} buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { index: usize, addr: u64, len: u32 },
    #[error("last descriptor is not a device-writable status byte")]
    NoStatus,
    #[error("device-readable descriptor {0} follows a device-writable one")]
    ReadableAfterWritable(usize),
    #[error("header is {0} bytes, needs {HEADER_LEN}")]
    ShortHeader(usize),
    #[error("{0} descriptors, at most {max} (SEG_MAX + header + status)", max = SEG_MAX + 2)]
    TooManySegments(usize),
    #[error("{0} data bytes, at most {MAX_REQUEST_BYTES}")]
    TooLarge(usize),
    #[error("{kind} request carries {len} bytes of data in the wrong direction")]
    WrongDirection { kind: &'static str, len: usize },
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(usize),
    #[error("sectors {sector}+{count} run past the end of the disk ({capacity} sectors)")]
    OutOfRange {
        sector: u64,
        count: u64,
        capacity: u64,
    },
    #[error("write to a read-only volume")]
    ReadOnly,
    #[error("discard/write-zeroes payload of {0} bytes (1..={MAX_DISCARD_SEG} segments of 16)")]
    BadSegments(usize),
    #[error("discard/write-zeroes of {count} sectors, at most {max}")]
    SegmentTooLarge { count: u32, max: u32 },
    #[error("unsupported flags {0:#x}")]
    BadFlags(u32),
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    #[error("cannot access guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
    #[error("host I/O failed")]
    Io(#[source] std::io::Error),
}

impl BadRequest {
    /// The status byte the guest gets.
    pub fn status(&self) -> u8 {
        let s = match self {
            BadRequest::Unsupported(_) | BadRequest::BadFlags(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        };
        s as u8
    }

    /// Whether the guest (not the host) is to blame.
    pub fn is_guest_error(&self) -> bool {
        !matches!(self, BadRequest::Memory(_) | BadRequest::Io(_))
    }
}

/// A run of guest memory, one descriptor's buffer (or part of it).
#[derive(Debug, Clone, Copy)]
struct Region {
    addr: GuestAddress,
    len: usize,
}

/// Regions in chain order, read or written as one byte stream.
#[derive(Debug, Default)]
struct Regions(Vec<Region>);

impl Regions {
    fn len(&self) -> usize {
        self.0.iter().map(|r| r.len).sum()
    }

    /// The stream from byte `skip` on.
    fn skip(&self, mut skip: usize) -> Regions {
        let mut out = Vec::new();
        for r in &self.0 {
            if skip >= r.len {
                skip -= r.len;
                continue;
            }
            out.push(Region {
                addr: r.addr.unchecked_add(skip as u64),
                len: r.len - skip,
            });
            skip = 0;
        }
        Regions(out)
    }

    /// Copies the first `buf.len()` bytes of the stream into `buf`.
    fn gather(&self, mem: &GuestMemoryMmap, buf: &mut [u8]) -> Result<(), BadRequest> {
        let mut at = 0;
        for r in &self.0 {
            if at == buf.len() {
                break;
            }
            let n = r.len.min(buf.len() - at);
            mem.read_slice(&mut buf[at..at + n], r.addr)
                .map_err(BadRequest::Memory)?;
            at += n;
        }
        Ok(())
    }

    /// Copies `buf` to the start of the stream.
    fn scatter(&self, mem: &GuestMemoryMmap, buf: &[u8]) -> Result<(), BadRequest> {
        let mut at = 0;
        for r in &self.0 {
            if at == buf.len() {
                break;
            }
            let n = r.len.min(buf.len() - at);
            mem.write_slice(&buf[at..at + n], r.addr)
                .map_err(BadRequest::Memory)?;
            at += n;
        }
        Ok(())
    }
}

/// A chain whose layout was checked: where the status byte goes, and the two data streams.
#[derive(Debug)]
pub struct Parsed {
    status: GuestAddress,
    /// Device-readable bytes (header first).
    readable: Regions,
    /// Device-writable bytes, the status byte excluded.
    writable: Regions,
    descriptors: usize,
}

impl Parsed {
    /// The guest address of the status byte.
    pub fn status_addr(&self) -> GuestAddress {
        self.status
    }

    /// Device-readable data bytes after the header (what an OUT request writes).
    pub fn readable_data_len(&self) -> usize {
        self.readable.len().saturating_sub(HEADER_LEN)
    }
}

/// Where a broken chain's status byte can still go, if anywhere.
pub type ParseError = (BadRequest, Option<GuestAddress>);

/// Checks the chain's shape and that every buffer lies in guest memory.
pub fn parse(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
) -> Result<Parsed, ParseError> {
    let descs: Vec<Descriptor> = chain.collect();
    let last = match descs.last() {
        None => return Err((BadRequest::Empty, None)),
        Some(last) if last.has_next() => return Err((BadRequest::Truncated(descs.len()), None)),
        Some(last) => *last,
    };
    let status = status_byte(&last, mem).ok_or((BadRequest::NoStatus, None))?;
    let fail = |e| Err((e, Some(status)));
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    for (index, d) in descs.iter().enumerate() {
        let perm = if d.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !in_memory(mem, d, perm) {
            return fail(BadRequest::OutsideMemory {
                index,
                addr: d.addr().0,
                len: d.len(),
            });
        }
        // u32 fits in usize on the 64-bit hosts KVM runs on.
        let region = Region {
            addr: d.addr(),
            len: d.len() as usize,
        };
        if d.is_write_only() {
            writable.push(region);
        } else if !writable.is_empty() {
            return fail(BadRequest::ReadableAfterWritable(index));
        } else {
            readable.push(region);
        }
    }
    if let Some(tail) = writable.last_mut() {
        tail.len -= 1;
    }
    let parsed = Parsed {
        status,
        readable: Regions(readable),
        writable: Regions(writable),
        descriptors: descs.len(),
    };
    if parsed.descriptors > SEG_MAX as usize + 2 {
        return fail(BadRequest::TooManySegments(parsed.descriptors));
    }
    let data = parsed.readable.len().saturating_sub(HEADER_LEN) + parsed.writable.len();
    if data > MAX_REQUEST_BYTES {
        return fail(BadRequest::TooLarge(data));
    }
    Ok(parsed)
}

/// The last byte of the last descriptor, if that descriptor is device-writable and in memory.
fn status_byte(last: &Descriptor, mem: &GuestMemoryMmap) -> Option<GuestAddress> {
    if !last.is_write_only() || last.len() == 0 || !in_memory(mem, last, Permissions::Write) {
        return None;
    }
    last.addr().checked_add(u64::from(last.len()) - 1)
}

fn in_memory(mem: &GuestMemoryMmap, d: &Descriptor, perm: Permissions) -> bool {
    usize::try_from(d.len())
        .map(|len| len == 0 || mem.check_range(d.addr(), len, perm))
        .unwrap_or(false)
}

/// The request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u32,
    pub sector: u64,
}

/// Reads the header from the start of the readable stream.
pub fn header(parsed: &Parsed, mem: &GuestMemoryMmap) -> Result<Header, BadRequest> {
    let len = parsed.readable.len();
    if len < HEADER_LEN {
        return Err(BadRequest::ShortHeader(len));
    }
    let mut raw = [0u8; HEADER_LEN];
    parsed.readable.gather(mem, &mut raw)?;
    let kind = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&raw[8..16]);
    Ok(Header {
        kind,
        sector: u64::from_le_bytes(sector),
    })
}

/// What executing a request needs besides the chain.
pub struct Context<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub backend: &'a mut Backend,
    /// The GET_ID answer, NUL-padded.
    pub id: &'a [u8; ID_BYTES],
    /// Reused across requests; never larger than [`MAX_REQUEST_BYTES`] + [`DIRECT_ALIGN`].
    pub bounce: &'a mut Vec<u8>,
    /// Whether DISCARD and WRITE_ZEROES are offered (not on read-only volumes).
    pub discard: bool,
}

/// Executes a parsed request; returns the bytes written into the chain's data buffers.
pub fn execute(parsed: &Parsed, hdr: Header, cx: &mut Context) -> Result<u32, BadRequest> {
    let data_in = parsed.readable.skip(HEADER_LEN);
    match hdr.kind {
        VIRTIO_BLK_T_IN => {
            no_data("IN", &data_in)?;
            read(parsed, hdr.sector, cx)
        }
        VIRTIO_BLK_T_OUT => {
            no_data("OUT", &parsed.writable)?;
            write(&data_in, hdr.sector, cx).map(|()| 0)
        }
        VIRTIO_BLK_T_FLUSH => cx.backend.flush().map(|()| 0).map_err(BadRequest::Io),
        VIRTIO_BLK_T_GET_ID => {
            let n = parsed.writable.len().min(ID_BYTES);
            parsed.writable.scatter(cx.mem, &cx.id[..n])?;
            // n <= 20.
            Ok(n as u32)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES if cx.discard => {
            no_data("DISCARD/WRITE_ZEROES", &parsed.writable)?;
            discard_or_zero(hdr.kind == VIRTIO_BLK_T_DISCARD, &data_in, cx).map(|()| 0)
        }
        other => Err(BadRequest::Unsupported(other)),
    }
}

fn no_data(kind: &'static str, wrong: &Regions) -> Result<(), BadRequest> {
    match wrong.len() {
        0 => Ok(()),
        len => Err(BadRequest::WrongDirection { kind, len }),
    }
}

/// The sector count of `len` data bytes at `sector`, if the range lies on the disk.
fn check_range(backend: &Backend, sector: u64, len: usize) -> Result<u64, BadRequest> {
    if !(len as u64).is_multiple_of(SECTOR_SIZE) {
        return Err(BadRequest::Unaligned(len));
    }
    let count = len as u64 / SECTOR_SIZE;
    let capacity = backend.sectors();
    match sector.checked_add(count) {
        Some(end) if end <= capacity => Ok(count),
        _ => Err(BadRequest::OutOfRange {
            sector,
            count,
            capacity,
        }),
    }
}

/// A `len`-byte window of `bounce` aligned for `O_DIRECT`.
fn aligned(bounce: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if bounce.len() < len + DIRECT_ALIGN {
        bounce.resize(len + DIRECT_ALIGN, 0);
    }
    let off = bounce.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
    &mut bounce[off..off + len]
}

fn read(parsed: &Parsed, sector: u64, cx: &mut Context) -> Result<u32, BadRequest> {
    let len = parsed.writable.len();
    check_range(cx.backend, sector, len)?;
    let buf = aligned(cx.bounce, len);
    cx.backend
        .read_at(buf, sector * SECTOR_SIZE)
        .map_err(BadRequest::Io)?;
    parsed.writable.scatter(cx.mem, buf)?;
    // len <= MAX_REQUEST_BYTES, far below u32::MAX.
    Ok(len as u32)
}

fn write(data: &Regions, sector: u64, cx: &mut Context) -> Result<(), BadRequest> {
    if cx.backend.read_only() {
        return Err(BadRequest::ReadOnly);
    }
    let len = data.len();
    check_range(cx.backend, sector, len)?;
    let buf = aligned(cx.bounce, len);
    data.gather(cx.mem, buf)?;
    cx.backend
        .write_at(buf, sector * SECTOR_SIZE)
        .map_err(BadRequest::Io)
}

/// One `virtio_blk_discard_write_zeroes` segment.
struct Segment {
    sector: u64,
    count: u32,
    flags: u32,
}

fn discard_or_zero(discard: bool, data: &Regions, cx: &mut Context) -> Result<(), BadRequest> {
    let len = data.len();
    if len == 0
        || !len.is_multiple_of(DISCARD_SEG_LEN)
        || len / DISCARD_SEG_LEN > MAX_DISCARD_SEG as usize
    {
        return Err(BadRequest::BadSegments(len));
    }
    let mut raw = [0u8; DISCARD_SEG_LEN * MAX_DISCARD_SEG as usize];
    data.gather(cx.mem, &mut raw[..len])?;
    let (max, allowed_flags) = if discard {
        (MAX_DISCARD_SECTORS, 0)
    } else {
        (MAX_WRITE_ZEROES_SECTORS, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)
    };
    let segments: Vec<Segment> = raw[..len]
        .chunks_exact(DISCARD_SEG_LEN)
        .map(|c| Segment {
            sector: u64::from_le_bytes(c[0..8].try_into().unwrap_or_default()),
            count: u32::from_le_bytes(c[8..12].try_into().unwrap_or_default()),
            flags: u32::from_le_bytes(c[12..16].try_into().unwrap_or_default()),
        })
        .collect();
    // Every segment is checked before any is applied.
    for s in &segments {
        if s.flags & !allowed_flags != 0 {
            return Err(BadRequest::BadFlags(s.flags));
        }
        if s.count > max {
            return Err(BadRequest::SegmentTooLarge {
                count: s.count,
                max,
            });
        }
        check_range(
            cx.backend,
            s.sector,
            s.count as usize * SECTOR_SIZE as usize,
        )?;
    }
    for s in &segments {
        let (offset, bytes) = (s.sector * SECTOR_SIZE, u64::from(s.count) * SECTOR_SIZE);
        let result = if discard {
            discard_range(cx.backend, offset, bytes)
        } else {
            let unmap = s.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
            cx.backend.write_zeroes(offset, bytes, unmap)
        };
        result.map_err(BadRequest::Io)?;
    }
    Ok(())
}

/// DISCARD is a hint: a file system that cannot punch holes leaves the data in place.
fn discard_range(backend: &Backend, offset: u64, bytes: u64) -> std::io::Result<()> {
    match backend.punch_hole(offset, bytes) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
        other => other,
    }
}

/// Writes the status byte.
pub fn write_status(mem: &GuestMemoryMmap, at: GuestAddress, status: u8) -> bool {
    mem.write_obj(status, at).is_ok()
}

/// The status byte of a successful request.
pub const STATUS_OK: u8 = VIRTIO_BLK_S_OK as u8;
