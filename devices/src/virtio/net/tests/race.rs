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
    rx_race(true);
}

#[test]
fn rx_when_driver_and_host_race_event_loop_with_no_notify_flag_then_every_frame_arrives() {
    rx_race(false);
}

/// Whether a driver that just moved its avail index from `old` to `new` must kick: with
/// EVENT_IDX when it passed `avail_event`, else when the used ring's flags allow it.
fn must_kick(mem: &GuestMemoryMmap, used_ring: u64, event_idx: bool, new: u16, old: u16) -> bool {
    fence(Ordering::SeqCst);
    if event_idx {
        let at = GuestAddress(used_ring + 4 + 8 * u64::from(SIZE));
        let event: u16 = mem.load(at, Ordering::Acquire).unwrap();
        vring_need_event(event, new, old)
    } else {
        let flags: u16 = mem
            .load(GuestAddress(used_ring), Ordering::Acquire)
            .unwrap();
        flags & 1 == 0 // VRING_USED_F_NO_NOTIFY
    }
}

fn rx_race(event_idx: bool) {
    let features = if event_idx { V1 | EVENT_IDX } else { V1 };
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
    driver_init_at(&mut t, [RX, TX], SIZE, features);
    let avail_idx = GuestAddress(RX.1 + 2);
    let used_idx = GuestAddress(RX.2 + 2);
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
                if must_kick(&mem, RX.2, event_idx, *avail, old) {
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
        // The deadline also ends the loop if a thread panicked before setting `done`.
        while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
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

#[test]
fn tx_when_driver_races_event_loop_with_event_idx_then_every_frame_sent_in_order() {
    tx_race(true);
}

#[test]
fn tx_when_driver_races_event_loop_with_no_notify_flag_then_every_frame_sent_in_order() {
    tx_race(false);
}

/// The driver keeps the transmit ring full of numbered frames and recycles what the device
/// returns; the host side must get every frame exactly once, in order.
fn tx_race(event_idx: bool) {
    let features = if event_idx { V1 | EVENT_IDX } else { V1 };
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
    driver_init_at(&mut t, [RX, TX], SIZE, features);
    let done = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent_to_host = Vec::new();

    std::thread::scope(|s| {
        s.spawn(|| {
            let mut avail: u16 = 0;
            let mut seen: u16 = 0;
            let mut free: Vec<u16> = (0..SIZE).rev().collect();
            let mut next_seq = 0u32;
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                let used: u16 = mem.load(GuestAddress(TX.2 + 2), Ordering::Acquire).unwrap();
                while seen != used {
                    let at = GuestAddress(TX.2 + 4 + 8 * u64::from(seen % SIZE));
                    let e: VirtqUsedElem = mem.read_obj(at).unwrap();
                    free.push(e.id() as u16);
                    seen = seen.wrapping_add(1);
                }
                let old = avail;
                while next_seq < FRAMES {
                    let Some(desc) = free.pop() else { break };
                    let buf = BUFS + 0x10_0000 + u64::from(desc) * 0x1000;
                    let frame = numbered_frame(next_seq);
                    mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(buf))
                        .unwrap();
                    mem.write_slice(&frame, GuestAddress(buf + VNET_HDR_LEN as u64))
                        .unwrap();
                    let len = (VNET_HDR_LEN + frame.len()) as u32;
                    let d = RawDescriptor::from(SplitDescriptor::new(buf, len, 0, 0));
                    mem.write_obj(d, GuestAddress(TX.0 + 16 * u64::from(desc)))
                        .unwrap();
                    let slot = GuestAddress(TX.1 + 4 + 2 * u64::from(avail % SIZE));
                    mem.store(desc, slot, Ordering::Release).unwrap();
                    avail = avail.wrapping_add(1);
                    next_seq += 1;
                }
                if avail == old {
                    std::thread::yield_now();
                    continue;
                }
                mem.store(avail, GuestAddress(TX.1 + 2), Ordering::Release)
                    .unwrap();
                if must_kick(&mem, TX.2, event_idx, avail, old) {
                    t.write(regs::QUEUE_NOTIFY, &(TX_QUEUE as u32).to_le_bytes());
                }
            }
        });
        s.spawn(|| {
            let mut buf = vec![0u8; 4096];
            while sent_to_host.len() < FRAMES as usize && Instant::now() < deadline {
                match host.sock.recv(&mut buf) {
                    Ok(n) => {
                        let seq = &buf[VNET_HDR_LEN + 14..VNET_HDR_LEN + 18];
                        let seq = u32::from_le_bytes(seq.try_into().unwrap());
                        sent_to_host.push((seq, n == VNET_HDR_LEN + numbered_frame(seq).len()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                    Err(e) => panic!("host recv: {e}"),
                }
            }
            done.store(true, Ordering::Relaxed);
        });
        // The deadline also ends the loop if a thread panicked before setting `done`.
        while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
            em.run_with_timeout(100).unwrap();
        }
    });

    let stats = net.lock().unwrap().stats();
    assert_eq!(
        sent_to_host.len(),
        FRAMES as usize,
        "stalled: a kick was lost ({stats:?})"
    );
    assert!(
        sent_to_host.iter().map(|f| f.0).eq(0..FRAMES),
        "frames out of order"
    );
    assert!(
        sent_to_host.iter().all(|f| f.1),
        "a frame arrived with the wrong length"
    );
    let s = net.lock().unwrap().stats();
    assert_eq!(
        (s.tx_packets, s.tx_dropped, s.bad_descriptors),
        (u64::from(FRAMES), 0, 0)
    );
}
