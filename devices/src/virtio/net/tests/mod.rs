//! virtio-net tests. The model is driven through virtio-queue's `MockSplitQueue` (it plays
//! the driver: lays out descriptor tables and rings in guest memory and publishes chains).
//! The host side is a Unix datagram socket pair (one message per frame, like a TAP) in the
//! model tests, and a real TAP inside a throwaway network namespace in `tap_netns.rs`.

mod events;
mod netns;
mod race;
mod rx;
mod tap_netns;
mod tx;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::desc::split::{Descriptor as SplitDescriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::virtio::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1};
use crate::virtio::{ActivateArgs, VirtioDevice, VirtioInterrupt};

pub(super) const MEM_SIZE: usize = 0x80_0000;
pub(super) const NEXT: u16 = 1;
pub(super) const WRITE: u16 = 2;
pub(super) const INDIRECT: u16 = 4;
/// Rings of the receive queue start here, those of the transmit queue at TX_RINGS.
pub(super) const RX_RINGS: u64 = 0;
pub(super) const TX_RINGS: u64 = 0x2_0000;
/// Guest buffers live from here on.
pub(super) const BUFS: u64 = 0x10_0000;
pub(super) const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

pub(super) const fn net_bit(b: u32) -> u64 {
    1 << b
}

pub(super) const MRG: u64 = net_bit(virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF);
pub(super) const GUEST_CSUM: u64 = net_bit(virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_CSUM);
pub(super) const GUEST_TSO4: u64 = net_bit(virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_TSO4);
pub(super) const EVENT_IDX: u64 = VIRTIO_F_EVENT_IDX;
pub(super) const V1: u64 = VIRTIO_F_VERSION_1;

pub(super) fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// The host side for model tests: a datagram socket, and the last offload flags set.
pub(super) struct PairBackend {
    sock: UnixDatagram,
    offload: Arc<AtomicU32>,
}

impl AsRawFd for PairBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl NetBackend for PairBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.recv(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        // A TAP never pushes back on writes (it drops internally when its backlog is full),
        // while this socket does once the test has not read for a while: wait for the
        // test's reader instead of turning that into drops.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match self.sock.send(frame) {
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::yield_now()
                }
                other => return other,
            }
        }
    }

    fn set_offload(&mut self, tun_flags: u32) -> Result<(), TapError> {
        self.offload.store(tun_flags, Ordering::SeqCst);
        Ok(())
    }
}

/// The test's end of the host side.
pub(super) struct Host {
    pub sock: UnixDatagram,
    pub offload: Arc<AtomicU32>,
}

impl Host {
    /// Sends a frame with an all-zero virtio-net header.
    pub fn send_frame(&self, frame: &[u8]) {
        self.send_with_header(&[0; VNET_HDR_LEN], frame);
    }

    pub fn send_with_header(&self, hdr: &[u8; VNET_HDR_LEN], frame: &[u8]) {
        let mut msg = hdr.to_vec();
        msg.extend_from_slice(frame);
        self.sock.send(&msg).unwrap();
    }

    /// The next message the device wrote, if any.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 0x2_0000];
        match self.sock.recv(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("host side recv: {e}"),
        }
    }
}

pub(super) fn pair_net() -> (Net<PairBackend>, Host) {
    let (a, b) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let offload = Arc::new(AtomicU32::new(u32::MAX));
    let backend = PairBackend {
        sock: a,
        offload: offload.clone(),
    };
    (Net::new(backend, MAC).unwrap(), Host { sock: b, offload })
}

pub(super) struct Rings<'a> {
    pub rx: MockSplitQueue<'a, GuestMemoryMmap>,
    pub tx: MockSplitQueue<'a, GuestMemoryMmap>,
}

/// Where the device's used ring of a mock queue really is. `MockSplitQueue` places its own
/// used ring right after the first bytes of the avail ring (its `end()` counts elements,
/// not bytes), so the two overlap; the tests give the device a used ring of its own, far
/// behind the mock's rings, and read it with [`used`].
pub(super) fn used_ring(q: &MockSplitQueue<GuestMemoryMmap>) -> u64 {
    q.desc_table_addr().0 + 0x8000
}

