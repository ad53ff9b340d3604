//! The device on a real TAP inside a throwaway network namespace. The test plays the host
//! side with a UDP socket bound to the TAP's address (10.99.0.1) in that namespace, and the
//! guest side through mock queues, as 10.99.0.2 with the device's MAC.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::netns::{drop_net_admin_in_this_thread, NetNs};
use super::*;

const HDR: usize = VNET_HDR_LEN;
const TAP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const HOST_IP: [u8; 4] = [10, 99, 0, 1];
const GUEST_IP: [u8; 4] = [10, 99, 0, 2];
const HOST_PORT: u16 = 5555;
const GUEST_PORT: u16 = 4444;

/// A persistent TAP `name` in `ns`, made the way netctl would (owned by `owner` if given).
fn add_tap(ns: &NetNs, name: &str, owner: Option<&str>) {
    let mut args = vec!["tuntap", "add", "dev", name, "mode", "tap"];
    if let Some(user) = owner {
        args.extend(["user", user]);
    }
    ns.ip(&args);
}

/// TAP `tvt0` with 10.99.0.1/24, a 9000-byte MTU and a static neighbour entry for the
/// guest (so no ARP is needed), opened by the device; plus the host's UDP socket.
fn tap_setup(ns: &NetNs) -> (Tap, UdpSocket) {
    add_tap(ns, "tvt0", None);
    ns.ip(&[
        "link",
        "set",
        "tvt0",
        "address",
        "02:00:00:00:00:fe",
        "mtu",
        "9000",
        "up",
    ]);
    ns.ip(&["addr", "add", "10.99.0.1/24", "dev", "tvt0"]);
    ns.ip(&[
        "neigh",
        "add",
        "10.99.0.2",
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        "tvt0",
        "nud",
        "permanent",
    ]);
    let (tap, sock) = ns.run(|| {
        let tap = Tap::open("tvt0").unwrap();
        let sock = UdpSocket::bind(("10.99.0.1", HOST_PORT)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        (tap, sock)
    });
    wait_operational(ns, "tvt0");
    (tap, sock)
}

/// Attaching gives the TAP its carrier, but the kernel's link watcher applies that later
/// (up to a second); until then the TAP has no queueing discipline and drops what the host
/// sends. Its operational state turns UP in the same step.
fn wait_operational(ns: &NetNs, name: &str) {
    for _ in 0..150 {
        if ns.ip(&["-o", "link", "show", name]).contains("state UP") {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{name} did not become operational within 3 s");
}

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv4 + UDP frame from the guest to the host socket (UDP checksum 0).
fn guest_udp_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&TAP_MAC);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&GUEST_IP);
    ip.extend_from_slice(&HOST_IP);
    let csum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&GUEST_PORT.to_be_bytes());
    f.extend_from_slice(&HOST_PORT.to_be_bytes());
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Waits until the TAP has a frame for the device.
fn wait_readable(fd: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd we pass, which outlives the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 3000) };
    assert_eq!(n, 1, "no frame on the TAP within 3 s");
}

/// A UDP datagram the guest received: (virtio-net header, UDP header + payload).
struct Received {
    hdr: Vec<u8>,
    udp: Vec<u8>,
}

/// Reads the frame the device put at the start of `chains` (each `chain_len` bytes, at
/// `base + i * 0x1_0000`) over `num_buffers` chains, and returns its UDP part if it is an
/// IPv4/UDP datagram from the host to the guest port.
fn read_udp(mem: &GuestMemoryMmap, base: u64, chain_lens: &[u32]) -> Option<Received> {
    let mut bytes = Vec::new();
    for (i, len) in chain_lens.iter().enumerate() {
        bytes.extend(read_mem(mem, base + i as u64 * 0x1_0000, *len as usize));
    }
    let (hdr, frame) = bytes.split_at(HDR);
    let is_udp_to_guest = frame.len() >= 42
        && frame[..6] == MAC
        && frame[12..14] == [0x08, 0x00]
        && frame[23] == 17
        && frame[30..34] == GUEST_IP
        && frame[36..38] == GUEST_PORT.to_be_bytes();
    is_udp_to_guest.then(|| Received {
        hdr: hdr.to_vec(),
        udp: frame[34..].to_vec(),
    })
}

