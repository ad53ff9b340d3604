//! virtio-vsock tests: `MockSplitQueue` plays the guest driver, real unix sockets the host.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::{Duration, Instant};

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::packet::{op, Header, HDR_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::*;
use crate::virtio::features::VIRTIO_F_VERSION_1;
use crate::virtio::{device_type, ActivateArgs, VirtioDevice, VirtioInterrupt};

const CID: u64 = 3;
const QSIZE: u16 = 64;
const WRITE: u16 = 2;
const RX_BUF: u32 = 4096 + HDR_LEN as u32;
const RX_BASE: u64 = 0x10_0000;
const TX_BASE: u64 = 0x20_0000;
const RX_SLOT: u64 = 0x2000;
const TX_SLOT: u64 = 0x11000;
const TIMEOUT: Duration = Duration::from_secs(10);

type Mock = MockSplitQueue<'static, GuestMemoryMmap>;

struct Harness {
    mem: &'static GuestMemoryMmap,
    rxq: Mock,
    txq: Mock,
    dev: Arc<Mutex<Vsock>>,
    /// The queue eventfds (the device has clones).
    _evts: Vec<EventFd>,
    _dir: tempfile::TempDir,
    sock: PathBuf,
    rx_slot: u16,
    tx_slot: u16,
    rx_seen: u16,
}

fn harness() -> Harness {
    let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap(),
    ));
    let rxq = MockSplitQueue::create(mem, GuestAddress(0), QSIZE);
    let txq = MockSplitQueue::create(mem, GuestAddress(0x1_0000), QSIZE);
    let evq = MockSplitQueue::create(mem, GuestAddress(0x2_0000), QSIZE);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("v.vsock");
    let mut dev = Vsock::new(CID, &sock).unwrap();
    // MockSplitQueue places the used ring over the second half of a 64-entry avail ring;
    // the queues here use their own used ring, clear of it.
    let queue = |m: &Mock| {
        let mut q = m.create_queue::<Queue>().unwrap();
        let used = used_addr(m);
        q.set_used_ring_address(Some(used as u32), Some(0));
        q
    };
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let evts: Vec<EventFd> = (0..3)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    dev.activate(ActivateArgs {
        mem: mem.clone(),
        queues: vec![queue(&rxq), queue(&txq), queue(&evq)],
        queue_evts: (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect(),
        interrupt: Arc::new(VirtioInterrupt::new(irq)),
        acked_features: VIRTIO_F_VERSION_1,
    })
    .unwrap();
    Harness {
        mem,
        rxq,
        txq,
        dev: Arc::new(Mutex::new(dev)),
        _evts: evts,
        _dir: dir,
        sock,
        rx_slot: 0,
        tx_slot: 0,
        rx_seen: 0,
    }
}