/// A queue for the device on the mock's descriptor table and avail ring, with the used
/// ring at [`used_ring`].
pub(super) fn device_queue(q: &MockSplitQueue<GuestMemoryMmap>) -> Queue {
    let mut queue: Queue = q.create_queue().unwrap();
    queue
        .try_set_used_ring_address(GuestAddress(used_ring(q)))
        .unwrap();
    queue
}

pub(super) fn rings(mem: &GuestMemoryMmap, size: u16) -> Rings<'_> {
    Rings {
        rx: MockSplitQueue::create(mem, GuestAddress(RX_RINGS), size),
        tx: MockSplitQueue::create(mem, GuestAddress(TX_RINGS), size),
    }
}

/// Activates `net` directly on the mock rings with `features` acked; returns the irqfd and
/// the transmit queue's eventfd.
pub(super) fn activate<B: NetBackend>(
    net: &mut Net<B>,
    mem: &GuestMemoryMmap,
    r: &Rings<'_>,
    features: u64,
) -> (Arc<EventFd>, EventFd) {
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let event_idx = features & EVENT_IDX != 0;
    let mut queues = vec![device_queue(&r.rx), device_queue(&r.tx)];
    for q in &mut queues {
        q.set_event_idx(event_idx);
    }
    let evts = vec![
        EventFd::new(EFD_NONBLOCK).unwrap(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    ];
    let tx_evt = evts[1].try_clone().unwrap();
    net.activate(ActivateArgs {
        mem: mem.clone(),
        queues,
        queue_evts: evts,
        interrupt: Arc::new(VirtioInterrupt::new(irq.clone())),
        acked_features: features,
    })
    .unwrap();
    (irq, tx_evt)
}

/// Writes one chain at descriptor index `at` and publishes its head in the avail ring.
pub(super) fn add_chain(
    q: &MockSplitQueue<GuestMemoryMmap>,
    at: u16,
    descs: &[(u64, u32, u16, u16)],
) {
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .map(|&(addr, len, flags, next)| SplitDescriptor::new(addr, len, flags, next).into())
        .collect();
    q.add_desc_chains(&raw, at).unwrap();
}

/// Publishes an out-of-range head index in the avail ring of a queue of `size` entries.
pub(super) fn add_bad_head(q: &MockSplitQueue<GuestMemoryMmap>, size: u16) {
    let idx = q.avail().idx().load();
    q.avail()
        .ring()
        .ref_at(usize::from(idx % size))
        .unwrap()
        .store(999);
    q.avail().idx().store(idx.wrapping_add(1));
}

/// Writes an indirect table of `n` chained entries (each `len` bytes, `flags`) at `table`
/// and publishes a chain at `at` that points to it.
pub(super) fn add_indirect(
    mem: &GuestMemoryMmap,
    q: &MockSplitQueue<GuestMemoryMmap>,
    at: u16,
    table: u64,
    n: u16,
    (len, flags): (u32, u16),
) {
    for i in 0..n {
        let f = if i + 1 < n { flags | NEXT } else { flags };
        let d = SplitDescriptor::new(BUFS + 0x8_0000 + u64::from(i) * 0x100, len, f, i + 1);
        mem.write_obj(
            RawDescriptor::from(d),
            GuestAddress(table + 16 * u64::from(i)),
        )
        .unwrap();
    }
    add_chain(q, at, &[(table, 16 * u32::from(n), INDIRECT, 0)]);
}

pub(super) fn used(mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let base = used_ring(q);
    let n: u16 = mem.read_obj(GuestAddress(base + 2)).unwrap();
    (0..u64::from(n))
        .map(|i| {
            let e: VirtqUsedElem = mem.read_obj(GuestAddress(base + 4 + 8 * i)).unwrap();
            (e.id(), e.len())
        })
        .collect()
}

pub(super) fn read_mem(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

/// A recognisable Ethernet frame of `len` bytes (broadcast destination, IPv4 ethertype).
pub(super) fn test_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xfe]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f
}

