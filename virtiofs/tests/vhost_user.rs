//! The VMM's virtio-fs frontend against tinyvmm's vhost-user-fs daemon, over a real unix
//! socket, with memfd-backed guest memory (as the VMM has) and rings laid out by virtio-queue's
//! `MockSplitQueue` (playing the guest driver). No KVM involved.
//!
//! These tests check the transport path: handshake, memory table and rings handed over, a
//! request chain served and returned to the used ring, the interrupt raised through the call
//! eventfd hop, reset (GET_VRING_BASE) and re-activation, and the daemon ending when the
//! frontend goes away; the FUSE_INIT reply proves the server read the request through the
//! daemon's mapping of guest memory. FUSE semantics are the server's own tests.

use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::virtio::features::VIRTIO_F_VERSION_1;
use devices::virtio::fs::Fs;
use devices::virtio::{
    device_type, ActivateArgs, VirtioDevice, VirtioInterrupt, INTERRUPT_STATUS_USED_RING,
};
use event_manager::{EventManager, SubscriberOps};
use virtio_queue::desc::split::{Descriptor as SplitDescriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use virtiofs::daemon::{self, DaemonError, DaemonShare, SandboxMode};
use virtiofs::ShareOptions;

const WRITE: u16 = 2;
const EVENT_IDX: u64 = 1 << 29;
const NEXT: u16 = 1;
const TIMEOUT: Duration = Duration::from_secs(10);

struct Harness {
    _dir: tempfile::TempDir,
    fs: Arc<Mutex<Fs>>,
    events: EventManager<Arc<Mutex<Fs>>>,
    irq: Arc<EventFd>,
    daemon: mpsc::Receiver<Result<(), DaemonError>>,
}

/// A daemon serving a real temp directory on a listening socket, and a connected frontend.
fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello"), b"hi").unwrap();
    let socket = dir.path().join("fs.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let (tx, daemon) = mpsc::channel();
    std::thread::spawn(move || {
        let shares = vec![DaemonShare {
            tag: "data".into(),
            listener,
            options: ShareOptions::new(share, false),
        }];
        let _ = tx.send(daemon::serve(shares, SandboxMode::None));
    });
    // The listener exists before the daemon runs: connect cannot race it.
    let fs = Arc::new(Mutex::new(Fs::connect("data", &socket).unwrap()));
    let mut events = EventManager::<Arc<Mutex<Fs>>>::new().unwrap();
    events.add_subscriber(fs.clone());
    Harness {
        _dir: dir,
        fs,
        events,
        irq: Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()),
        daemon,
    }
}

/// Guest RAM as the VMM makes it: one memfd, MAP_SHARED.
fn guest_memory() -> GuestMemoryMmap {
    arch::memory::create_guest_memory(16 << 20, false).unwrap()
}

/// Guest-side view of one activation: the two mock queues and their kick eventfds.
struct Rings<'a> {
    queues: Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
    kicks: Vec<EventFd>,
    interrupt: Arc<VirtioInterrupt>,
}

/// Lays out hiprio + request queues at `base` and activates the device on them.
fn activate<'a>(mem: &'a GuestMemoryMmap, h: &mut Harness, base: u64) -> Rings<'a> {
    activate_with(mem, h, base, VIRTIO_F_VERSION_1)
}

/// [`activate`] with the driver acknowledging `acked` (the transport turns EVENT_IDX on in
/// the queues it hands over).
fn activate_with<'a>(
    mem: &'a GuestMemoryMmap,
    h: &mut Harness,
    base: u64,
    acked: u64,
) -> Rings<'a> {
    let queues: Vec<_> = (0..2u64)
        .map(|i| MockSplitQueue::create(mem, GuestAddress(base + i * 0x10_0000), 16))
        .collect();
    let kicks: Vec<_> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let interrupt = Arc::new(VirtioInterrupt::new(h.irq.clone()));
    let args = ActivateArgs {
        mem: mem.clone(),
        queues: queues
            .iter()
            .map(|q| {
                let mut queue = q.create_queue::<Queue>().unwrap();
                queue.set_event_idx(acked & EVENT_IDX != 0);
                queue
            })
            .collect(),
        queue_evts: kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
        interrupt: interrupt.clone(),
        acked_features: acked,
    };
    h.fs.lock().unwrap().activate(args).unwrap();
    // Let the event loop register the call eventfds (the ACTIVATE event).
    h.events.run_with_timeout(1000).unwrap();
    Rings {
        queues,
        kicks,
        interrupt,
    }
}

/// Runs the event loop until the irq eventfd fires.
fn wait_for_interrupt(events: &mut EventManager<Arc<Mutex<Fs>>>, irq: &EventFd) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if irq.read().is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "no interrupt within {TIMEOUT:?}");
        events.run_with_timeout(100).unwrap();
    }
}

