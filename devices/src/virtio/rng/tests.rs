//! virtio-rng tests driven through virtio-queue's `MockSplitQueue` (it plays the driver: lays
//! out descriptor table and rings in guest memory and publishes chains).

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::desc::split::{Descriptor as SplitDescriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::bus::BusDevice;
use crate::virtio::features::VIRTIO_F_VERSION_1;
use crate::virtio::mmio::{regs, status::*};
use crate::virtio::{ActivateArgs, MmioTransport, VirtioDevice, VirtioInterrupt};

const MEM_SIZE: usize = 0x10_0000;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;
const MOCK_QUEUE_SIZE: u16 = 16;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// Writes one chain at descriptor index `at` and publishes its head in the avail ring.
fn add_chain(q: &MockSplitQueue<GuestMemoryMmap>, at: u16, descs: &[(u64, u32, u16, u16)]) {
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .map(|&(addr, len, flags, next)| SplitDescriptor::new(addr, len, flags, next).into())
        .collect();
    q.add_desc_chains(&raw, at).unwrap();
}

fn used(q: &MockSplitQueue<GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let n = q.used().idx().load();
    (0..n)
        .map(|i| {
            let e: VirtqUsedElem = q.used().ring().ref_at(i as usize).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

fn read_mem(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

/// An Rng activated directly on the mock queue, plus the irqfd it raises.
fn active_rng(mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>) -> (Rng, Arc<EventFd>) {
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut rng = Rng::new().unwrap();
    rng.activate(ActivateArgs {
        mem: mem.clone(),
        queues: vec![q.create_queue::<Queue>().unwrap()],
        queue_evts: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
        interrupt: Arc::new(VirtioInterrupt::new(irq.clone())),
        acked_features: VIRTIO_F_VERSION_1,
    })
    .unwrap();
    (rng, irq)
}

#[test]
fn process_when_good_chain_then_buffers_filled_and_used_len_reported() {
    let mem = memory();
    let q = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
    add_chain(
        &q,
        0,
        &[(0x10000, 16, WRITE | NEXT, 1), (0x20000, 32, WRITE, 0)],
    );
    let (mut rng, irq) = active_rng(&mem, &q);

    assert!(rng.process_queue());

    assert_eq!(used(&q), vec![(0, 48)]);
    assert_ne!(read_mem(&mem, 0x10000, 16), vec![0; 16], "random bytes");
    assert_ne!(read_mem(&mem, 0x20000, 32), vec![0; 32], "random bytes");
    assert_eq!(
        read_mem(&mem, 0x10010, 16),
        vec![0; 16],
        "nothing past the buffer"
    );
    assert_eq!(irq.read().unwrap(), 1);
    assert_eq!(rng.bad_descriptors(), 0);
    assert_eq!(rng.bytes_served(), 48);
}

#[test]
fn process_when_two_requests_then_bytes_differ() {
    let mem = memory();
    let q = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
    add_chain(&q, 0, &[(0x10000, 64, WRITE, 0)]);
    add_chain(&q, 1, &[(0x11000, 64, WRITE, 0)]);
    let (mut rng, _irq) = active_rng(&mem, &q);
    rng.process_queue();
    assert_eq!(used(&q), vec![(0, 64), (1, 64)]);
    assert_ne!(read_mem(&mem, 0x10000, 64), read_mem(&mem, 0x11000, 64));
}

#[test]
fn process_when_indirect_chain_then_its_buffers_filled() {
    let mem = memory();
    let q = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
    // A two-entry indirect table at 0x30000, written like a driver would.
    let table = [
        SplitDescriptor::new(0x31000, 8, WRITE | NEXT, 1),
        SplitDescriptor::new(0x32000, 24, WRITE, 0),
    ];
    for (i, d) in table.iter().enumerate() {
        mem.write_obj(
            RawDescriptor::from(*d),
            GuestAddress(0x30000 + 16 * i as u64),
        )
        .unwrap();
    }
    add_chain(&q, 0, &[(0x30000, 32, INDIRECT, 0)]);
    let (mut rng, _irq) = active_rng(&mem, &q);

    rng.process_queue();

    assert_eq!(used(&q), vec![(0, 32)]);
    assert_ne!(read_mem(&mem, 0x32000, 24), vec![0; 24]);
    assert_eq!(rng.bad_descriptors(), 0);
}

#[test]
fn process_when_request_above_cap_then_capped() {
    let mem = memory();
    let q = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
    add_chain(&q, 0, &[(0x20000, 0x20000, WRITE, 0)]);
    let (mut rng, _irq) = active_rng(&mem, &q);
    rng.process_queue();
    assert_eq!(used(&q), vec![(0, MAX_BYTES_PER_REQUEST)]);
    let cap = MAX_BYTES_PER_REQUEST as u64;
    assert_eq!(read_mem(&mem, 0x20000 + cap, 64), vec![0; 64]);
}

#[test]
fn process_when_not_activated_then_nothing_happens() {
    let mut rng = Rng::new().unwrap();
    assert!(!rng.process_queue());
    assert!(!rng.is_activated());
}

/// Each malformed chain is returned with length 0 (or dropped if its head is out of range),
/// counted, and the good chain published after it is still served.
#[test]
fn process_when_bad_chain_then_counted_and_next_chain_served() {
    type Publish = fn(&MockSplitQueue<GuestMemoryMmap>);
    type Case = (&'static str, Publish, Option<(u32, u32)>);
    let cases: [Case; 7] = [
        (
            "buffer outside memory",
            |q| add_chain(q, 0, &[(MEM_SIZE as u64 - 8, 16, WRITE, 0)]),
            Some((0, 0)),
        ),
        (
            "read-only descriptor",
            |q| add_chain(q, 0, &[(0x10000, 16, 0, 0)]),
            Some((0, 0)),
        ),
        (
            "writable then read-only",
            |q| add_chain(q, 0, &[(0x10000, 16, WRITE | NEXT, 1), (0x11000, 16, 0, 0)]),
            Some((0, 0)),
        ),
        (
            "loop",
            |q| {
                add_chain(
                    q,
                    0,
                    &[
                        (0x10000, 16, WRITE | NEXT, 1),
                        (0x11000, 16, WRITE | NEXT, 0),
                    ],
                )
            },
            Some((0, 0)),
        ),
        (
            "next index past the table",
            |q| add_chain(q, 0, &[(0x10000, 16, WRITE | NEXT, 100)]),
            Some((0, 0)),
        ),
        (
            "indirect table of bad length",
            |q| add_chain(q, 0, &[(0x30000, 15, INDIRECT, 0)]),
            Some((0, 0)),
        ),
        (
            "head index out of range",
            |q| {
                let idx = q.avail().idx().load();
                q.avail().ring().ref_at(idx as usize).unwrap().store(200);
                q.avail().idx().store(idx + 1);
            },
            None,
        ),
    ];
    for (name, publish_bad, bad_used) in cases {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
        publish_bad(&q);
        add_chain(&q, 8, &[(0x40000, 16, WRITE, 0)]);
        let (mut rng, irq) = active_rng(&mem, &q);

        rng.process_queue();

        let expected: Vec<_> = bad_used.into_iter().chain([(8, 16)]).collect();
        assert_eq!(used(&q), expected, "{name}");
        assert_eq!(rng.bad_descriptors(), 1, "{name}");
        assert_eq!(
            read_mem(&mem, 0x10000, 16),
            vec![0; 16],
            "{name}: no partial fill"
        );
        assert_ne!(read_mem(&mem, 0x40000, 16), vec![0; 16], "{name}");
        assert_eq!(irq.read().unwrap(), 1, "{name}");
    }
}

/// Drives a transport up to DRIVER_OK with the queue at `(desc, avail, used)`.
fn driver_init_at(t: &mut MmioTransport, (desc, avail, used): (u64, u64, u64)) {
    driver_init_sized(t, (desc, avail, used), MOCK_QUEUE_SIZE);
}

/// [`driver_init_at`] with a queue of `size` entries.
fn driver_init_sized(t: &mut MmioTransport, (desc, avail, used): (u64, u64, u64), size: u16) {
    let mut w = |offset: u64, value: u32| t.write(offset, &value.to_le_bytes());
    w(regs::STATUS, ACKNOWLEDGE);
    w(regs::STATUS, ACKNOWLEDGE | DRIVER);
    w(regs::DRIVER_FEATURES_SEL, 1);
    w(regs::DRIVER_FEATURES, (VIRTIO_F_VERSION_1 >> 32) as u32);
    w(regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    w(regs::QUEUE_SEL, 0);
    w(regs::QUEUE_NUM, u32::from(size));
    w(regs::QUEUE_DESC_LOW, desc as u32);
    w(regs::QUEUE_DRIVER_LOW, avail as u32);
    w(regs::QUEUE_DEVICE_LOW, used as u32);
    w(regs::QUEUE_READY, 1);
    w(regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
}

/// Drives a transport at `q`'s layout up to DRIVER_OK.
fn driver_init(t: &mut MmioTransport, q: &MockSplitQueue<GuestMemoryMmap>) {
    let layout = (q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0);
    driver_init_at(t, layout);
}

fn read_reg(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

/// The full path the VMM wires: transport on the bus side, Rng in the event manager,
/// QueueNotify written through the bus (no ioeventfd), a reset, and a second activation.
#[test]
fn notify_when_written_through_transport_then_event_loop_serves_queue() {
    let mem = memory();
    let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(mem.clone(), rng.clone(), irq.clone()).unwrap();
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    em.add_subscriber(rng.clone());

    // Activation on the "vCPU" side; the event loop then watches the queue eventfd.
    let q = MockSplitQueue::create(&mem, GuestAddress(0x1000), MOCK_QUEUE_SIZE);
    driver_init(&mut t, &q);
    assert_eq!(read_reg(&mut t, regs::STATUS) & DRIVER_OK, DRIVER_OK);
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1, "ACTIVATE");
    assert_eq!(rng.lock().unwrap().glue.watched_queues(), 1);

    add_chain(&q, 0, &[(0x10000, 32, WRITE, 0)]);
    t.write(regs::QUEUE_NOTIFY, &0u32.to_le_bytes());
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1, "PROCESS_QUEUE_0");
    assert_eq!(used(&q), vec![(0, 32)]);
    assert_eq!(irq.read().unwrap(), 1);
    assert_eq!(read_reg(&mut t, regs::INTERRUPT_STATUS), 1);
    t.write(regs::INTERRUPT_ACK, &1u32.to_le_bytes());
    assert_eq!(read_reg(&mut t, regs::INTERRUPT_STATUS), 0);

    // Reset: the queue eventfd is no longer watched, so notifications go nowhere.
    t.write(regs::STATUS, &0u32.to_le_bytes());
    assert!(!rng.lock().unwrap().is_activated());
    assert_eq!(
        em.run_with_timeout(1000).unwrap(),
        1,
        "ACTIVATE after reset"
    );
    assert_eq!(rng.lock().unwrap().glue.watched_queues(), 0);
    t.write(regs::QUEUE_NOTIFY, &0u32.to_le_bytes());
    assert_eq!(em.run_with_timeout(50).unwrap(), 0);

    // A fresh driver initialisation with new rings works again.
    let q2 = MockSplitQueue::create(&mem, GuestAddress(0x8000), MOCK_QUEUE_SIZE);
    add_chain(&q2, 3, &[(0x50000, 8, WRITE, 0)]);
    driver_init(&mut t, &q2);
    for _ in 0..3 {
        if !used(&q2).is_empty() {
            break;
        }
        em.run_with_timeout(200).unwrap();
    }
    assert_eq!(used(&q2), vec![(3, 8)]);
    assert_eq!(rng.lock().unwrap().glue.watched_queues(), 1);
    assert_eq!(rng.lock().unwrap().requests_served(), 2);
}

/// A "vCPU" thread keeps the 16-entry ring full and notifies through the MMIO bus while the
/// event loop serves it: no deadlock between the transport and the device locks, no lost
/// notification across the disable/drain/enable loop, ring wrap-around handled.
#[test]
fn notify_when_driver_thread_races_event_loop_then_every_request_served() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    const REQUESTS: u16 = 600;
    let mem = memory();
    let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(mem.clone(), rng.clone(), irq).unwrap();
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    em.add_subscriber(rng.clone());
    // Rings a page apart: MockSplitQueue lets the used ring overlap the tail of the
    // available ring, which matters once the driver wraps around as it does here. The
    // indices are shared across threads, so both sides access them atomically.
    let (desc_table, avail, used) = (0x1000u64, 0x2000u64, 0x3000u64);
    driver_init_at(&mut t, (desc_table, avail, used));
    let avail_idx = GuestAddress(avail + 2);
    let used_idx = GuestAddress(used + 2);
    let mut bus = crate::bus::Bus::new();
    let transport = Arc::new(Mutex::new(t));
    bus.insert(transport, 0xd000_2000, crate::virtio::MMIO_LEN)
        .unwrap();
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(20);

    std::thread::scope(|s| {
        s.spawn(|| {
            let notify = 0xd000_2000 + regs::QUEUE_NOTIFY;
            for i in 0..REQUESTS {
                // Wait for room in the ring, like a driver with a full queue.
                loop {
                    let used: u16 = mem.load(used_idx, Ordering::Acquire).unwrap();
                    if i.wrapping_sub(used) < MOCK_QUEUE_SIZE || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::yield_now();
                }
                let slot = i % MOCK_QUEUE_SIZE;
                let buf = 0x10000 + u64::from(slot) * 0x100;
                let desc = RawDescriptor::from(SplitDescriptor::new(buf, 16, WRITE, 0));
                let desc_addr = GuestAddress(desc_table + 16 * u64::from(slot));
                mem.write_obj(desc, desc_addr).unwrap();
                let entry = GuestAddress(avail + 4 + 2 * u64::from(slot));
                mem.store(slot, entry, Ordering::Release).unwrap();
                mem.store(i.wrapping_add(1), avail_idx, Ordering::Release)
                    .unwrap();
                assert!(bus.write(notify, &0u32.to_le_bytes()));
            }
        });
        let served = || mem.load::<u16>(used_idx, Ordering::Acquire).unwrap();
        while served() != REQUESTS && Instant::now() < deadline {
            em.run_with_timeout(100).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });

    assert_eq!(
        mem.load::<u16>(used_idx, Ordering::Acquire).unwrap(),
        REQUESTS
    );
    let rng = rng.lock().unwrap();
    assert_eq!(rng.requests_served(), u64::from(REQUESTS));
    assert_eq!(rng.bytes_served(), u64::from(REQUESTS) * 16);
    assert_eq!(rng.bad_descriptors(), 0);
}

/// Records that its eventfd fired: stands in for the VMM's control events (signalfd, exit
/// event) that share the event loop with the devices.
struct Control {
    evt: EventFd,
    seen: Arc<std::sync::atomic::AtomicBool>,
}

impl MutEventSubscriber for Control {
    fn process(&mut self, _events: event_manager::Events, _ops: &mut event_manager::EventOps) {
        let _ = self.evt.read();
        self.seen.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut event_manager::EventOps) {
        ops.add(event_manager::Events::new(
            &self.evt,
            event_manager::EventSet::IN,
        ))
        .unwrap();
    }
}

/// A "vCPU" thread refills a 256-entry ring forever; a control event signalled meanwhile is
/// still dispatched promptly, because each dispatch serves at most BUDGET chains and the
/// device re-kicks itself instead of draining the ring until the guest gives up.
#[test]
fn process_when_driver_refills_forever_then_other_events_still_dispatched() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    const RING: u16 = 256;
    let mem = memory();
    let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(mem.clone(), rng.clone(), irq).unwrap();
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    em.add_subscriber(rng.clone());
    let seen = Arc::new(AtomicBool::new(false));
    let control_evt = EventFd::new(EFD_NONBLOCK).unwrap();
    em.add_subscriber(Arc::new(Mutex::new(Control {
        evt: control_evt.try_clone().unwrap(),
        seen: seen.clone(),
    })));
    let (desc_table, avail, used) = (0x1000u64, 0x2000u64, 0x3000u64);
    driver_init_sized(&mut t, (desc_table, avail, used), RING);
    let avail_idx = GuestAddress(avail + 2);
    let used_idx = GuestAddress(used + 2);
    let transport = Mutex::new(t);
    let stop = AtomicBool::new(false);
    // The flood ends by itself at this deadline, so a device without a budget makes the
    // test fail (control seen late) instead of hang.
    let flood_end = Instant::now() + Duration::from_secs(10);
    let flooding = AtomicBool::new(true);

    let (latency, served_after) = std::thread::scope(|s| {
        s.spawn(|| {
            let mut i: u16 = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < flood_end {
                let used: u16 = mem.load(used_idx, Ordering::Acquire).unwrap();
                if i.wrapping_sub(used) >= RING {
                    std::thread::yield_now();
                    continue;
                }
                let slot = i % RING;
                let buf = 0x10000 + u64::from(slot) * 0x100;
                let desc = RawDescriptor::from(SplitDescriptor::new(buf, 16, WRITE, 0));
                mem.write_obj(desc, GuestAddress(desc_table + 16 * u64::from(slot)))
                    .unwrap();
                let entry = GuestAddress(avail + 4 + 2 * u64::from(slot));
                mem.store(slot, entry, Ordering::Release).unwrap();
                i = i.wrapping_add(1);
                mem.store(i, avail_idx, Ordering::Release).unwrap();
                transport
                    .lock()
                    .unwrap()
                    .write(regs::QUEUE_NOTIFY, &0u32.to_le_bytes());
            }
            flooding.store(false, Ordering::SeqCst);
        });
        let served = || rng.lock().unwrap().requests_served();
        // Let the flood get going (ACTIVATE first, then several budgets' worth).
        while served() < 20 * u64::from(BUDGET) && Instant::now() < flood_end {
            em.run_with_timeout(100).unwrap();
        }
        control_evt.write(1).unwrap();
        let signalled = Instant::now();
        while !seen.load(Ordering::SeqCst) && signalled.elapsed() < Duration::from_secs(15) {
            em.run_with_timeout(100).unwrap();
        }
        let latency = signalled.elapsed();
        let still_flooding = flooding.load(Ordering::SeqCst);
        let before = served();
        for _ in 0..10 {
            em.run_with_timeout(100).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        assert!(still_flooding, "the flood ended before control was served");
        (latency, served() - before)
    });

    assert!(
        seen.load(Ordering::SeqCst),
        "control event never dispatched"
    );
    assert!(
        latency < Duration::from_secs(1),
        "control waited {latency:?}"
    );
    assert!(served_after > 0, "the device stopped serving after control");
}

#[test]
fn process_when_60k_bad_chains_then_logged_bytes_bounded() {
    let cap = crate::ratelimit::capture::install();
    // Rate-limited call sites the flood hits.
    const SITES: usize = 1;
    let mem = memory();
    let q = MockSplitQueue::create(&mem, GuestAddress(0x1000), MOCK_QUEUE_SIZE);
    let (mut rng, _irq) = active_rng(&mem, &q);
    let before = cap.bytes_from("virtio-rng");
    let started = std::time::Instant::now();
    // 60k: the mock's avail index is a u16 it must not wrap.
    for _ in 0..60_000 {
        // A read-only buffer: rejected, returned empty, logged (rate-limited).
        add_chain(&q, 0, &[(0x10000, 16, 0, 0)]);
        rng.process_queue();
    }
    let logged = cap.bytes_from("virtio-rng") - before;
    assert_eq!(rng.bad_descriptors(), 60_000);
    eprintln!("flood: {logged} bytes logged");
    assert!(logged > 0, "nothing was logged");
    // Unthrottled this would be ~5 MB.
    // At most LINES_PER_WINDOW lines (under 200 bytes each) per call site per window.
    let windows = started.elapsed().as_secs() + 2;
    let bound = windows as usize * crate::ratelimit::LINES_PER_WINDOW as usize * 200 * SITES;
    assert!(logged <= bound, "{logged} bytes logged, bound {bound}");
}
