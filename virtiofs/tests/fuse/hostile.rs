//! Escape attempts: names, symlinks, races, host-side hard links.

use std::fs;
use std::os::unix::fs::symlink;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::harness::*;
use virtiofs::abi::{op, ROOT_ID};
use virtiofs::ShareOptions;

#[test]
fn lookup_when_dotdot_or_dot_at_root_then_einval() {
    let (_d, f) = rw();
    assert_eq!(f.lookup(ROOT_ID, "..").unwrap_err(), libc::EINVAL);
    assert_eq!(f.lookup(ROOT_ID, ".").unwrap_err(), libc::EINVAL);
}

#[test]
fn lookup_when_dotdot_below_root_then_einval() {
    let (_d, f) = rw();
    let sub = f.mkdir(ROOT_ID, "sub", 0o755).unwrap();
    assert_eq!(f.lookup(sub.nodeid, "..").unwrap_err(), libc::EINVAL);
}

#[test]
fn names_when_slash_empty_nul_or_too_long_then_refused() {
    let (d, f) = rw();
    fs::create_dir(d.path().join("a")).unwrap();
    fs::write(d.path().join("a/b"), b"").unwrap();
    assert_eq!(f.lookup(ROOT_ID, "a/b").unwrap_err(), libc::EINVAL);
    assert_eq!(f.lookup(ROOT_ID, "/etc").unwrap_err(), libc::EINVAL);
    assert_eq!(f.lookup(ROOT_ID, "").unwrap_err(), libc::EINVAL);
    assert_eq!(
        f.lookup(ROOT_ID, &"x".repeat(256)).unwrap_err(),
        libc::ENAMETOOLONG
    );
    // An embedded NUL: "a\0b\0" must not quietly mean "a".
    let o = f.call(op::LOOKUP, ROOT_ID, b"a\0b\0", 4096);
    assert_eq!(o.result().unwrap_err(), libc::EINVAL);
    // No NUL at all.
    let o = f.call(op::LOOKUP, ROOT_ID, b"a", 4096);
    assert_eq!(o.result().unwrap_err(), libc::EINVAL);
    // The same rules for creating names.
    assert_eq!(f.mkdir(ROOT_ID, "x/y", 0o755).unwrap_err(), libc::EINVAL);
    assert_eq!(f.mkdir(ROOT_ID, "..", 0o755).unwrap_err(), libc::EINVAL);
    assert_eq!(
        f.symlink(ROOT_ID, "../evil", "t").unwrap_err(),
        libc::EINVAL
    );
    assert_eq!(
        f.rename2(ROOT_ID, "a", ROOT_ID, "../moved", 0).unwrap_err(),
        libc::EINVAL
    );
    assert!(d.path().join("a").exists());
    assert!(!d.path().parent().unwrap().join("moved").exists());
}

/// A share inside a scratch dir with a secret file next to it (outside the share).
fn share_with_outside() -> (tempfile::TempDir, std::path::PathBuf, Fuse) {
    let top = tempfile::tempdir().unwrap();
    fs::write(top.path().join("secret"), b"SECRET").unwrap();
    fs::create_dir(top.path().join("outside")).unwrap();
    fs::write(top.path().join("outside/secret"), b"SECRET").unwrap();
    let share = top.path().join("share");
    fs::create_dir(&share).unwrap();
    let f = Fuse::new(ShareOptions::new(&share, false));
    (top, share, f)
}

#[test]
fn symlinks_when_pointing_out_then_never_followed() {
    let (top, share, f) = share_with_outside();
    symlink(top.path().join("secret"), share.join("abs")).unwrap();
    symlink("../secret", share.join("rel")).unwrap();
    symlink(top.path().join("outside"), share.join("absdir")).unwrap();
    symlink("../outside", share.join("reldir")).unwrap();
    symlink("/proc/self/root", share.join("procroot")).unwrap();
    for name in ["abs", "rel"] {
        let e = f.lookup(ROOT_ID, name).unwrap();
        assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFLNK, "{name}");
        assert_eq!(
            f.open(e.nodeid, libc::O_RDONLY as u32).unwrap_err(),
            libc::ELOOP
        );
        assert!(!f.readlink(e.nodeid).unwrap().is_empty());
    }
    for name in ["absdir", "reldir", "procroot"] {
        let e = f.lookup(ROOT_ID, name).unwrap();
        assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFLNK, "{name}");
        // Using the link as a directory does not reach what it points at.
        assert_eq!(
            f.lookup(e.nodeid, "secret").unwrap_err(),
            libc::ENOTDIR,
            "{name}"
        );
        assert_eq!(
            f.lookup(e.nodeid, "etc").unwrap_err(),
            libc::ENOTDIR,
            "{name}"
        );
        assert_eq!(f.opendir(e.nodeid).unwrap_err(), libc::ENOTDIR, "{name}");
        assert_eq!(
            f.mkdir(e.nodeid, "x", 0o755).unwrap_err(),
            libc::ENOTDIR,
            "{name}"
        );
    }
    // Creating through the link does not land outside either.
    assert!(!top.path().join("outside/x").exists());
}

