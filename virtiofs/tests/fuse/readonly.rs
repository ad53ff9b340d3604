//! A read-only share refuses every mutating request with EROFS and leaves the host untouched.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::harness::*;
use virtiofs::abi::{self, fattr, op, ROOT_ID};

struct Ro {
    _d: tempfile::TempDir,
    f: Fuse,
    file: u64,
    dir: u64,
    fh: u64,
    path: std::path::PathBuf,
}

fn setup() -> Ro {
    let (d, f) = ro();
    fs::write(d.path().join("file"), b"content").unwrap();
    fs::create_dir(d.path().join("dir")).unwrap();
    fs::write(d.path().join("dir/inner"), b"").unwrap();
    let file = f.lookup(ROOT_ID, "file").unwrap().nodeid;
    let dir = f.lookup(ROOT_ID, "dir").unwrap().nodeid;
    let fh = f.open(file, libc::O_RDONLY as u32).unwrap();
    let path = d.path().to_path_buf();
    Ro {
        _d: d,
        f,
        file,
        dir,
        fh,
        path,
    }
}

fn erofs(o: Out, what: &str) {
    assert_eq!(o.hdr.error, -libc::EROFS, "{what}");
}

#[test]
fn open_when_write_access_or_trunc_then_erofs_and_read_ok() {
    let r = setup();
    for flags in [
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_RDONLY | libc::O_TRUNC,
        libc::O_WRONLY | libc::O_APPEND,
    ] {
        assert_eq!(
            r.f.open(r.file, flags as u32).unwrap_err(),
            libc::EROFS,
            "{flags:#o}"
        );
    }
    assert_eq!(r.f.read(r.file, r.fh, 0, 100).unwrap(), b"content");
}

#[test]
fn every_mutating_op_when_read_only_then_erofs_and_host_unchanged() {
    let r = setup();
    let f = &r.f;
    let before = snapshot(&r.path);
    let create = abi::CreateIn {
        flags: (libc::O_WRONLY | libc::O_CREAT) as u32,
        mode: 0o644,
        umask: 0,
        open_flags: 0,
    };
    erofs(
        f.call(
            op::CREATE,
            ROOT_ID,
            &cat(&[&bytes(&create), &nul("new")]),
            4096,
        ),
        "CREATE",
    );
    let w = abi::WriteIn {
        fh: r.fh,
        size: 1,
        ..Default::default()
    };
    erofs(
        f.call(op::WRITE, r.file, &cat(&[&bytes(&w), b"x"]), 4096),
        "WRITE",
    );
    for valid in [
        fattr::MODE,
        fattr::UID,
        fattr::SIZE,
        fattr::MTIME | fattr::MTIME_NOW,
        fattr::SIZE | fattr::FH,
    ] {
        let s = abi::SetattrIn {
            valid,
            fh: r.fh,
            mode: 0o777,
            ..Default::default()
        };
        erofs(f.call(op::SETATTR, r.file, &bytes(&s), 4096), "SETATTR");
    }
    let mk = abi::MknodIn {
        mode: libc::S_IFIFO | 0o644,
        ..Default::default()
    };
    erofs(
        f.call(op::MKNOD, ROOT_ID, &cat(&[&bytes(&mk), &nul("p")]), 4096),
        "MKNOD",
    );
    let md = abi::MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    erofs(
        f.call(op::MKDIR, ROOT_ID, &cat(&[&bytes(&md), &nul("d2")]), 4096),
        "MKDIR",
    );
    erofs(
        f.call(op::SYMLINK, ROOT_ID, &cat(&[&nul("l"), &nul("t")]), 4096),
        "SYMLINK",
    );
    let l = abi::LinkIn { oldnodeid: r.file };
    erofs(
        f.call(op::LINK, r.dir, &cat(&[&bytes(&l), &nul("hl")]), 4096),
        "LINK",
    );
    erofs(f.call(op::UNLINK, ROOT_ID, &nul("file"), 4096), "UNLINK");
    erofs(f.call(op::RMDIR, ROOT_ID, &nul("dir"), 4096), "RMDIR");
    let rn = abi::RenameIn { newdir: r.dir };
    erofs(
        f.call(
            op::RENAME,
            ROOT_ID,
            &cat(&[&bytes(&rn), &nul("file"), &nul("m")]),
            4096,
        ),
        "RENAME",
    );
    for flags in [0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE] {
        let rn = abi::Rename2In {
            newdir: ROOT_ID,
            flags,
            padding: 0,
        };
        erofs(
            f.call(
                op::RENAME2,
                ROOT_ID,
                &cat(&[&bytes(&rn), &nul("file"), &nul("dir")]),
                4096,
            ),
            "RENAME2",
        );
    }
    let sx = abi::SetxattrInExt {
        size: 1,
        ..Default::default()
    };
    erofs(
        f.call(
            op::SETXATTR,
            r.file,
            &cat(&[&bytes(&sx), &nul("user.a"), b"v"]),
            4096,
        ),
        "SETXATTR",
    );
    erofs(
        f.call(op::REMOVEXATTR, r.file, &nul("user.a"), 4096),
        "REMOVEXATTR",
    );
    let fa = abi::FallocateIn {
        fh: r.fh,
        length: 4096,
        ..Default::default()
    };
    erofs(
        f.call(op::FALLOCATE, r.file, &bytes(&fa), 4096),
        "FALLOCATE",
    );
    let c = abi::CopyFileRangeIn {
        fh_in: r.fh,
        nodeid_out: r.file,
        fh_out: r.fh,
        off_out: 100,
        len: 3,
        ..Default::default()
    };
    erofs(
        f.call(op::COPY_FILE_RANGE, r.file, &bytes(&c), 4096),
        "COPY_FILE_RANGE",
    );
    let acc = abi::AccessIn {
        mask: libc::W_OK as u32,
        padding: 0,
    };
    erofs(
        f.call(op::ACCESS, r.file, &bytes(&acc), 4096),
        "ACCESS W_OK",
    );
    assert_eq!(snapshot(&r.path), before, "host tree changed");
}

/// Names, sizes, modes and contents of everything under `p`.
fn snapshot(p: &std::path::Path) -> Vec<(String, u64, u32, Vec<u8>)> {
    let mut v = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            let data = if m.is_file() {
                fs::read(e.path()).unwrap()
            } else {
                vec![]
            };
            if m.is_dir() {
                stack.push(e.path());
            }
            v.push((
                e.path().display().to_string(),
                m.len(),
                m.permissions().mode(),
                data,
            ));
        }
    }
    v.sort();
    v
}

#[test]
fn read_only_share_when_reading_then_everything_works() {
    let r = setup();
    let ents = r.f.readdir_all(ROOT_ID, true, 4096).unwrap();
    assert_eq!(ents.len(), 4);
    assert!(r.f.lookup(r.dir, "inner").is_ok());
    let a = abi::GetxattrIn {
        size: 0,
        padding: 0,
    };
    assert_eq!(r.f.call(op::LISTXATTR, r.file, &bytes(&a), 64).hdr.error, 0);
    let acc = abi::AccessIn {
        mask: libc::R_OK as u32,
        padding: 0,
    };
    assert_eq!(
        r.f.call(op::ACCESS, r.file, &bytes(&acc), 4096).hdr.error,
        0
    );
}
