//! Receive path: host frames into guest buffers.

use virtio_bindings::virtio_net::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};

use super::*;

const HDR: usize = VNET_HDR_LEN;

fn num_buffers(mem: &GuestMemoryMmap, addr: u64) -> u16 {
    let b = read_mem(mem, addr + 10, 2);
    u16::from_le_bytes([b[0], b[1]])
}

#[test]
fn rx_when_frame_and_buffer_then_delivered_with_header_and_interrupt() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    let (irq, _) = activate(&mut net, &mem, &r, V1);
    add_chain(&r.rx, 0, &[(BUFS, 2048, WRITE, 0)]);
    let frame = test_frame(60, 1);
    host.send_frame(&frame);

    assert_eq!(net.process_rx(), RxOutcome::BackendEmpty);

    assert_eq!(used(&mem, &r.rx), vec![(0, (HDR + 60) as u32)]);
    assert_eq!(read_mem(&mem, BUFS + HDR as u64, 60), frame);
    assert_eq!(num_buffers(&mem, BUFS), 1);
    assert_eq!(irq_count(&irq), 1);
    let s = net.stats();
    assert_eq!((s.rx_packets, s.rx_bytes, s.rx_dropped), (1, 60, 0));
}

#[test]
fn rx_when_mergeable_and_frame_spans_chains_then_num_buffers_counts_them() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    activate(&mut net, &mem, &r, V1 | MRG);
    for i in 0..4u16 {
        add_chain(&r.rx, i, &[(BUFS + u64::from(i) * 0x1000, 1024, WRITE, 0)]);
    }
    let frame = test_frame(3000, 2);
    host.send_frame(&frame);

    assert_eq!(net.process_rx(), RxOutcome::BackendEmpty);

    let total = HDR + 3000;
    assert_eq!(
        used(&mem, &r.rx),
        vec![(0, 1024), (1, 1024), (2, (total - 2048) as u32)]
    );
    assert_eq!(num_buffers(&mem, BUFS), 3);
    let mut got = read_mem(&mem, BUFS, 1024);
    got.extend(read_mem(&mem, BUFS + 0x1000, 1024));
    got.extend(read_mem(&mem, BUFS + 0x2000, total - 2048));
    assert_eq!(&got[HDR..], &frame[..]);

    // The fourth chain stays with the device for the next frame.
    host.send_frame(&test_frame(100, 3));
    net.process_rx();
    assert_eq!(used(&mem, &r.rx).last(), Some(&(3, (HDR + 100) as u32)));
}

#[test]
fn rx_when_one_frame_uses_descriptor_chain_of_several_buffers_then_split_across_them() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    activate(&mut net, &mem, &r, V1);
    // Header alone in the first buffer, as old drivers lay it out.
    add_chain(
        &r.rx,
        0,
        &[
            (BUFS, HDR as u32, WRITE | NEXT, 1),
            (BUFS + 0x1000, 1500, WRITE, 0),
        ],
    );
    let frame = test_frame(200, 4);
    host.send_frame(&frame);
    net.process_rx();
    assert_eq!(used(&mem, &r.rx), vec![(0, (HDR + 200) as u32)]);
    assert_eq!(read_mem(&mem, BUFS + 0x1000, 200), frame);
}

#[test]
fn rx_when_no_buffers_then_frame_kept_and_delivered_after_refill() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    activate(&mut net, &mem, &r, V1);
    let (f1, f2) = (test_frame(80, 5), test_frame(90, 6));
    host.send_frame(&f1);
    host.send_frame(&f2);

    assert_eq!(net.process_rx(), RxOutcome::NeedBuffers);
    assert_eq!(
        net.process_rx(),
        RxOutcome::NeedBuffers,
        "still nothing, no loss"
    );
    assert!(used(&mem, &r.rx).is_empty());

    add_chain(&r.rx, 0, &[(BUFS, 2048, WRITE, 0)]);
    add_chain(&r.rx, 1, &[(BUFS + 0x1000, 2048, WRITE, 0)]);
    assert_eq!(net.process_rx(), RxOutcome::BackendEmpty);

    assert_eq!(
        used(&mem, &r.rx),
        vec![(0, (HDR + 80) as u32), (1, (HDR + 90) as u32)]
    );
    assert_eq!(read_mem(&mem, BUFS + HDR as u64, 80), f1);
    assert_eq!(read_mem(&mem, BUFS + 0x1000 + HDR as u64, 90), f2);
    assert_eq!(net.stats().rx_dropped, 0);
}

