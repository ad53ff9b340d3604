//! The virtio-vsock model and its unix-socket multiplexer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestMemoryMmap;

use super::packet::{op, Header, HDR_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use crate::virtio::block::ratelimit::LogLimiter;
use crate::virtio::features::{VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use crate::virtio::queue_loop::{serve_available_budget, Served};
use crate::virtio::{
    device_type, read_config_bytes, ActivateArgs, ActivateError, EventGlue, VirtioDevice,
    VirtioInterrupt,
};

/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
/// Receive buffer the device advertises per connection: the most guest data it holds that
/// the host peer has not read yet.
pub const CONN_BUF: u32 = 256 * 1024;
/// At most this many connections (plus as many host connections still handshaking).
pub const MAX_CONNS: usize = 1024;
/// The largest payload one packet may carry.
const MAX_PKT_PAYLOAD: u32 = 64 * 1024;
/// Control packets queued for the guest beyond this are dropped (RSTs for a flood of bad
/// packets); a connection's own control packets are per connection and bounded.
const MAX_CONTROL: usize = 1024;
/// The longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;
/// Chains served per queue per pass, so one busy queue does not starve the others.
const BUDGET: u32 = 64;
/// Host ports handed to host-initiated connections start here.
const FIRST_HOST_PORT: u32 = 1 << 30;

const RXQ: usize = 0;
const TXQ: usize = 1;

/// Why the device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved (0, 1, 2) or out of range.
    #[error("guest CID {0} is reserved (must be >= 3 and < 2^32 - 1)")]
    BadCid(u64),
    /// The host socket could not be bound.
    #[error("cannot listen on {path}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The event eventfd could not be created.
    #[error("cannot create the device eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Key of a connection: (host port, guest port).
type Key = (u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated, REQUEST sent (or to be sent), waiting for the guest's RESPONSE.
    Connecting,
    /// Established.
    Open,
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) stream: UnixStream,
    pub(super) token: u32,
    state: State,
    /// Control packets to send for this connection (ops), oldest first; small and bounded.
    control: VecDeque<(u16, u32)>,
    /// Guest data not yet written to the stream (at most [`CONN_BUF`]).
    pub(super) to_host: VecDeque<u8>,
    /// Bytes written to the stream (our fwd_cnt).
    fwd_cnt: u32,
    /// fwd_cnt last told to the guest.
    fwd_cnt_sent: u32,
    /// Bytes sent to the guest.
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The guest will send no more (shut the stream's write side once `to_host` drains).
    peer_shut_send: bool,
    /// The guest will receive no more, or the host stream ended: stop reading the stream.
    read_done: bool,
}

impl Conn {
    fn new(stream: UnixStream, token: u32, state: State, peer: &Header) -> Self {
        Self {
            stream,
            token,
            state,
            control: VecDeque::new(),
            to_host: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            rx_cnt: 0,
            peer_buf_alloc: peer.buf_alloc,
            peer_fwd_cnt: peer.fwd_cnt,
            peer_shut_send: false,
            read_done: false,
        }
    }

    /// Free space the guest advertises for this connection.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the event loop should watch the stream for input.
    pub(super) fn wants_read(&self, rx_starved: bool) -> bool {
        self.state == State::Open && !self.read_done && !rx_starved && self.peer_credit() > 0
    }
}

/// A host connection that has not finished its `CONNECT <port>\n` line.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) stream: UnixStream,
    line: Vec<u8>,
}

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<VirtioInterrupt>,
}

/// Counters, for tests and diagnostics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VsockStats {
    /// Packets from the guest that were malformed (dropped or answered with RST).
    pub bad_packets: u64,
    /// RSTs sent to the guest.
    pub rsts_sent: u64,
    /// Guest packets that broke the credit rules (connection reset).
    pub credit_violations: u64,
}

