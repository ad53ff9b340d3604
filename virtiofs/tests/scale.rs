//! A 200,000-file tree walked through the server with RLIMIT_NOFILE = 1024 and no FORGETs
//! (like a guest with a big dcache): LOOKUP + GETATTR + READDIRPLUS of every directory and a
//! GETATTR of every file: the walk completes, fds stay bounded, memory is reported.
//! Its own test binary, because setrlimit applies to the whole process.

#[path = "fuse/harness.rs"]
mod harness;

use std::time::Instant;

use harness::*;
use virtiofs::abi::ROOT_ID;
use virtiofs::ShareOptions;

const DIRS: usize = 2_000;
const FILES_PER_DIR: usize = 100;
const FD_LIMIT: u64 = 1024;

fn vm_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn set_fd_limit(n: u64) {
    let rl = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: `rl` is a valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) }, 0);
}

#[test]
fn walk_when_200k_files_and_1024_fd_limit_then_completes_with_bounded_fds() {
    // tmpfs when there is one: creating and deleting 200,000 files on a busy disk costs
    // minutes of CI time and tests nothing about the server (the per-op tests use the disk).
    let d = match std::path::Path::new("/dev/shm") {
        shm if shm.is_dir() => tempfile::tempdir_in(shm).unwrap(),
        _ => tempfile::tempdir().unwrap(),
    };
    let t0 = Instant::now();
    for i in 0..DIRS {
        let dir = d.path().join(format!("d{i:04}"));
        std::fs::create_dir(&dir).unwrap();
        for j in 0..FILES_PER_DIR {
            std::fs::File::create(dir.join(format!("f{j:03}"))).unwrap();
        }
    }
    let create = t0.elapsed();
    set_fd_limit(FD_LIMIT);
    for use_file_handles in [true, false] {
        let mut opts = ShareOptions::new(d.path(), true);
        opts.use_file_handles = use_file_handles;
        walk(opts, create);
    }
}

fn walk(opts: ShareOptions, create: std::time::Duration) {
    let rss_before = vm_rss_kib();
    let fds_before = open_fds();
    let f = Fuse::new(opts);

    let t1 = Instant::now();
    let top = f.readdir_all(ROOT_ID, true, 64 * 1024).unwrap();
    let mut dirs = 0;
    let mut files = 0;
    let mut max_fds = 0;
    for ent in top.iter().filter(|e| e.name.starts_with('d')) {
        let dir = f.lookup(ROOT_ID, &ent.name).unwrap();
        f.getattr(dir.nodeid).unwrap();
        let ents = f.readdir_all(dir.nodeid, true, 64 * 1024).unwrap();
        for e in ents.iter().filter(|e| e.name.starts_with('f')) {
            let entry = e.entry.unwrap();
            assert_ne!(entry.nodeid, 0);
            f.getattr(entry.nodeid).unwrap();
            files += 1;
        }
        dirs += 1;
        if dirs % 100 == 0 {
            max_fds = max_fds.max(open_fds());
        }
    }
    // Revisit the first directory's files: long evicted from the fd cache, so each is
    // reopened by handle or re-walked; a second LOOKUP must give the same node id.
    let first = f.lookup(ROOT_ID, "d0000").unwrap();
    let before = f.readdir_all(first.nodeid, true, 64 * 1024).unwrap();
    for e in before.iter().filter(|e| e.name.starts_with('f')) {
        let again = f.lookup(first.nodeid, &e.name).unwrap();
        assert_eq!(again.nodeid, e.entry.unwrap().nodeid);
        f.getattr(again.nodeid).unwrap();
    }
    let walk = t1.elapsed();
    let fds_after = open_fds();
    let rss_after = vm_rss_kib();
    let (nodes, cached, handles) = f.server.counts();
    println!(
        "scale (file handles {}): create {:.1?}, walk {:.1?} ({} dirs, {} files), RSS {} -> {} KiB, fds {} -> {} (max {}), nodes {}, cached fds {}, handles {}",
        f.server.uses_file_handles(), create, walk, dirs, files, rss_before, rss_after,
        fds_before, fds_after, max_fds, nodes, cached, handles,
    );
    assert_eq!(dirs, DIRS);
    assert_eq!(files, DIRS * FILES_PER_DIR);
    assert_eq!(
        nodes,
        DIRS + DIRS * FILES_PER_DIR,
        "every entry holds a node id"
    );
    assert!((fds_after as u64) < FD_LIMIT && (max_fds as u64) < FD_LIMIT);
    assert!(cached <= f.server.options().fd_cache_size);
    assert_eq!(handles, 0);
}
