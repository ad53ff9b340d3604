//! virtio-blk tests through virtio-queue's `MockSplitQueue` (it plays the driver), on real
//! image files in a temporary directory.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::split::{Descriptor as SplitDescriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::limits::{MAX_REQUEST_BYTES, SEG_MAX, SIZE_MAX};
use super::*;
use crate::virtio::features::VIRTIO_F_VERSION_1;
use crate::virtio::{ActivateArgs, VirtioDevice, VirtioInterrupt};

pub(super) const MEM_SIZE: usize = 8 << 20;
pub(super) const NEXT: u16 = 1;
pub(super) const WRITE: u16 = 2;
const INDIRECT: u16 = 4;
pub(super) const QSIZE: u16 = 16;
/// Guest addresses: header, data, status, a second data area.
pub(super) const HDR: u64 = 0x10_000;
pub(super) const DATA: u64 = 0x20_000;
pub(super) const STATUS: u64 = 0x30_000;
const DATA2: u64 = 0x40_000;
/// Image size: 64 sectors (32 KiB).
const IMAGE_SECTORS: u64 = 64;
pub(super) const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

pub(super) fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// Byte `i` of the test pattern.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 512) as u8).collect()
}

/// A temporary directory holding `disk.img` filled with the pattern.
pub(super) struct Image {
    dir: tempfile::TempDir,
}

impl Image {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let len = (IMAGE_SECTORS * 512) as usize;
        std::fs::write(dir.path().join("disk.img"), pattern(len)).unwrap();
        Image { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("disk.img")
    }

    pub(super) fn contents(&self) -> Vec<u8> {
        std::fs::read(self.path()).unwrap()
    }

    pub(super) fn open(&self, read_only: bool, cache: CacheMode) -> Result<Backend, BackendError> {
        Backend::open(&VolumeOptions {
            path: self.path(),
            read_only,
            cache,
        })
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    q: MockSplitQueue<'static, GuestMemoryMmap>,
    blk: Block,
    irq: Arc<EventFd>,
}

/// A Block over `backend`, activated on a mock queue of `qsize` entries.
fn rig(backend: Backend, qsize: u16) -> Rig {
    let mem: &'static GuestMemoryMmap = Box::leak(Box::new(memory()));
    let q = MockSplitQueue::new(mem, qsize);
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut blk = Block::new(backend, Some("serial-0123")).unwrap();
    blk.activate(ActivateArgs {
        mem: mem.clone(),
        queues: vec![q.create_queue::<Queue>().unwrap()],
        queue_evts: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
        interrupt: Arc::new(VirtioInterrupt::new(irq.clone())),
        acked_features: VIRTIO_F_VERSION_1,
    })
    .unwrap();
    Rig {
        mem: mem.clone(),
        q,
        blk,
        irq,
    }
}

impl Rig {
    /// Writes a request header at `addr`.
    fn header(&self, addr: u64, kind: u32, sector: u64) {
        let mut raw = [0u8; 16];
        raw[0..4].copy_from_slice(&kind.to_le_bytes());
        raw[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&raw, GuestAddress(addr)).unwrap();
    }

    /// Publishes a chain at descriptor index `at`: `(addr, len, flags)`, NEXT links added.
    fn chain(&self, at: u16, descs: &[(u64, u32, u16)]) {
        let n = descs.len();
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let (flags, next) = if i + 1 < n {
                    (flags | NEXT, at + i as u16 + 1)
                } else {
                    (flags, 0)
                };
                SplitDescriptor::new(addr, len, flags, next).into()
            })
            .collect();
        self.q.add_desc_chains(&raw, at).unwrap();
    }

    /// A 3-descriptor request: header, one data buffer, status.
    fn request(&self, at: u16, kind: u32, sector: u64, data_len: u32, data_flags: u16) {
        self.header(HDR, kind, sector);
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        self.chain(
            at,
            &[
                (HDR, 16, 0),
                (DATA, data_len, data_flags),
                (STATUS, 1, WRITE),
            ],
        );
    }

    fn status(&self, addr: u64) -> u8 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn used(&self) -> Vec<(u32, u32)> {
        let n = self.q.used().idx().load();
        (0..n)
            .map(|i| {
                let e: VirtqUsedElem = self.q.used().ring().ref_at(i as usize).unwrap().load();
                (e.id(), e.len())
            })
            .collect()
    }
}

