//! The FUSE wire format (`include/uapi/linux/fuse.h`), as far as a virtio-fs server needs it.
//!
//! Every struct is `#[repr(C)]` with explicit padding fields, so it has no implicit padding
//! and can be `ByteValued` (any byte pattern is a valid value; the guest controls them all).

use vm_memory::ByteValued;

/// The protocol major version we speak.
pub const KERNEL_VERSION: u32 = 7;
/// The newest minor version we speak (Linux 6.1's client sends 7.37).
pub const KERNEL_MINOR_VERSION: u32 = 38;
/// The oldest minor we accept: 7.31 (the first with virtio-fs in mainline).
pub const MIN_KERNEL_MINOR_VERSION: u32 = 31;
/// The node id of the share root.
pub const ROOT_ID: u64 = 1;

/// FUSE opcodes.
#[allow(missing_docs)]
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const BMAP: u32 = 37;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const NOTIFY_REPLY: u32 = 41;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SETUPMAPPING: u32 = 48;
    pub const REMOVEMAPPING: u32 = 49;
    pub const SYNCFS: u32 = 50;
    pub const TMPFILE: u32 = 51;
}

/// `fuse_init_in.flags` / `fuse_init_out.flags` bits.
#[allow(missing_docs)]
pub mod init {
    pub const ASYNC_READ: u32 = 1 << 0;
    pub const ATOMIC_O_TRUNC: u32 = 1 << 3;
    pub const EXPORT_SUPPORT: u32 = 1 << 4;
    pub const BIG_WRITES: u32 = 1 << 5;
    pub const AUTO_INVAL_DATA: u32 = 1 << 12;
    pub const DO_READDIRPLUS: u32 = 1 << 13;
    pub const READDIRPLUS_AUTO: u32 = 1 << 14;
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    pub const MAX_PAGES: u32 = 1 << 22;
    pub const CACHE_SYMLINKS: u32 = 1 << 23;
    pub const SETXATTR_EXT: u32 = 1 << 29;
    pub const INIT_EXT: u32 = 1 << 30;
}

/// `fuse_setattr_in.valid` bits.
#[allow(missing_docs)]
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const LOCKOWNER: u32 = 1 << 9;
    pub const CTIME: u32 = 1 << 10;
    pub const KILL_SUIDGID: u32 = 1 << 11;
}

/// `fuse_open_out.open_flags` bits.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// Keep the directory's readdir cache.
pub const FOPEN_CACHE_DIR: u32 = 1 << 3;
/// `fuse_getattr_in.getattr_flags`: `fh` is valid.
pub const GETATTR_FH: u32 = 1 << 0;
/// `fuse_fsync_in.fsync_flags`: data only.
pub const FSYNC_FDATASYNC: u32 = 1 << 0;
/// `fuse_write_in.write_flags`: clear suid/sgid after a write (7.31+).
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;

