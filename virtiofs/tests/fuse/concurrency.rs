//! One server, several queue threads (the daemon may serve queues from different threads).

use std::mem::size_of;
use std::sync::Arc;

use crate::harness::{bytes, cat, nul};
use virtiofs::abi::{self, op, InHeader, OutHeader, ROOT_ID};
use virtiofs::{Server, ShareOptions};
use vm_memory::ByteValued;

fn call(s: &Server, opcode: u32, nodeid: u64, args: &[u8]) -> Result<Vec<u8>, i32> {
    let h = InHeader {
        len: (size_of::<InHeader>() + args.len()) as u32,
        opcode,
        unique: 9,
        nodeid,
        ..Default::default()
    };
    let out = s.handle_bytes(&cat(&[h.as_slice(), args]));
    let hdr: OutHeader = abi::read_prefix(&out).expect("reply");
    assert_eq!(hdr.len as usize, out.len());
    if hdr.error == 0 {
        Ok(out[16..].to_vec())
    } else {
        Err(-hdr.error)
    }
}

fn entry(b: &[u8]) -> abi::EntryOut {
    abi::read_prefix(b).unwrap()
}

#[test]
fn server_when_shared_by_threads_then_each_sees_its_own_consistent_files() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Server>();
    let d = tempfile::tempdir().unwrap();
    let s = Arc::new(Server::new(ShareOptions::new(d.path(), false)).unwrap());
    let init = abi::InitIn {
        major: 7,
        minor: 37,
        flags: u32::MAX,
        ..Default::default()
    };
    call(&s, op::INIT, 0, &bytes(&init)).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let md = abi::MkdirIn {
                    mode: 0o755,
                    umask: 0,
                };
                let dir = entry(
                    &call(
                        &s,
                        op::MKDIR,
                        ROOT_ID,
                        &cat(&[&bytes(&md), &nul(&format!("t{t}"))]),
                    )
                    .unwrap(),
                );
                for i in 0..200u32 {
                    let c = abi::CreateIn {
                        flags: (libc::O_RDWR | libc::O_CREAT) as u32,
                        mode: 0o644,
                        ..Default::default()
                    };
                    let b = call(
                        &s,
                        op::CREATE,
                        dir.nodeid,
                        &cat(&[&bytes(&c), &nul(&format!("f{i}"))]),
                    )
                    .unwrap();
                    let e = entry(&b);
                    let o: abi::OpenOut =
                        abi::read_prefix(&b[size_of::<abi::EntryOut>()..]).unwrap();
                    let data = format!("thread {t} file {i}");
                    let w = abi::WriteIn {
                        fh: o.fh,
                        size: data.len() as u32,
                        ..Default::default()
                    };
                    call(
                        &s,
                        op::WRITE,
                        e.nodeid,
                        &cat(&[&bytes(&w), data.as_bytes()]),
                    )
                    .unwrap();
                    let r = abi::ReadIn {
                        fh: o.fh,
                        size: 100,
                        ..Default::default()
                    };
                    assert_eq!(
                        call(&s, op::READ, e.nodeid, &bytes(&r)).unwrap(),
                        data.as_bytes()
                    );
                    let rel = abi::ReleaseIn {
                        fh: o.fh,
                        ..Default::default()
                    };
                    call(&s, op::RELEASE, e.nodeid, &bytes(&rel)).unwrap();
                    if i % 2 == 0 {
                        call(&s, op::UNLINK, dir.nodeid, &nul(&format!("f{i}"))).unwrap();
                    }
                    let h = InHeader {
                        len: (size_of::<InHeader>() + 8) as u32,
                        opcode: op::FORGET,
                        nodeid: e.nodeid,
                        ..Default::default()
                    };
                    let forget = cat(&[h.as_slice(), &bytes(&abi::ForgetIn { nlookup: 1 })]);
                    assert!(s.handle_bytes(&forget).is_empty());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..4 {
        assert_eq!(
            std::fs::read_dir(d.path().join(format!("t{t}")))
                .unwrap()
                .count(),
            100
        );
    }
    let (nodes, _, handles) = s.counts();
    assert_eq!((nodes, handles), (4, 0), "only the four dirs remain known");
}
