//! Malformed chains and requests: an error reply (or none when none fits), a counted log
//! line, and a server that keeps serving.

use std::mem::size_of;

use crate::harness::*;
use virtiofs::abi::{self, op, InHeader, OutHeader, ROOT_ID};
use vm_memory::ByteValued;

fn header(opcode: u32, len: u32, nodeid: u64) -> InHeader {
    InHeader {
        len,
        opcode,
        unique: 77,
        nodeid,
        ..Default::default()
    }
}

fn still_serves(f: &Fuse) {
    assert!(f.getattr(ROOT_ID).is_ok(), "server stopped serving");
}

#[test]
fn chain_when_shorter_than_header_then_no_reply_and_counted() {
    let (_d, f) = rw();
    let before = f.server.malformed_requests();
    let req = [0u8; 20];
    let (n, _) = f.run(
        &req,
        &[desc(REQ_ADDR, 20, 0), desc(REPLY_ADDR, 4096, F_WRITE)],
        4096,
    );
    assert_eq!(n, 0);
    assert!(f.server.malformed_requests() > before);
    still_serves(&f);
}

#[test]
fn header_len_when_below_header_size_or_beyond_chain_then_einval() {
    let (_d, f) = rw();
    for len in [0, 10, 39, 41 + 4096, u32::MAX] {
        let o = f.call_len(op::GETATTR, ROOT_ID, &[0u8; 16], 4096, Some(len));
        assert_eq!(o.hdr.error, -libc::EINVAL, "len {len}");
    }
    still_serves(&f);
}

#[test]
fn header_len_when_shorter_than_args_then_einval() {
    let (_d, f) = rw();
    // LOOKUP whose len stops before the name.
    let o = f.call_len(op::LOOKUP, ROOT_ID, b"name\0", 4096, Some(40));
    assert_eq!(o.hdr.error, -libc::EINVAL);
    // READ whose len cuts its read_in in half.
    let o = f.call_len(op::READ, ROOT_ID, &[0u8; 40], 4096, Some(60));
    assert_eq!(o.hdr.error, -libc::EINVAL);
}

#[test]
fn read_when_size_over_max_or_over_writable_then_einval() {
    let (d, f) = rw();
    std::fs::write(d.path().join("a"), vec![7u8; 8192]).unwrap();
    let e = f.lookup(ROOT_ID, "a").unwrap();
    let fh = f.open(e.nodeid, 0).unwrap();
    let big = abi::ReadIn {
        fh,
        size: (1 << 20) + 1,
        ..Default::default()
    };
    assert_eq!(
        f.call(op::READ, e.nodeid, &bytes(&big), 4096).hdr.error,
        -libc::EINVAL
    );
    let over = abi::ReadIn {
        fh,
        size: 8192,
        ..Default::default()
    };
    assert_eq!(
        f.call(op::READ, e.nodeid, &bytes(&over), 1024).hdr.error,
        -libc::EINVAL
    );
    let off = abi::ReadIn {
        fh,
        size: 10,
        offset: u64::MAX,
        ..Default::default()
    };
    assert_eq!(
        f.call(op::READ, e.nodeid, &bytes(&off), 4096).hdr.error,
        -libc::EINVAL
    );
}

#[test]
fn write_when_size_lies_or_over_max_or_offset_huge_then_einval() {
    let (d, f) = rw();
    std::fs::write(d.path().join("a"), b"").unwrap();
    let e = f.lookup(ROOT_ID, "a").unwrap();
    let fh = f.open(e.nodeid, libc::O_RDWR as u32).unwrap();
    let lie = abi::WriteIn {
        fh,
        size: 100,
        ..Default::default()
    };
    let o = f.call(op::WRITE, e.nodeid, &cat(&[&bytes(&lie), b"short"]), 4096);
    assert_eq!(o.hdr.error, -libc::EINVAL);
    let huge = abi::WriteIn {
        fh,
        size: u32::MAX,
        ..Default::default()
    };
    assert_eq!(
        f.call(op::WRITE, e.nodeid, &cat(&[&bytes(&huge), b"x"]), 4096)
            .hdr
            .error,
        -libc::EINVAL
    );
    let off = abi::WriteIn {
        fh,
        size: 1,
        offset: 1 << 63,
        ..Default::default()
    };
    assert_eq!(
        f.call(op::WRITE, e.nodeid, &cat(&[&bytes(&off), b"x"]), 4096)
            .hdr
            .error,
        -libc::EINVAL
    );
    assert_eq!(std::fs::metadata(d.path().join("a")).unwrap().len(), 0);
}

#[test]
fn unknown_nodes_and_handles_when_used_then_enoent_or_ebadf() {
    let (_d, f) = rw();
    assert_eq!(f.lookup(99_999, "x").unwrap_err(), libc::ENOENT);
    assert_eq!(f.open(99_999, 0).unwrap_err(), libc::ENOENT);
    assert_eq!(f.read(ROOT_ID, 12, 0, 10).unwrap_err(), libc::EBADF);
    assert_eq!(f.release(ROOT_ID, 12, true).unwrap_err(), libc::EBADF);
    assert_eq!(
        f.readdir_raw(ROOT_ID, 12, 0, 4096, true).unwrap_err(),
        libc::EBADF
    );
    // FORGET of unknown ids and of the root is harmless.
    assert_eq!(f.forget(99_999, 5).written, 0);
    assert_eq!(f.forget(ROOT_ID, 5).written, 0);
    still_serves(&f);
}

#[test]
fn chain_when_no_writable_part_then_nothing_written() {
    let (_d, f) = rw();
    let h = header(op::GETATTR, 56, ROOT_ID);
    let req = cat(&[h.as_slice(), &[0u8; 16]]);
    let (n, _) = f.run(&req, &[desc(REQ_ADDR, req.len() as u32, 0)], 16);
    assert_eq!(n, 0);
    still_serves(&f);
}

