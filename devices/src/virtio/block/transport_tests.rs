//! virtio-blk behind the real virtio-mmio transport and event manager (the VMM's wiring).

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::tests::{memory, Image, DATA, HDR, NEXT, OK, QSIZE, STATUS, WRITE};
use super::{Block, CacheMode};
use crate::bus::BusDevice;
use crate::virtio::features::VIRTIO_F_VERSION_1;
use crate::virtio::mmio::{regs, status::*};
use crate::virtio::{MmioTransport, VirtioDevice};

/// The path the VMM wires: transport (vCPU side) and the Block in the event manager;
/// QueueNotify through the transport, the request served on the event loop, a reset, and a
/// second activation with fresh rings.
#[test]
fn notify_when_written_through_transport_then_event_loop_serves_request_and_survives_reset() {
    let img = Image::new();
    let mem = memory();
    let blk = Block::new(img.open(false, CacheMode::Writeback).unwrap(), Some("t")).unwrap();
    let blk = Arc::new(Mutex::new(blk));
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(mem.clone(), blk.clone(), irq.clone()).unwrap();
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    em.add_subscriber(blk.clone());
    let init = |t: &mut MmioTransport, q: &MockSplitQueue<GuestMemoryMmap>| {
        let mut w = |offset: u64, value: u32| t.write(offset, &value.to_le_bytes());
        w(regs::STATUS, ACKNOWLEDGE);
        w(regs::STATUS, ACKNOWLEDGE | DRIVER);
        w(regs::DRIVER_FEATURES_SEL, 1);
        w(regs::DRIVER_FEATURES, (VIRTIO_F_VERSION_1 >> 32) as u32);
        w(regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        w(regs::QUEUE_SEL, 0);
        w(regs::QUEUE_NUM, u32::from(QSIZE));
        w(regs::QUEUE_DESC_LOW, q.desc_table_addr().0 as u32);
        w(regs::QUEUE_DRIVER_LOW, q.avail_addr().0 as u32);
        w(regs::QUEUE_DEVICE_LOW, q.used_addr().0 as u32);
        w(regs::QUEUE_READY, 1);
        w(regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    };
    let read_request = |q: &MockSplitQueue<GuestMemoryMmap>, sector: u64| {
        let mut raw = [0u8; 16];
        raw[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(HDR)).unwrap();
        let descs: Vec<RawDescriptor> = vec![
            SplitDescriptor::new(HDR, 16, NEXT, 1).into(),
            SplitDescriptor::new(DATA, 512, WRITE | NEXT, 2).into(),
            SplitDescriptor::new(STATUS, 1, WRITE, 0).into(),
        ];
        q.add_desc_chains(&descs, 0).unwrap();
    };
    let served = |q: &MockSplitQueue<GuestMemoryMmap>| q.used().idx().load();

    let q = MockSplitQueue::create(&mem, GuestAddress(0x1000), QSIZE);
    init(&mut t, &q);
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1, "ACTIVATE");
    read_request(&q, 2);
    t.write(regs::QUEUE_NOTIFY, &0u32.to_le_bytes());
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1, "PROCESS_QUEUE_0");
    assert_eq!(served(&q), 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), OK);
    let mut data = vec![0u8; 512];
    mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    assert_eq!(data, img.contents()[1024..1536]);
    assert_eq!(irq.read().unwrap(), 1);

    t.write(regs::STATUS, &0u32.to_le_bytes());
    assert!(!blk.lock().unwrap().is_activated());
    em.run_with_timeout(1000).unwrap();

    let q2 = MockSplitQueue::create(&mem, GuestAddress(0x8000), QSIZE);
    read_request(&q2, 5);
    init(&mut t, &q2);
    for _ in 0..3 {
        if served(&q2) == 1 {
            break;
        }
        em.run_with_timeout(200).unwrap();
    }
    assert_eq!(served(&q2), 1);
    mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    assert_eq!(data, img.contents()[2560..3072]);
}
