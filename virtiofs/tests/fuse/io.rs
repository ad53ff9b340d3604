//! Xattrs, ACCESS, FALLOCATE, LSEEK and COPY_FILE_RANGE.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::harness::*;
use virtiofs::abi::{self, op, ROOT_ID};
use virtiofs::ShareOptions;

fn file(d: &tempfile::TempDir, f: &Fuse, name: &str, data: &[u8]) -> abi::EntryOut {
    fs::write(d.path().join(name), data).unwrap();
    f.lookup(ROOT_ID, name).unwrap()
}

fn setxattr(f: &Fuse, node: u64, name: &str, value: &[u8], flags: u32) -> Result<Vec<u8>, i32> {
    let a = abi::SetxattrInExt {
        size: value.len() as u32,
        flags,
        setxattr_flags: 0,
        padding: 0,
    };
    f.call(
        op::SETXATTR,
        node,
        &cat(&[&bytes(&a), &nul(name), value]),
        4096,
    )
    .result()
}

fn getxattr(f: &Fuse, node: u64, name: &str, size: u32) -> Result<Vec<u8>, i32> {
    let a = abi::GetxattrIn { size, padding: 0 };
    f.call(
        op::GETXATTR,
        node,
        &cat(&[&bytes(&a), &nul(name)]),
        size as usize + 64,
    )
    .result()
}

#[test]
fn xattr_when_set_get_list_remove_then_probe_and_erange_semantics() {
    let (d, f) = rw();
    let e = file(&d, &f, "a", b"");
    setxattr(&f, e.nodeid, "user.k", b"value", 0).unwrap();
    // Size probe.
    let probe = getxattr(&f, e.nodeid, "user.k", 0).unwrap();
    assert_eq!(
        abi::read_prefix::<abi::GetxattrOut>(&probe).unwrap().size,
        5
    );
    assert_eq!(getxattr(&f, e.nodeid, "user.k", 64).unwrap(), b"value");
    assert_eq!(
        getxattr(&f, e.nodeid, "user.k", 2).unwrap_err(),
        libc::ERANGE
    );
    assert_eq!(
        getxattr(&f, e.nodeid, "user.none", 64).unwrap_err(),
        libc::ENODATA
    );
    // XATTR_CREATE on an existing name.
    assert_eq!(
        setxattr(&f, e.nodeid, "user.k", b"v", 1).unwrap_err(),
        libc::EEXIST
    );
    let a = abi::GetxattrIn {
        size: 0,
        padding: 0,
    };
    let probe = f
        .call(op::LISTXATTR, e.nodeid, &bytes(&a), 64)
        .result()
        .unwrap();
    let need = abi::read_prefix::<abi::GetxattrOut>(&probe).unwrap().size;
    assert!(need as usize >= "user.k\0".len());
    let a = abi::GetxattrIn {
        size: need,
        padding: 0,
    };
    let list = f
        .call(op::LISTXATTR, e.nodeid, &bytes(&a), 4096)
        .result()
        .unwrap();
    assert!(list.windows(7).any(|w| w == b"user.k\0"));
    let a = abi::GetxattrIn {
        size: 1,
        padding: 0,
    };
    assert_eq!(
        f.call(op::LISTXATTR, e.nodeid, &bytes(&a), 4096)
            .result()
            .unwrap_err(),
        libc::ERANGE
    );
    f.call(op::REMOVEXATTR, e.nodeid, &nul("user.k"), 4096)
        .result()
        .unwrap();
    assert_eq!(
        getxattr(&f, e.nodeid, "user.k", 64).unwrap_err(),
        libc::ENODATA
    );
}

#[test]
fn xattr_when_old_layout_negotiated_then_short_setxattr_in_parsed() {
    let d = tempfile::tempdir().unwrap();
    let f = Fuse::uninit(ShareOptions::new(d.path(), false));
    // A guest that does not offer SETXATTR_EXT sends the 8-byte setxattr_in.
    f.init(37, 0).result().unwrap();
    fs::write(d.path().join("a"), b"").unwrap();
    let e = f.lookup(ROOT_ID, "a").unwrap();
    let a = abi::SetxattrIn { size: 3, flags: 0 };
    f.call(
        op::SETXATTR,
        e.nodeid,
        &cat(&[&bytes(&a), &nul("user.o"), b"abc"]),
        4096,
    )
    .result()
    .unwrap();
    assert_eq!(getxattr(&f, e.nodeid, "user.o", 10).unwrap(), b"abc");
}

