//! Thin wrappers over the syscalls the passthrough needs, each returning `io::Result`.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `Err(last_os_error)` when `ret` is -1.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `openat(dir, name, flags, mode)`, always with `O_CLOEXEC`.
pub fn openat(dir: RawFd, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid C string; the kernel checks `dir`.
    let fd = check(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstatat(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)`: the attributes of what `fd` is.
pub fn fstat(fd: RawFd) -> io::Result<libc::stat64> {
    // SAFETY: all-zero is a valid stat64.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid empty C string and `st` is a valid out pointer.
    check(unsafe {
        libc::fstatat64(
            fd,
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn statat(dir: RawFd, name: &CStr) -> io::Result<libc::stat64> {
    // SAFETY: all-zero is a valid stat64.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a valid C string and `st` is a valid out pointer.
    check(unsafe { libc::fstatat64(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

/// The birth time of what `fd` is (statx STATX_BTIME), when the file system records one.
/// Used where no file handle is available to tell a file from a later one that got the
/// same inode number.
pub fn btime(fd: RawFd) -> Option<(i64, u32)> {
    // SAFETY: all-zero is a valid statx.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid empty C string and `stx` a valid out pointer.
    let r = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BTIME,
            &mut stx,
        )
    };
    (r == 0 && stx.stx_mask & libc::STATX_BTIME != 0)
        .then_some((stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec))
}

/// A file handle from `name_to_handle_at`: opaque bytes plus their type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHandle {
    handle_type: libc::c_int,
    bytes: Vec<u8>,
}

/// `MAX_HANDLE_SZ` from the kernel.
const MAX_HANDLE_SZ: usize = 128;

#[repr(C)]
struct RawHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// `name_to_handle_at(fd, "", AT_EMPTY_PATH)`: a handle for what `fd` is.
pub fn name_to_handle(fd: RawFd) -> io::Result<FileHandle> {
    let mut raw = RawHandle {
        handle_bytes: MAX_HANDLE_SZ as libc::c_uint,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `raw` starts with the `struct file_handle` header and has room for
    // MAX_HANDLE_SZ bytes as announced in `handle_bytes`; `mount_id` is a valid out pointer.
    check(unsafe {
        libc::name_to_handle_at(
            fd,
            c"".as_ptr(),
            (&mut raw as *mut RawHandle).cast(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    })?;
    let n = (raw.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok(FileHandle {
        handle_type: raw.handle_type,
        bytes: raw.f_handle[..n].to_vec(),
    })
}

/// `open_by_handle_at(mount_fd, handle, flags)`; needs CAP_DAC_READ_SEARCH.
pub fn open_by_handle(mount_fd: RawFd, h: &FileHandle, flags: libc::c_int) -> io::Result<OwnedFd> {
    let mut raw = RawHandle {
        handle_bytes: h.bytes.len() as libc::c_uint,
        handle_type: h.handle_type,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    raw.f_handle[..h.bytes.len()].copy_from_slice(&h.bytes);
    // SAFETY: `raw` is a valid `struct file_handle` with `handle_bytes` bytes of payload.
    let fd = check(unsafe {
        libc::open_by_handle_at(
            mount_fd,
            (&mut raw as *mut RawHandle).cast(),
            flags | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `readlinkat(dir, name)` into a buffer of PATH_MAX bytes.
pub fn readlinkat(dir: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `buf` is valid for `buf.len()` bytes.
    let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// `getdents64` into `buf`; returns the bytes filled.
pub fn getdents64(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes; the kernel writes at most that.
    let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `lseek(fd, off, whence)`.
pub fn lseek(fd: RawFd, off: i64, whence: libc::c_int) -> io::Result<i64> {
    // SAFETY: plain syscall on an fd.
    let r = unsafe { libc::lseek64(fd, off, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `fstatvfs(fd)`.
pub fn fstatvfs(fd: RawFd) -> io::Result<libc::statvfs64> {
    // SAFETY: all-zero is a valid statvfs64.
    let mut st: libc::statvfs64 = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out pointer.
    check(unsafe { libc::fstatvfs64(fd, &mut st) })?;
    Ok(st)
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `MOUNT_ATTR_RDONLY`.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `MOUNT_ATTR_NOSUID`.
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// `MOUNT_ATTR_NODEV`.
pub const MOUNT_ATTR_NODEV: u64 = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached clone of the mount tree at `dir` (open_tree + mount_setattr) with the mount
/// attributes `attrs` set (e.g. read-only, nodev), so the kernel itself enforces them
/// beneath it whatever the server gets wrong. Needs CAP_SYS_ADMIN.
pub fn clone_tree(dir: RawFd, attrs: u64) -> io::Result<OwnedFd> {
    // SAFETY: the path is a valid empty C string; flags are plain values.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dir,
            c"".as_ptr(),
            OPEN_TREE_CLONE
                | libc::O_CLOEXEC as libc::c_uint
                | libc::AT_EMPTY_PATH as u32
                | libc::AT_RECURSIVE as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `attr` is a valid mount_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// The effective uid of the process.
pub fn geteuid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() }
}

/// Sets this thread's fsuid and fsgid (raw syscalls: glibc's wrappers are per-thread too, but
/// the raw calls make it explicit) and restores the previous ones on drop.
pub struct FsIdGuard {
    old_uid: u32,
    old_gid: u32,
}

impl FsIdGuard {
    /// Switches to `uid`/`gid`. The gid goes first: once the fsuid is not 0 the thread may no
    /// longer be allowed to change its fsgid.
    pub fn switch(uid: u32, gid: u32) -> io::Result<Self> {
        // SAFETY: setfsgid only changes this thread's credentials and returns the old value.
        let old_gid = unsafe { libc::syscall(libc::SYS_setfsgid, gid) } as u32;
        // SAFETY: as above, for the fsuid.
        let old_uid = unsafe { libc::syscall(libc::SYS_setfsuid, uid) } as u32;
        // setfsuid reports no errors; a second call with an invalid id returns the current one.
        // SAFETY: as above.
        let now_uid = unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) } as u32;
        // SAFETY: as above.
        let now_gid = unsafe { libc::syscall(libc::SYS_setfsgid, u32::MAX) } as u32;
        let guard = Self { old_uid, old_gid };
        if now_uid != uid || now_gid != gid {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(guard)
    }
}

impl Drop for FsIdGuard {
    fn drop(&mut self) {
        // SAFETY: restores this thread's previous credentials; uid first (it regains the
        // capabilities needed to change the gid back).
        unsafe {
            libc::syscall(libc::SYS_setfsuid, self.old_uid);
            libc::syscall(libc::SYS_setfsgid, self.old_gid);
        }
    }
}