/// A guest packet header (guest CID 3 -> host), the guest advertising `buf_alloc`.
fn guest(opcode: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op: opcode,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

/// Where the queue's used ring is (see `harness`).
fn used_addr(m: &Mock) -> u64 {
    m.desc_table_addr().0 + 0x1000
}

/// The used index and element `i` (id, len) of a queue.
fn used_idx(mem: &GuestMemoryMmap, m: &Mock) -> u16 {
    mem.read_obj(GuestAddress(used_addr(m) + 2)).unwrap()
}

fn used_elem(mem: &GuestMemoryMmap, m: &Mock, i: u16) -> (u32, u32) {
    let at = used_addr(m) + 4 + 8 * u64::from(i % QSIZE);
    let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
    let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
    (id, len)
}

/// Stores a one-descriptor chain at `slot` and publishes it (the ring index wraps, which
/// `MockSplitQueue::add_desc_chains` does not do).
fn publish(q: &Mock, slot: u16, d: RawDescriptor) {
    q.desc_table().store(slot, d).unwrap();
    let idx = q.avail().idx().load();
    q.avail()
        .ring()
        .ref_at(usize::from(idx % QSIZE))
        .unwrap()
        .store(slot);
    q.avail().idx().store(idx.wrapping_add(1));
}

impl Harness {
    fn dev(&self) -> MutexGuard<'_, Vsock> {
        self.dev.lock().unwrap()
    }

    /// Queues `n` receive buffers.
    fn give_rx(&mut self, n: u16) {
        for _ in 0..n {
            let slot = self.rx_slot % QSIZE;
            self.rx_slot += 1;
            let addr = RX_BASE + u64::from(slot) * RX_SLOT;
            let d: RawDescriptor = SplitDescriptor::new(addr, RX_BUF, WRITE, 0).into();
            publish(&self.rxq, slot, d);
        }
        self.dev().rx_kicked();
    }

    /// Queues one TX chain of raw bytes.
    fn send_raw(&mut self, bytes: &[u8]) {
        let slot = self.tx_slot % QSIZE;
        self.tx_slot += 1;
        let addr = TX_BASE + u64::from(slot) * TX_SLOT;
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        let d: RawDescriptor = SplitDescriptor::new(addr, bytes.len() as u32, 0, 0).into();
        publish(&self.txq, slot, d);
    }

    fn send(&mut self, mut hdr: Header, payload: &[u8]) {
        hdr.len = payload.len() as u32;
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        self.send_raw(&bytes);
        self.dev().run();
    }

    /// Packets the device returned in receive buffers since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.dev().run();
        let used = used_idx(self.mem, &self.rxq);
        let mut out = Vec::new();
        while self.rx_seen != used {
            let (id, len) = used_elem(self.mem, &self.rxq, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let addr = RX_BASE + u64::from(id) * RX_SLOT;
            let mut raw = [0u8; HDR_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let hdr = Header::from_bytes(&raw);
            assert_eq!(len, HDR_LEN as u32 + hdr.len, "used length = packet");
            let mut data = vec![0u8; hdr.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(addr + HDR_LEN as u64))
                .unwrap();
            out.push((hdr, data));
        }
        out
    }

    /// Runs the device until a packet arrives; panics after [`TIMEOUT`].
    fn recv_one(&mut self) -> (Header, Vec<u8>) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let mut got = self.recv();
            if !got.is_empty() {
                assert_eq!(got.len(), 1, "one packet expected: {got:?}");
                return got.remove(0);
            }
            assert!(Instant::now() < deadline, "no packet for the guest");
            std::thread::yield_now();
        }
    }

    fn host_path(&self, port: u32) -> PathBuf {
        PathBuf::from(format!("{}_{port}", self.sock.display()))
    }

    /// Guest connects from `gport` to host port `hport`, where a host listener waits.
    fn guest_connect(&mut self, gport: u32, hport: u32, listener: &UnixListener) -> UnixStream {
        self.give_rx(1);
        self.send(guest(op::REQUEST, gport, hport), &[]);
        let (hdr, _) = self.recv_one();
        assert_eq!(
            (hdr.op, hdr.src_port, hdr.dst_port),
            (op::RESPONSE, hport, gport)
        );
        assert_eq!((hdr.src_cid, hdr.dst_cid), (HOST_CID, CID));
        assert_eq!(hdr.buf_alloc, CONN_BUF);
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s
    }
}

fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn config_when_read_then_guest_cid_le64_and_three_queues() {
    let h = harness();
    let mut cfg = [0u8; 8];
    h.dev().read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), CID);
    assert_eq!(h.dev().device_type(), device_type::VSOCK);
    assert_eq!(h.dev().queue_max_sizes().len(), 3);
}

#[test]
fn new_when_cid_reserved_then_error_and_no_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let err = Vsock::new(2, &path).unwrap_err();
    assert!(matches!(err, VsockError::BadCid(2)));
    assert!(!path.exists());
}