#[test]
fn access_when_exists_then_ok_and_missing_x_then_eacces_for_non_root() {
    let (d, f) = rw();
    let e = file(&d, &f, "a", b"");
    fs::set_permissions(d.path().join("a"), fs::Permissions::from_mode(0o644)).unwrap();
    let call = |mask: u32| {
        f.call(
            op::ACCESS,
            e.nodeid,
            &bytes(&abi::AccessIn { mask, padding: 0 }),
            4096,
        )
        .result()
    };
    call(libc::R_OK as u32).unwrap();
    if is_root() {
        // Root has no exec bit to borrow: X_OK on a 0644 file fails even for root.
        assert_eq!(call(libc::X_OK as u32).unwrap_err(), libc::EACCES);
        f.uid.set(4321);
        f.gid.set(4321);
        assert_eq!(call(libc::W_OK as u32).unwrap_err(), libc::EACCES);
    } else {
        assert_eq!(call(libc::X_OK as u32).unwrap_err(), libc::EACCES);
    }
}

#[test]
fn fallocate_when_modes_then_size_and_holes_as_asked() {
    let (d, f) = rw();
    let e = file(&d, &f, "a", b"");
    let fh = f.open(e.nodeid, libc::O_RDWR as u32).unwrap();
    let call = |offset: u64, length: u64, mode: u32| {
        let a = abi::FallocateIn {
            fh,
            offset,
            length,
            mode,
            padding: 0,
        };
        f.call(op::FALLOCATE, e.nodeid, &bytes(&a), 4096).result()
    };
    call(0, 1 << 20, 0).unwrap();
    assert_eq!(fs::metadata(d.path().join("a")).unwrap().len(), 1 << 20);
    call(1 << 20, 1 << 20, libc::FALLOC_FL_KEEP_SIZE as u32).unwrap();
    assert_eq!(fs::metadata(d.path().join("a")).unwrap().len(), 1 << 20);
    let blocks_before = fs::metadata(d.path().join("a")).unwrap().blocks();
    call(
        0,
        512 << 10,
        (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32,
    )
    .unwrap();
    let m = fs::metadata(d.path().join("a")).unwrap();
    assert_eq!(m.len(), 1 << 20);
    assert!(m.blocks() < blocks_before);
    // Punch hole without KEEP_SIZE is refused by the host kernel.
    assert_eq!(
        call(0, 4096, libc::FALLOC_FL_PUNCH_HOLE as u32).unwrap_err(),
        libc::EOPNOTSUPP
    );
}

#[test]
fn lseek_when_sparse_file_then_data_and_hole_offsets() {
    let (d, f) = rw();
    let p = d.path().join("sparse");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut h = fs::File::create(&p).unwrap();
        h.seek(SeekFrom::Start(1 << 20)).unwrap();
        h.write_all(&[1u8; 4096]).unwrap();
    }
    let e = f.lookup(ROOT_ID, "sparse").unwrap();
    let fh = f.open(e.nodeid, libc::O_RDONLY as u32).unwrap();
    let call = |offset: u64, whence: i32| {
        let a = abi::LseekIn {
            fh,
            offset,
            whence: whence as u32,
            padding: 0,
        };
        f.call(op::LSEEK, e.nodeid, &bytes(&a), 4096)
            .result()
            .map(|b| abi::read_prefix::<abi::LseekOut>(&b).unwrap().offset)
    };
    assert_eq!(call(0, libc::SEEK_DATA).unwrap(), 1 << 20);
    assert_eq!(call(0, libc::SEEK_HOLE).unwrap(), 0);
    assert_eq!(
        call((1 << 20) + 8192, libc::SEEK_DATA).unwrap_err(),
        libc::ENXIO
    );
    assert_eq!(call(0, 99).unwrap_err(), libc::EINVAL);
}

#[test]
fn copy_file_range_when_two_handles_then_bytes_copied() {
    let (d, f) = rw();
    let src = file(&d, &f, "src", b"0123456789");
    let dst = file(&d, &f, "dst", b"");
    let fi = f.open(src.nodeid, libc::O_RDONLY as u32).unwrap();
    let fo = f.open(dst.nodeid, libc::O_WRONLY as u32).unwrap();
    let a = abi::CopyFileRangeIn {
        fh_in: fi,
        off_in: 2,
        nodeid_out: dst.nodeid,
        fh_out: fo,
        off_out: 0,
        len: 5,
        flags: 0,
    };
    let w: abi::WriteOut = f
        .call(op::COPY_FILE_RANGE, src.nodeid, &bytes(&a), 4096)
        .obj();
    assert_eq!(w.size, 5);
    assert_eq!(fs::read(d.path().join("dst")).unwrap(), b"23456");
    let ro_out = abi::CopyFileRangeIn {
        fh_out: fi,
        nodeid_out: src.nodeid,
        ..a
    };
    assert_eq!(
        f.call(op::COPY_FILE_RANGE, src.nodeid, &bytes(&ro_out), 4096)
            .result()
            .unwrap_err(),
        libc::EBADF
    );
}