#[test]
fn symlink_when_swapped_in_during_lookups_then_never_followed() {
    let (top, share, f) = share_with_outside();
    fs::create_dir(share.join("d")).unwrap();
    fs::write(share.join("d/secret"), b"inside").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, share, outside) = (stop.clone(), share.clone(), top.path().join("outside"));
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                fs::rename(share.join("d"), share.join("d.real")).unwrap();
                symlink(&outside, share.join("d")).unwrap();
                std::thread::yield_now();
                fs::remove_file(share.join("d")).unwrap();
                fs::rename(share.join("d.real"), share.join("d")).unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let (mut saw_dir, mut saw_link) = (0, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while (saw_dir < 50 || saw_link < 50) && std::time::Instant::now() < deadline {
        let Ok(d) = f.lookup(ROOT_ID, "d") else {
            continue;
        };
        if d.attr.mode & libc::S_IFMT == libc::S_IFLNK {
            saw_link += 1;
        } else {
            saw_dir += 1;
        }
        if let Ok(s) = f.lookup(d.nodeid, "secret") {
            if let Ok(fh) = f.open(s.nodeid, libc::O_RDONLY as u32) {
                let data = f.read(s.nodeid, fh, 0, 64).unwrap();
                assert_eq!(data, b"inside", "read through a swapped-in symlink");
                f.release(s.nodeid, fh, false).unwrap();
            }
            f.forget(s.nodeid, 1);
        }
        f.forget(d.nodeid, 1);
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(
        saw_dir >= 50 && saw_link >= 50,
        "race not exercised: dir {saw_dir} link {saw_link} swaps {swaps}"
    );
}

#[test]
fn hard_link_when_made_on_host_to_outside_file_then_only_that_file() {
    // A host admin's hard link is that admin's choice: the guest can read the linked file
    // (it is a file in the share), but gains no path to anything around the original.
    let (top, share, f) = share_with_outside();
    fs::hard_link(top.path().join("outside/secret"), share.join("hl")).unwrap();
    let e = f.lookup(ROOT_ID, "hl").unwrap();
    assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFREG);
    let fh = f.open(e.nodeid, libc::O_RDONLY as u32).unwrap();
    assert_eq!(f.read(e.nodeid, fh, 0, 64).unwrap(), b"SECRET");
    assert_eq!(f.lookup(e.nodeid, "..").unwrap_err(), libc::EINVAL);
    assert_eq!(f.lookup(e.nodeid, "secret").unwrap_err(), libc::ENOTDIR);
}

#[test]
fn link_when_target_node_is_symlink_then_links_the_symlink_itself() {
    let (top, share, f) = share_with_outside();
    symlink(top.path().join("secret"), share.join("s")).unwrap();
    let e = f.lookup(ROOT_ID, "s").unwrap();
    let r = f.call(
        op::LINK,
        ROOT_ID,
        &cat(&[
            &bytes(&virtiofs::abi::LinkIn {
                oldnodeid: e.nodeid,
            }),
            &nul("s2"),
        ]),
        4096,
    );
    // Either refused or a second link to the symlink: never a hard link to the secret.
    if r.result().is_ok() {
        let m = fs::symlink_metadata(share.join("s2")).unwrap();
        assert!(m.file_type().is_symlink());
    }
    assert_eq!(fs::metadata(top.path().join("secret")).unwrap().len(), 6);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(top.path().join("secret")).unwrap().nlink(), 1);
}