#[test]
fn guest_connect_when_host_listens_then_response_and_data_both_ways() {
    let mut h = harness();
    let listener = UnixListener::bind(h.host_path(52)).unwrap();
    let mut host = h.guest_connect(1000, 52, &listener);

    h.send(guest(op::RW, 1000, 52), b"hello");
    assert_eq!(read_n(&mut host, 5), b"hello");

    host.write_all(b"world").unwrap();
    h.give_rx(1);
    let (hdr, data) = h.recv_one();
    assert_eq!((hdr.op, hdr.src_port, hdr.dst_port), (op::RW, 52, 1000));
    assert_eq!(data, b"world");
    assert_eq!(h.dev().connections(), 1);
}

#[test]
fn host_connect_when_guest_accepts_then_ok_line_and_data_both_ways() {
    let mut h = harness();
    let mut host = UnixStream::connect(&h.sock).unwrap();
    host.set_read_timeout(Some(TIMEOUT)).unwrap();
    host.write_all(b"CONNECT 1234\n").unwrap();
    h.give_rx(1);
    let (req, _) = h.recv_one();
    assert_eq!(
        (req.op, req.dst_port, req.dst_cid),
        (op::REQUEST, 1234, CID)
    );
    let host_port = req.src_port;

    h.send(guest(op::RESPONSE, 1234, host_port), &[]);
    let line = read_n(&mut host, format!("OK {host_port}\n").len());
    assert_eq!(line, format!("OK {host_port}\n").as_bytes());

    host.write_all(b"ping").unwrap();
    h.give_rx(1);
    let (hdr, data) = h.recv_one();
    assert_eq!(
        (hdr.op, hdr.dst_port, data.as_slice()),
        (op::RW, 1234, &b"ping"[..])
    );
    h.send(guest(op::RW, 1234, host_port), b"pong");
    assert_eq!(read_n(&mut host, 4), b"pong");
}

#[test]
fn host_connect_when_guest_refuses_then_host_stream_closed() {
    let mut h = harness();
    let mut host = UnixStream::connect(&h.sock).unwrap();
    host.set_read_timeout(Some(TIMEOUT)).unwrap();
    host.write_all(b"CONNECT 7\n").unwrap();
    h.give_rx(1);
    let (req, _) = h.recv_one();
    h.send(guest(op::RST, 7, req.src_port), &[]);
    let mut buf = [0u8; 8];
    assert_eq!(host.read(&mut buf).unwrap(), 0, "EOF after the guest's RST");
    assert_eq!(h.dev().connections(), 0);
}

#[test]
fn host_connect_when_line_malformed_then_dropped_and_device_keeps_serving() {
    let mut h = harness();
    let mut bad = UnixStream::connect(&h.sock).unwrap();
    bad.set_read_timeout(Some(TIMEOUT)).unwrap();
    bad.write_all(b"HELLO there\n").unwrap();
    h.give_rx(1);
    h.dev().run();
    let mut buf = [0u8; 8];
    assert_eq!(bad.read(&mut buf).unwrap(), 0);

    let mut good = UnixStream::connect(&h.sock).unwrap();
    good.write_all(b"CONNECT 9\n").unwrap();
    let (req, _) = h.recv_one();
    assert_eq!((req.op, req.dst_port), (op::REQUEST, 9));
}

#[test]
fn guest_connect_when_no_host_listener_then_rst() {
    let mut h = harness();
    h.give_rx(1);
    h.send(guest(op::REQUEST, 1000, 4444), &[]);
    let (hdr, _) = h.recv_one();
    assert_eq!((hdr.op, hdr.src_port, hdr.dst_port), (op::RST, 4444, 1000));
    assert_eq!(h.dev().connections(), 0);
}

#[test]
fn rw_when_no_connection_then_rst() {
    let mut h = harness();
    h.give_rx(1);
    h.send(guest(op::RW, 5, 6), b"data");
    let (hdr, _) = h.recv_one();
    assert_eq!((hdr.op, hdr.src_port, hdr.dst_port), (op::RST, 6, 5));
}