/// Publishes a request chain (readable request + writable reply buffer) on `q` at `at`.
fn add_request(mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>, at: u16, buf: u64) {
    // FUSE_INIT: fuse_in_header (len, opcode 26, unique 1) + fuse_init_in (major 7, minor 36).
    let mut req = [0u8; 56];
    req[0..4].copy_from_slice(&56u32.to_le_bytes());
    req[4..8].copy_from_slice(&26u32.to_le_bytes());
    req[8..16].copy_from_slice(&1u64.to_le_bytes());
    req[40..44].copy_from_slice(&7u32.to_le_bytes());
    req[44..48].copy_from_slice(&36u32.to_le_bytes());
    mem.write_slice(&req, GuestAddress(buf)).unwrap();
    let descs: Vec<RawDescriptor> = vec![
        SplitDescriptor::new(buf, 56, NEXT, at + 1).into(),
        SplitDescriptor::new(buf + 0x1000, 0x1000, WRITE, 0).into(),
    ];
    q.add_desc_chains(&descs, at).unwrap();
}

/// Publishes a FUSE_FORGET (nodeid 1, nlookup 1; no reply) on `q` at `at`, as hiprio carries.
fn add_forget(mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>, at: u16, buf: u64) {
    let mut req = [0u8; 48];
    req[0..4].copy_from_slice(&48u32.to_le_bytes());
    req[4..8].copy_from_slice(&2u32.to_le_bytes());
    req[8..16].copy_from_slice(&2u64.to_le_bytes());
    req[16..24].copy_from_slice(&1u64.to_le_bytes());
    req[40..48].copy_from_slice(&1u64.to_le_bytes());
    mem.write_slice(&req, GuestAddress(buf)).unwrap();
    let descs: Vec<RawDescriptor> = vec![SplitDescriptor::new(buf, 48, 0, 0).into()];
    q.add_desc_chains(&descs, at).unwrap();
}

/// Checks the FUSE_INIT reply the server wrote at `buf` for a used-ring entry of `len` bytes:
/// fuse_out_header { len, error 0, unique 1 } followed by fuse_init_out with major 7.
fn assert_init_reply(mem: &GuestMemoryMmap, buf: u64, len: u32) {
    let mut out = [0u8; 24];
    mem.read_slice(&mut out, GuestAddress(buf + 0x1000))
        .unwrap();
    let word = |at: usize| u32::from_le_bytes(out[at..at + 4].try_into().unwrap());
    assert_eq!(word(0), len, "out header len equals the used length");
    assert!(len >= 16 + 8, "header and at least major/minor: {len}");
    assert_eq!(word(4), 0, "no error");
    assert_eq!(
        u64::from_le_bytes(out[8..16].try_into().unwrap()),
        1,
        "unique"
    );
    assert_eq!(word(16), 7, "FUSE major version");
}

