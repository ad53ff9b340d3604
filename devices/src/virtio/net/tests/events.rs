//! The path the VMM wires: the transport on the bus side, the device in the event manager,
//! QueueNotify written through the bus. Covers flow control of the backend fd, reset and
//! re-activation.

use std::sync::Mutex;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

use super::*;
use crate::bus::BusDevice;
use crate::virtio::mmio::{regs, status::*};
use crate::virtio::MmioTransport;

pub(super) type Em = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Drives the transport through a driver initialisation with both queues at `r`'s layout.
pub(super) fn driver_init(t: &mut MmioTransport, r: &Rings<'_>, size: u16, features: u64) {
    let layout = |q: &MockSplitQueue<GuestMemoryMmap>| {
        (q.desc_table_addr().0, q.avail_addr().0, used_ring(q))
    };
    driver_init_at(t, [layout(&r.rx), layout(&r.tx)], size, features);
}

/// Drives the transport through a driver initialisation with the queues' (descriptor
/// table, avail ring, used ring) addresses given.
pub(super) fn driver_init_at(
    t: &mut MmioTransport,
    layout: [(u64, u64, u64); 2],
    size: u16,
    features: u64,
) {
    let mut w = |offset: u64, value: u32| t.write(offset, &value.to_le_bytes());
    w(regs::STATUS, ACKNOWLEDGE);
    w(regs::STATUS, ACKNOWLEDGE | DRIVER);
    for page in 0..2u32 {
        w(regs::DRIVER_FEATURES_SEL, page);
        w(regs::DRIVER_FEATURES, (features >> (32 * page)) as u32);
    }
    w(regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    for (index, (desc, avail, used)) in layout.into_iter().enumerate() {
        w(regs::QUEUE_SEL, index as u32);
        w(regs::QUEUE_NUM, u32::from(size));
        w(regs::QUEUE_DESC_LOW, desc as u32);
        w(regs::QUEUE_DRIVER_LOW, avail as u32);
        w(regs::QUEUE_DEVICE_LOW, used as u32);
        w(regs::QUEUE_READY, 1);
    }
    w(regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
}

pub(super) fn notify(t: &mut MmioTransport, queue: usize) {
    t.write(regs::QUEUE_NOTIFY, &(queue as u32).to_le_bytes());
}

pub(super) fn read_reg(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

/// Runs the event loop until `done` holds (at most `rounds` waits of 200 ms).
pub(super) fn run_until(em: &mut Em, rounds: usize, mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..rounds {
        if done() {
            return true;
        }
        em.run_with_timeout(200).unwrap();
    }
    done()
}

#[test]
fn transport_when_guest_reads_device_then_net_features_and_mac() {
    let mem = memory();
    let (net, _host) = pair_net();
    let net = Arc::new(Mutex::new(net));
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(mem, net, irq).unwrap();
    assert_eq!(read_reg(&mut t, regs::DEVICE_ID), 1);
    t.write(regs::DEVICE_FEATURES_SEL, &1u32.to_le_bytes());
    assert_eq!(
        u64::from(read_reg(&mut t, regs::DEVICE_FEATURES)),
        AVAIL_FEATURES >> 32
    );
    let mut mac = [0u8; 6];
    t.read(regs::CONFIG, &mut mac);
    assert_eq!(mac, MAC);
}

#[test]
fn event_loop_when_guest_has_no_buffers_then_stops_watching_and_resumes_on_kick() {
    let mem = memory();
    let (net, host) = pair_net();
    let net = Arc::new(Mutex::new(net));
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(mem.clone(), net.clone(), irq.clone()).unwrap();
    let mut em = Em::new().unwrap();
    em.add_subscriber(net.clone());
    let r = rings(&mem, 16);
    let features = V1 | MRG | EVENT_IDX | GUEST_CSUM;

    driver_init(&mut t, &r, 16, features);
    assert_eq!(read_reg(&mut t, regs::STATUS) & DRIVER_OK, DRIVER_OK);
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1, "ACTIVATE");
    assert!(net.lock().unwrap().backend_watched());
    assert_eq!(net.lock().unwrap().acked_features(), Some(features));
    assert_eq!(host.offload.load(Ordering::SeqCst), libc::TUN_F_CSUM);

    // Frames arrive with no receive buffers: one is read and kept, then the fd is dropped
    // from the epoll set, so the loop goes quiet instead of spinning.
    let frames: Vec<Vec<u8>> = (0..3).map(|i| test_frame(100 + i, i as u8)).collect();
    for f in &frames {
        host.send_frame(f);
    }
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1, "PROCESS_TAP");
    assert!(!net.lock().unwrap().backend_watched());
    assert_eq!(em.run_with_timeout(100).unwrap(), 0, "no busy loop");

    // The guest adds buffers and kicks: everything pending is delivered, the fd watched.
    for i in 0..4u16 {
        add_chain(&r.rx, i, &[(BUFS + u64::from(i) * 0x1000, 2048, WRITE, 0)]);
    }
    notify(&mut t, RX_QUEUE);
    assert!(run_until(&mut em, 5, || used(&mem, &r.rx).len() == 3));
    for (i, f) in frames.iter().enumerate() {
        let at = BUFS + i as u64 * 0x1000 + VNET_HDR_LEN as u64;
        assert_eq!(&read_mem(&mem, at, f.len()), f, "frame {i}");
    }
    assert!(net.lock().unwrap().backend_watched());
    assert!(irq_count(&irq) >= 1);

    // Transmit through the loop.
    mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(BUFS + 0x10_0000))
        .unwrap();
    let out = test_frame(60, 9);
    mem.write_slice(&out, GuestAddress(BUFS + 0x10_0000 + VNET_HDR_LEN as u64))
        .unwrap();
    add_chain(
        &r.tx,
        0,
        &[(BUFS + 0x10_0000, (VNET_HDR_LEN + 60) as u32, 0, 0)],
    );
    notify(&mut t, TX_QUEUE);
    assert!(run_until(&mut em, 5, || !used(&mem, &r.tx).is_empty()));
    assert_eq!(host.recv().map(|m| m[VNET_HDR_LEN..].to_vec()), Some(out));
    let s = net.lock().unwrap().stats();
    assert_eq!((s.rx_packets, s.tx_packets, s.rx_dropped), (3, 1, 0));
}