#[test]
fn host_to_guest_when_guest_credit_spent_then_stops_and_credit_update_resumes() {
    let mut h = harness();
    let listener = UnixListener::bind(h.host_path(80)).unwrap();
    let mut req = guest(op::REQUEST, 2000, 80);
    req.buf_alloc = 8;
    h.give_rx(1);
    h.send(req, &[]);
    assert_eq!(h.recv_one().0.op, op::RESPONSE);
    let (mut host, _) = listener.accept().unwrap();

    host.write_all(&[7u8; 20]).unwrap();
    h.give_rx(4);
    let (hdr, data) = h.recv_one();
    assert_eq!((hdr.op, data.len()), (op::RW, 8), "exactly the credit");
    assert!(h.recv().is_empty(), "no credit left: nothing more");
    assert_eq!(h.dev().connections(), 1);

    let mut upd = guest(op::CREDIT_UPDATE, 2000, 80);
    upd.buf_alloc = 8;
    upd.fwd_cnt = 8;
    h.send(upd, &[]);
    let (hdr, data) = h.recv_one();
    assert_eq!(
        (hdr.op, data.len()),
        (op::RW, 8),
        "resumed by the credit update"
    );
}

#[test]
fn guest_to_host_when_host_does_not_read_then_buffer_bounded_and_overrun_reset() {
    let mut h = harness();
    let listener = UnixListener::bind(h.host_path(81)).unwrap();
    let mut host = h.guest_connect(3000, 81, &listener);
    let chunk = vec![0xabu8; 64 * 1024];
    // A guest that ignores our credit: the socket buffer fills, then our CONN_BUF, then
    // the connection is reset instead of buffering more.
    let mut sent = 0usize;
    h.give_rx(2);
    while h.dev().connections() == 1 {
        assert!(sent < 64 << 20, "the device kept accepting data");
        h.send(guest(op::RW, 3000, 81), &chunk);
        sent += chunk.len();
        assert!(h.dev().buffered_bytes() <= CONN_BUF as usize);
    }
    assert_eq!(h.dev().stats().credit_violations, 1);
    h.give_rx(8);
    let rst = h
        .recv()
        .into_iter()
        .any(|(p, _)| p.op == op::RST && p.dst_port == 3000);
    assert!(rst, "the guest is told");
    // The host got everything up to the overrun, then EOF.
    let mut all = Vec::new();
    host.read_to_end(&mut all).unwrap();
    // The RST aborts: what the socket buffer took arrived, the device's buffer was dropped.
    assert!(!all.is_empty() && all.len() < sent);
    assert!(all.iter().all(|b| *b == 0xab));
}

#[test]
fn guest_to_host_when_host_reads_then_credit_update_reports_fwd_cnt() {
    let mut h = harness();
    let listener = UnixListener::bind(h.host_path(82)).unwrap();
    let mut host = h.guest_connect(3001, 82, &listener);
    // Small writes are acknowledged only on request (no update per packet).
    h.send(guest(op::RW, 3001, 82), &[1u8; 1000]);
    assert_eq!(read_n(&mut host, 1000).len(), 1000);
    h.give_rx(1);
    assert!(h.recv().is_empty());
    h.send(guest(op::CREDIT_REQUEST, 3001, 82), &[]);
    let (hdr, _) = h.recv_one();
    assert_eq!(
        (hdr.op, hdr.fwd_cnt, hdr.buf_alloc),
        (op::CREDIT_UPDATE, 1000, CONN_BUF)
    );

    // Once a quarter of the buffer was freed, an update comes unasked.
    let quarter = CONN_BUF as usize / 4;
    for _ in 0..quarter / 16384 {
        h.send(guest(op::RW, 3001, 82), &[2u8; 16384]);
    }
    assert_eq!(read_n(&mut host, quarter).len(), quarter);
    h.give_rx(1);
    let (hdr, _) = h.recv_one();
    assert_eq!(
        (hdr.op, hdr.fwd_cnt),
        (op::CREDIT_UPDATE, 1000 + quarter as u32)
    );
}