fn used(q: &MockSplitQueue<GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let n = q.used().idx().load();
    (0..n)
        .map(|i| {
            let e: VirtqUsedElem = q.used().ring().ref_at(usize::from(i)).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

#[test]
fn frontend_when_connected_then_offers_backend_features_and_tag_config() {
    let h = harness();
    let fs = h.fs.lock().unwrap();

    let mut config = [0u8; 40];
    fs.read_config(0, &mut config);

    assert_eq!(fs.device_type(), device_type::FS);
    assert_eq!(fs.queue_max_sizes(), &[1024, 1024]);
    let features = fs.avail_features();
    assert_ne!(features & VIRTIO_F_VERSION_1, 0);
    assert_ne!(features & (1 << 29), 0, "EVENT_IDX passed through");
    assert_ne!(features & (1 << 28), 0, "INDIRECT_DESC passed through");
    assert_eq!(
        features & (1 << 30),
        0,
        "PROTOCOL_FEATURES is not a guest feature"
    );
    assert_eq!(&config[..4], b"data");
    assert!(config[4..36].iter().all(|b| *b == 0));
    assert_eq!(u32::from_le_bytes(config[36..40].try_into().unwrap()), 1);
}

#[test]
fn request_when_kicked_then_backend_returns_chain_and_interrupt_is_raised() {
    let mut h = harness();
    let irq = h.irq.clone();
    let mem = guest_memory();
    let rings = activate(&mem, &mut h, 0x10_0000);

    add_request(&mem, &rings.queues[1], 0, 0x80_0000);
    rings.kicks[1].write(1).unwrap();
    wait_for_interrupt(&mut h.events, &irq);

    let returned = used(&rings.queues[1]);
    assert_eq!(returned.len(), 1, "the request chain came back");
    assert_eq!(returned[0].0, 0, "with its head index");
    assert_init_reply(&mem, 0x80_0000, returned[0].1);
    assert_ne!(rings.interrupt.status() & INTERRUPT_STATUS_USED_RING, 0);
    assert!(used(&rings.queues[0]).is_empty(), "hiprio untouched");
}

#[test]
fn request_when_event_idx_negotiated_then_served_and_interrupt_raised_when_guest_asks() {
    let mut h = harness();
    let irq = h.irq.clone();
    let mem = guest_memory();
    let rings = activate_with(&mem, &mut h, 0x10_0000, VIRTIO_F_VERSION_1 | EVENT_IDX);

    // used_event 0: interrupt once the used index moves past 0.
    add_request(&mem, &rings.queues[1], 0, 0x80_0000);
    rings.kicks[1].write(1).unwrap();
    wait_for_interrupt(&mut h.events, &irq);

    let returned = used(&rings.queues[1]);
    assert_eq!(returned.len(), 1);
    assert_init_reply(&mem, 0x80_0000, returned[0].1);
}

#[test]
fn reset_when_reactivated_then_new_rings_are_served() {
    let mut h = harness();
    let irq = h.irq.clone();
    let mem = guest_memory();
    {
        let rings = activate(&mem, &mut h, 0x10_0000);
        add_request(&mem, &rings.queues[1], 0, 0x80_0000);
        rings.kicks[1].write(1).unwrap();
        wait_for_interrupt(&mut h.events, &irq);
        assert_eq!(used(&rings.queues[1]).len(), 1);
    }
    h.fs.lock().unwrap().reset();
    assert!(!h.fs.lock().unwrap().is_activated());

    // Driver reload: fresh rings elsewhere, fresh kick eventfds.
    let rings = activate(&mem, &mut h, 0x40_0000);
    add_request(&mem, &rings.queues[1], 0, 0x90_0000);
    add_forget(&mem, &rings.queues[0], 0, 0xa0_0000);
    rings.kicks[0].write(1).unwrap();
    rings.kicks[1].write(1).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while used(&rings.queues[0]).len() + used(&rings.queues[1]).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "both queues served after re-activation"
        );
        h.events.run_with_timeout(100).unwrap();
    }

    // The reset ended the first session, so the new driver instance's INIT succeeds; the
    // FORGET on hiprio is consumed without a reply.
    assert_init_reply(&mem, 0x90_0000, used(&rings.queues[1])[0].1);
    assert_eq!(used(&rings.queues[0]), vec![(0, 0)]);
    assert!(!h.fs.lock().unwrap().is_broken());
}

#[test]
fn frontend_when_dropped_then_daemon_returns_ok() {
    let mut h = harness();
    let mem = guest_memory();
    let _ = activate(&mem, &mut h, 0x10_0000);
    let Harness {
        fs, events, daemon, ..
    } = h;
    drop(events);
    drop(fs);

    let result = daemon.recv_timeout(TIMEOUT).expect("daemon still running");

    assert!(result.is_ok(), "{result:?}");
}

#[test]
fn connect_when_backend_hangs_up_then_error_names_the_failed_step() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fs.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let closer = std::thread::spawn(move || {
        // A peer that accepts and closes at once (a backend that died on start).
        drop(listener.accept().unwrap());
    });

    let err = Fs::connect("data", &socket).unwrap_err();

    closer.join().unwrap();
    assert!(
        matches!(
            err,
            devices::virtio::fs::FsError::SetOwner(_)
                | devices::virtio::fs::FsError::GetFeatures(_)
        ),
        "{err:?}"
    );
}

#[test]
fn request_queue_when_guest_corrupts_avail_index_then_hiprio_still_served_and_reset_recovers() {
    let mut h = harness();
    let irq = h.irq.clone();
    let mem = guest_memory();
    let rings = activate(&mem, &mut h, 0x10_0000);
    // A hostile driver: the request queue's available index is 40 entries ahead of a
    // 16-entry ring.
    add_request(&mem, &rings.queues[1], 0, 0x80_0000);
    rings.queues[1].avail().idx().store(40);
    rings.kicks[1].write(1).unwrap();

    add_request(&mem, &rings.queues[0], 0, 0x90_0000);
    rings.kicks[0].write(1).unwrap();
    wait_for_interrupt(&mut h.events, &irq);

    let hiprio = used(&rings.queues[0]);
    assert_eq!(hiprio.len(), 1, "hiprio served");
    assert_init_reply(&mem, 0x90_0000, hiprio[0].1);
    assert!(
        used(&rings.queues[1]).is_empty(),
        "the corrupt ring is stalled"
    );
    assert!(!h.fs.lock().unwrap().is_broken());
}
