//! INIT, LOOKUP, GETATTR, OPEN/READ, READDIR(PLUS), FORGET, STATFS, DESTROY.

use std::fs;

use crate::harness::*;
use virtiofs::abi::{self, init, op, ROOT_ID};
use virtiofs::{CachePolicy, ShareOptions};

#[test]
fn init_when_guest_offers_all_then_negotiates_min_minor_and_our_flags() {
    let d = tempfile::tempdir().unwrap();
    let f = Fuse::uninit(ShareOptions::new(d.path(), false));
    let o = f.init(40, u32::MAX);
    let out: abi::InitOut = o.obj();
    assert_eq!(out.major, 7);
    assert_eq!(out.minor, abi::KERNEL_MINOR_VERSION);
    assert_eq!(out.max_write, 1 << 20);
    assert_eq!(out.max_pages, 256);
    for flag in [
        init::ASYNC_READ,
        init::ATOMIC_O_TRUNC,
        init::BIG_WRITES,
        init::DO_READDIRPLUS,
        init::READDIRPLUS_AUTO,
        init::PARALLEL_DIROPS,
        init::AUTO_INVAL_DATA,
        init::MAX_PAGES,
        init::SETXATTR_EXT,
    ] {
        assert_ne!(out.flags & flag, 0, "flag {flag:#x}");
    }
    assert_eq!(out.flags & init::CACHE_SYMLINKS, 0);
    assert_eq!(out.flags & init::EXPORT_SUPPORT, 0);
}

#[test]
fn init_when_guest_is_older_then_its_minor_and_only_its_flags() {
    let d = tempfile::tempdir().unwrap();
    let f = Fuse::uninit(ShareOptions::new(d.path(), true));
    let out: abi::InitOut = f.init(31, init::ASYNC_READ | init::CACHE_SYMLINKS).obj();
    assert_eq!(out.minor, 31);
    assert_eq!(out.flags, init::ASYNC_READ | init::CACHE_SYMLINKS);
}

#[test]
fn init_when_minor_too_old_then_eproto() {
    let d = tempfile::tempdir().unwrap();
    let f = Fuse::uninit(ShareOptions::new(d.path(), true));
    assert_eq!(f.init(20, 0).result().unwrap_err(), libc::EPROTO);
}

#[test]
fn request_when_before_init_then_eio() {
    let d = tempfile::tempdir().unwrap();
    let f = Fuse::uninit(ShareOptions::new(d.path(), true));
    assert_eq!(f.getattr(ROOT_ID).unwrap_err(), libc::EIO);
}

#[test]
fn init_when_second_then_eio_and_after_destroy_then_ok() {
    let (_d, f) = rw();
    assert_eq!(f.init(37, 0).result().unwrap_err(), libc::EIO);
    let o = f.call(op::DESTROY, 0, &[], 4096);
    assert_eq!(o.hdr.error, 0);
    assert_eq!(o.written, 16);
    assert_eq!(f.getattr(ROOT_ID).unwrap_err(), libc::EIO);
    assert_eq!(f.init(37, 0).hdr.error, 0);
    assert!(f.getattr(ROOT_ID).is_ok());
}

#[test]
fn destroy_when_nodes_and_handles_held_then_all_dropped() {
    let (d, f) = rw();
    fs::write(d.path().join("a"), b"x").unwrap();
    let e = f.lookup(ROOT_ID, "a").unwrap();
    f.open(e.nodeid, libc::O_RDONLY as u32).unwrap();
    assert_eq!(f.server.counts().0, 1);
    f.call(op::DESTROY, 0, &[], 4096);
    let (nodes, fds, handles) = f.server.counts();
    assert_eq!((nodes, fds, handles), (0, 0, 0));
}

#[test]
fn lookup_when_file_exists_then_entry_with_host_attrs() {
    let (d, f) = rw();
    fs::write(d.path().join("hello"), b"hello world").unwrap();
    let e = f.lookup(ROOT_ID, "hello").unwrap();
    assert!(e.nodeid > ROOT_ID);
    assert_eq!(e.attr.size, 11);
    assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFREG);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        e.attr.ino,
        fs::metadata(d.path().join("hello")).unwrap().ino()
    );
    assert_eq!(
        (e.entry_valid, e.attr_valid),
        CachePolicy::Coherent.timeouts()
    );
}