fn rw_rig(img: &Image) -> Rig {
    rig(img.open(false, CacheMode::Writeback).unwrap(), QSIZE)
}

#[test]
fn read_when_good_chain_then_image_bytes_in_guest_and_status_last() {
    let img = Image::new();
    let mut r = rw_rig(&img);
    r.request(0, VIRTIO_BLK_T_IN, 3, 4096, WRITE);

    assert!(r.blk.process_queue());

    assert_eq!(r.used(), vec![(0, 4097)]);
    assert_eq!(r.status(STATUS), OK);
    assert_eq!(r.read(DATA, 4096), img.contents()[3 * 512..3 * 512 + 4096]);
    assert_eq!(r.irq.read().unwrap(), 1);
    assert_eq!(r.blk.counters().bytes_read.load(Ordering::Relaxed), 4096);
}

#[test]
fn read_when_header_and_data_split_over_descriptors_then_stream_reassembled() {
    let img = Image::new();
    let mut r = rw_rig(&img);
    r.header(HDR, VIRTIO_BLK_T_IN, 1);
    // Header in 2 pieces; 1024 data bytes in 3 pieces, the last sharing the status buffer.
    r.chain(
        0,
        &[
            (HDR, 10, 0),
            (HDR + 10, 6, 0),
            (DATA, 100, WRITE),
            (DATA2, 900, WRITE),
            (STATUS, 25, WRITE),
        ],
    );

    r.blk.process_queue();

    let want = &img.contents()[512..1536];
    let mut got = r.read(DATA, 100);
    got.extend(r.read(DATA2, 900));
    got.extend(r.read(STATUS, 24));
    assert_eq!(got, want);
    assert_eq!(r.status(STATUS + 24), OK);
    assert_eq!(r.used(), vec![(0, 1025)]);
}

#[test]
fn write_when_good_chain_then_file_changed_at_sector_only() {
    let img = Image::new();
    let before = img.contents();
    let mut r = rw_rig(&img);
    r.mem
        .write_slice(&[0xab; 1024], GuestAddress(DATA))
        .unwrap();
    r.request(0, VIRTIO_BLK_T_OUT, 10, 1024, 0);

    r.blk.process_queue();

    assert_eq!(r.used(), vec![(0, 1)]);
    assert_eq!(r.status(STATUS), OK);
    let after = img.contents();
    assert_eq!(after.len(), before.len());
    assert_eq!(after[5120..6144], [0xab; 1024]);
    assert_eq!(after[..5120], before[..5120]);
    assert_eq!(after[6144..], before[6144..]);
    assert_eq!(r.blk.counters().bytes_written.load(Ordering::Relaxed), 1024);
}

#[test]
fn write_when_read_only_volume_then_ioerr_and_file_unchanged() {
    let img = Image::new();
    let before = img.contents();
    let mut r = rig(img.open(true, CacheMode::Writeback).unwrap(), QSIZE);
    let f = r.blk.avail_features();
    assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
    r.mem.write_slice(&[0xcd; 512], GuestAddress(DATA)).unwrap();
    r.request(0, VIRTIO_BLK_T_OUT, 0, 512, 0);

    r.blk.process_queue();

    assert_eq!(r.status(STATUS), IOERR);
    assert_eq!(img.contents(), before);
}

#[test]
fn discard_and_write_zeroes_when_read_only_then_unsupp_and_file_unchanged() {
    let img = Image::new();
    let before = img.contents();
    let mut r = rig(img.open(true, CacheMode::Writeback).unwrap(), QSIZE);
    for (i, kind) in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES]
        .into_iter()
        .enumerate()
    {
        segment(&r, DATA, 0, 8, 0);
        let status = STATUS + i as u64;
        r.header(HDR + 16 * i as u64, kind, 0);
        r.chain(
            3 * i as u16,
            &[
                (HDR + 16 * i as u64, 16, 0),
                (DATA, 16, 0),
                (status, 1, WRITE),
            ],
        );
        r.blk.process_queue();
        assert_eq!(r.status(status), UNSUPP, "type {kind}");
    }
    assert_eq!(img.contents(), before);
}