/// Opens `name`, retrying for up to 2 s while it is busy: a closed TAP stays attached while
/// a child process forked by a parallel test thread still holds the file (until its exec).
fn open_retrying_busy(ns: &NetNs, name: &str) -> Result<Tap, TapError> {
    for _ in 0..100 {
        match ns.run(|| Tap::open(name)) {
            Err(TapError::Busy { .. }) => std::thread::sleep(Duration::from_millis(20)),
            other => return other,
        }
    }
    ns.run(|| Tap::open(name))
}

#[test]
fn tap_open_when_missing_busy_not_tap_or_foreign_then_error_names_tap_and_reason() {
    let ns = NetNs::new();
    add_tap(&ns, "tvt0", None);
    add_tap(&ns, "tvt-foreign", Some("65534"));

    let missing = ns.run(|| Tap::open("nope0")).unwrap_err();
    assert!(matches!(missing, TapError::Missing { .. }), "{missing}");
    assert!(missing.to_string().contains("nope0") && missing.to_string().contains("missing"));

    let first = ns.run(|| Tap::open("tvt0")).unwrap();
    assert_eq!(first.name(), "tvt0");
    assert!(!first.is_transient());
    let busy = ns.run(|| Tap::open("tvt0")).unwrap_err();
    assert!(matches!(busy, TapError::Busy { .. }), "{busy}");
    assert!(busy.to_string().contains("tvt0") && busy.to_string().contains("busy"));
    drop(first);
    assert!(
        open_retrying_busy(&ns, "tvt0").is_ok(),
        "free again after close"
    );

    let not_tap = ns.run(|| Tap::open("lo")).unwrap_err();
    assert!(matches!(not_tap, TapError::NotTap { .. }), "{not_tap}");

    let denied = ns
        .run(|| {
            drop_net_admin_in_this_thread();
            Tap::open("tvt-foreign")
        })
        .unwrap_err();
    assert!(matches!(denied, TapError::Permission { .. }), "{denied}");
    assert!(denied.to_string().contains("tvt-foreign"));
    assert!(denied.to_string().contains("permission denied"));
    // The same TAP opens for a process that may administer the network.
    assert!(ns.run(|| Tap::open("tvt-foreign")).is_ok());
}

#[test]
fn tap_create_transient_when_missing_then_up_and_gone_after_drop() {
    let ns = NetNs::new();
    let tap = ns.run(|| Tap::create_transient("tvt1")).unwrap();
    assert!(tap.is_transient());
    let link = ns.ip(&["-o", "link", "show", "tvt1"]);
    assert!(link.contains("UP"), "{link}");
    let exists = ns.run(|| Tap::create_transient("tvt1")).unwrap_err();
    assert!(matches!(exists, TapError::Exists { .. }), "{exists}");

    drop(tap);
    // The interface goes when the last reference to the file goes (see open_retrying_busy).
    let gone = open_retrying_busy(&ns, "tvt1").unwrap_err();
    assert!(matches!(gone, TapError::Missing { .. }), "{gone}");

    let made = ns.run(|| Tap::open_or_create_transient("tvt2")).unwrap();
    assert!(
        made.is_transient(),
        "root gets a transient TAP for a missing one"
    );
    add_tap(&ns, "tvt3", None);
    let opened = ns.run(|| Tap::open_or_create_transient("tvt3")).unwrap();
    assert!(!opened.is_transient());
}

