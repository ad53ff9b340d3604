//! The passthrough file system: FUSE operations on a host directory tree.
//!
//! Escape safety: the guest reaches inodes only through LOOKUP (and the creating ops), each
//! one path component resolved with `openat(parent_fd, name, O_PATH | O_NOFOLLOW)`, where the
//! name has been checked to be a single component that is neither "." nor "..". Symlinks are
//! therefore never followed by the server; READLINK hands their text to the guest, which
//! resolves them in its own namespace. No operation takes a host path string.
//!
//! Opening an inode for I/O: its O_PATH fd is reopened through `/proc/self/fd/N`, with
//! `openat(proc_fd, "N", flags)` on a `/proc/self/fd` directory fd opened once at start. The
//! magic link is followed on purpose (that is what reopens exactly the inode the O_PATH fd
//! names, never a path); symlinks themselves are never reopened this way (ELOOP).
//! `open_by_handle_at` could open with the final flags too, but is only available as root;
//! one path for both cases is easier to get right.

mod inodes;
mod ops;
mod readdir;
pub(crate) mod sys;
mod xattr;

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::abi::{self, ROOT_ID};
use crate::server::{IdMap, ShareOptions};
use inodes::{FdCache, InodeData, InodeTable};
use sys::FileHandle;

pub use ops::{Ctx, SetattrArgs};
pub use readdir::EntryMaker;
pub use xattr::XattrReply;

/// An errno.
pub type Errno = i32;
/// The result of an operation.
pub type OpResult<T> = Result<T, Errno>;

/// The errno of an `io::Error` (EIO when it has none).
pub fn errno(e: &io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Locks `m`, recovering from poisoning: a panic elsewhere must not take the share down, and
/// every critical section leaves the tables consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An open file or directory (OPEN, CREATE, OPENDIR).
#[derive(Debug)]
pub struct Handle {
    /// The host fd.
    pub fd: OwnedFd,
    /// The node id it was opened for.
    pub nodeid: u64,
    /// Opened for writing.
    pub writable: bool,
    /// Serialises seek + getdents on directories.
    pub dir_lock: Mutex<()>,
}

#[derive(Debug)]
struct Handles {
    map: std::collections::HashMap<u64, Arc<Handle>>,
    next: u64,
}

/// One share.
#[derive(Debug)]
pub struct PassthroughFs {
    root: Arc<OwnedFd>,
    root_dev: u64,
    root_ino: u64,
    proc_fd: OwnedFd,
    use_handles: bool,
    /// The server runs as root and switches fsuid/fsgid for creating ops.
    switch_ids: bool,
    read_only: bool,
    uid_map: Option<IdMap>,
    gid_map: Option<IdMap>,
    max_handles: usize,
    /// One fd per file system seen, for `open_by_handle_at`.
    mount_fds: Mutex<std::collections::HashMap<u64, Arc<OwnedFd>>>,
    inodes: Mutex<InodeTable>,
    fds: Mutex<FdCache>,
    handles: Mutex<Handles>,
}

/// Why the share could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The source directory.
    Source(io::Error),
    /// `/proc/self/fd`.
    Proc(io::Error),
    /// The read-only mount clone.
    ReadOnlyTree(io::Error),
}

/// `/proc/self/fd`, opened by [`keep_proc_fd`] before a chroot that hides /proc.
static KEPT_PROC_FD: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();

/// Opens `/proc/self/fd` now and keeps it for every share opened later, for a sandbox that
/// is about to `chroot` into a share (which has no /proc of its own). The fd names this
/// process's fd table whatever the root directory is, and it is O_PATH: it reopens only
/// fds this process already holds.
pub(crate) fn keep_proc_fd() -> io::Result<()> {
    let fd = proc_self_fd()?;
    let _ = KEPT_PROC_FD.set(fd);
    Ok(())
}

