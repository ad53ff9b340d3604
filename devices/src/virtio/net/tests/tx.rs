//! Transmit path: guest chains to host frames.

use super::*;

const HDR: usize = VNET_HDR_LEN;

/// Writes "header + frame" at `addr` in guest memory.
fn put_packet(mem: &GuestMemoryMmap, addr: u64, hdr: &[u8; HDR], frame: &[u8]) {
    mem.write_slice(hdr, GuestAddress(addr)).unwrap();
    mem.write_slice(frame, GuestAddress(addr + HDR as u64))
        .unwrap();
}

#[test]
fn tx_when_good_chain_then_header_and_frame_reach_host_in_one_message() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    let (irq, _) = activate(&mut net, &mem, &r, V1);
    let mut hdr = [0u8; HDR];
    hdr[0] = 1; // NEEDS_CSUM, passed through for the TAP to act on
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    let frame = test_frame(300, 1);
    put_packet(&mem, BUFS, &hdr, &frame);
    // Header and the first bytes in one buffer, the rest in a second one.
    add_chain(
        &r.tx,
        0,
        &[
            (BUFS, 100, NEXT, 1),
            (BUFS + 100, (HDR + 300 - 100) as u32, 0, 0),
        ],
    );

    let out = net.process_tx();

    assert_eq!(
        out,
        TxOutcome {
            used: 1,
            notified: true,
            more: false
        }
    );
    let msg = host.recv().expect("one frame");
    assert_eq!(&msg[..HDR], &hdr);
    assert_eq!(&msg[HDR..], &frame[..]);
    assert_eq!(host.recv(), None);
    assert_eq!(used(&mem, &r.tx), vec![(0, 0)]);
    assert_eq!(irq_count(&irq), 1);
    let s = net.stats();
    assert_eq!((s.tx_packets, s.tx_bytes, s.tx_dropped), (1, 300, 0));
}

#[test]
fn tx_when_indirect_chain_then_sent() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    activate(&mut net, &mem, &r, V1);
    // add_indirect lays out n buffers of `len` bytes at BUFS + 0x80000 + i * 0x100.
    add_indirect(&mem, &r.tx, 0, 0x7_0000, 3, (0x100, 0));
    net.process_tx();
    let msg = host.recv().expect("one frame");
    assert_eq!(msg.len(), 0x300);
    assert_eq!(net.stats().bad_descriptors, 0);
}

#[test]
fn tx_when_largest_frame_then_sent() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    activate(&mut net, &mem, &r, V1);
    let frame = test_frame(MAX_FRAME_LEN, 2);
    put_packet(&mem, BUFS, &[0; HDR], &frame);
    add_chain(&r.tx, 0, &[(BUFS, (HDR + MAX_FRAME_LEN) as u32, 0, 0)]);
    net.process_tx();
    assert_eq!(host.recv().map(|m| m.len()), Some(HDR + MAX_FRAME_LEN));
}

#[test]
fn tx_when_host_refuses_then_counted_as_dropped_and_chain_returned() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    activate(&mut net, &mem, &r, V1);
    drop(host);
    put_packet(&mem, BUFS, &[0; HDR], &test_frame(60, 3));
    add_chain(&r.tx, 0, &[(BUFS, (HDR + 60) as u32, 0, 0)]);

    net.process_tx();

    assert_eq!(used(&mem, &r.tx), vec![(0, 0)]);
    let s = net.stats();
    assert_eq!((s.tx_packets, s.tx_dropped, s.bad_descriptors), (0, 1, 0));
}

#[test]
fn tx_when_more_than_budget_then_rest_left_and_device_reschedules_itself() {
    let mem = memory();
    let size = 512u16;
    let r = rings(&mem, size);
    let (mut net, host) = pair_net();
    let (_, tx_evt) = activate(&mut net, &mem, &r, V1 | EVENT_IDX);
    let n = TX_BUDGET as u16 + 10;
    put_packet(&mem, BUFS, &[0; HDR], &test_frame(60, 4));
    for i in 0..n {
        add_chain(&r.tx, i, &[(BUFS, (HDR + 60) as u32, 0, 0)]);
    }

    let first = net.process_tx();
    assert_eq!((first.used, first.more), (TX_BUDGET, true));
    assert_eq!(tx_evt.read().unwrap(), 1, "self-kick");
    let second = net.process_tx();
    assert_eq!((second.used, second.more), (10, false));
    assert_eq!(used(&mem, &r.tx).len(), usize::from(n));
    let mut frames = 0;
    while host.recv().is_some() {
        frames += 1;
    }
    assert_eq!(frames, n);
}

#[test]
fn tx_when_inactive_then_nothing_happens() {
    let (mut net, host) = pair_net();
    assert_eq!(net.process_tx(), TxOutcome::default());
    assert_eq!(host.recv(), None);
}