#[test]
fn lookup_when_missing_then_enoent() {
    let (_d, f) = rw();
    assert_eq!(f.lookup(ROOT_ID, "nope").unwrap_err(), libc::ENOENT);
}

#[test]
fn lookup_when_same_file_twice_or_hard_link_then_same_nodeid() {
    let (d, f) = rw();
    fs::write(d.path().join("a"), b"").unwrap();
    fs::hard_link(d.path().join("a"), d.path().join("b")).unwrap();
    let a = f.lookup(ROOT_ID, "a").unwrap();
    let a2 = f.lookup(ROOT_ID, "a").unwrap();
    let b = f.lookup(ROOT_ID, "b").unwrap();
    assert_eq!(a.nodeid, a2.nodeid);
    assert_eq!(a.nodeid, b.nodeid);
}

#[test]
fn lookup_when_immutable_share_then_long_timeouts() {
    let (d, f) = ro();
    fs::write(d.path().join("a"), b"").unwrap();
    let e = f.lookup(ROOT_ID, "a").unwrap();
    assert_eq!((e.entry_valid, e.attr_valid), (86_400, 86_400));
}

#[test]
fn getattr_when_root_then_directory() {
    let (_d, f) = rw();
    let a = f.getattr(ROOT_ID).unwrap();
    assert_eq!(a.mode & libc::S_IFMT, libc::S_IFDIR);
}

#[test]
fn getattr_when_unknown_nodeid_then_enoent() {
    let (_d, f) = rw();
    assert_eq!(f.getattr(12345).unwrap_err(), libc::ENOENT);
}

#[test]
fn getattr_when_by_handle_then_attrs_of_open_file() {
    let (d, f) = rw();
    fs::write(d.path().join("a"), b"abc").unwrap();
    let e = f.lookup(ROOT_ID, "a").unwrap();
    let fh = f.open(e.nodeid, libc::O_RDONLY as u32).unwrap();
    let g = abi::GetattrIn {
        getattr_flags: abi::GETATTR_FH,
        dummy: 0,
        fh,
    };
    let a: abi::AttrOut = f.call(op::GETATTR, e.nodeid, &bytes(&g), 4096).obj();
    assert_eq!(a.attr.size, 3);
    let bad = abi::GetattrIn { fh: 999, ..g };
    assert_eq!(
        f.call(op::GETATTR, e.nodeid, &bytes(&bad), 4096)
            .result()
            .unwrap_err(),
        libc::EBADF
    );
}

#[test]
fn read_when_file_opened_then_contents_and_short_read_at_eof() {
    let (d, f) = rw();
    fs::write(d.path().join("a"), b"hello world").unwrap();
    let e = f.lookup(ROOT_ID, "a").unwrap();
    let fh = f.open(e.nodeid, libc::O_RDONLY as u32).unwrap();
    assert_eq!(f.read(e.nodeid, fh, 0, 5).unwrap(), b"hello");
    assert_eq!(f.read(e.nodeid, fh, 6, 100).unwrap(), b"world");
    assert_eq!(f.read(e.nodeid, fh, 100, 10).unwrap(), b"");
    f.release(e.nodeid, fh, false).unwrap();
    assert_eq!(f.read(e.nodeid, fh, 0, 5).unwrap_err(), libc::EBADF);
}

#[test]
fn read_when_large_then_one_mib_in_one_request() {
    let (d, f) = rw();
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    fs::write(d.path().join("big"), &data).unwrap();
    let e = f.lookup(ROOT_ID, "big").unwrap();
    let fh = f.open(e.nodeid, libc::O_RDONLY as u32).unwrap();
    assert_eq!(f.read(e.nodeid, fh, 0, 1 << 20).unwrap(), data);
}