fn proc_self_fd() -> io::Result<OwnedFd> {
    sys::openat(
        libc::AT_FDCWD,
        c"/proc/self/fd",
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
}

/// A `/proc/self/fd` handle for a new share: a duplicate of the kept one, if any.
fn open_proc_fd() -> io::Result<OwnedFd> {
    match KEPT_PROC_FD.get() {
        Some(fd) => fd.try_clone(),
        None => proc_self_fd(),
    }
}

impl PassthroughFs {
    /// Opens the share described by `opts`.
    pub fn new(opts: &ShareOptions) -> Result<Self, OpenError> {
        let path = CString::new(opts.source.as_os_str().as_encoded_bytes())
            .map_err(|_| OpenError::Source(io::Error::from_raw_os_error(libc::EINVAL)))?;
        let mut root = sys::openat(libc::AT_FDCWD, &path, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(OpenError::Source)?;
        let is_root = sys::geteuid() == 0;
        if is_root {
            // A private clone of the share's mounts on which the kernel refuses what the
            // server's own checks also refuse: writes on read-only shares, and device nodes
            // (nodev) and set-id bits (nosuid) everywhere. Only root may clone mounts;
            // others rely on the server's checks alone.
            let base = sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOSUID;
            if opts.read_only {
                root = sys::clone_tree(root.as_raw_fd(), base | sys::MOUNT_ATTR_RDONLY)
                    .map_err(OpenError::ReadOnlyTree)?;
            } else {
                match sys::clone_tree(root.as_raw_fd(), base) {
                    Ok(tree) => root = tree,
                    Err(e) => log::warn!(
                        "virtio-fs: no nodev clone of {}: {e}; relying on the server's checks",
                        opts.source.display()
                    ),
                }
            }
        }
        let st = sys::fstat(root.as_raw_fd()).map_err(OpenError::Source)?;
        let proc_fd = open_proc_fd().map_err(OpenError::Proc)?;
        let use_handles =
            is_root && opts.use_file_handles && sys::name_to_handle(root.as_raw_fd()).is_ok();
        let root = Arc::new(root);
        let fs = Self {
            root,
            root_dev: st.st_dev,
            root_ino: st.st_ino,
            proc_fd,
            use_handles,
            switch_ids: is_root,
            read_only: opts.read_only,
            uid_map: opts.uid_map,
            gid_map: opts.gid_map,
            max_handles: opts.max_handles,
            mount_fds: Mutex::new(std::collections::HashMap::new()),
            inodes: Mutex::new(InodeTable::new(opts.max_inodes)),
            fds: Mutex::new(FdCache::new(opts.fd_cache_size)),
            handles: Mutex::new(Handles {
                map: std::collections::HashMap::new(),
                next: 1,
            }),
        };
        if fs.use_handles {
            fs.note_mount(st.st_dev, fs.root.as_raw_fd());
        }
        Ok(fs)
    }

    /// Remembers a directory fd on file system `dev` for `open_by_handle_at`, which takes a
    /// real (not O_PATH) fd as its mount fd. Directories only: every file system below the
    /// root is entered through its root directory, and opening a directory has no side
    /// effects. One fd per file system, so bounded by the mounts beneath the share.
    fn note_mount(&self, dev: u64, dir: RawFd) {
        let mut m = lock(&self.mount_fds);
        if m.contains_key(&dev) {
            return;
        }
        if let Ok(fd) = self.reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY) {
            m.insert(dev, Arc::new(fd));
        }
    }

    /// Whether inodes are remembered by file handles (else by parent and name).
    pub fn uses_file_handles(&self) -> bool {
        self.use_handles
    }

    /// Node ids held, O_PATH fds cached, handles open.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            lock(&self.inodes).len(),
            lock(&self.fds).len(),
            lock(&self.handles).map.len(),
        )
    }

    /// Drops every node id and handle (DESTROY).
    pub fn reset(&self) {
        lock(&self.inodes).clear();
        lock(&self.fds).clear();
        lock(&self.handles).map.clear();
    }

    /// The O_PATH fd of `id`: cached, else reopened by handle or by re-walking its recorded
    /// (parent, name) and checking it is still the same file.
    fn inode_fd(&self, id: u64) -> OpResult<Arc<OwnedFd>> {
        if id == ROOT_ID {
            return Ok(self.root.clone());
        }
        if let Some(fd) = lock(&self.fds).get(id) {
            return Ok(fd);
        }
        let data = lock(&self.inodes).get(id).cloned().ok_or(libc::ENOENT)?;
        let fd = match &data.handle {
            Some(h) => self.open_handle(data.dev, h)?,
            None => {
                let parent = self.inode_fd(data.parent)?;
                sys::openat(
                    parent.as_raw_fd(),
                    &data.name,
                    libc::O_PATH | libc::O_NOFOLLOW,
                    0,
                )
                .map_err(|e| errno(&e))?
            }
        };
        let st = sys::fstat(fd.as_raw_fd()).map_err(|e| errno(&e))?;
        if st.st_dev != data.dev || st.st_ino != data.ino {
            return Err(libc::ESTALE);
        }
        if data.handle.is_none() && data.btime.is_some() && sys::btime(fd.as_raw_fd()) != data.btime
        {
            return Err(libc::ESTALE);
        }
        let fd = Arc::new(fd);
        lock(&self.fds).insert(id, fd.clone());
        Ok(fd)
    }

    fn open_handle(&self, dev: u64, h: &FileHandle) -> OpResult<OwnedFd> {
        let mount = lock(&self.mount_fds)
            .get(&dev)
            .cloned()
            .ok_or(libc::ESTALE)?;
        sys::open_by_handle(mount.as_raw_fd(), h, libc::O_PATH).map_err(|e| errno(&e))
    }

    /// Reopens the inode behind the O_PATH `fd` with `flags` (see the module docs).
    fn reopen(&self, fd: RawFd, flags: libc::c_int) -> OpResult<OwnedFd> {
        let name = CString::new(fd.to_string()).map_err(|_| libc::EIO)?;
        let flags = flags & !(libc::O_NOFOLLOW | libc::O_CREAT | libc::O_EXCL);
        sys::openat(self.proc_fd.as_raw_fd(), &name, flags, 0).map_err(|e| errno(&e))
    }

    /// Looks `name` up beneath `parent` and records one lookup; returns the node id and stat.
    fn do_lookup(&self, parent: u64, name: &CStr) -> OpResult<(u64, libc::stat64)> {
        let pfd = self.inode_fd(parent)?;
        let fd = sys::openat(pfd.as_raw_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)
            .map_err(|e| errno(&e))?;
        let st = sys::fstat(fd.as_raw_fd()).map_err(|e| errno(&e))?;
        let handle = if self.use_handles {
            sys::name_to_handle(fd.as_raw_fd()).ok()
        } else {
            None
        };
        let btime = if handle.is_none() {
            sys::btime(fd.as_raw_fd())
        } else {
            None
        };
        if handle.is_some() && st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            self.note_mount(st.st_dev, fd.as_raw_fd());
        }
        let fd = Arc::new(fd);
        let id = if st.st_dev == self.root_dev && st.st_ino == self.root_ino {
            // The root reached again (e.g. through a host bind mount): keep one id for it.
            ROOT_ID
        } else {
            lock(&self.inodes)
                .add_lookup(InodeData {
                    dev: st.st_dev,
                    ino: st.st_ino,
                    refcount: 1,
                    handle,
                    btime,
                    parent,
                    name: name.to_owned(),
                })
                .ok_or(libc::ENFILE)?
        };
        if id != ROOT_ID {
            lock(&self.fds).insert(id, fd);
        }
        Ok((id, st))
    }

    /// Drops `n` lookups of `id`.
    pub fn forget(&self, id: u64, n: u64) {
        if id == ROOT_ID {
            return;
        }
        if lock(&self.inodes).forget(id, n) {
            lock(&self.fds).remove(id);
        }
    }

    fn add_handle(&self, fd: OwnedFd, nodeid: u64, writable: bool) -> OpResult<u64> {
        let mut h = lock(&self.handles);
        if h.map.len() >= self.max_handles {
            return Err(libc::EMFILE);
        }
        let fh = h.next;
        h.next += 1;
        h.map.insert(
            fh,
            Arc::new(Handle {
                fd,
                nodeid,
                writable,
                dir_lock: Mutex::new(()),
            }),
        );
        Ok(fh)
    }

    fn handle(&self, nodeid: u64, fh: u64) -> OpResult<Arc<Handle>> {
        let h = lock(&self.handles)
            .map
            .get(&fh)
            .cloned()
            .ok_or(libc::EBADF)?;
        if h.nodeid != nodeid {
            return Err(libc::EBADF);
        }
        Ok(h)
    }

    fn take_handle(&self, nodeid: u64, fh: u64) -> OpResult<Arc<Handle>> {
        let mut hs = lock(&self.handles);
        if hs.map.get(&fh).map(|h| h.nodeid) != Some(nodeid) {
            return Err(libc::EBADF);
        }
        hs.map.remove(&fh).ok_or(libc::EBADF)
    }

    /// Host id → guest id.
    fn uid_out(&self, id: u32) -> u32 {
        self.uid_map.map_or(id, |m| m.to_guest(id))
    }
    fn gid_out(&self, id: u32) -> u32 {
        self.gid_map.map_or(id, |m| m.to_guest(id))
    }
    /// Guest id → host id.
    fn uid_in(&self, id: u32) -> u32 {
        self.uid_map.map_or(id, |m| m.to_host(id))
    }
    fn gid_in(&self, id: u32) -> u32 {
        self.gid_map.map_or(id, |m| m.to_host(id))
    }

    /// The FUSE attributes of `st` (ids mapped to the guest's view).
    pub fn attr(&self, st: &libc::stat64) -> abi::Attr {
        abi::Attr {
            ino: st.st_ino,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: st.st_atime as u64,
            mtime: st.st_mtime as u64,
            ctime: st.st_ctime as u64,
            atimensec: st.st_atime_nsec as u32,
            mtimensec: st.st_mtime_nsec as u32,
            ctimensec: st.st_ctime_nsec as u32,
            mode: st.st_mode,
            nlink: st.st_nlink as u32,
            uid: self.uid_out(st.st_uid),
            gid: self.gid_out(st.st_gid),
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_share_when_root_then_kernel_refuses_writes_beneath_it() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        let fs = PassthroughFs::new(&ShareOptions::new(d.path(), true)).unwrap();
        let (id, _) = fs.do_lookup(ROOT_ID, c"f").unwrap();
        let fd = fs.inode_fd(id).unwrap();
        // Straight to the kernel, past the server's own EROFS checks.
        let w = fs.reopen(fd.as_raw_fd(), libc::O_WRONLY);
        let mk = sys::openat(
            fs.root.as_raw_fd(),
            c"new",
            libc::O_CREAT | libc::O_WRONLY,
            0o644,
        );
        if sys::geteuid() == 0 {
            assert_eq!(w.unwrap_err(), libc::EROFS);
            assert_eq!(mk.unwrap_err().raw_os_error(), Some(libc::EROFS));
        } else {
            // Without CAP_SYS_ADMIN there is no read-only mount clone; only the server's
            // checks stand between the guest and the files.
            assert!(w.is_ok());
            assert!(mk.is_ok());
        }
        // The host's own view of the directory stays writable.
        std::fs::write(d.path().join("host"), b"y").unwrap();
    }

    #[test]
    fn id_map_when_in_and_out_of_range_then_mapped_or_overflow() {
        let m = IdMap {
            guest_base: 0,
            host_base: 100_000,
            count: 1000,
        };
        assert_eq!(m.to_host(5), 100_005);
        assert_eq!(m.to_guest(100_999), 999);
        assert_eq!(m.to_host(1000), IdMap::OVERFLOW_ID);
        assert_eq!(m.to_guest(5), IdMap::OVERFLOW_ID);
        let edge = IdMap {
            guest_base: 10,
            host_base: u32::MAX - 1,
            count: 5,
        };
        assert_eq!(edge.to_host(13), IdMap::OVERFLOW_ID);
    }
}