#[test]
fn fallback_when_no_file_handles_and_tiny_fd_cache_then_rewalks_and_detects_replacement() {
    let d = tempfile::tempdir().unwrap();
    let mut o = ShareOptions::new(d.path(), false);
    o.use_file_handles = false;
    o.fd_cache_size = 1;
    let f = Fuse::new(o);
    assert!(!f.server.uses_file_handles());
    fs::create_dir_all(d.path().join("a/b/c")).unwrap();
    fs::write(d.path().join("a/b/c/f"), b"deep").unwrap();
    let a = f.lookup(ROOT_ID, "a").unwrap();
    let b = f.lookup(a.nodeid, "b").unwrap();
    let c = f.lookup(b.nodeid, "c").unwrap();
    let file = f.lookup(c.nodeid, "f").unwrap();
    // Only one fd is cached; everything else is re-walked from the root.
    assert!(f.server.counts().1 <= 1);
    for id in [a.nodeid, b.nodeid, c.nodeid, file.nodeid, a.nodeid] {
        assert!(f.getattr(id).is_ok());
    }
    let fh = f.open(file.nodeid, libc::O_RDONLY as u32).unwrap();
    assert_eq!(f.read(file.nodeid, fh, 0, 10).unwrap(), b"deep");
    // Replace the file on the host: the old node id is stale, not silently the new file.
    f.getattr(a.nodeid).unwrap();
    fs::remove_file(d.path().join("a/b/c/f")).unwrap();
    fs::write(d.path().join("a/b/c/f"), b"other").unwrap();
    let r = f.getattr(file.nodeid);
    assert!(matches!(r, Err(libc::ESTALE)), "{r:?}");
    // A rename through the server keeps the node reachable.
    let g = f.lookup(c.nodeid, "f").unwrap();
    f.rename2(c.nodeid, "f", ROOT_ID, "moved", 0).unwrap();
    f.getattr(a.nodeid).unwrap();
    assert_eq!(f.getattr(g.nodeid).unwrap().size, 5);
}

#[test]
fn file_handles_when_root_then_used_and_stale_after_host_replace() {
    let (d, f) = rw();
    assert_eq!(f.server.uses_file_handles(), is_root());
    fs::write(d.path().join("f"), b"1").unwrap();
    let e = f.lookup(ROOT_ID, "f").unwrap();
    // Evict by looking up more than the cache holds.
    for i in 0..300 {
        fs::write(d.path().join(format!("x{i}")), b"").unwrap();
        f.lookup(ROOT_ID, &format!("x{i}")).unwrap();
    }
    assert_eq!(f.getattr(e.nodeid).map(|a| a.size), Ok(1));
    fs::remove_file(d.path().join("f")).unwrap();
    for i in 300..600 {
        fs::write(d.path().join(format!("x{i}")), b"").unwrap();
        f.lookup(ROOT_ID, &format!("x{i}")).unwrap();
    }
    assert!(matches!(
        f.getattr(e.nodeid),
        Err(libc::ESTALE) | Err(libc::ENOENT)
    ));
}

#[test]
fn mknod_when_device_node_then_eperm_and_nothing_created() {
    let (d, f) = rw();
    for mode in [libc::S_IFBLK | 0o600, libc::S_IFCHR | 0o600] {
        let a = virtiofs::abi::MknodIn {
            mode,
            // 8:0, the first SCSI disk.
            rdev: 8 << 8,
            umask: 0,
            padding: 0,
        };
        let o = f.call(op::MKNOD, ROOT_ID, &cat(&[&bytes(&a), &nul("disk")]), 4096);
        assert_eq!(o.result().unwrap_err(), libc::EPERM);
    }
    assert!(!d.path().join("disk").exists());
}

#[test]
fn open_when_host_has_device_or_fifo_then_not_opened() {
    let (d, f) = rw();
    let p = d.path().join("fifo");
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    let e = f.lookup(ROOT_ID, "fifo").unwrap();
    // Opening a fifo with no writer would block the queue; it is refused instead.
    assert_eq!(
        f.open(e.nodeid, libc::O_RDONLY as u32).unwrap_err(),
        libc::ENXIO
    );
    if is_root() {
        let dev = d.path().join("null");
        let c = std::ffi::CString::new(dev.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid C string; 1:3 is /dev/null.
        let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        assert_eq!(r, 0);
        let e = f.lookup(ROOT_ID, "null").unwrap();
        assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFCHR);
        assert_eq!(
            f.open(e.nodeid, libc::O_RDWR as u32).unwrap_err(),
            libc::ENXIO
        );
    }
}

#[test]
fn open_when_odd_flags_then_stripped_to_plain_file_open() {
    let (d, f) = rw();
    std::fs::write(d.path().join("a"), b"abc").unwrap();
    let e = f.lookup(ROOT_ID, "a").unwrap();
    // O_PATH would give a handle that cannot read; O_TMPFILE on the root would make a file.
    let fh = f
        .open(
            e.nodeid,
            (libc::O_RDONLY | libc::O_PATH | libc::O_ASYNC) as u32,
        )
        .unwrap();
    assert_eq!(f.read(e.nodeid, fh, 0, 3).unwrap(), b"abc");
    let r = f.open(ROOT_ID, (libc::O_RDWR | libc::O_TMPFILE) as u32);
    assert_eq!(r.unwrap_err(), libc::EISDIR);
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
}