#[test]
fn rx_when_mergeable_and_buffers_run_out_mid_frame_then_frame_waits_for_more() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    activate(&mut net, &mem, &r, V1 | MRG);
    add_chain(&r.rx, 0, &[(BUFS, 1024, WRITE, 0)]);
    let frame = test_frame(1500, 7);
    host.send_frame(&frame);

    assert_eq!(net.process_rx(), RxOutcome::NeedBuffers);
    assert!(
        used(&mem, &r.rx).is_empty(),
        "a partial frame is never published"
    );

    add_chain(&r.rx, 1, &[(BUFS + 0x1000, 1024, WRITE, 0)]);
    assert_eq!(net.process_rx(), RxOutcome::BackendEmpty);
    assert_eq!(
        used(&mem, &r.rx),
        vec![(0, 1024), (1, (HDR + 1500 - 1024) as u32)]
    );
    assert_eq!(num_buffers(&mem, BUFS), 2);
}

#[test]
fn rx_when_event_idx_and_buffers_run_out_then_avail_event_asks_for_next_kick() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    activate(&mut net, &mem, &r, V1 | EVENT_IDX);
    add_chain(&r.rx, 0, &[(BUFS, 2048, WRITE, 0)]);
    host.send_frame(&test_frame(60, 8));
    host.send_frame(&test_frame(60, 9));

    assert_eq!(net.process_rx(), RxOutcome::NeedBuffers);

    // avail_event sits after the used ring: the driver kicks once its avail idx passes it.
    let avail_event_addr = used_ring(&r.rx) + 4 + 8 * 16;
    let avail_event: u16 = mem.read_obj(GuestAddress(avail_event_addr)).unwrap();
    assert_eq!(
        avail_event,
        r.rx.avail().idx().load(),
        "the next refill must kick"
    );
}

#[test]
fn rx_when_event_idx_and_used_event_not_reached_then_no_interrupt() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    let (irq, _) = activate(&mut net, &mem, &r, V1 | EVENT_IDX);
    // used_event (after the avail ring) = 1: interrupt once the second buffer is used.
    mem.write_obj(1u16, GuestAddress(r.rx.avail_addr().0 + 4 + 2 * 16))
        .unwrap();
    add_chain(&r.rx, 0, &[(BUFS, 2048, WRITE, 0)]);
    add_chain(&r.rx, 1, &[(BUFS + 0x1000, 2048, WRITE, 0)]);

    host.send_frame(&test_frame(60, 10));
    net.process_rx();
    assert_eq!(irq_count(&irq), 0);

    host.send_frame(&test_frame(60, 11));
    net.process_rx();
    assert_eq!(irq_count(&irq), 1);
}

#[test]
fn rx_when_not_mergeable_and_frame_larger_than_chain_then_dropped_and_chain_reused() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    activate(&mut net, &mem, &r, V1);
    add_chain(&r.rx, 0, &[(BUFS, 1000, WRITE, 0)]);
    host.send_frame(&test_frame(2000, 12));
    let small = test_frame(100, 13);
    host.send_frame(&small);

    assert_eq!(net.process_rx(), RxOutcome::BackendEmpty);

    assert_eq!(used(&mem, &r.rx), vec![(0, (HDR + 100) as u32)]);
    assert_eq!(read_mem(&mem, BUFS + HDR as u64, 100), small);
    assert_eq!((net.stats().rx_dropped, net.stats().rx_packets), (1, 1));
}