pub(super) fn irq_count(irq: &EventFd) -> u64 {
    irq.read().unwrap_or(0)
}

#[test]
fn new_when_mac_multicast_or_zero_then_rejected() {
    let (a, _b) = UnixDatagram::pair().unwrap();
    let backend = || PairBackend {
        sock: a.try_clone().unwrap(),
        offload: Arc::new(AtomicU32::new(0)),
    };
    assert!(matches!(
        Net::new(backend(), [0x03, 0, 0, 0, 0, 1]),
        Err(NetError::MulticastMac(m)) if m == "03:00:00:00:00:01"
    ));
    assert!(matches!(
        Net::new(backend(), [0; 6]),
        Err(NetError::ZeroMac)
    ));
}

#[test]
fn config_when_read_then_mac_and_link_up() {
    let (net, _host) = pair_net();
    let mut cfg = [0u8; 10];
    net.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &MAC);
    assert_eq!(
        u16::from_le_bytes([cfg[6], cfg[7]]),
        1,
        "VIRTIO_NET_S_LINK_UP"
    );
    let mut past = [0xffu8; 4];
    net.read_config(10, &mut past);
    assert_eq!(past, [0; 4]);
    assert_eq!(net.device_type(), 1);
    assert_eq!(net.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
}

#[test]
fn config_when_guest_writes_mac_then_unchanged() {
    let (mut net, _host) = pair_net();
    net.write_config(0, &[0xaa; 6]);
    assert_eq!(net.mac(), MAC);
}

#[test]
fn features_when_offered_then_include_issue_set() {
    use virtio_bindings::virtio_net::*;
    for b in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
    ] {
        assert_ne!(AVAIL_FEATURES & net_bit(b), 0, "feature bit {b}");
    }
    assert_ne!(AVAIL_FEATURES & V1, 0);
    assert_ne!(AVAIL_FEATURES & EVENT_IDX, 0);
    assert_eq!(
        AVAIL_FEATURES & net_bit(VIRTIO_NET_F_CTRL_VQ),
        0,
        "no control queue"
    );
}

#[test]
fn offload_flags_when_features_acked_then_match_tun_flags() {
    let tso6 = net_bit(virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_TSO6);
    assert_eq!(tun_offload_flags(V1), 0);
    assert_eq!(tun_offload_flags(V1 | GUEST_CSUM), libc::TUN_F_CSUM);
    assert_eq!(
        tun_offload_flags(GUEST_CSUM | GUEST_TSO4 | tso6),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
    );
    assert_eq!(
        tun_offload_flags(GUEST_TSO4 | tso6),
        0,
        "TSO needs checksum offload"
    );
}

#[test]
fn activate_when_features_acked_then_backend_offloads_set_and_reset_allows_again() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    activate(&mut net, &mem, &r, V1 | GUEST_CSUM | GUEST_TSO4);
    assert_eq!(
        host.offload.load(Ordering::SeqCst),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4
    );
    assert!(net.is_activated());
    net.reset();
    assert!(!net.is_activated());
    let r2 = rings(&mem, 16);
    activate(&mut net, &mem, &r2, V1);
    assert_eq!(host.offload.load(Ordering::SeqCst), 0);
}

#[test]
fn activate_when_wrong_queue_count_then_error() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, _host) = pair_net();
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let err = net
        .activate(ActivateArgs {
            mem: mem.clone(),
            queues: vec![device_queue(&r.rx)],
            queue_evts: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
            interrupt: Arc::new(VirtioInterrupt::new(irq)),
            acked_features: V1,
        })
        .unwrap_err();
    assert!(matches!(
        err,
        crate::virtio::ActivateError::QueueCount { expected: 2, .. }
    ));
    assert!(!net.is_activated());
}