#[test]
fn flush_when_writable_or_read_only_then_ok() {
    for read_only in [false, true] {
        let img = Image::new();
        let mut r = rig(img.open(read_only, CacheMode::Writeback).unwrap(), QSIZE);
        r.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
        r.chain(0, &[(HDR, 16, 0), (STATUS, 1, WRITE)]);
        r.blk.process_queue();
        assert_eq!(r.status(STATUS), OK, "read_only={read_only}");
        assert_eq!(r.used(), vec![(0, 1)]);
    }
}

#[test]
fn get_id_when_serial_set_then_20_bytes_nul_padded() {
    let img = Image::new();
    let mut r = rw_rig(&img);
    r.mem.write_slice(&[0xee; 20], GuestAddress(DATA)).unwrap();
    r.request(0, VIRTIO_BLK_T_GET_ID, 0, 20, WRITE);

    r.blk.process_queue();

    let mut want = b"serial-0123".to_vec();
    want.resize(20, 0);
    assert_eq!(r.read(DATA, 20), want);
    assert_eq!(r.status(STATUS), OK);
    assert_eq!(r.used(), vec![(0, 21)]);
}

/// Writes one discard/write-zeroes segment at `addr`.
fn segment(r: &Rig, addr: u64, sector: u64, count: u32, flags: u32) {
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&sector.to_le_bytes());
    raw[8..12].copy_from_slice(&count.to_le_bytes());
    raw[12..16].copy_from_slice(&flags.to_le_bytes());
    r.mem.write_slice(&raw, GuestAddress(addr)).unwrap();
}

/// A 64 KiB image of non-zero data, fully allocated, for hole punching.
fn big_image() -> Image {
    let img = Image::new();
    std::fs::write(img.path(), vec![0x5a; 128 * 512]).unwrap();
    img
}

/// `(sector, count, flags)` of one discard/write-zeroes segment.
type Seg = (u64, u32, u32);

fn zeroing_request(r: &mut Rig, kind: u32, segs: &[Seg]) -> u8 {
    for (i, &(sector, count, flags)) in segs.iter().enumerate() {
        segment(r, DATA + 16 * i as u64, sector, count, flags);
    }
    r.header(HDR, kind, 0);
    r.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let at = r.used().len() as u16 * 3 % QSIZE;
    r.chain(
        at,
        &[
            (HDR, 16, 0),
            (DATA, 16 * segs.len() as u32, 0),
            (STATUS, 1, WRITE),
        ],
    );
    r.blk.process_queue();
    r.status(STATUS)
}

#[test]
fn discard_when_two_segments_then_ranges_read_zero_and_blocks_freed() {
    let img = big_image();
    let blocks_before = std::fs::metadata(img.path()).unwrap().blocks();
    let mut r = rw_rig(&img);

    let status = zeroing_request(&mut r, VIRTIO_BLK_T_DISCARD, &[(8, 16, 0), (64, 32, 0)]);

    assert_eq!(status, OK);
    let after = img.contents();
    assert_eq!(after.len(), 128 * 512, "size kept");
    assert!(after[8 * 512..24 * 512].iter().all(|b| *b == 0));
    assert!(after[64 * 512..96 * 512].iter().all(|b| *b == 0));
    assert!(after[..8 * 512].iter().all(|b| *b == 0x5a));
    assert!(after[24 * 512..64 * 512].iter().all(|b| *b == 0x5a));
    let blocks_after = std::fs::metadata(img.path()).unwrap().blocks();
    assert!(
        blocks_after < blocks_before,
        "{blocks_after} >= {blocks_before}"
    );
}

#[test]
fn write_zeroes_when_with_and_without_unmap_then_ranges_read_zero() {
    let img = big_image();
    let mut r = rw_rig(&img);

    let plain = zeroing_request(&mut r, VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 8, 0)]);
    let unmap = zeroing_request(
        &mut r,
        VIRTIO_BLK_T_WRITE_ZEROES,
        &[(100, 4, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)],
    );

    assert_eq!((plain, unmap), (OK, OK));
    let after = img.contents();
    assert!(after[..8 * 512].iter().all(|b| *b == 0));
    assert!(after[100 * 512..104 * 512].iter().all(|b| *b == 0));
    assert!(after[8 * 512..100 * 512].iter().all(|b| *b == 0x5a));
    assert!(after[104 * 512..].iter().all(|b| *b == 0x5a));
}