#[test]
fn shutdown_when_host_closes_then_guest_gets_shutdown_and_rst_ends_connection() {
    let mut h = harness();
    let listener = UnixListener::bind(h.host_path(83)).unwrap();
    let host = h.guest_connect(3002, 83, &listener);
    drop(host);
    h.give_rx(1);
    let (hdr, _) = h.recv_one();
    assert_eq!(
        (hdr.op, hdr.flags),
        (op::SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND)
    );
    h.send(guest(op::RST, 3002, 83), &[]);
    assert_eq!(h.dev().connections(), 0);
}

#[test]
fn shutdown_when_guest_closes_then_host_sees_eof() {
    let mut h = harness();
    let listener = UnixListener::bind(h.host_path(84)).unwrap();
    let mut host = h.guest_connect(3003, 84, &listener);
    h.send(guest(op::RW, 3003, 84), b"bye");
    let mut sd = guest(op::SHUTDOWN, 3003, 84);
    sd.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    h.send(sd, &[]);
    let mut all = Vec::new();
    host.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"bye");
    assert_eq!(h.dev().connections(), 0);
}

#[test]
fn malformed_when_short_wrong_cid_bad_len_unknown_op_then_dropped_or_rst_and_serving() {
    let mut h = harness();
    h.give_rx(8);
    // Header too short: dropped.
    h.send_raw(&[0u8; 20]);
    // Wrong source CID: dropped.
    let mut hdr = guest(op::REQUEST, 1, 2);
    hdr.src_cid = 99;
    h.send(hdr, &[]);
    // Length past the chain: dropped.
    let mut hdr = guest(op::RW, 1, 2);
    hdr.len = 4000;
    h.send_raw(&hdr.to_bytes());
    // Payload on a control op: dropped.
    let mut bytes = guest(op::REQUEST, 1, 2).to_bytes().to_vec();
    bytes[24..28].copy_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(b"abc");
    h.send_raw(&bytes);
    // Unknown op: RST.
    h.send(guest(99, 11, 12), &[]);
    // Wrong socket type: RST.
    let mut hdr = guest(op::REQUEST, 13, 14);
    hdr.type_ = 2;
    h.send(hdr, &[]);
    h.dev().run();

    let got = h.recv();
    let rsts: Vec<(u32, u32)> = got
        .iter()
        .map(|(p, _)| {
            assert_eq!(p.op, op::RST);
            (p.src_port, p.dst_port)
        })
        .collect();
    assert_eq!(rsts, vec![(12, 11), (14, 13)]);
    assert_eq!(h.dev().stats().bad_packets, 5);
    assert_eq!(used_idx(h.mem, &h.txq), 6, "every chain returned");

    let listener = UnixListener::bind(h.host_path(85)).unwrap();
    h.guest_connect(3004, 85, &listener);
}

#[test]
fn many_connections_when_interleaved_then_each_echo_intact() {
    let mut h = harness();
    let listener = UnixListener::bind(h.host_path(86)).unwrap();
    let mut hosts: Vec<UnixStream> = (0..32)
        .map(|i| h.guest_connect(5000 + i, 86, &listener))
        .collect();
    for i in 0..32u32 {
        h.send(guest(op::RW, 5000 + i, 86), format!("conn {i}").as_bytes());
    }
    for (i, host) in hosts.iter_mut().enumerate() {
        let want = format!("conn {i}");
        assert_eq!(read_n(host, want.len()), want.as_bytes());
        host.write_all(want.as_bytes()).unwrap();
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while got.len() < 32 {
        assert!(Instant::now() < deadline, "only {} replies", got.len());
        h.give_rx(8);
        got.extend(h.recv().into_iter().filter(|(p, _)| p.op == op::RW));
    }
    for (hdr, data) in got {
        assert_eq!(data, format!("conn {}", hdr.dst_port - 5000).as_bytes());
    }
}

#[test]
fn reset_when_device_reset_then_host_streams_closed() {
    let mut h = harness();
    let listener = UnixListener::bind(h.host_path(87)).unwrap();
    let mut host = h.guest_connect(3005, 87, &listener);
    h.dev().reset();
    let mut buf = [0u8; 4];
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    assert_eq!(h.dev().connections(), 0);
}