#[test]
fn event_loop_when_driver_reloads_then_networking_continues_on_new_rings() {
    let mem = memory();
    let (net, host) = pair_net();
    let net = Arc::new(Mutex::new(net));
    let counters = net.lock().unwrap().counters();
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(mem.clone(), net.clone(), irq).unwrap();
    let mut em = Em::new().unwrap();
    em.add_subscriber(net.clone());

    let r = rings(&mem, 16);
    driver_init(&mut t, &r, 16, V1 | GUEST_CSUM | GUEST_TSO4);
    em.run_with_timeout(1000).unwrap();
    add_chain(&r.rx, 0, &[(BUFS, 0x1_0000, WRITE, 0)]);
    notify(&mut t, RX_QUEUE);
    host.send_frame(&test_frame(60, 1));
    assert!(run_until(&mut em, 5, || used(&mem, &r.rx).len() == 1));

    // Reset: the backend and queue eventfds are no longer watched.
    t.write(regs::STATUS, &0u32.to_le_bytes());
    assert!(!net.lock().unwrap().is_activated());
    assert_eq!(
        em.run_with_timeout(1000).unwrap(),
        1,
        "ACTIVATE after reset"
    );
    assert!(!net.lock().unwrap().backend_watched());
    host.send_frame(&test_frame(60, 2));
    notify(&mut t, RX_QUEUE);
    assert_eq!(
        em.run_with_timeout(100).unwrap(),
        0,
        "nothing watched while reset"
    );

    // The reloaded driver acks fewer offloads and uses new rings; the frame that waited on
    // the host side during the reset is delivered there.
    let r2 = Rings {
        rx: MockSplitQueue::create(&mem, GuestAddress(0x4_0000), 16),
        tx: MockSplitQueue::create(&mem, GuestAddress(0x5_0000), 16),
    };
    add_chain(&r2.rx, 0, &[(BUFS + 0x2_0000, 2048, WRITE, 0)]);
    driver_init(&mut t, &r2, 16, V1);
    assert_eq!(host.offload.load(Ordering::SeqCst), 0);
    assert!(run_until(&mut em, 5, || used(&mem, &r2.rx).len() == 1));
    assert_eq!(
        read_mem(&mem, BUFS + 0x2_0000 + VNET_HDR_LEN as u64, 60),
        test_frame(60, 2)
    );
    assert!(net.lock().unwrap().backend_watched());
    assert_eq!(counters.snapshot().rx_packets, 2);
}

#[test]
fn event_loop_when_backend_hangs_up_then_stops_watching() {
    let mem = memory();
    let (net, host) = pair_net();
    let net = Arc::new(Mutex::new(net));
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(mem.clone(), net.clone(), irq).unwrap();
    let mut em = Em::new().unwrap();
    em.add_subscriber(net.clone());
    let r = rings(&mem, 16);
    driver_init(&mut t, &r, 16, V1);
    em.run_with_timeout(1000).unwrap();
    add_chain(&r.rx, 0, &[(BUFS, 2048, WRITE, 0)]);

    // The device's end stops reading: every read returns 0 (EOF) and epoll keeps
    // reporting the fd readable. The device must drop it from the set, not spin.
    net.lock()
        .unwrap()
        .backend()
        .sock
        .shutdown(std::net::Shutdown::Read)
        .unwrap();
    let mut events = 0;
    for _ in 0..5 {
        events += em.run_with_timeout(50).unwrap();
    }
    assert_eq!(events, 1, "one PROCESS_TAP, then quiet");
    assert!(!net.lock().unwrap().backend_watched());
    assert!(used(&mem, &r.rx).is_empty());
    drop(host);
}