#[test]
fn discard_when_bad_flags_segment_past_end_or_too_many_segments_then_error_and_nothing_changed() {
    let img = big_image();
    let before = img.contents();
    let mut r = rw_rig(&img);
    let cases: [(&str, u32, Vec<Seg>, u8); 4] = [
        (
            "unmap flag on discard",
            VIRTIO_BLK_T_DISCARD,
            vec![(0, 8, 1)],
            UNSUPP,
        ),
        (
            "unknown write-zeroes flag",
            VIRTIO_BLK_T_WRITE_ZEROES,
            vec![(0, 8, 2)],
            UNSUPP,
        ),
        // The first segment is fine; nothing is applied because the second is bad.
        (
            "second segment past the end",
            VIRTIO_BLK_T_DISCARD,
            vec![(0, 8, 0), (120, 9, 0)],
            IOERR,
        ),
        (
            "17 segments",
            VIRTIO_BLK_T_DISCARD,
            vec![(0, 1, 0); 17],
            IOERR,
        ),
    ];
    for (name, kind, segs, want) in cases {
        assert_eq!(zeroing_request(&mut r, kind, &segs), want, "{name}");
        assert_eq!(img.contents(), before, "{name}");
    }
}

#[test]
fn read_and_write_when_range_past_end_or_overflowing_then_ioerr_and_nothing_touched() {
    let img = Image::new();
    let before = img.contents();
    let mut r = rw_rig(&img);
    let cases = [
        (
            "read 2 sectors at the last one",
            VIRTIO_BLK_T_IN,
            IMAGE_SECTORS - 1,
            WRITE,
        ),
        ("read at capacity", VIRTIO_BLK_T_IN, IMAGE_SECTORS, WRITE),
        (
            "write 2 sectors at the last one",
            VIRTIO_BLK_T_OUT,
            IMAGE_SECTORS - 1,
            0,
        ),
        ("write at u64::MAX", VIRTIO_BLK_T_OUT, u64::MAX, 0),
        (
            "read at u64::MAX / 512",
            VIRTIO_BLK_T_IN,
            u64::MAX / 512,
            WRITE,
        ),
    ];
    for (i, (name, kind, sector, flags)) in cases.into_iter().enumerate() {
        r.mem
            .write_slice(&[0x77; 1024], GuestAddress(DATA))
            .unwrap();
        r.request(3 * i as u16 % QSIZE, kind, sector, 1024, flags);
        r.blk.process_queue();
        assert_eq!(r.status(STATUS), IOERR, "{name}");
        assert_eq!(
            r.read(DATA, 1024),
            [0x77; 1024],
            "{name}: guest buffer untouched"
        );
        assert_eq!(img.contents(), before, "{name}: image untouched");
    }
    assert_eq!(r.used().len(), 5);
}

#[test]
fn request_when_length_not_multiple_of_512_or_unknown_type_then_error_status() {
    let img = Image::new();
    let before = img.contents();
    let mut r = rw_rig(&img);
    r.request(0, VIRTIO_BLK_T_OUT, 0, 100, 0);
    r.blk.process_queue();
    assert_eq!(r.status(STATUS), IOERR, "OUT of 100 bytes");
    r.request(3, VIRTIO_BLK_T_IN, 0, 513, WRITE);
    r.blk.process_queue();
    assert_eq!(r.status(STATUS), IOERR, "IN of 513 bytes");
    r.request(6, 99, 0, 512, WRITE);
    r.blk.process_queue();
    assert_eq!(r.status(STATUS), UNSUPP, "type 99");
    assert_eq!(img.contents(), before);
    assert_eq!(r.blk.counters().bad.load(Ordering::Relaxed), 3);
}

type Publish = fn(&Rig);