#[test]
fn open_when_immutable_then_keep_cache_and_coherent_then_not() {
    let (d, f) = ro();
    fs::write(d.path().join("a"), b"").unwrap();
    let e = f.lookup(ROOT_ID, "a").unwrap();
    let o = f.open_out(e.nodeid, libc::O_RDONLY as u32).unwrap();
    assert_ne!(o.open_flags & abi::FOPEN_KEEP_CACHE, 0);
    let dir: abi::OpenOut = f
        .call(op::OPENDIR, ROOT_ID, &bytes(&abi::OpenIn::default()), 4096)
        .obj();
    assert_ne!(dir.open_flags & abi::FOPEN_CACHE_DIR, 0);

    let (d2, f2) = rw();
    fs::write(d2.path().join("a"), b"").unwrap();
    let e = f2.lookup(ROOT_ID, "a").unwrap();
    let o = f2.open_out(e.nodeid, libc::O_RDONLY as u32).unwrap();
    assert_eq!(o.open_flags & abi::FOPEN_KEEP_CACHE, 0);
}

#[test]
fn open_when_coherent_and_host_writes_then_next_open_reads_new_data() {
    let (d, f) = rw();
    fs::write(d.path().join("a"), b"old").unwrap();
    let e = f.lookup(ROOT_ID, "a").unwrap();
    let fh = f.open(e.nodeid, libc::O_RDONLY as u32).unwrap();
    assert_eq!(f.read(e.nodeid, fh, 0, 100).unwrap(), b"old");
    fs::write(d.path().join("a"), b"newer").unwrap();
    let fh2 = f.open(e.nodeid, libc::O_RDONLY as u32).unwrap();
    assert_eq!(f.read(e.nodeid, fh2, 0, 100).unwrap(), b"newer");
    assert_eq!(f.getattr(e.nodeid).unwrap().size, 5);
}

#[test]
fn readdir_when_dir_has_files_then_all_names_with_dots() {
    let (d, f) = rw();
    for i in 0..50 {
        fs::write(d.path().join(format!("file{i}")), b"").unwrap();
    }
    let ents = f.readdir_all(ROOT_ID, false, 4096).unwrap();
    let mut names: Vec<_> = ents.iter().map(|e| e.name.clone()).collect();
    names.sort();
    assert_eq!(names.len(), 52);
    assert!(names.contains(&".".to_string()) && names.contains(&"..".to_string()));
    assert!(names.contains(&"file49".to_string()));
}

#[test]
fn readdir_when_small_buffer_then_resumes_without_loss_or_duplicates() {
    let (d, f) = rw();
    for i in 0..200 {
        fs::write(d.path().join(format!("f{i:03}")), b"").unwrap();
    }
    // 80 bytes fit one entry at a time.
    let ents = f.readdir_all(ROOT_ID, false, 80).unwrap();
    let mut names: Vec<_> = ents.iter().map(|e| e.name.clone()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 202);
    assert_eq!(ents.len(), 202);
}

#[test]
fn readdirplus_when_entries_then_nodeids_attrs_and_no_count_for_dots() {
    let (d, f) = rw();
    fs::create_dir(d.path().join("sub")).unwrap();
    fs::write(d.path().join("f"), b"12345").unwrap();
    let ents = f.readdir_all(ROOT_ID, true, 4096).unwrap();
    assert_eq!(ents.len(), 4);
    for e in &ents {
        let entry = e.entry.unwrap();
        match e.name.as_str() {
            "." | ".." => assert_eq!(entry.nodeid, 0),
            "f" => {
                assert_eq!(entry.attr.size, 5);
                assert_eq!(f.getattr(entry.nodeid).unwrap().size, 5);
            }
            "sub" => assert_eq!(entry.attr.mode & libc::S_IFMT, libc::S_IFDIR),
            other => panic!("unexpected {other}"),
        }
    }
    // Two lookups were counted (f, sub), each forgettable once.
    assert_eq!(f.server.counts().0, 2);
    for e in ents.iter().filter(|e| e.entry.unwrap().nodeid != 0) {
        assert_eq!(f.forget(e.entry.unwrap().nodeid, 1).written, 0);
    }
    assert_eq!(f.server.counts().0, 0);
}

#[test]
fn readdirplus_when_buffer_fits_one_entry_then_no_lookup_leak() {
    let (d, f) = rw();
    for i in 0..20 {
        fs::write(d.path().join(format!("x{i:02}")), b"").unwrap();
    }
    let ents = f.readdir_all(ROOT_ID, true, 160).unwrap();
    assert_eq!(ents.len(), 22);
    // Each file looked up exactly once although most requests dropped entries that did not fit.
    for e in ents.iter().filter(|e| e.name.starts_with('x')) {
        let id = e.entry.unwrap().nodeid;
        f.forget(id, 1);
        assert_eq!(f.getattr(id).unwrap_err(), libc::ENOENT, "{}", e.name);
    }
}