#[test]
fn tap_round_trip_when_offloads_off_then_udp_crosses_with_full_checksums() {
    let ns = NetNs::new();
    let (tap, sock) = tap_setup(&ns);
    let mem = memory();
    let r = rings(&mem, 16);
    let mut net = Net::new(tap, MAC).unwrap();
    activate(&mut net, &mem, &r, V1);

    // Guest -> host.
    let frame = guest_udp_frame(b"hello from the guest");
    mem.write_slice(&[0u8; HDR], GuestAddress(BUFS)).unwrap();
    mem.write_slice(&frame, GuestAddress(BUFS + HDR as u64))
        .unwrap();
    add_chain(&r.tx, 0, &[(BUFS, (HDR + frame.len()) as u32, 0, 0)]);
    assert_eq!(net.process_tx().used, 1);
    let mut buf = [0u8; 64];
    let (n, from) = sock
        .recv_from(&mut buf)
        .expect("the host receives the guest's datagram");
    assert_eq!(&buf[..n], b"hello from the guest");
    assert_eq!(from, SocketAddr::from((GUEST_IP, GUEST_PORT)));
    assert_eq!(net.stats().tx_packets, 1);

    // Host -> guest: no checksum offload acked, so the host computes it.
    let payload: Vec<u8> = (0..200u8).collect();
    sock.send_to(&payload, SocketAddr::from((GUEST_IP, GUEST_PORT)))
        .unwrap();
    add_chain(&r.rx, 0, &[(BUFS + 0x10_0000, 0x1_0000, WRITE, 0)]);
    wait_readable(net.backend().as_raw_fd());
    net.process_rx();
    let (id, len) = used(&mem, &r.rx)[0];
    assert_eq!(id, 0);
    let got = read_udp(&mem, BUFS + 0x10_0000, &[len]).expect("a UDP frame for the guest");
    assert_eq!(got.hdr[0], 0, "no NEEDS_CSUM without GUEST_CSUM");
    assert_eq!(&got.udp[8..], &payload[..]);
    // Verify the UDP checksum over the pseudo header.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&HOST_IP);
    pseudo.extend_from_slice(&GUEST_IP);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(got.udp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&got.udp);
    assert_eq!(checksum(&pseudo, 0), 0, "UDP checksum is complete");
}

#[test]
fn tap_round_trip_when_offloads_and_mergeable_acked_then_partial_checksum_and_spanning_frame() {
    let ns = NetNs::new();
    let (tap, sock) = tap_setup(&ns);
    let mem = memory();
    let r = rings(&mem, 16);
    let mut net = Net::new(tap, MAC).unwrap();
    activate(&mut net, &mem, &r, V1 | MRG | GUEST_CSUM | GUEST_TSO4);

    // An 8000-byte datagram fits the 9000-byte MTU: one frame over four 2 KiB buffers.
    let payload: Vec<u8> = (0..8000u32).map(|i| (i % 251) as u8).collect();
    sock.send_to(&payload, SocketAddr::from((GUEST_IP, GUEST_PORT)))
        .unwrap();
    for i in 0..8u16 {
        add_chain(
            &r.rx,
            i,
            &[(BUFS + u64::from(i) * 0x1_0000, 2048, WRITE, 0)],
        );
    }
    wait_readable(net.backend().as_raw_fd());
    assert_eq!(net.process_rx(), RxOutcome::BackendEmpty);

    let lens: Vec<u32> = used(&mem, &r.rx).iter().map(|&(_, len)| len).collect();
    let frame_len = HDR + 14 + 20 + 8 + 8000;
    assert_eq!(lens.len(), frame_len.div_ceil(2048), "{lens:?}");
    assert_eq!(lens.iter().sum::<u32>() as usize, frame_len);
    let got = read_udp(&mem, BUFS, &lens).expect("a UDP frame for the guest");
    assert_eq!(
        u16::from_le_bytes([got.hdr[10], got.hdr[11]]) as usize,
        lens.len()
    );
    assert_eq!(&got.udp[8..], &payload[..]);
    // The TAP now hands over frames with the checksum left to the guest.
    assert_eq!(got.hdr[0], 1, "VIRTIO_NET_HDR_F_NEEDS_CSUM");
    assert_eq!(
        u16::from_le_bytes([got.hdr[6], got.hdr[7]]),
        34,
        "csum_start"
    );
    assert_eq!(
        u16::from_le_bytes([got.hdr[8], got.hdr[9]]),
        6,
        "csum_offset"
    );

    // Guest -> host with checksum offload requested in the header.
    let frame = guest_udp_frame(b"partial checksum");
    let mut hdr = [0u8; HDR];
    hdr[0] = 1;
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&6u16.to_le_bytes());
    mem.write_slice(&hdr, GuestAddress(BUFS + 0x20_0000))
        .unwrap();
    mem.write_slice(&frame, GuestAddress(BUFS + 0x20_0000 + HDR as u64))
        .unwrap();
    add_chain(
        &r.tx,
        0,
        &[(BUFS + 0x20_0000, (HDR + frame.len()) as u32, 0, 0)],
    );
    net.process_tx();
    let mut buf = [0u8; 64];
    let (n, _) = sock
        .recv_from(&mut buf)
        .expect("the TAP accepted the offload header");
    assert_eq!(&buf[..n], b"partial checksum");
    let s = net.stats();
    assert_eq!(
        (s.rx_packets, s.tx_packets, s.tx_dropped, s.bad_descriptors),
        (1, 1, 0, 0)
    );
}