/// Each malformed chain gets an error status where it has a status byte (used length 1) or
/// is returned empty where it has none; the GET_ID request published after it is served.
#[test]
fn process_when_malformed_chain_then_error_status_and_next_request_served() {
    let cases: [(&str, Publish, Option<u8>); 10] = [
        (
            "no status descriptor (last is readable)",
            |r| {
                r.header(HDR, VIRTIO_BLK_T_IN, 0);
                r.chain(0, &[(HDR, 16, 0), (DATA, 512, 0)]);
            },
            None,
        ),
        (
            "zero-length status descriptor",
            |r| {
                r.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
                r.chain(0, &[(HDR, 16, 0), (STATUS, 0, WRITE)]);
            },
            None,
        ),
        (
            "header too short",
            |r| {
                r.chain(0, &[(HDR, 8, 0), (STATUS, 1, WRITE)]);
            },
            Some(IOERR),
        ),
        (
            "readable after writable",
            |r| {
                r.header(HDR, VIRTIO_BLK_T_IN, 0);
                r.chain(
                    0,
                    &[
                        (HDR, 16, 0),
                        (DATA, 512, WRITE),
                        (DATA2, 512, 0),
                        (STATUS, 1, WRITE),
                    ],
                );
            },
            Some(IOERR),
        ),
        (
            "IN with device-readable data",
            |r| r.request(0, VIRTIO_BLK_T_IN, 0, 512, 0),
            Some(IOERR),
        ),
        (
            "OUT with device-writable data",
            |r| r.request(0, VIRTIO_BLK_T_OUT, 0, 512, WRITE),
            Some(IOERR),
        ),
        (
            "data outside guest memory",
            |r| {
                r.header(HDR, VIRTIO_BLK_T_IN, 0);
                r.chain(
                    0,
                    &[
                        (HDR, 16, 0),
                        (MEM_SIZE as u64 - 256, 512, WRITE),
                        (STATUS, 1, WRITE),
                    ],
                );
            },
            Some(IOERR),
        ),
        (
            "request above SEG_MAX * SIZE_MAX",
            |r| {
                r.header(HDR, VIRTIO_BLK_T_IN, 0);
                let huge = MAX_REQUEST_BYTES as u32 + 512;
                r.chain(
                    0,
                    &[(HDR, 16, 0), (0x100_000, huge, WRITE), (STATUS, 1, WRITE)],
                );
            },
            Some(IOERR),
        ),
        (
            "loop",
            |r| {
                let raw: Vec<RawDescriptor> = vec![
                    SplitDescriptor::new(HDR, 16, NEXT, 1).into(),
                    SplitDescriptor::new(STATUS, 1, WRITE | NEXT, 0).into(),
                ];
                r.q.add_desc_chains(&raw, 0).unwrap();
            },
            None,
        ),
        (
            "indirect table of bad length",
            |r| {
                r.chain(0, &[(0x50_000, 15, INDIRECT)]);
            },
            None,
        ),
    ];
    for (name, publish, want) in cases {
        let img = Image::new();
        let before = img.contents();
        let mut r = rw_rig(&img);
        r.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        publish(&r);
        // The good request after it: GET_ID into DATA2, its own status byte.
        r.header(HDR + 0x100, VIRTIO_BLK_T_GET_ID, 0);
        r.chain(
            8,
            &[
                (HDR + 0x100, 16, 0),
                (DATA2, 20, WRITE),
                (STATUS + 0x100, 1, WRITE),
            ],
        );

        r.blk.process_queue();

        let used = r.used();
        assert_eq!(used.len(), 2, "{name}: {used:?}");
        match want {
            Some(status) => {
                assert_eq!(r.status(STATUS), status, "{name}");
                assert_eq!(used[0].1, 1, "{name}");
            }
            None => assert_eq!(used[0].1, 0, "{name}"),
        }
        assert_eq!(used[1], (8, 21), "{name}");
        assert_eq!(r.status(STATUS + 0x100), OK, "{name}");
        assert_eq!(&r.read(DATA2, 11), b"serial-0123", "{name}");
        assert_eq!(img.contents(), before, "{name}");
        assert_eq!(r.blk.counters().bad.load(Ordering::Relaxed), 1, "{name}");
    }
}

#[test]
fn process_when_more_than_seg_max_descriptors_then_ioerr() {
    let img = Image::new();
    let mut r = rig(img.open(false, CacheMode::Writeback).unwrap(), 256);
    r.header(HDR, VIRTIO_BLK_T_IN, 0);
    let mut descs = vec![(HDR, 16, 0)];
    descs.extend((0..=SEG_MAX as u64).map(|i| (DATA + 512 * i, 512, WRITE)));
    descs.push((STATUS, 1, WRITE));
    r.chain(0, &descs);

    r.blk.process_queue();

    assert_eq!(r.status(STATUS), IOERR);
    assert_eq!(r.used(), vec![(0, 1)]);
}