#[test]
fn chain_when_writable_too_small_then_eio_header_or_nothing() {
    let (_d, f) = rw();
    // GETATTR's reply is 120 bytes; 40 writable: only an error header fits.
    let o = f.call(op::GETATTR, ROOT_ID, &[0u8; 16], 40);
    assert_eq!(o.written, 16);
    assert_eq!(o.hdr.error, -libc::EIO);
    // Less than an out header: nothing at all.
    let o = f.call(op::GETATTR, ROOT_ID, &[0u8; 16], 8);
    assert_eq!(o.written, 0);
    still_serves(&f);
}

#[test]
fn chain_when_descriptor_outside_memory_then_nothing_written() {
    let (_d, f) = rw();
    let descs = [
        desc(MEM_SIZE as u64 - 8, 64, 0),
        desc(REPLY_ADDR, 4096, F_WRITE),
    ];
    let (n, _) = f.run(&[], &descs, 4096);
    assert_eq!(n, 0);
    let descs = [desc(REQ_ADDR, 56, 0), desc(u64::MAX - 100, 4096, F_WRITE)];
    let (n, _) = f.run(&[0u8; 56], &descs, 16);
    assert_eq!(n, 0);
    still_serves(&f);
}

#[test]
fn chain_when_request_and_reply_scattered_then_reassembled() {
    let (d, f) = rw();
    std::fs::write(d.path().join("scattered"), b"").unwrap();
    let h = header(op::LOOKUP, 40 + 10, ROOT_ID);
    let req = cat(&[h.as_slice(), b"scattered\0"]);
    // Header split at byte 7, name split across two more descriptors; reply in three pieces.
    let descs = [
        desc(REQ_ADDR, 7, 0),
        desc(REQ_ADDR + 7, 35, 0),
        desc(REQ_ADDR + 42, 8, 0),
        desc(REPLY_ADDR, 10, F_WRITE),
        desc(REPLY_ADDR + 10, 100, F_WRITE),
        desc(REPLY_ADDR + 110, 100, F_WRITE),
    ];
    let (n, out) = f.run(&req, &descs, 210);
    assert_eq!(
        n as usize,
        size_of::<OutHeader>() + size_of::<abi::EntryOut>()
    );
    let hdr: OutHeader = abi::read_prefix(&out).unwrap();
    assert_eq!((hdr.error, hdr.unique), (0, 77));
    let e: abi::EntryOut = abi::read_prefix(&out[16..]).unwrap();
    assert!(e.nodeid > ROOT_ID);
}

#[test]
fn extension_len_when_larger_than_request_then_einval() {
    let (_d, f) = rw();
    let mut h = header(op::LOOKUP, 42, ROOT_ID);
    h.total_extlen = 100;
    let req = cat(&[h.as_slice(), b"a\0"]);
    let (n, out) = f.run(
        &req,
        &[desc(REQ_ADDR, 42, 0), desc(REPLY_ADDR, 4096, F_WRITE)],
        4096,
    );
    assert_eq!(n, 16);
    assert_eq!(
        abi::read_prefix::<OutHeader>(&out).unwrap().error,
        -libc::EINVAL
    );
}

#[test]
fn args_when_truncated_for_every_opcode_then_error_not_panic() {
    let (d, f) = rw();
    std::fs::write(d.path().join("a"), b"x").unwrap();
    let e = f.lookup(ROOT_ID, "a").unwrap();
    for opc in 1..=52u32 {
        if opc == op::INIT || opc == op::DESTROY {
            continue;
        }
        for len in [0usize, 1, 7, 15] {
            let o = f.call(opc, e.nodeid, &vec![0xffu8; len], 4096);
            // No reply (FORGET-like) or an error or a success that needs no args.
            assert!(o.written == 0 || o.written >= 16, "opcode {opc}");
        }
    }
    still_serves(&f);
}

#[test]
fn random_requests_when_fuzzed_then_no_panic_and_replies_well_formed() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a"), b"data").unwrap();
    std::fs::create_dir(d.path().join("dir")).unwrap();
    let f = Fuse::new(virtiofs::ShareOptions::new(d.path(), true));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..5000 {
        let opcode = (next() % 56) as u32;
        if opcode == op::DESTROY {
            // Ends the session by design; covered in basic.rs.
            continue;
        }
        let len = (next() % 160) as usize;
        let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if next() % 2 == 0 && len > 8 {
            body[..2].copy_from_slice(b"a\0");
        }
        let nodeid = [ROOT_ID, 2, 3, next()][(next() % 4) as usize];
        let h = InHeader {
            len: (40 + body.len()) as u32,
            opcode,
            unique: 1,
            nodeid,
            ..Default::default()
        };
        let req = cat(&[h.as_slice(), &body]);
        let out = f.server.handle_bytes(&req);
        if !out.is_empty() {
            let hdr: OutHeader = abi::read_prefix(&out).unwrap();
            assert_eq!(hdr.len as usize, out.len());
            assert!(hdr.error <= 0 && hdr.error > -4096);
        }
    }
    assert_eq!(std::fs::read(d.path().join("a")).unwrap(), b"data");
    still_serves(&f);
}

#[test]
fn malformed_burst_when_thousands_then_all_counted_and_server_serves() {
    let (_d, f) = rw();
    let before = f.server.malformed_requests();
    for _ in 0..2000 {
        let o = f.call_len(op::GETATTR, ROOT_ID, &[0u8; 16], 4096, Some(5));
        assert_eq!(o.hdr.error, -libc::EINVAL);
    }
    assert_eq!(f.server.malformed_requests() - before, 2000);
    still_serves(&f);
}