/// The full event path on a real TAP: frames the host sends while the guest has no
/// receive buffers wait (one read, the rest in the TAP's queue); the loop stops watching the
/// TAP instead of spinning, and the next receive-queue kick delivers all of them.
#[test]
fn tap_event_loop_when_guest_out_of_buffers_then_tap_unwatched_and_all_frames_after_kick() {
    use std::sync::Mutex;

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

    use super::events::{driver_init, notify, run_until};
    use crate::virtio::MmioTransport;

    let ns = NetNs::new();
    let (tap, sock) = tap_setup(&ns);
    let mem = memory();
    let net = Arc::new(Mutex::new(Net::new(tap, MAC).unwrap()));
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(mem.clone(), net.clone(), irq.clone()).unwrap();
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    em.add_subscriber(net.clone());
    let r = rings(&mem, 16);
    driver_init(&mut t, &r, 16, V1 | MRG | EVENT_IDX | GUEST_CSUM);
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1, "ACTIVATE");

    for i in 0..3u8 {
        sock.send_to(&[i; 32], SocketAddr::from((GUEST_IP, GUEST_PORT)))
            .unwrap();
    }
    assert!(run_until(&mut em, 10, || !net
        .lock()
        .unwrap()
        .backend_watched()));
    assert_eq!(
        em.run_with_timeout(200).unwrap(),
        0,
        "quiet while out of buffers"
    );

    for i in 0..8u16 {
        add_chain(
            &r.rx,
            i,
            &[(BUFS + u64::from(i) * 0x1_0000, 2048, WRITE, 0)],
        );
    }
    notify(&mut t, RX_QUEUE);
    assert!(run_until(&mut em, 10, || used(&mem, &r.rx).len() >= 3));
    let mut payloads = Vec::new();
    for (i, &(id, len)) in used(&mem, &r.rx).iter().enumerate() {
        assert_eq!(id as usize, i);
        let got = read_udp(&mem, BUFS + i as u64 * 0x1_0000, &[len]).expect("UDP frame");
        payloads.push(got.udp[8..].to_vec());
    }
    assert_eq!(payloads, vec![vec![0u8; 32], vec![1u8; 32], vec![2u8; 32]]);
    assert!(net.lock().unwrap().backend_watched());
    assert!(irq.read().unwrap() >= 1);
    assert_eq!(net.lock().unwrap().stats().rx_dropped, 0);
}