#[test]
fn read_when_largest_legal_request_then_served_and_bounce_buffer_bounded() {
    let img = Image::new();
    std::fs::write(img.path(), vec![1u8; MAX_REQUEST_BYTES]).unwrap();
    let mut r = rig(img.open(false, CacheMode::Writeback).unwrap(), 256);
    r.header(HDR, VIRTIO_BLK_T_IN, 0);
    let mut descs = vec![(HDR, 16, 0)];
    let segment = |i: u64| (0x100_000 + u64::from(SIZE_MAX) * i, SIZE_MAX, WRITE);
    descs.extend((0..u64::from(SEG_MAX)).map(segment));
    descs.push((STATUS, 1, WRITE));
    r.chain(0, &descs);

    r.blk.process_queue();

    assert_eq!(r.status(STATUS), OK);
    assert_eq!(r.used(), vec![(0, MAX_REQUEST_BYTES as u32 + 1)]);
    assert_eq!(
        r.read(0x100_000, MAX_REQUEST_BYTES),
        vec![1u8; MAX_REQUEST_BYTES]
    );
    assert!(r.blk.bounce_capacity() <= MAX_REQUEST_BYTES + backend::DIRECT_ALIGN);
}

#[test]
fn config_space_when_read_then_capacity_and_limits() {
    let img = Image::new();
    let blk = Block::new(img.open(false, CacheMode::Writeback).unwrap(), None).unwrap();
    let read = |off: u64, len: usize| {
        let mut d = vec![0u8; len];
        blk.read_config(off, &mut d);
        d
    };
    assert_eq!(read(0, 8), IMAGE_SECTORS.to_le_bytes());
    assert_eq!(read(8, 4), SIZE_MAX.to_le_bytes());
    assert_eq!(read(12, 4), SEG_MAX.to_le_bytes());
    assert_eq!(read(20, 4), 512u32.to_le_bytes());
    assert_eq!(read(40, 4), 16u32.to_le_bytes(), "max_discard_seg");
    assert_eq!(blk.device_type(), 2);
    let f = blk.avail_features();
    for b in [
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(f & (1 << b), 0, "feature bit {b}");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
}

#[test]
fn open_when_already_open_read_write_then_second_opener_refused() {
    let img = Image::new();
    let first = img.open(false, CacheMode::Writeback).unwrap();
    for read_only in [false, true] {
        let err = img.open(read_only, CacheMode::Writeback).unwrap_err();
        assert!(matches!(err, BackendError::Locked { .. }), "{err}");
    }
    drop(first);
    let a = img.open(true, CacheMode::Writeback).unwrap();
    let b = img.open(true, CacheMode::Writeback).unwrap();
    assert!(matches!(
        img.open(false, CacheMode::Writeback),
        Err(BackendError::Locked { .. })
    ));
    drop((a, b));
    img.open(false, CacheMode::Writeback).unwrap();
}

#[test]
fn open_when_missing_or_smaller_than_a_sector_then_error() {
    let img = Image::new();
    std::fs::write(img.path(), [0u8; 100]).unwrap();
    assert!(matches!(
        img.open(false, CacheMode::Writeback),
        Err(BackendError::Empty { .. })
    ));
    std::fs::remove_file(img.path()).unwrap();
    assert!(matches!(
        img.open(false, CacheMode::Writeback),
        Err(BackendError::Open { .. })
    ));
}

#[test]
fn cache_none_when_requests_served_then_data_round_trips_direct_or_not() {
    let img = Image::new();
    let backend = img.open(false, CacheMode::None).unwrap();
    println!("O_DIRECT on this file system: {}", backend.is_direct());
    let mut r = rig(backend, QSIZE);
    r.mem
        .write_slice(&[0x42; 4096], GuestAddress(DATA))
        .unwrap();
    r.request(0, VIRTIO_BLK_T_OUT, 8, 4096, 0);
    r.blk.process_queue();
    assert_eq!(r.status(STATUS), OK);
    r.request(3, VIRTIO_BLK_T_IN, 8, 4096, WRITE);
    r.mem.write_slice(&[0; 4096], GuestAddress(DATA)).unwrap();
    r.blk.process_queue();
    assert_eq!(r.status(STATUS), OK);
    assert_eq!(r.read(DATA, 4096), [0x42; 4096]);
    assert_eq!(img.contents()[4096..8192], [0x42; 4096]);
    if r.blk.backend().is_direct() {
        // The aligned bounce buffer made O_DIRECT work: no request fell back.
        assert_eq!(r.blk.backend().direct_fallbacks(), 0);
    }
}