#[test]
fn rx_when_offload_not_acked_then_frame_dropped() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    activate(&mut net, &mem, &r, V1);
    add_chain(&r.rx, 0, &[(BUFS, 0x1_0000, WRITE, 0)]);
    let mut csum = [0u8; HDR];
    csum[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    let mut gso = [0u8; HDR];
    gso[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    host.send_with_header(&csum, &test_frame(100, 14));
    host.send_with_header(&gso, &test_frame(100, 15));
    host.send_with_header(&[0; HDR], &[0xff; 10]); // runt: no Ethernet header

    assert_eq!(net.process_rx(), RxOutcome::BackendEmpty);

    assert!(used(&mem, &r.rx).is_empty());
    assert_eq!(net.stats().rx_dropped, 3);
}

#[test]
fn rx_when_offload_acked_then_header_passed_through() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    activate(&mut net, &mem, &r, V1 | GUEST_CSUM | GUEST_TSO4);
    add_chain(&r.rx, 0, &[(BUFS, 0x1_0000, WRITE, 0)]);
    let mut hdr = [0u8; HDR];
    hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    hdr[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    hdr[4..6].copy_from_slice(&1448u16.to_le_bytes());
    host.send_with_header(&hdr, &test_frame(5000, 17));

    net.process_rx();

    assert_eq!(used(&mem, &r.rx), vec![(0, (HDR + 5000) as u32)]);
    let got = read_mem(&mem, BUFS, HDR);
    assert_eq!(&got[..10], &hdr[..10]);
    assert_eq!(num_buffers(&mem, BUFS), 1);
}

#[test]
fn rx_when_frame_larger_than_64k_then_dropped() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    activate(&mut net, &mem, &r, V1 | MRG);
    add_chain(&r.rx, 0, &[(BUFS, 0x2_0000, WRITE, 0)]);
    host.send_frame(&test_frame(MAX_FRAME_LEN + 100, 18));
    host.send_frame(&test_frame(MAX_FRAME_LEN, 19));

    net.process_rx();

    assert_eq!(used(&mem, &r.rx), vec![(0, (HDR + MAX_FRAME_LEN) as u32)]);
    assert_eq!(net.stats().rx_dropped, 1);
}

#[test]
fn rx_when_flooded_then_budget_then_rest() {
    let mem = memory();
    let r = rings(&mem, 256);
    let (mut net, host) = pair_net();
    activate(&mut net, &mem, &r, V1);
    let n = RX_BUDGET as u16 + 6;
    for i in 0..n {
        add_chain(&r.rx, i, &[(BUFS + u64::from(i) * 0x800, 0x800, WRITE, 0)]);
        host.send_frame(&test_frame(64, i as u8));
    }
    assert_eq!(net.process_rx(), RxOutcome::Budget);
    assert_eq!(used(&mem, &r.rx).len(), RX_BUDGET);
    assert_eq!(net.process_rx(), RxOutcome::BackendEmpty);
    assert_eq!(used(&mem, &r.rx).len(), usize::from(n));
}

#[test]
fn rx_when_inactive_then_nothing_read() {
    let (mut net, host) = pair_net();
    host.send_frame(&test_frame(60, 20));
    assert_eq!(net.process_rx(), RxOutcome::Inactive);
    assert_eq!(net.stats(), NetStats::default());
}

#[test]
fn rx_when_reset_with_frame_pending_then_frame_dropped_and_new_rings_used() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    activate(&mut net, &mem, &r, V1);
    host.send_frame(&test_frame(60, 21));
    assert_eq!(net.process_rx(), RxOutcome::NeedBuffers);

    net.reset();
    assert_eq!(net.stats().rx_dropped, 1);
    let r2 = Rings {
        rx: MockSplitQueue::create(&mem, GuestAddress(0x4_0000), 16),
        tx: MockSplitQueue::create(&mem, GuestAddress(0x5_0000), 16),
    };
    activate(&mut net, &mem, &r2, V1);
    add_chain(&r2.rx, 0, &[(BUFS, 2048, WRITE, 0)]);
    let frame = test_frame(70, 22);
    host.send_frame(&frame);
    assert_eq!(net.process_rx(), RxOutcome::BackendEmpty);
    assert_eq!(used(&mem, &r2.rx), vec![(0, (HDR + 70) as u32)]);
    assert_eq!(read_mem(&mem, BUFS + HDR as u64, 70), frame);
}

