//! The mutating ops and the rest of the opcode table on a writable share.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::harness::*;
use virtiofs::abi::{self, fattr, op, ROOT_ID};
use virtiofs::{IdMap, ShareOptions};

fn file(d: &tempfile::TempDir, f: &Fuse, name: &str, data: &[u8]) -> abi::EntryOut {
    fs::write(d.path().join(name), data).unwrap();
    f.lookup(ROOT_ID, name).unwrap()
}

#[test]
fn mkdir_when_new_then_host_dir_with_mode_and_entry() {
    let (d, f) = rw();
    let e = f.mkdir(ROOT_ID, "sub", 0o750).unwrap();
    let m = fs::metadata(d.path().join("sub")).unwrap();
    assert!(m.is_dir());
    // The mode arrives already masked by the guest; the server's umask is not applied again.
    assert_eq!(m.permissions().mode() & 0o7777, 0o750);
    assert_eq!(e.attr.ino, m.ino());
    assert_eq!(f.mkdir(ROOT_ID, "sub", 0o755).unwrap_err(), libc::EEXIST);
}

#[test]
fn mkdir_when_mode_has_group_write_then_kept() {
    let (d, f) = rw();
    f.mkdir(ROOT_ID, "g", 0o775).unwrap();
    assert_eq!(
        fs::metadata(d.path().join("g"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o775
    );
}

#[test]
fn create_when_new_then_file_open_for_write() {
    let (d, f) = rw();
    let (e, fh) = f
        .create(ROOT_ID, "n", 0o644, (libc::O_WRONLY | libc::O_CREAT) as u32)
        .unwrap();
    assert_eq!(f.write(e.nodeid, fh, 0, b"data").unwrap(), 4);
    assert_eq!(fs::read(d.path().join("n")).unwrap(), b"data");
    assert_eq!(
        fs::metadata(d.path().join("n"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
}

#[test]
fn create_when_exists_and_excl_then_eexist_else_opens_and_truncates() {
    let (d, f) = rw();
    fs::write(d.path().join("x"), b"old contents").unwrap();
    let excl = (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32;
    assert_eq!(
        f.create(ROOT_ID, "x", 0o644, excl).unwrap_err(),
        libc::EEXIST
    );
    let trunc = (libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u32;
    let (e, fh) = f.create(ROOT_ID, "x", 0o644, trunc).unwrap();
    assert_eq!(fs::metadata(d.path().join("x")).unwrap().len(), 0);
    assert_eq!(f.read(e.nodeid, fh, 0, 10).unwrap(), b"");
}

#[test]
fn open_when_o_trunc_then_truncated() {
    let (d, f) = rw();
    let e = file(&d, &f, "t", b"abcdef");
    f.open(e.nodeid, (libc::O_WRONLY | libc::O_TRUNC) as u32)
        .unwrap();
    assert_eq!(fs::metadata(d.path().join("t")).unwrap().len(), 0);
}

#[test]
fn write_when_handle_read_only_then_ebadf() {
    let (d, f) = rw();
    let e = file(&d, &f, "r", b"abc");
    let fh = f.open(e.nodeid, libc::O_RDONLY as u32).unwrap();
    assert_eq!(f.write(e.nodeid, fh, 0, b"x").unwrap_err(), libc::EBADF);
    assert_eq!(f.write(e.nodeid, 777, 0, b"x").unwrap_err(), libc::EBADF);
}

#[test]
fn write_when_kill_suidgid_then_setuid_bit_cleared() {
    let (d, f) = rw();
    let e = file(&d, &f, "s", b"abc");
    fs::set_permissions(d.path().join("s"), fs::Permissions::from_mode(0o4755)).unwrap();
    let fh = f.open(e.nodeid, libc::O_WRONLY as u32).unwrap();
    let w = abi::WriteIn {
        fh,
        offset: 0,
        size: 1,
        write_flags: abi::WRITE_KILL_SUIDGID,
        ..Default::default()
    };
    f.call(op::WRITE, e.nodeid, &cat(&[&bytes(&w), b"z"]), 4096)
        .result()
        .unwrap();
    assert_eq!(
        fs::metadata(d.path().join("s"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
}

#[test]
fn setattr_when_mode_size_and_times_then_host_changes() {
    let (d, f) = rw();
    let e = file(&d, &f, "a", b"0123456789");
    let s = abi::SetattrIn {
        valid: fattr::MODE | fattr::SIZE | fattr::ATIME | fattr::MTIME,
        mode: 0o600,
        size: 4,
        atime: 1_000_000,
        atimensec: 5,
        mtime: 2_000_000,
        mtimensec: 7,
        ..Default::default()
    };
    let a = f.setattr(e.nodeid, s).unwrap();
    assert_eq!(a.size, 4);
    assert_eq!(a.mode & 0o7777, 0o600);
    assert_eq!((a.mtime, a.mtimensec), (2_000_000, 7));
    let m = fs::metadata(d.path().join("a")).unwrap();
    assert_eq!((m.len(), m.atime(), m.mtime()), (4, 1_000_000, 2_000_000));
}

#[test]
fn setattr_when_now_flags_then_current_time() {
    let (d, f) = rw();
    let e = file(&d, &f, "a", b"");
    let old = abi::SetattrIn {
        valid: fattr::MTIME | fattr::ATIME,
        mtime: 1000,
        atime: 1000,
        ..Default::default()
    };
    f.setattr(e.nodeid, old).unwrap();
    let now = abi::SetattrIn {
        valid: fattr::MTIME | fattr::MTIME_NOW,
        ..Default::default()
    };
    let a = f.setattr(e.nodeid, now).unwrap();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(a.mtime + 60 > wall, "mtime {} now {}", a.mtime, wall);
    assert_eq!(a.atime, 1000, "atime untouched");
}

#[test]
fn setattr_when_by_handle_then_uses_open_file() {
    let (d, f) = rw();
    let e = file(&d, &f, "a", b"0123456789");
    let fh = f.open(e.nodeid, libc::O_RDWR as u32).unwrap();
    let s = abi::SetattrIn {
        valid: fattr::SIZE | fattr::FH,
        fh,
        size: 2,
        ..Default::default()
    };
    assert_eq!(f.setattr(e.nodeid, s).unwrap().size, 2);
    let bad = abi::SetattrIn { fh: 4242, ..s };
    assert_eq!(f.setattr(e.nodeid, bad).unwrap_err(), libc::EBADF);
}

#[test]
fn setattr_when_size_on_directory_then_eisdir() {
    let (_d, f) = rw();
    let e = f.mkdir(ROOT_ID, "d", 0o755).unwrap();
    let s = abi::SetattrIn {
        valid: fattr::SIZE,
        ..Default::default()
    };
    assert_eq!(f.setattr(e.nodeid, s).unwrap_err(), libc::EISDIR);
}

#[test]
fn setattr_when_uid_gid_then_chowned_if_root_else_eperm() {
    let (d, f) = rw();
    let e = file(&d, &f, "o", b"");
    let s = abi::SetattrIn {
        valid: fattr::UID | fattr::GID,
        uid: 1234,
        gid: 5678,
        ..Default::default()
    };
    let r = f.setattr(e.nodeid, s);
    if is_root() {
        let a = r.unwrap();
        assert_eq!((a.uid, a.gid), (1234, 5678));
        let m = fs::metadata(d.path().join("o")).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
    } else {
        assert_eq!(r.unwrap_err(), libc::EPERM);
    }
}

#[test]
fn create_when_root_then_owned_by_request_uid_gid_else_by_server_user() {
    let (d, f) = rw();
    f.uid.set(1500);
    f.gid.set(1600);
    // The share root must let uid 1500 create: make it world-writable.
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
    f.create(ROOT_ID, "c", 0o644, (libc::O_WRONLY | libc::O_CREAT) as u32)
        .unwrap();
    f.mkdir(ROOT_ID, "m", 0o755).unwrap();
    f.symlink(ROOT_ID, "l", "target").unwrap();
    let me = unsafe_ids();
    for name in ["c", "m", "l"] {
        let m = fs::symlink_metadata(d.path().join(name)).unwrap();
        if is_root() {
            assert_eq!((m.uid(), m.gid()), (1500, 1600), "{name}");
        } else {
            assert_eq!((m.uid(), m.gid()), me, "{name}");
        }
    }
    // The server thread's fsuid is back to normal afterwards.
    f.uid.set(0);
    f.gid.set(0);
    fs::write(d.path().join("after"), b"").unwrap();
    assert_eq!(fs::metadata(d.path().join("after")).unwrap().uid(), me.0);
}

fn unsafe_ids() -> (u32, u32) {
    // SAFETY: no arguments.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

#[test]
fn create_when_root_and_dir_not_writable_by_uid_then_eacces() {
    if !is_root() {
        // Without root the server cannot act as another uid; covered by the test above.
        let (_d, f) = rw();
        f.create(ROOT_ID, "c", 0o644, (libc::O_WRONLY | libc::O_CREAT) as u32)
            .unwrap();
        return;
    }
    let (d, f) = rw();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    f.uid.set(1500);
    f.gid.set(1500);
    let r = f.create(ROOT_ID, "c", 0o644, (libc::O_WRONLY | libc::O_CREAT) as u32);
    assert_eq!(r.unwrap_err(), libc::EACCES);
    assert!(!d.path().join("c").exists());
}

#[test]
fn id_map_when_set_then_applied_in_and_out_with_overflow() {
    let d = tempfile::tempdir().unwrap();
    let mut o = ShareOptions::new(d.path(), false);
    o.uid_map = Some(IdMap {
        guest_base: 0,
        host_base: 100_000,
        count: 65_536,
    });
    o.gid_map = o.uid_map;
    let f = Fuse::new(o);
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
    f.uid.set(1000);
    f.gid.set(1000);
    let e = f.mkdir(ROOT_ID, "m", 0o755).unwrap();
    if is_root() {
        let m = fs::metadata(d.path().join("m")).unwrap();
        assert_eq!((m.uid(), m.gid()), (101_000, 101_000));
        assert_eq!((e.attr.uid, e.attr.gid), (1000, 1000));
    } else {
        // Files belong to the server's user, which is outside the host range.
        assert_eq!(e.attr.uid, IdMap::OVERFLOW_ID);
    }
    // A host file owned by an unmapped id shows as the overflow id.
    fs::write(d.path().join("h"), b"").unwrap();
    let h = f.lookup(ROOT_ID, "h").unwrap();
    if is_root() {
        assert_eq!(h.attr.uid, IdMap::OVERFLOW_ID);
    }
}

#[test]
fn symlink_when_created_then_readlink_returns_text_unresolved() {
    let (d, f) = rw();
    let e = f.symlink(ROOT_ID, "l", "../../etc/passwd").unwrap();
    assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(f.readlink(e.nodeid).unwrap(), b"../../etc/passwd");
    assert_eq!(
        fs::read_link(d.path().join("l")).unwrap().to_str().unwrap(),
        "../../etc/passwd"
    );
}

#[test]
fn readlink_when_not_symlink_then_einval() {
    let (d, f) = rw();
    let e = file(&d, &f, "a", b"");
    assert_eq!(f.readlink(e.nodeid).unwrap_err(), libc::EINVAL);
}

#[test]
fn mknod_when_fifo_then_fifo_on_host() {
    let (d, f) = rw();
    let a = abi::MknodIn {
        mode: libc::S_IFIFO | 0o600,
        rdev: 0,
        umask: 0,
        padding: 0,
    };
    let e = f
        .entry(f.call(op::MKNOD, ROOT_ID, &cat(&[&bytes(&a), &nul("p")]), 4096))
        .unwrap();
    assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFIFO);
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(d.path().join("p"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn unlink_and_rmdir_when_present_then_gone_and_wrong_type_errors() {
    let (d, f) = rw();
    file(&d, &f, "a", b"");
    f.mkdir(ROOT_ID, "dir", 0o755).unwrap();
    assert_eq!(f.unlink(ROOT_ID, "dir").unwrap_err(), libc::EISDIR);
    assert_eq!(f.rmdir(ROOT_ID, "a").unwrap_err(), libc::ENOTDIR);
    f.unlink(ROOT_ID, "a").unwrap();
    f.rmdir(ROOT_ID, "dir").unwrap();
    assert!(!d.path().join("a").exists() && !d.path().join("dir").exists());
    assert_eq!(f.unlink(ROOT_ID, "a").unwrap_err(), libc::ENOENT);
}

#[test]
fn rename_when_plain_then_moved_and_node_follows() {
    let (d, f) = rw();
    let e = file(&d, &f, "a", b"x");
    let sub = f.mkdir(ROOT_ID, "sub", 0o755).unwrap();
    let a = abi::RenameIn { newdir: sub.nodeid };
    f.call(
        op::RENAME,
        ROOT_ID,
        &cat(&[&bytes(&a), &nul("a"), &nul("b")]),
        4096,
    )
    .result()
    .unwrap();
    assert_eq!(fs::read(d.path().join("sub/b")).unwrap(), b"x");
    assert!(f.getattr(e.nodeid).is_ok());
    assert_eq!(f.lookup(sub.nodeid, "b").unwrap().nodeid, e.nodeid);
}

#[test]
fn rename2_when_noreplace_and_target_exists_then_eexist() {
    let (d, f) = rw();
    file(&d, &f, "a", b"1");
    file(&d, &f, "b", b"2");
    assert_eq!(
        f.rename2(ROOT_ID, "a", ROOT_ID, "b", libc::RENAME_NOREPLACE)
            .unwrap_err(),
        libc::EEXIST
    );
    f.rename2(ROOT_ID, "a", ROOT_ID, "c", libc::RENAME_NOREPLACE)
        .unwrap();
    assert_eq!(fs::read(d.path().join("c")).unwrap(), b"1");
}

#[test]
fn rename2_when_exchange_then_swapped() {
    let (d, f) = rw();
    file(&d, &f, "a", b"1");
    file(&d, &f, "b", b"2");
    f.rename2(ROOT_ID, "a", ROOT_ID, "b", libc::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(fs::read(d.path().join("a")).unwrap(), b"2");
    assert_eq!(fs::read(d.path().join("b")).unwrap(), b"1");
}

#[test]
fn rename2_when_whiteout_or_unknown_flag_then_einval() {
    let (d, f) = rw();
    file(&d, &f, "a", b"1");
    assert_eq!(
        f.rename2(ROOT_ID, "a", ROOT_ID, "b", libc::RENAME_WHITEOUT)
            .unwrap_err(),
        libc::EINVAL
    );
    assert_eq!(
        f.rename2(ROOT_ID, "a", ROOT_ID, "b", 1 << 9).unwrap_err(),
        libc::EINVAL
    );
    assert!(d.path().join("a").exists());
}

#[test]
fn link_when_known_node_then_new_name_same_inode() {
    let (d, f) = rw();
    let e = file(&d, &f, "a", b"x");
    let sub = f.mkdir(ROOT_ID, "sub", 0o755).unwrap();
    let l = f
        .entry(f.call(
            op::LINK,
            sub.nodeid,
            &cat(&[
                &bytes(&abi::LinkIn {
                    oldnodeid: e.nodeid,
                }),
                &nul("l"),
            ]),
            4096,
        ))
        .unwrap();
    assert_eq!(l.nodeid, e.nodeid);
    assert_eq!(l.attr.nlink, 2);
    assert_eq!(
        fs::metadata(d.path().join("sub/l")).unwrap().ino(),
        e.attr.ino
    );
}

#[test]
fn link_when_unknown_node_then_enoent() {
    let (_d, f) = rw();
    let r = f.call(
        op::LINK,
        ROOT_ID,
        &cat(&[&bytes(&abi::LinkIn { oldnodeid: 999 }), &nul("l")]),
        4096,
    );
    assert_eq!(r.result().unwrap_err(), libc::ENOENT);
}

#[test]
fn fsync_and_fsyncdir_when_valid_handle_then_ok_else_ebadf() {
    let (d, f) = rw();
    let e = file(&d, &f, "a", b"x");
    let fh = f.open(e.nodeid, libc::O_RDWR as u32).unwrap();
    for flags in [0, abi::FSYNC_FDATASYNC] {
        let a = abi::FsyncIn {
            fh,
            fsync_flags: flags,
            padding: 0,
        };
        f.call(op::FSYNC, e.nodeid, &bytes(&a), 4096)
            .result()
            .unwrap();
    }
    let dh = f.opendir(ROOT_ID).unwrap();
    let a = abi::FsyncIn {
        fh: dh,
        fsync_flags: 0,
        padding: 0,
    };
    f.call(op::FSYNCDIR, ROOT_ID, &bytes(&a), 4096)
        .result()
        .unwrap();
    let bad = abi::FsyncIn { fh: 31337, ..a };
    assert_eq!(
        f.call(op::FSYNC, e.nodeid, &bytes(&bad), 4096)
            .result()
            .unwrap_err(),
        libc::EBADF
    );
    // SYNCFS syncs the share's file system.
    f.call(op::SYNCFS, ROOT_ID, &[0u8; 8], 4096)
        .result()
        .unwrap();
}

#[test]
fn flush_when_valid_handle_then_ok_else_ebadf() {
    let (d, f) = rw();
    let e = file(&d, &f, "a", b"x");
    let fh = f.open(e.nodeid, libc::O_RDONLY as u32).unwrap();
    let a = abi::FlushIn {
        fh,
        ..Default::default()
    };
    f.call(op::FLUSH, e.nodeid, &bytes(&a), 4096)
        .result()
        .unwrap();
    let bad = abi::FlushIn { fh: fh + 100, ..a };
    assert_eq!(
        f.call(op::FLUSH, e.nodeid, &bytes(&bad), 4096)
            .result()
            .unwrap_err(),
        libc::EBADF
    );
}

#[test]
fn unsupported_opcodes_when_sent_then_enosys() {
    let (_d, f) = rw();
    for opc in [
        op::GETLK,
        op::SETLK,
        op::SETLKW,
        op::POLL,
        op::IOCTL,
        op::BMAP,
        op::SETUPMAPPING,
        op::REMOVEMAPPING,
        op::TMPFILE,
        200,
        4096,
    ] {
        let o = f.call(opc, ROOT_ID, &[0u8; 64], 4096);
        assert_eq!(o.hdr.error, -libc::ENOSYS, "opcode {opc}");
        assert_eq!(o.written, 16);
    }
}

#[test]
fn interrupt_when_sent_then_no_reply_and_server_keeps_serving() {
    let (_d, f) = rw();
    let o = f.call(
        op::INTERRUPT,
        0,
        &bytes(&abi::InterruptIn { unique: 5 }),
        4096,
    );
    assert_eq!(o.written, 0);
    assert!(f.getattr(ROOT_ID).is_ok());
}

#[test]
fn lookup_when_inode_cap_reached_then_enfile_for_new_files_and_forget_frees() {
    let d = tempfile::tempdir().unwrap();
    let mut o = ShareOptions::new(d.path(), false);
    o.max_inodes = 2;
    let f = Fuse::new(o);
    for n in ["a", "b", "c"] {
        fs::write(d.path().join(n), b"").unwrap();
    }
    let a = f.lookup(ROOT_ID, "a").unwrap();
    f.lookup(ROOT_ID, "b").unwrap();
    assert_eq!(f.lookup(ROOT_ID, "c").unwrap_err(), libc::ENFILE);
    // Known files are still found (the count of lookups grows, not the table).
    assert_eq!(f.lookup(ROOT_ID, "a").unwrap().nodeid, a.nodeid);
    f.forget(a.nodeid, 2);
    assert!(f.lookup(ROOT_ID, "c").is_ok());
}

#[test]
fn handles_when_cap_reached_then_emfile_and_release_frees() {
    let d = tempfile::tempdir().unwrap();
    let mut o = ShareOptions::new(d.path(), false);
    o.max_handles = 3;
    let f = Fuse::new(o);
    fs::write(d.path().join("a"), b"").unwrap();
    let e = f.lookup(ROOT_ID, "a").unwrap();
    let hs: Vec<u64> = (0..3).map(|_| f.open(e.nodeid, 0).unwrap()).collect();
    assert_eq!(f.open(e.nodeid, 0).unwrap_err(), libc::EMFILE);
    assert_eq!(f.opendir(ROOT_ID).unwrap_err(), libc::EMFILE);
    f.release(e.nodeid, hs[0], false).unwrap();
    assert!(f.open(e.nodeid, 0).is_ok());
    // Releasing through the wrong node id is refused and keeps the handle.
    assert_eq!(f.release(ROOT_ID, hs[1], false).unwrap_err(), libc::EBADF);
    assert!(f.read(e.nodeid, hs[1], 0, 1).is_ok());
}

#[test]
fn setattr_when_symlink_times_then_link_itself_changes_not_target() {
    let (d, f) = rw();
    fs::write(d.path().join("target"), b"").unwrap();
    let target_mtime = fs::metadata(d.path().join("target")).unwrap().mtime();
    let l = f.symlink(ROOT_ID, "l", "target").unwrap();
    let s = abi::SetattrIn {
        valid: fattr::MTIME | fattr::ATIME,
        mtime: 123_456,
        atime: 123_456,
        ..Default::default()
    };
    assert_eq!(f.setattr(l.nodeid, s).unwrap().mtime, 123_456);
    assert_eq!(
        fs::symlink_metadata(d.path().join("l")).unwrap().mtime(),
        123_456
    );
    assert_eq!(
        fs::metadata(d.path().join("target")).unwrap().mtime(),
        target_mtime
    );
    let m = abi::SetattrIn {
        valid: fattr::MODE,
        mode: 0o777,
        ..Default::default()
    };
    assert_eq!(f.setattr(l.nodeid, m).unwrap_err(), libc::EOPNOTSUPP);
}
