//! Transport tests: register reads, status state machine, queue setup, reset.
//!
//! The device behind the transport is a recording stand-in (pure logic); the queue layout
//! in guest memory comes from virtio-queue's `MockSplitQueue`.

use std::sync::{Arc, Mutex};

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::status::*;
use super::*;
use crate::virtio::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1};
use crate::virtio::{ActivateArgs, ActivateError, VirtioDevice};

const MEM_SIZE: usize = 0x10_0000;
const FEATURE_A: u64 = 1 << 5;

/// What the stand-in device saw of one queue at activation.
#[derive(Debug, Clone, PartialEq)]
struct SeenQueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    event_idx: bool,
}

#[derive(Default)]
struct Recorder {
    activations: Vec<(Vec<SeenQueue>, u64, usize)>,
    resets: usize,
    active: bool,
    config: [u8; 8],
    features: u64,
    fail_activation: bool,
}

impl VirtioDevice for Recorder {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn avail_features(&self) -> u64 {
        self.features
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = self.config.get_mut(offset as usize + i) {
                *slot = *b;
            }
        }
    }
    fn activate(&mut self, args: ActivateArgs) -> Result<(), ActivateError> {
        if self.fail_activation {
            return Err(ActivateError::Device("backend unavailable".into()));
        }
        let seen = args
            .queues
            .iter()
            .map(|q: &Queue| SeenQueue {
                size: q.size(),
                desc: q.desc_table(),
                avail: q.avail_ring(),
                used: q.used_ring(),
                event_idx: q.event_idx_enabled(),
            })
            .collect();
        self.activations
            .push((seen, args.acked_features, args.queue_evts.len()));
        self.active = true;
        Ok(())
    }
    fn reset(&mut self) {
        self.resets += 1;
        self.active = false;
    }
    fn is_activated(&self) -> bool {
        self.active
    }
}

struct Harness {
    mem: GuestMemoryMmap,
    dev: Arc<Mutex<Recorder>>,
    t: MmioTransport,
    irq: Arc<EventFd>,
}

impl Harness {
    fn new() -> Self {
        let dev = Recorder {
            features: VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | FEATURE_A,
            config: [1, 2, 3, 4, 5, 6, 7, 8],
            ..Default::default()
        };
        Self::with_device(dev)
    }