/// A virtio-vsock device (type 19) with a unix-socket host side.
pub struct Vsock {
    pub(super) glue: EventGlue,
    guest_cid: u64,
    path: PathBuf,
    pub(super) listener: UnixListener,
    active: Option<Active>,
    queue_sizes: [u16; 3],
    config: [u8; 8],
    pub(super) conns: BTreeMap<Key, Conn>,
    pub(super) pending: HashMap<u32, Pending>,
    /// Connection-less control packets for the guest (RST answers).
    control: VecDeque<Header>,
    next_token: u32,
    next_host_port: u32,
    /// Data or control waited for a receive buffer the guest had not queued.
    pub(super) rx_starved: bool,
    /// Streams of closed connections, kept open until the event loop stops watching them.
    pub(super) graveyard: Vec<(u32, UnixStream)>,
    /// Streams the event loop watches: token -> (fd, interest).
    pub(super) watched: HashMap<u32, (std::os::fd::RawFd, event_manager::EventSet)>,
    stats: VsockStats,
    log: LogLimiter,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("path", &self.path)
            .field("conns", &self.conns.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Vsock {
    /// A device for guest `guest_cid` whose host side listens on `path` (a stale socket
    /// file there is replaced).
    pub fn new(guest_cid: u64, path: &Path) -> Result<Self, VsockError> {
        if guest_cid < 3 || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::BadCid(guest_cid));
        }
        let listen = |source| VsockError::Listen {
            path: path.to_owned(),
            source,
        };
        if std::fs::symlink_metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            std::fs::remove_file(path).map_err(listen)?;
        }
        let listener = UnixListener::bind(path).map_err(listen)?;
        listener.set_nonblocking(true).map_err(listen)?;
        Ok(Self {
            glue: EventGlue::new().map_err(VsockError::EventFd)?,
            guest_cid,
            path: path.to_owned(),
            listener,
            active: None,
            queue_sizes: [QUEUE_SIZE; 3],
            config: guest_cid.to_le_bytes(),
            conns: BTreeMap::new(),
            pending: HashMap::new(),
            control: VecDeque::new(),
            next_token: 0,
            next_host_port: FIRST_HOST_PORT,
            rx_starved: false,
            graveyard: Vec::new(),
            watched: HashMap::new(),
            stats: VsockStats::default(),
            log: LogLimiter::new(Duration::from_secs(5), 10),
        })
    }

    /// Counters since creation.
    pub fn stats(&self) -> VsockStats {
        self.stats
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Guest bytes held for host peers that have not read them yet, over all connections.
    pub fn buffered_bytes(&self) -> usize {
        self.conns.values().map(|c| c.to_host.len()).sum()
    }

    fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.log.allow(Instant::now()) {
            if suppressed > 0 {
                log::warn!("virtio-vsock: {msg} ({suppressed} similar messages suppressed)");
            } else {
                log::warn!("virtio-vsock: {msg}");
            }
        }
    }

    fn token(&mut self) -> u32 {
        // Tokens stay unique among live streams: there are far fewer than 2^24 at once.
        self.next_token = (self.next_token + 1) & 0x00ff_ffff;
        self.next_token
    }

    /// Does everything that can be done now: accept host connections, read their CONNECT
    /// lines, serve the TX queue, flush guest data to host streams, fill the RX queue.
    /// Interrupts the guest if it asked to be. Called on every event.
    pub fn run(&mut self) {
        self.accept_host();
        self.read_connect_lines();
        let mut notify = false;
        // Alternate TX and RX until neither makes progress (bounded passes per call).
        for _ in 0..16 {
            let tx = self.process_tx();
            self.flush_to_host();
            let rx = self.process_rx();
            notify |= tx.0 | rx.0;
            if !tx.1 && !rx.1 {
                break;
            }
        }
        if notify {
            if let Some(a) = &self.active {
                if let Err(e) = a.interrupt.signal_used_queue() {
                    log::error!("virtio-vsock: cannot interrupt the guest: {e}");
                }
            }
        }
    }

    /// A guest RX-queue notification: buffers are available again.
    pub fn rx_kicked(&mut self) {
        self.rx_starved = false;
    }

    fn accept_host(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.pending.len() + self.conns.len() >= 2 * MAX_CONNS {
                        self.warn(format_args!(
                            "too many connections; host connection refused"
                        ));
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let token = self.token();
                    self.pending.insert(
                        token,
                        Pending {
                            stream,
                            line: Vec::new(),
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    let path = self.path.display().to_string();
                    self.warn(format_args!("accept on {path} failed: {e}"));
                    break;
                }
            }
        }
    }

    fn read_connect_lines(&mut self) {
        let tokens: Vec<u32> = self.pending.keys().copied().collect();
        for token in tokens {
            let Some(p) = self.pending.get_mut(&token) else {
                continue;
            };
            // Byte by byte: bytes after the newline belong to the connection.
            let mut outcome = None;
            let mut byte = [0u8; 1];
            while outcome.is_none() {
                match p.stream.read(&mut byte) {
                    Ok(0) => outcome = Some(Err("closed before CONNECT")),
                    Ok(_) if byte[0] == b'\n' => outcome = Some(Ok(())),
                    Ok(_) if p.line.len() >= MAX_CONNECT_LINE => {
                        outcome = Some(Err("CONNECT line too long"))
                    }
                    Ok(_) => p.line.push(byte[0]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => outcome = Some(Err("read failed")),
                }
            }
            let Some(outcome) = outcome else { continue };
            let Some(p) = self.pending.remove(&token) else {
                continue;
            };
            let port = outcome.and_then(|()| parse_connect(&p.line));
            match port {
                Ok(port) => self.connect_to_guest(p.stream, token, port),
                Err(why) => {
                    self.bury(token, p.stream);
                    self.warn(format_args!("host connection dropped: {why}"));
                }
            }
        }
    }

    fn connect_to_guest(&mut self, stream: UnixStream, token: u32, guest_port: u32) {
        let mut host_port = self.next_host_port;
        while self.conns.contains_key(&(host_port, guest_port)) {
            host_port = host_port.wrapping_add(1).max(FIRST_HOST_PORT);
        }
        self.next_host_port = host_port.wrapping_add(1).max(FIRST_HOST_PORT);
        let mut conn = Conn::new(stream, token, State::Connecting, &Header::default());
        conn.control.push_back((op::REQUEST, 0));
        self.conns.insert((host_port, guest_port), conn);
    }

    /// Serves the TX queue. Returns (notify, progress).
    fn process_tx(&mut self) -> (bool, bool) {
        let Some(mut active) = self.active.take() else {
            return (false, false);
        };
        let mut packets = Vec::new();
        let drained = serve_available_budget(
            "virtio-vsock tx",
            &mut active.queues[TXQ],
            &active.mem,
            BUDGET,
            |chain| {
                packets.push(read_packet(chain, &active.mem));
                Served::Used(0)
            },
        );
        self.active = Some(active);
        self.stats.bad_packets += u64::from(drained.bad_heads);
        let progress = drained.used > 0 || drained.exhausted;
        for p in packets {
            match p {
                Ok((hdr, data)) => self.handle_packet(hdr, data),
                Err(why) => {
                    self.stats.bad_packets += 1;
                    self.warn(format_args!("malformed TX packet dropped: {why}"));
                }
            }
        }
        (drained.notify, progress)
    }

    fn queue_rst(&mut self, to: &Header) {
        if self.control.len() >= MAX_CONTROL {
            return;
        }
        self.control.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        });
    }

    fn handle_packet(&mut self, hdr: Header, data: Vec<u8>) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            self.stats.bad_packets += 1;
            self.warn(format_args!(
                "packet {}->{} with a wrong CID dropped",
                hdr.src_cid, hdr.dst_cid
            ));
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.type_ != TYPE_STREAM {
            self.stats.bad_packets += 1;
            self.warn(format_args!("packet of socket type {} refused", hdr.type_));
            if hdr.op != op::RST {
                self.queue_rst(&hdr);
            }
            return;
        }
        if hdr.op == op::REQUEST {
            self.guest_connect(&hdr);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            // Nothing to reset for an RST; anything else is answered with RST.
            if hdr.op != op::RST {
                self.queue_rst(&hdr);
            }
            return;
        };
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        match (hdr.op, conn.state) {
            (op::RESPONSE, State::Connecting) => {
                let line = format!("OK {}\n", key.0);
                // A fresh stream's buffer is empty: the short line goes out whole.
                if conn.stream.write_all(line.as_bytes()).is_err() {
                    self.reset(key);
                    return;
                }
                conn.state = State::Open;
            }
            (op::RST, _) => self.forget(key),
            (op::RW, State::Open) => {
                let room = (CONN_BUF as usize).saturating_sub(conn.to_host.len());
                if data.len() > room || conn.peer_shut_send {
                    self.stats.credit_violations += 1;
                    self.warn(format_args!(
                        "guest port {} sent {} bytes past its credit; connection reset",
                        key.1,
                        data.len()
                    ));
                    self.reset(key);
                    return;
                }
                conn.to_host.extend(data);
            }
            (op::SHUTDOWN, State::Open) => {
                if hdr.flags & SHUTDOWN_SEND != 0 {
                    conn.peer_shut_send = true;
                }
                if hdr.flags & SHUTDOWN_RCV != 0 {
                    conn.read_done = true;
                }
                if hdr.flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == SHUTDOWN_SEND | SHUTDOWN_RCV
                    && conn.to_host.is_empty()
                {
                    // Both directions closed and nothing left for the host: done.
                    self.reset(key);
                }
            }
            (op::CREDIT_UPDATE, State::Open) => {}
            (op::CREDIT_REQUEST, State::Open) => {
                if !conn.control.contains(&(op::CREDIT_UPDATE, 0)) {
                    conn.control.push_back((op::CREDIT_UPDATE, 0));
                }
            }
            (opcode, _) => {
                self.stats.bad_packets += 1;
                self.warn(format_args!(
                    "op {opcode} on guest port {} not valid now; connection reset",
                    key.1
                ));
                self.reset(key);
            }
        }
    }

    /// Closes a stream: at once if the event loop does not watch it, else once it stopped.
    fn bury(&mut self, token: u32, stream: UnixStream) {
        if self.watched.contains_key(&token) {
            self.graveyard.push((token, stream));
        }
    }

    /// Closes a connection without telling the guest.
    fn forget(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.bury(c.token, c.stream);
        }
    }

    /// Sends RST for an existing connection and forgets it.
    fn reset(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.bury(c.token, c.stream);
            let hdr = Header {
                src_port: key.1,
                dst_port: key.0,
                ..Header::default()
            };
            self.queue_rst(&hdr);
        }
    }

    fn guest_connect(&mut self, hdr: &Header) {
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) {
            self.stats.bad_packets += 1;
            self.warn(format_args!("duplicate REQUEST from guest port {}", key.1));
            self.reset(key);
            return;
        }
        if self.conns.len() >= MAX_CONNS {
            self.warn(format_args!("too many connections; guest REQUEST refused"));
            self.queue_rst(hdr);
            return;
        }
        let mut target = self.path.clone().into_os_string();
        target.push(format!("_{}", hdr.dst_port));
        let stream = match UnixStream::connect(&target) {
            Ok(s) if s.set_nonblocking(true).is_ok() => s,
            _ => {
                self.queue_rst(hdr);
                return;
            }
        };
        let token = self.token();
        let mut conn = Conn::new(stream, token, State::Open, hdr);
        conn.control.push_back((op::RESPONSE, 0));
        self.conns.insert(key, conn);
    }

    /// Writes buffered guest data to the host streams; schedules credit updates.
    fn flush_to_host(&mut self) {
        let mut dead = Vec::new();
        for (key, conn) in &mut self.conns {
            while !conn.to_host.is_empty() {
                let (a, _) = conn.to_host.as_slices();
                match conn.stream.write(a) {
                    Ok(0) => break,
                    Ok(n) => {
                        conn.to_host.drain(..n);
                        conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n as u32);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        dead.push(*key);
                        break;
                    }
                }
            }
            if conn.to_host.is_empty() && conn.peer_shut_send {
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                if conn.read_done {
                    dead.push(*key);
                    continue;
                }
            }
            // Tell the guest about freed space once a quarter of the buffer is free again
            // (data packets carry fwd_cnt too; the guest may also ask): a guest waiting for
            // credit has CONN_BUF unacknowledged, so it always gets one.
            let unsent = conn.fwd_cnt.wrapping_sub(conn.fwd_cnt_sent);
            if conn.state == State::Open
                && unsent >= CONN_BUF / 4
                && !conn.control.contains(&(op::CREDIT_UPDATE, 0))
            {
                conn.control.push_back((op::CREDIT_UPDATE, 0));
            }
        }
        for key in dead {
            self.reset(key);
        }
    }

    /// Fills the RX queue: connection-less control first, then each connection's control
    /// and data. Returns (notify, progress).
    fn process_rx(&mut self) -> (bool, bool) {
        let Some(mut active) = self.active.take() else {
            return (false, false);
        };
        let guest_cid = self.guest_cid;
        let control = &mut self.control;
        let conns = &mut self.conns;
        let stats = &mut self.stats;
        let mut starved = false;
        // Round-robin start so one busy connection does not starve the rest.
        let keys: Vec<Key> = conns.keys().copied().collect();
        let mut idx = 0usize;
        let drained = serve_available_budget(
            "virtio-vsock rx",
            &mut active.queues[RXQ],
            &active.mem,
            BUDGET,
            |chain| {
                let mut writer = match chain.writer(&active.mem) {
                    Ok(w) => w,
                    Err(_) => return Served::Used(0),
                };
                if writer.available_bytes() < HDR_LEN {
                    return Served::Used(0);
                }
                if let Some(hdr) = control.pop_front() {
                    stats.rsts_sent += 1;
                    let _ = writer.write_all(&hdr.to_bytes());
                    return Served::Used(HDR_LEN as u32);
                }
                let room = (writer.available_bytes() - HDR_LEN).min(MAX_PKT_PAYLOAD as usize);
                for _ in 0..keys.len() {
                    let key = keys[idx % keys.len()];
                    idx += 1;
                    let Some(conn) = conns.get_mut(&key) else {
                        continue;
                    };
                    let mut hdr = Header {
                        src_cid: HOST_CID,
                        dst_cid: guest_cid,
                        src_port: key.0,
                        dst_port: key.1,
                        type_: TYPE_STREAM,
                        buf_alloc: CONN_BUF,
                        fwd_cnt: conn.fwd_cnt,
                        ..Header::default()
                    };
                    if let Some((opcode, flags)) = conn.control.pop_front() {
                        hdr.op = opcode;
                        hdr.flags = flags;
                        conn.fwd_cnt_sent = conn.fwd_cnt;
                        let _ = writer.write_all(&hdr.to_bytes());
                        return Served::Used(HDR_LEN as u32);
                    }
                    if room == 0 || !conn.wants_read(false) {
                        continue;
                    }
                    let want = room.min(conn.peer_credit() as usize);
                    let mut buf = vec![0u8; want];
                    match conn.stream.read(&mut buf) {
                        Ok(0) => {
                            conn.read_done = true;
                            hdr.op = op::SHUTDOWN;
                            hdr.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                            let _ = writer.write_all(&hdr.to_bytes());
                            return Served::Used(HDR_LEN as u32);
                        }
                        Ok(n) => {
                            hdr.op = op::RW;
                            hdr.len = n as u32;
                            conn.rx_cnt = conn.rx_cnt.wrapping_add(n as u32);
                            conn.fwd_cnt_sent = conn.fwd_cnt;
                            let _ = writer.write_all(&hdr.to_bytes());
                            let _ = writer.write_all(&buf[..n]);
                            return Served::Used((HDR_LEN + n) as u32);
                        }
                        Err(_) => continue,
                    }
                }
                // Nothing to send: keep the buffer for later.
                Served::Later
            },
        );
        // Starved: there is still something to send but no buffer was available.
        if !drained.stopped
            && (!control.is_empty()
                || conns
                    .values()
                    .any(|c| !c.control.is_empty() || c.wants_read(false)))
        {
            starved = true;
        }
        self.active = Some(active);
        self.rx_starved = starved;
        (drained.notify, drained.used > 0)
    }
}