macro_rules! wire {
    ($(#[$m:meta])* $name:ident { $($f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub struct $name { $(pub $f: $t),* }
        // SAFETY: repr(C), only integer fields laid out without implicit padding (checked by
        // the size assertions below), so every byte pattern is a valid value.
        unsafe impl ByteValued for $name {}
    };
}

wire!(/// Every request starts with this.
    InHeader { len: u32, opcode: u32, unique: u64, nodeid: u64, uid: u32, gid: u32, pid: u32,
    total_extlen: u16, padding: u16 });
wire!(/// Every reply starts with this.
    OutHeader { len: u32, error: i32, unique: u64 });
wire!(/// Attributes of one inode.
    Attr { ino: u64, size: u64, blocks: u64, atime: u64, mtime: u64, ctime: u64,
    atimensec: u32, mtimensec: u32, ctimensec: u32, mode: u32, nlink: u32, uid: u32, gid: u32,
    rdev: u32, blksize: u32, flags: u32 });
wire!(/// Reply to LOOKUP, MKNOD, MKDIR, SYMLINK, LINK; part of CREATE and READDIRPLUS.
    EntryOut { nodeid: u64, generation: u64, entry_valid: u64, attr_valid: u64,
    entry_valid_nsec: u32, attr_valid_nsec: u32, attr: Attr });
wire!(/// FORGET.
    ForgetIn { nlookup: u64 });
wire!(/// One BATCH_FORGET item.
    ForgetOne { nodeid: u64, nlookup: u64 });
wire!(/// BATCH_FORGET.
    BatchForgetIn { count: u32, dummy: u32 });
wire!(/// GETATTR.
    GetattrIn { getattr_flags: u32, dummy: u32, fh: u64 });
wire!(/// Reply to GETATTR and SETATTR.
    AttrOut { attr_valid: u64, attr_valid_nsec: u32, dummy: u32, attr: Attr });
wire!(/// MKNOD (followed by the name).
    MknodIn { mode: u32, rdev: u32, umask: u32, padding: u32 });
wire!(/// MKDIR (followed by the name).
    MkdirIn { mode: u32, umask: u32 });
wire!(/// RENAME (followed by old and new names).
    RenameIn { newdir: u64 });
wire!(/// RENAME2 (followed by old and new names).
    Rename2In { newdir: u64, flags: u32, padding: u32 });
wire!(/// LINK (followed by the new name).
    LinkIn { oldnodeid: u64 });
wire!(/// SETATTR.
    SetattrIn { valid: u32, padding: u32, fh: u64, size: u64, lock_owner: u64, atime: u64,
    mtime: u64, ctime: u64, atimensec: u32, mtimensec: u32, ctimensec: u32, mode: u32,
    unused4: u32, uid: u32, gid: u32, unused5: u32 });
wire!(/// OPEN, OPENDIR.
    OpenIn { flags: u32, open_flags: u32 });
wire!(/// CREATE (followed by the name).
    CreateIn { flags: u32, mode: u32, umask: u32, open_flags: u32 });
wire!(/// Reply to OPEN, OPENDIR; part of CREATE's reply.
    OpenOut { fh: u64, open_flags: u32, padding: u32 });
wire!(/// RELEASE, RELEASEDIR.
    ReleaseIn { fh: u64, flags: u32, release_flags: u32, lock_owner: u64 });
wire!(/// FLUSH.
    FlushIn { fh: u64, unused: u32, padding: u32, lock_owner: u64 });
wire!(/// READ, READDIR, READDIRPLUS.
    ReadIn { fh: u64, offset: u64, size: u32, read_flags: u32, lock_owner: u64, flags: u32,
    padding: u32 });
wire!(/// WRITE (followed by the data).
    WriteIn { fh: u64, offset: u64, size: u32, write_flags: u32, lock_owner: u64, flags: u32,
    padding: u32 });
wire!(/// Reply to WRITE.
    WriteOut { size: u32, padding: u32 });
wire!(/// Reply to STATFS.
    StatfsOut { blocks: u64, bfree: u64, bavail: u64, files: u64, ffree: u64, bsize: u32,
    namelen: u32, frsize: u32, padding: u32, spare: [u32; 6] });
wire!(/// FSYNC, FSYNCDIR.
    FsyncIn { fh: u64, fsync_flags: u32, padding: u32 });
wire!(/// SETXATTR without SETXATTR_EXT (followed by the name and value).
    SetxattrIn { size: u32, flags: u32 });
wire!(/// SETXATTR with SETXATTR_EXT.
    SetxattrInExt { size: u32, flags: u32, setxattr_flags: u32, padding: u32 });
wire!(/// GETXATTR (followed by the name), LISTXATTR.
    GetxattrIn { size: u32, padding: u32 });
wire!(/// Reply to a size probe of GETXATTR/LISTXATTR.
    GetxattrOut { size: u32, padding: u32 });
wire!(/// ACCESS.
    AccessIn { mask: u32, padding: u32 });
wire!(/// INIT (the 7.36+ layout; older clients send only the first four fields).
    InitIn { major: u32, minor: u32, max_readahead: u32, flags: u32, flags2: u32,
    unused: [u32; 11] });
wire!(/// Reply to INIT.
    InitOut { major: u32, minor: u32, max_readahead: u32, flags: u32, max_background: u16,
    congestion_threshold: u16, max_write: u32, time_gran: u32, max_pages: u16,
    map_alignment: u16, flags2: u32, unused: [u32; 7] });
wire!(/// One READDIR entry (followed by the name, padded to 8 bytes).
    Dirent { ino: u64, off: u64, namelen: u32, typ: u32 });
wire!(/// FALLOCATE.
    FallocateIn { fh: u64, offset: u64, length: u64, mode: u32, padding: u32 });
wire!(/// LSEEK.
    LseekIn { fh: u64, offset: u64, whence: u32, padding: u32 });
wire!(/// Reply to LSEEK.
    LseekOut { offset: u64 });
wire!(/// COPY_FILE_RANGE.
    CopyFileRangeIn { fh_in: u64, off_in: u64, nodeid_out: u64, fh_out: u64, off_out: u64,
    len: u64, flags: u64 });
wire!(/// INTERRUPT.
    InterruptIn { unique: u64 });

const _: () = {
    use std::mem::size_of;
    assert!(size_of::<InHeader>() == 40);
    assert!(size_of::<OutHeader>() == 16);
    assert!(size_of::<Attr>() == 88);
    assert!(size_of::<EntryOut>() == 128);
    assert!(size_of::<AttrOut>() == 104);
    assert!(size_of::<SetattrIn>() == 88);
    assert!(size_of::<ReadIn>() == 40);
    assert!(size_of::<WriteIn>() == 40);
    assert!(size_of::<StatfsOut>() == 80);
    assert!(size_of::<InitIn>() == 64);
    assert!(size_of::<InitOut>() == 64);
    assert!(size_of::<Dirent>() == 24);
    assert!(size_of::<ReleaseIn>() == 24);
    assert!(size_of::<FlushIn>() == 24);
    assert!(size_of::<CopyFileRangeIn>() == 56);
    assert!(size_of::<FallocateIn>() == 32);
};

/// Size of the INIT request before 7.36 (no `flags2`).
pub const INIT_IN_COMPAT_SIZE: usize = 16;
/// Size of the INIT reply for minor versions before 23.
pub const INIT_OUT_COMPAT_SIZE: usize = 24;

/// The bytes of `v`.
pub fn bytes_of<T: ByteValued>(v: &T) -> &[u8] {
    v.as_slice()
}

/// Reads a `T` from the front of `buf`; `None` when `buf` is too short.
pub fn read_prefix<T: ByteValued + Default>(buf: &[u8]) -> Option<T> {
    let n = std::mem::size_of::<T>();
    let bytes = buf.get(..n)?;
    let mut v = T::default();
    v.as_mut_slice().copy_from_slice(bytes);
    Some(v)
}

/// The padded size of a dirent whose name is `namelen` bytes.
pub fn dirent_size(namelen: usize) -> usize {
    (std::mem::size_of::<Dirent>() + namelen + 7) & !7
}
