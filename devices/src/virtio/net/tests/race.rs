//! A driver thread and the host side race the event loop, the way a vCPU, the TAP and the
//! event thread do in the VMM. The driver suppresses kicks exactly as Linux does with
//! EVENT_IDX (it kicks only when its new avail index passes the device's `avail_event`), so
//! a device that forgets to re-arm `avail_event` before waiting for buffers stalls here.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use event_manager::SubscriberOps;

use super::events::{driver_init_at, Em};
use super::*;
use crate::bus::BusDevice;
use crate::virtio::mmio::regs;
use crate::virtio::MmioTransport;

const SIZE: u16 = 16;
const FRAMES: u32 = 3000;
/// Receive rings a page apart (MockSplitQueue's own layout overlaps its rings).
const RX: (u64, u64, u64) = (0x1000, 0x2000, 0x3000);
const TX: (u64, u64, u64) = (0x5000, 0x6000, 0x7000);

fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Frame `seq`: an Ethernet header, then the sequence number, padded to 60..=187 bytes.
fn numbered_frame(seq: u32) -> Vec<u8> {
    let mut f = test_frame(60 + (seq % 128) as usize, seq as u8);
    f[14..18].copy_from_slice(&seq.to_le_bytes());
    f
}

/// Posts descriptor `desc` (a 2 KiB device-writable buffer) as avail entry `idx`.
fn post(mem: &GuestMemoryMmap, desc: u16, idx: u16) {
    let buf = BUFS + u64::from(desc) * 0x1000;
    let d = RawDescriptor::from(SplitDescriptor::new(buf, 2048, WRITE, 0));
    mem.write_obj(d, GuestAddress(RX.0 + 16 * u64::from(desc)))
        .unwrap();
    let slot = GuestAddress(RX.1 + 4 + 2 * u64::from(idx % SIZE));
    mem.store(desc, slot, Ordering::Release).unwrap();
}

#[test]
fn rx_when_driver_and_host_race_event_loop_with_event_idx_then_every_frame_arrives_in_order() {
    let mem = memory();
    let (net, host) = pair_net();
    let net = Arc::new(Mutex::new(net));
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(mem.clone(), net.clone(), irq).unwrap();
    let mut em = Em::new().unwrap();
    em.add_subscriber(net.clone());
    for q in [RX, TX] {
        for addr in [q.1, q.2] {
            mem.write_slice(&[0u8; 0x200], GuestAddress(addr)).unwrap();
        }
    }
    driver_init_at(&mut t, [RX, TX], SIZE, V1 | EVENT_IDX);
    let avail_idx = GuestAddress(RX.1 + 2);
    let used_idx = GuestAddress(RX.2 + 2);
    let avail_event = GuestAddress(RX.2 + 4 + 8 * u64::from(SIZE));
    let done = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut received = Vec::new();
    let mut kicks = 0u32;

    std::thread::scope(|s| {
        // The host side: frames as fast as the socket takes them.
        s.spawn(|| {
            for seq in 0..FRAMES {
                let mut msg = vec![0u8; VNET_HDR_LEN];
                msg.extend(numbered_frame(seq));
                while let Err(e) = host.sock.send(&msg) {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
                    if done.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::yield_now();
                }
            }
        });
        // The driver: fill the ring, then recycle each used buffer and kick when asked.
        s.spawn(|| {
            let mut avail: u16 = 0;
            let mut seen: u16 = 0;
            let notify = |t: &mut MmioTransport| {
                t.write(regs::QUEUE_NOTIFY, &(RX_QUEUE as u32).to_le_bytes())
            };
            let mut publish = |t: &mut MmioTransport, descs: &[u16], avail: &mut u16| {
                let old = *avail;
                for &d in descs {
                    post(&mem, d, *avail);
                    *avail = avail.wrapping_add(1);
                }
                mem.store(*avail, avail_idx, Ordering::Release).unwrap();
                fence(Ordering::SeqCst);
                let event: u16 = mem.load(avail_event, Ordering::Acquire).unwrap();
                if vring_need_event(event, *avail, old) {
                    kicks += 1;
                    notify(t);
                }
            };
            publish(&mut t, &(0..SIZE).collect::<Vec<_>>(), &mut avail);
            while received.len() < FRAMES as usize && Instant::now() < deadline {
                let used: u16 = mem.load(used_idx, Ordering::Acquire).unwrap();
                let mut recycled = Vec::new();
                while seen != used {
                    let at = GuestAddress(RX.2 + 4 + 8 * u64::from(seen % SIZE));
                    let e: VirtqUsedElem = mem.read_obj(at).unwrap();
                    let buf = BUFS + u64::from(e.id()) * 0x1000;
                    let frame = read_mem(&mem, buf + VNET_HDR_LEN as u64, 18);
                    received.push(u32::from_le_bytes(frame[14..18].try_into().unwrap()));
                    recycled.push(e.id() as u16);
                    seen = seen.wrapping_add(1);
                }
                if recycled.is_empty() {
                    std::thread::yield_now();
                } else {
                    publish(&mut t, &recycled, &mut avail);
                }
            }
            done.store(true, Ordering::Relaxed);
        });
        while !done.load(Ordering::Relaxed) {
            em.run_with_timeout(100).unwrap();
        }
    });

    assert_eq!(received.len(), FRAMES as usize, "stalled: a kick was lost");
    assert!(
        received.iter().copied().eq(0..FRAMES),
        "frames out of order"
    );
    let s = net.lock().unwrap().stats();
    assert_eq!(
        (s.rx_packets, s.rx_dropped, s.bad_descriptors),
        (u64::from(FRAMES), 0, 0)
    );
    assert!(
        kicks < FRAMES,
        "EVENT_IDX suppressed no kick ({kicks} kicks)"
    );
}