/// Parses `CONNECT <port>` (without the newline).
fn parse_connect(line: &[u8]) -> Result<u32, &'static str> {
    let line = std::str::from_utf8(line).map_err(|_| "CONNECT line is not text")?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let port = line
        .strip_prefix("CONNECT ")
        .ok_or("expected CONNECT <port>")?;
    port.trim().parse().map_err(|_| "bad port in CONNECT line")
}

type Packet = Result<(Header, Vec<u8>), String>;

/// Reads one TX packet: header, then `len` payload bytes (checked against the chain and
/// [`MAX_PKT_PAYLOAD`]).
fn read_packet(chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> Packet {
    let mut reader = chain
        .reader(mem)
        .map_err(|e| format!("bad descriptor chain: {e}"))?;
    if reader.available_bytes() < HDR_LEN {
        return Err(format!(
            "header too short ({} bytes)",
            reader.available_bytes()
        ));
    }
    let mut raw = [0u8; HDR_LEN];
    reader
        .read_exact(&mut raw)
        .map_err(|e| format!("cannot read header: {e}"))?;
    let hdr = Header::from_bytes(&raw);
    if hdr.len > MAX_PKT_PAYLOAD || hdr.len as usize > reader.available_bytes() {
        return Err(format!(
            "payload length {} exceeds the chain ({} bytes) or {MAX_PKT_PAYLOAD}",
            hdr.len,
            reader.available_bytes()
        ));
    }
    if hdr.op != op::RW && hdr.len != 0 {
        return Err(format!("op {} with a payload", hdr.op));
    }
    let mut data = vec![0u8; hdr.len as usize];
    reader
        .read_exact(&mut data)
        .map_err(|e| format!("cannot read payload: {e}"))?;
    Ok((hdr, data))
}

impl Drop for Vsock {
    fn drop(&mut self) {
        // The listening socket goes with the device (a stale file would refuse nothing but
        // mislead host tools).
        let _ = std::fs::remove_file(&self.path);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::warn!("virtio-vsock: config write at {offset:#x} ignored: read-only");
    }

    fn activate(&mut self, args: ActivateArgs) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let ActivateArgs {
            mem,
            queues,
            queue_evts,
            interrupt,
            acked_features: _,
        } = args;
        if queues.len() != 3 || queue_evts.len() != 3 {
            return Err(ActivateError::QueueCount {
                expected: 3,
                queues: queues.len(),
                evts: queue_evts.len(),
            });
        }
        self.glue
            .activate(queue_evts)
            .map_err(ActivateError::SignalActivate)?;
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        // The guest's sockets are gone: so are the host ends.
        self.active = None;
        for c in std::mem::take(&mut self.conns).into_values() {
            self.bury(c.token, c.stream);
        }
        self.control.clear();
        self.rx_starved = false;
        self.glue.reset();
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}