    fn with_device(dev: Recorder) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let t = MmioTransport::new(mem.clone(), dev.clone(), irq.clone()).unwrap();
        Self { mem, dev, t, irq }
    }

    fn r(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn w(&mut self, offset: u64, value: u32) {
        self.t.write(offset, &value.to_le_bytes());
    }

    fn ack_features(&mut self, features: u64) {
        self.w(regs::DRIVER_FEATURES_SEL, 0);
        self.w(regs::DRIVER_FEATURES, features as u32);
        self.w(regs::DRIVER_FEATURES_SEL, 1);
        self.w(regs::DRIVER_FEATURES, (features >> 32) as u32);
    }

    /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK.
    fn negotiate(&mut self, features: u64) {
        self.w(regs::STATUS, ACKNOWLEDGE);
        self.w(regs::STATUS, ACKNOWLEDGE | DRIVER);
        self.ack_features(features);
        self.w(regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    }

    fn setup_queue(&mut self, index: u32, size: u32, layout: (u64, u64, u64)) {
        let (desc, avail, used) = layout;
        self.w(regs::QUEUE_SEL, index);
        self.w(regs::QUEUE_NUM, size);
        self.w(regs::QUEUE_DESC_LOW, desc as u32);
        self.w(regs::QUEUE_DESC_HIGH, (desc >> 32) as u32);
        self.w(regs::QUEUE_DRIVER_LOW, avail as u32);
        self.w(regs::QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
        self.w(regs::QUEUE_DEVICE_LOW, used as u32);
        self.w(regs::QUEUE_DEVICE_HIGH, (used >> 32) as u32);
        self.w(regs::QUEUE_READY, 1);
    }

    /// Queue layouts from MockSplitQueue, one page apart.
    fn layouts(&self) -> [(u64, u64, u64); 2] {
        let q0 = MockSplitQueue::create(&self.mem, GuestAddress(0x1000), 16);
        let q1 = MockSplitQueue::create(&self.mem, GuestAddress(0x2000), 8);
        [q0, q1].map(|q| (q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0))
    }

    /// Full driver initialisation up to DRIVER_OK with valid queues.
    fn init_all(&mut self, features: u64) {
        self.negotiate(features);
        let layouts = self.layouts();
        self.setup_queue(0, 16, layouts[0]);
        self.setup_queue(1, 8, layouts[1]);
        self.w(regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    }
}

#[test]
fn read_when_identification_registers_then_magic_version_and_type() {
    let mut h = Harness::new();
    assert_eq!(h.r(regs::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(h.r(regs::VERSION), 2);
    assert_eq!(h.r(regs::DEVICE_ID), 42);
    assert_eq!(h.r(regs::VENDOR_ID), VENDOR_ID);
    assert_eq!(h.r(regs::STATUS), 0);
}

#[test]
fn device_features_when_paged_then_each_half_and_zero_beyond() {
    let mut h = Harness::new();
    h.w(regs::DEVICE_FEATURES_SEL, 0);
    assert_eq!(
        h.r(regs::DEVICE_FEATURES),
        (VIRTIO_F_EVENT_IDX | FEATURE_A) as u32
    );
    h.w(regs::DEVICE_FEATURES_SEL, 1);
    assert_eq!(h.r(regs::DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
    h.w(regs::DEVICE_FEATURES_SEL, 2);
    assert_eq!(h.r(regs::DEVICE_FEATURES), 0);
}

#[test]
fn status_when_features_ok_without_version1_then_refused() {
    let mut h = Harness::new();
    h.negotiate(FEATURE_A);
    assert_eq!(
        h.r(regs::STATUS),
        ACKNOWLEDGE | DRIVER,
        "FEATURES_OK not set"
    );
    assert_eq!(h.t.acked_features(), FEATURE_A);
}

#[test]
fn driver_features_when_not_offered_or_wrong_status_then_dropped() {
    let mut h = Harness::new();
    // Before DRIVER: ignored.
    h.ack_features(VIRTIO_F_VERSION_1);
    assert_eq!(h.t.acked_features(), 0);
    h.w(regs::STATUS, ACKNOWLEDGE);
    h.w(regs::STATUS, ACKNOWLEDGE | DRIVER);
    h.ack_features(VIRTIO_F_VERSION_1 | (1 << 7) | (1 << 40));
    assert_eq!(h.t.acked_features(), VIRTIO_F_VERSION_1);
    h.w(regs::DRIVER_FEATURES_SEL, 5);
    h.w(regs::DRIVER_FEATURES, u32::MAX);
    assert_eq!(h.t.acked_features(), VIRTIO_F_VERSION_1);
    h.w(regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    // After FEATURES_OK: frozen.
    h.ack_features(VIRTIO_F_VERSION_1 | FEATURE_A);
    assert_eq!(h.t.acked_features(), VIRTIO_F_VERSION_1);
}

#[test]
fn status_when_out_of_order_then_ignored() {
    let mut h = Harness::new();
    h.w(regs::STATUS, DRIVER);
    assert_eq!(h.r(regs::STATUS), 0);
    h.w(regs::STATUS, ACKNOWLEDGE);
    h.w(regs::STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
    assert_eq!(h.r(regs::STATUS), ACKNOWLEDGE);
    h.w(regs::STATUS, ACKNOWLEDGE | DRIVER);
    h.w(regs::STATUS, DRIVER);
    assert_eq!(
        h.r(regs::STATUS),
        ACKNOWLEDGE | DRIVER,
        "clearing bits is refused"
    );
    h.w(regs::STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
    assert_eq!(h.r(regs::STATUS), ACKNOWLEDGE | DRIVER);
    assert!(h.dev.lock().unwrap().activations.is_empty());
}

#[test]
fn status_when_failed_then_recorded_and_no_activation() {
    let mut h = Harness::new();
    h.negotiate(VIRTIO_F_VERSION_1);
    h.w(regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | FAILED);
    assert_eq!(h.r(regs::STATUS) & FAILED, FAILED);
    h.w(
        regs::STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | FAILED | DRIVER_OK,
    );
    assert!(h.dev.lock().unwrap().activations.is_empty());
}

#[test]
fn driver_ok_when_queues_valid_then_device_activated_with_them() {
    let mut h = Harness::new();
    let layouts = h.layouts();
    h.init_all(VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX);

    assert_eq!(
        h.r(regs::STATUS),
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
    );
    let dev = h.dev.lock().unwrap();
    assert_eq!(dev.activations.len(), 1);
    let (queues, acked, evts) = &dev.activations[0];
    assert_eq!(*acked, VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX);
    assert_eq!(*evts, 2);
    let expect = |size, (desc, avail, used)| SeenQueue {
        size,
        desc,
        avail,
        used,
        event_idx: true,
    };
    assert_eq!(queues, &vec![expect(16, layouts[0]), expect(8, layouts[1])]);
}

#[test]
fn queue_registers_when_read_then_reflect_selection() {
    let mut h = Harness::new();
    h.negotiate(VIRTIO_F_VERSION_1);
    h.w(regs::QUEUE_SEL, 1);
    assert_eq!(h.r(regs::QUEUE_NUM_MAX), 8);
    assert_eq!(h.r(regs::QUEUE_READY), 0);
    h.w(regs::QUEUE_NUM, 4);
    h.w(regs::QUEUE_READY, 1);
    assert_eq!(h.r(regs::QUEUE_NUM), 4);
    assert_eq!(h.r(regs::QUEUE_READY), 1);
    h.w(regs::QUEUE_SEL, 0);
    assert_eq!(h.r(regs::QUEUE_NUM_MAX), 16);
    assert_eq!(h.r(regs::QUEUE_READY), 0);
    h.w(regs::QUEUE_SEL, 2);
    assert_eq!(h.r(regs::QUEUE_NUM_MAX), 0, "nonexistent queue");
    h.w(regs::QUEUE_READY, 1); // ignored, no panic
}

#[test]
fn queue_registers_when_written_before_features_ok_then_ignored() {
    let mut h = Harness::new();
    h.w(regs::STATUS, ACKNOWLEDGE);
    h.w(regs::STATUS, ACKNOWLEDGE | DRIVER);
    h.w(regs::QUEUE_SEL, 0);
    h.w(regs::QUEUE_READY, 1);
    h.w(regs::QUEUE_NUM, 2);
    assert_eq!(h.r(regs::QUEUE_READY), 0);
    assert_eq!(h.r(regs::QUEUE_NUM), 16);
}

/// Each case breaks one queue setting; DRIVER_OK must then set DEVICE_NEEDS_RESET.
#[test]
fn driver_ok_when_queue_invalid_then_needs_reset_and_not_activated() {
    type Breaker = fn(&mut Harness);
    let cases: [(&str, Breaker); 7] = [
        ("not ready", |h| {
            h.w(regs::QUEUE_SEL, 1);
            h.w(regs::QUEUE_READY, 0);
        }),
        ("size not a power of two", |h| h.w(regs::QUEUE_NUM, 12)),
        ("size above max", |h| h.w(regs::QUEUE_NUM, 32)),
        ("size zero", |h| h.w(regs::QUEUE_NUM, 0)),
        ("size above 16 bits", |h| h.w(regs::QUEUE_NUM, 0x1_0010)),
        ("misaligned descriptor table", |h| {
            h.w(regs::QUEUE_DESC_LOW, 0x1008)
        }),
        ("used ring outside memory", |h| {
            h.w(regs::QUEUE_DEVICE_HIGH, 1)
        }),
    ];
    for (name, breaker) in cases {
        let mut h = Harness::new();
        h.negotiate(VIRTIO_F_VERSION_1);
        let layouts = h.layouts();
        h.setup_queue(1, 8, layouts[1]);
        h.setup_queue(0, 16, layouts[0]);
        breaker(&mut h);
        h.w(regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);

        assert_eq!(
            h.r(regs::STATUS),
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DEVICE_NEEDS_RESET,
            "{name}"
        );
        assert!(h.dev.lock().unwrap().activations.is_empty(), "{name}");
    }
}

#[test]
fn driver_ok_when_device_activation_fails_then_needs_reset() {
    let mut h = Harness::with_device(Recorder {
        features: VIRTIO_F_VERSION_1,
        fail_activation: true,
        ..Default::default()
    });
    h.init_all(VIRTIO_F_VERSION_1);
    assert_eq!(
        h.r(regs::STATUS) & (DEVICE_NEEDS_RESET | DRIVER_OK),
        DEVICE_NEEDS_RESET
    );
    // Only a reset gets the device out of it.
    h.w(regs::STATUS, 0);
    assert_eq!(h.r(regs::STATUS), 0);
}

#[test]
fn reset_when_status_zero_then_device_reset_and_reactivation_works() {
    let mut h = Harness::new();
    h.init_all(VIRTIO_F_VERSION_1 | FEATURE_A);
    h.t.interrupt().signal_used_queue().unwrap();
    h.t.queue_evts()[0].write(1).unwrap();

    h.w(regs::STATUS, 0);

    assert_eq!(h.dev.lock().unwrap().resets, 1);
    assert_eq!(h.r(regs::STATUS), 0);
    assert_eq!(h.r(regs::INTERRUPT_STATUS), 0);
    assert_eq!(h.t.acked_features(), 0);
    assert_eq!(h.r(regs::QUEUE_READY), 0);
    assert!(
        h.t.queue_evts()[0].read().is_err(),
        "stale notification dropped"
    );

    h.init_all(VIRTIO_F_VERSION_1);
    let dev = h.dev.lock().unwrap();
    assert_eq!(dev.activations.len(), 2);
    assert_eq!(dev.activations[1].1, VIRTIO_F_VERSION_1);
    assert!(!dev.activations[1].0[0].event_idx);
}

#[test]
fn reset_when_never_activated_then_device_not_reset() {
    let mut h = Harness::new();
    h.negotiate(VIRTIO_F_VERSION_1);
    h.w(regs::STATUS, 0);
    assert_eq!(h.dev.lock().unwrap().resets, 0);
    assert_eq!(h.r(regs::STATUS), 0);
}

#[test]
fn queue_notify_when_written_through_bus_then_matching_eventfd_signalled() {
    let mut h = Harness::new();
    h.w(regs::QUEUE_NOTIFY, 1);
    h.w(regs::QUEUE_NOTIFY, 7); // nonexistent: ignored
    assert!(h.t.queue_evts()[0].read().is_err());
    assert_eq!(h.t.queue_evts()[1].read().unwrap(), 1);
    assert_eq!(QUEUE_NOTIFY_OFFSET, regs::QUEUE_NOTIFY);
}

#[test]
fn interrupt_when_signalled_and_acked_then_status_register_follows() {
    let mut h = Harness::new();
    h.t.interrupt().signal_used_queue().unwrap();
    h.t.interrupt().signal_config_change().unwrap();
    assert_eq!(h.irq.read().unwrap(), 2);
    assert_eq!(h.r(regs::INTERRUPT_STATUS), 3);
    assert_eq!(h.r(regs::CONFIG_GENERATION), 1);
    h.w(regs::INTERRUPT_ACK, 1);
    assert_eq!(h.r(regs::INTERRUPT_STATUS), 2);
}

#[test]
fn config_space_when_accessed_then_device_sees_relative_offset() {
    let mut h = Harness::new();
    let mut two = [0u8; 2];
    h.t.read(regs::CONFIG + 2, &mut two);
    assert_eq!(two, [3, 4]);
    h.t.write(regs::CONFIG + 6, &[0xaa]);
    assert_eq!(h.dev.lock().unwrap().config[6], 0xaa);
    let mut past = [0xffu8; 4];
    h.t.read(regs::CONFIG + 0x100, &mut past);
    assert_eq!(past, [0; 4]);
}

#[test]
fn access_when_bad_width_alignment_or_read_only_then_ignored() {
    let mut h = Harness::new();
    let mut two = [0xffu8; 2];
    h.t.read(regs::MAGIC_VALUE, &mut two);
    assert_eq!(two, [0, 0]);
    let mut four = [0xffu8; 4];
    h.t.read(regs::MAGIC_VALUE + 1, &mut four);
    assert_eq!(four, [0; 4]);
    h.t.write(regs::STATUS, &[ACKNOWLEDGE as u8]);
    h.t.write(regs::STATUS + 2, &ACKNOWLEDGE.to_le_bytes());
    assert_eq!(h.r(regs::STATUS), 0);
    h.w(regs::MAGIC_VALUE, 0);
    h.w(regs::DEVICE_ID, 7);
    h.w(0x0f0, 1);
    assert_eq!(h.r(regs::MAGIC_VALUE), MAGIC_VALUE);
    assert_eq!(h.r(regs::DEVICE_ID), 42);
    assert_eq!(h.r(0x0f0), 0);
}

#[test]
fn new_when_device_lacks_version1_or_bad_queue_size_then_error() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let legacy = Arc::new(Mutex::new(Recorder::default()));
    let err = MmioTransport::new(mem.clone(), legacy, irq.clone()).unwrap_err();
    assert!(matches!(err, TransportError::MissingVersion1(42)), "{err}");

    struct OddQueue;
    impl VirtioDevice for OddQueue {
        fn device_type(&self) -> u32 {
            1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[256, 100]
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1
        }
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, _: ActivateArgs) -> Result<(), ActivateError> {
            Ok(())
        }
        fn reset(&mut self) {}
        fn is_activated(&self) -> bool {
            false
        }
    }
    let err = MmioTransport::new(mem, Arc::new(Mutex::new(OddQueue)), irq).unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::CreateQueue {
                index: 1,
                max_size: 100,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn kernel_cmdline_arg_when_formatted_then_linux_syntax() {
    assert_eq!(
        kernel_cmdline_arg(0xd000_2000, 10),
        "virtio_mmio.device=4K@0xd0002000:10"
    );
}

#[test]
fn shm_registers_when_probed_then_no_region() {
    let mut h = Harness::new();
    h.w(regs::SHM_SEL, 0);
    assert_eq!(h.r(regs::SHM_LEN_LOW), u32::MAX);
    assert_eq!(h.r(regs::SHM_LEN_HIGH), u32::MAX);
}

#[test]
fn queue_ready_when_cleared_after_driver_ok_then_reads_zero_and_device_stays_active() {
    let mut h = Harness::new();
    h.init_all(VIRTIO_F_VERSION_1);
    h.w(regs::QUEUE_SEL, 1);
    assert_eq!(h.r(regs::QUEUE_READY), 1);
    h.w(regs::QUEUE_READY, 0);
    assert_eq!(h.r(regs::QUEUE_READY), 0);
    h.w(regs::QUEUE_READY, 1);
    assert_eq!(
        h.r(regs::QUEUE_READY),
        0,
        "enabling after DRIVER_OK is refused"
    );
    assert!(h.dev.lock().unwrap().active);
}

#[test]
fn write_when_100k_bad_register_writes_then_logged_bytes_bounded() {
    let cap = crate::ratelimit::capture::install();
    // Rate-limited call sites the flood hits.
    const SITES: usize = 2;
    let mut h = Harness::new();
    let before = cap.bytes_matching("virtio-mmio");
    let started = std::time::Instant::now();
    for i in 0..100_000u32 {
        // Read-only register, then DriverFeatures in the wrong status: two limited sites.
        h.w(regs::MAGIC_VALUE, i);
        h.w(regs::DRIVER_FEATURES, i);
    }
    let logged = cap.bytes_matching("virtio-mmio") - before;
    eprintln!("flood: {logged} bytes logged");
    assert!(logged > 0, "nothing was logged");
    // Unthrottled this would be ~19 MB.
    // At most LINES_PER_WINDOW lines (under 200 bytes each) per call site per window.
    let windows = started.elapsed().as_secs() + 2;
    let bound = windows as usize * crate::ratelimit::LINES_PER_WINDOW as usize * 200 * SITES;
    assert!(logged <= bound, "{logged} bytes logged, bound {bound}");
}