#[test]
fn forget_when_refcount_reaches_zero_then_nodeid_unknown() {
    let (d, f) = rw();
    fs::write(d.path().join("a"), b"").unwrap();
    let e = f.lookup(ROOT_ID, "a").unwrap();
    f.lookup(ROOT_ID, "a").unwrap();
    let o = f.forget(e.nodeid, 1);
    assert_eq!(o.written, 0);
    assert!(f.getattr(e.nodeid).is_ok());
    f.forget(e.nodeid, 1);
    assert_eq!(f.getattr(e.nodeid).unwrap_err(), libc::ENOENT);
}

#[test]
fn batch_forget_when_many_then_all_dropped_and_no_reply() {
    let (d, f) = rw();
    let mut ids = Vec::new();
    for i in 0..10 {
        fs::write(d.path().join(format!("{i}")), b"").unwrap();
        ids.push(f.lookup(ROOT_ID, &format!("{i}")).unwrap().nodeid);
    }
    let mut args = bytes(&abi::BatchForgetIn {
        count: 10,
        dummy: 0,
    });
    for id in &ids {
        args.extend(bytes(&abi::ForgetOne {
            nodeid: *id,
            nlookup: 1,
        }));
    }
    assert_eq!(f.call(op::BATCH_FORGET, 0, &args, 4096).written, 0);
    assert_eq!(f.server.counts().0, 0);
}

#[test]
fn batch_forget_when_count_lies_then_only_present_items() {
    let (d, f) = rw();
    fs::write(d.path().join("a"), b"").unwrap();
    let id = f.lookup(ROOT_ID, "a").unwrap().nodeid;
    let mut args = bytes(&abi::BatchForgetIn {
        count: u32::MAX,
        dummy: 0,
    });
    args.extend(bytes(&abi::ForgetOne {
        nodeid: id,
        nlookup: 1,
    }));
    assert_eq!(f.call(op::BATCH_FORGET, 0, &args, 4096).written, 0);
    assert_eq!(f.server.counts().0, 0);
}

#[test]
fn statfs_when_root_then_host_numbers() {
    let (_d, f) = rw();
    let s: abi::StatfsOut = f.call(op::STATFS, ROOT_ID, &[], 4096).obj();
    assert!(s.blocks > 0);
    assert_eq!(s.namelen, 255);
    assert!(s.bsize > 0);
}

#[test]
fn server_new_when_source_missing_or_option_bad_then_named_error() {
    use virtiofs::{Server, ServerError};
    let e = Server::new(ShareOptions::new("/nonexistent/virtiofs-share", true)).unwrap_err();
    assert!(matches!(e, ServerError::OpenSharedDir { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/virtiofs-share"));
    let d = tempfile::tempdir().unwrap();
    let mut o = ShareOptions::new(d.path(), false);
    o.max_write = 100;
    let e = Server::new(o).unwrap_err();
    assert!(e.to_string().contains("max_write"), "{e}");
    let mut o = ShareOptions::new(d.path(), false);
    o.max_handles = 0;
    assert!(Server::new(o)
        .unwrap_err()
        .to_string()
        .contains("max_handles"));
    // A file is not a share.
    std::fs::write(d.path().join("f"), b"").unwrap();
    let e = Server::new(ShareOptions::new(d.path().join("f"), false)).unwrap_err();
    assert!(matches!(e, ServerError::OpenSharedDir { .. }), "{e:?}");
}

#[test]
fn lookup_when_missing_on_immutable_share_then_negative_entry_with_timeout() {
    let (_d, f) = ro();
    let e = f.lookup(ROOT_ID, "absent").unwrap();
    assert_eq!(e.nodeid, 0);
    assert_eq!(e.entry_valid, 86_400);
    assert_eq!(
        f.server.counts().0,
        0,
        "no node id held for a negative entry"
    );
    // Other errors stay errors.
    assert_eq!(f.lookup(ROOT_ID, "..").unwrap_err(), libc::EINVAL);
}