/// An Ethernet + IPv4 + TCP (ACK|PSH) frame from the guest to `port` on the host carrying
/// `payload`, with the TCP checksum field holding the pseudo-header sum (checksum offload).
fn guest_tcp_frame(port: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&TAP_MAC);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let tcp_len = 20 + payload.len();
    let mut ip = vec![0x45, 0, 0, 0, 0, 2, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&GUEST_IP);
    ip.extend_from_slice(&HOST_IP);
    let csum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&GUEST_PORT.to_be_bytes());
    tcp.extend_from_slice(&port.to_be_bytes());
    tcp.extend_from_slice(&1u32.to_be_bytes()); // seq
    tcp.extend_from_slice(&7u32.to_be_bytes()); // ack
    tcp.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    // Pseudo-header sum, not complemented: what a driver leaves for the device to finish.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&GUEST_IP);
    pseudo.extend_from_slice(&HOST_IP);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    let partial = !checksum(&pseudo, 0);
    tcp[16..18].copy_from_slice(&partial.to_be_bytes());
    f.extend_from_slice(&tcp);
    f.extend_from_slice(payload);
    f
}

/// HOST_TSO4 on a real TAP: a 3000-byte TCP super-frame with a GSO header is accepted by
/// the TAP and reaches the host's TCP stack (which answers the closed port with a RST back
/// through the device); a GSO header with gso_size 0 is refused and counted as dropped.
#[test]
fn tap_tx_when_guest_sends_tso_frame_then_host_stack_gets_it_and_bad_gso_is_dropped() {
    let ns = NetNs::new();
    let (tap, _sock) = tap_setup(&ns);
    let mem = memory();
    let r = rings(&mem, 16);
    let mut net = Net::new(tap, MAC).unwrap();
    let host_tso4 = net_bit(virtio_bindings::virtio_net::VIRTIO_NET_F_HOST_TSO4);
    let host_csum = net_bit(virtio_bindings::virtio_net::VIRTIO_NET_F_CSUM);
    activate(&mut net, &mem, &r, V1 | host_csum | host_tso4);

    let frame = guest_tcp_frame(5556, &[0x5a; 3000]);
    let mut hdr = [0u8; HDR];
    hdr[0] = 1; // NEEDS_CSUM
    hdr[1] = 1; // GSO_TCPV4
    hdr[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
    hdr[4..6].copy_from_slice(&1000u16.to_le_bytes()); // gso_size
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
    hdr[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    mem.write_slice(&hdr, GuestAddress(BUFS)).unwrap();
    mem.write_slice(&frame, GuestAddress(BUFS + HDR as u64))
        .unwrap();
    let len = (HDR + frame.len()) as u32;
    add_chain(&r.tx, 0, &[(BUFS, len, 0, 0)]);
    // The same frame claiming segments of 0 bytes.
    let mut bad = hdr;
    bad[4..6].copy_from_slice(&0u16.to_le_bytes());
    mem.write_slice(&bad, GuestAddress(BUFS + 0x1_0000))
        .unwrap();
    mem.write_slice(&frame, GuestAddress(BUFS + 0x1_0000 + HDR as u64))
        .unwrap();
    add_chain(&r.tx, 1, &[(BUFS + 0x1_0000, len, 0, 0)]);

    assert_eq!(net.process_tx().used, 2);
    let s = net.stats();
    assert_eq!(
        (s.tx_packets, s.tx_bytes, s.tx_dropped),
        (1, frame.len() as u64, 1)
    );

    // The host's answer: a TCP RST from the closed port back to the guest.
    for i in 0..4u16 {
        add_chain(
            &r.rx,
            i,
            &[(BUFS + 0x10_0000 + u64::from(i) * 0x1_0000, 2048, WRITE, 0)],
        );
    }
    wait_readable(net.backend().as_raw_fd());
    net.process_rx();
    let rst = used(&mem, &r.rx).iter().enumerate().any(|(i, &(_, len))| {
        let f = read_mem(&mem, BUFS + 0x10_0000 + i as u64 * 0x1_0000, len as usize);
        let f = &f[HDR..];
        f.len() >= 54
            && f[23] == 6
            && f[34..36] == 5556u16.to_be_bytes()
            && f[36..38] == GUEST_PORT.to_be_bytes()
            && f[47] & 0x04 != 0
    });
    assert!(rst, "no RST from the host: {:?}", used(&mem, &r.rx));
}