/// Each malformed transmit chain is returned with length 0 (or skipped if its head is out
/// of range), counted, nothing of it reaches the host, and the good chain after it is sent.
#[test]
fn tx_when_bad_chain_then_counted_returned_and_next_chain_sent() {
    type Publish = fn(&GuestMemoryMmap, &MockSplitQueue<GuestMemoryMmap>);
    const FULL: u32 = (HDR + 100) as u32;
    let cases: [(&str, Publish, bool); 9] = [
        (
            "device-writable buffer",
            |_, q| add_chain(q, 0, &[(BUFS, FULL, WRITE, 0)]),
            true,
        ),
        (
            "readable then writable",
            |_, q| add_chain(q, 0, &[(BUFS, 12, NEXT, 1), (BUFS + 0x100, 100, WRITE, 0)]),
            true,
        ),
        (
            "outside guest memory",
            |_, q| add_chain(q, 0, &[(MEM_SIZE as u64 - 16, FULL, 0, 0)]),
            true,
        ),
        (
            "address overflowing",
            |_, q| add_chain(q, 0, &[(u64::MAX - 8, FULL, 0, 0)]),
            true,
        ),
        (
            "too short for the header",
            |_, q| add_chain(q, 0, &[(BUFS, 11, 0, 0)]),
            true,
        ),
        (
            "frame larger than 64 KiB",
            |_, q| add_chain(q, 0, &[(BUFS, (HDR + MAX_FRAME_LEN + 1) as u32, 0, 0)]),
            true,
        ),
        (
            "loop",
            |_, q| add_chain(q, 0, &[(BUFS, 64, NEXT, 1), (BUFS + 64, 64, NEXT, 0)]),
            true,
        ),
        (
            "more descriptors than the queue size",
            |m, q| add_indirect(m, q, 0, 0x7_0000, 17, (64, 0)),
            true,
        ),
        ("head index out of range", |_, q| add_bad_head(q, 16), false),
    ];
    for (name, publish_bad, returned) in cases {
        let mem = memory();
        let r = rings(&mem, 16);
        let (mut net, host) = pair_net();
        activate(&mut net, &mem, &r, V1);
        put_packet(&mem, BUFS, &[0; HDR], &test_frame(100, 5));
        publish_bad(&mem, &r.tx);
        let good = test_frame(80, 6);
        put_packet(&mem, BUFS + 0x4_0000, &[0; HDR], &good);
        add_chain(&r.tx, 8, &[(BUFS + 0x4_0000, (HDR + 80) as u32, 0, 0)]);

        net.process_tx();

        let expected: Vec<_> = if returned {
            vec![(0, 0), (8, 0)]
        } else {
            vec![(8, 0)]
        };
        assert_eq!(used(&mem, &r.tx), expected, "{name}");
        assert_eq!(host.recv().map(|m| m[HDR..].to_vec()), Some(good), "{name}");
        assert_eq!(host.recv(), None, "{name}: nothing of the bad chain sent");
        let s = net.stats();
        assert_eq!((s.bad_descriptors, s.tx_packets), (1, 1), "{name}");
    }
}

/// A guest that publishes an available index more than a queue size ahead must not hang
/// the event loop. Run on a thread so that a regression fails instead of hanging the suite.
#[test]
fn tx_when_avail_index_too_far_ahead_then_returns() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mem = memory();
        let r = rings(&mem, 16);
        let (mut net, host) = pair_net();
        activate(&mut net, &mem, &r, V1);
        put_packet(&mem, BUFS, &[0; HDR], &test_frame(60, 7));
        add_chain(&r.tx, 0, &[(BUFS, (HDR + 60) as u32, 0, 0)]);
        r.tx.avail().idx().store(40);
        let out = net.process_tx();
        let _ = tx.send((out.used, host.recv().is_some()));
    });
    let result = rx.recv_timeout(std::time::Duration::from_secs(5));
    assert_eq!(
        result,
        Ok((0, false)),
        "process_tx spins on an invalid avail index"
    );
}

#[test]
fn tx_when_60k_bad_chains_then_logged_bytes_bounded() {
    let cap = crate::ratelimit::capture::install();
    // Rate-limited call sites the flood hits.
    const SITES: usize = 1;
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    activate(&mut net, &mem, &r, V1);
    let before = cap.bytes_from("virtio-net");
    let started = std::time::Instant::now();
    // 60k: the mock's avail index is a u16 it must not wrap.
    for _ in 0..60_000 {
        // Too short for the virtio-net header: rejected, returned, logged (rate-limited).
        add_chain(&r.tx, 0, &[(BUFS, 11, 0, 0)]);
        net.process_tx();
    }
    let logged = cap.bytes_from("virtio-net") - before;
    assert_eq!(net.stats().bad_descriptors, 60_000);
    assert_eq!(host.recv(), None, "nothing of the bad chains sent");
    eprintln!("flood: {logged} bytes logged");
    assert!(logged > 0, "nothing was logged");
    // Unthrottled this would be ~4 MB.
    // At most LINES_PER_WINDOW lines (under 200 bytes each) per call site per window.
    let windows = started.elapsed().as_secs() + 2;
    let bound = windows as usize * crate::ratelimit::LINES_PER_WINDOW as usize * 200 * SITES;
    assert!(logged <= bound, "{logged} bytes logged, bound {bound}");
}