/// Each malformed receive chain is returned with length 0 (or skipped if its head is out
/// of range), counted, and the good chain after it receives the frame.
#[test]
fn rx_when_bad_chain_then_counted_returned_and_next_chain_served() {
    type Publish = fn(&GuestMemoryMmap, &MockSplitQueue<GuestMemoryMmap>);
    let cases: [(&str, Publish, bool); 8] = [
        (
            "read-only buffer",
            |_, q| add_chain(q, 0, &[(BUFS, 2048, 0, 0)]),
            true,
        ),
        (
            "header writable, data read-only",
            |_, q| {
                add_chain(
                    q,
                    0,
                    &[(BUFS, 12, WRITE | NEXT, 1), (BUFS + 0x100, 2048, 0, 0)],
                )
            },
            true,
        ),
        (
            "outside guest memory",
            |_, q| add_chain(q, 0, &[(MEM_SIZE as u64 - 16, 2048, WRITE, 0)]),
            true,
        ),
        (
            "too short for the header",
            |_, q| add_chain(q, 0, &[(BUFS, 8, WRITE, 0)]),
            true,
        ),
        (
            "loop",
            |_, q| {
                add_chain(
                    q,
                    0,
                    &[
                        (BUFS, 64, WRITE | NEXT, 1),
                        (BUFS + 64, 64, WRITE | NEXT, 0),
                    ],
                )
            },
            true,
        ),
        (
            "next index past the table",
            |_, q| add_chain(q, 0, &[(BUFS, 2048, WRITE | NEXT, 200)]),
            true,
        ),
        (
            "more descriptors than the queue size",
            |m, q| add_indirect(m, q, 0, 0x7_0000, 17, (64, WRITE)),
            true,
        ),
        ("head index out of range", |_, q| add_bad_head(q, 16), false),
    ];
    for (name, publish_bad, returned) in cases {
        let mem = memory();
        let r = rings(&mem, 16);
        let (mut net, host) = pair_net();
        activate(&mut net, &mem, &r, V1 | MRG);
        publish_bad(&mem, &r.rx);
        add_chain(&r.rx, 8, &[(BUFS + 0x4_0000, 2048, WRITE, 0)]);
        let frame = test_frame(100, 23);
        host.send_frame(&frame);

        assert_eq!(net.process_rx(), RxOutcome::BackendEmpty, "{name}");

        let good = (8, (HDR + 100) as u32);
        let expected: Vec<_> = if returned {
            vec![(0, 0), good]
        } else {
            vec![good]
        };
        assert_eq!(used(&mem, &r.rx), expected, "{name}");
        assert_eq!(
            read_mem(&mem, BUFS + 0x4_0000 + HDR as u64, 100),
            frame,
            "{name}"
        );
        assert_eq!(
            read_mem(&mem, BUFS, 64),
            vec![0; 64],
            "{name}: bad chain untouched"
        );
        let s = net.stats();
        assert_eq!(
            (s.bad_descriptors, s.rx_packets, s.rx_dropped),
            (1, 1, 0),
            "{name}"
        );
    }
}

#[test]
fn rx_when_avail_index_too_far_ahead_then_waits_instead_of_spinning() {
    let mem = memory();
    let r = rings(&mem, 16);
    let (mut net, host) = pair_net();
    activate(&mut net, &mem, &r, V1);
    add_chain(&r.rx, 0, &[(BUFS, 2048, WRITE, 0)]);
    r.rx.avail().idx().store(40);
    host.send_frame(&test_frame(60, 24));

    assert_eq!(net.process_rx(), RxOutcome::NeedBuffers);
    assert!(used(&mem, &r.rx).is_empty());

    // The guest repairs its index: the waiting frame goes out on the next call.
    r.rx.avail().idx().store(1);
    assert_eq!(net.process_rx(), RxOutcome::BackendEmpty);
    assert_eq!(used(&mem, &r.rx), vec![(0, (HDR + 60) as u32)]);
}

#[test]
fn rx_when_host_marks_checksum_valid_then_flag_kept_only_if_guest_csum_acked() {
    for (features, expected) in [(V1, 0u8), (V1 | GUEST_CSUM, 2u8)] {
        let mem = memory();
        let r = rings(&mem, 16);
        let (mut net, host) = pair_net();
        activate(&mut net, &mem, &r, features);
        add_chain(&r.rx, 0, &[(BUFS, 2048, WRITE, 0)]);
        let mut hdr = [0u8; HDR];
        hdr[0] = 2 | 4; // DATA_VALID, and RSC_INFO which this device never offers
        host.send_with_header(&hdr, &test_frame(60, 25));

        net.process_rx();

        assert_eq!(
            used(&mem, &r.rx),
            vec![(0, (HDR + 60) as u32)],
            "{features:#x}"
        );
        assert_eq!(read_mem(&mem, BUFS, 1), vec![expected], "{features:#x}");
    }
}
