//! The FUSE operations of [`PassthroughFs`]. Arguments arrive decoded and validated by the
//! server (names are single components, sizes are bounded); results are host values or an
//! errno.

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, RawFd};

use super::{errno, lock, sys, OpResult, PassthroughFs};
use crate::abi::{self, fattr};

/// Who sends a request (from the FUSE header).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ctx {
    /// Guest uid.
    pub uid: u32,
    /// Guest gid.
    pub gid: u32,
}

/// SETATTR, decoded.
#[derive(Debug, Clone, Copy)]
pub struct SetattrArgs {
    /// The raw request.
    pub inner: abi::SetattrIn,
}

/// Sets this thread's umask to 0 for the lifetime of the guard. The guest kernel already
/// applied the guest's umask to the mode it sends (we do not negotiate DONT_MASK), so the
/// server's own umask must not be applied a second time. The thread first gets its own
/// `fs_struct` (`unshare(CLONE_FS)`), so no other thread's umask changes.
struct UmaskGuard {
    old: libc::mode_t,
}

thread_local! {
    static OWN_FS: Cell<bool> = const { Cell::new(false) };
}

impl UmaskGuard {
    fn zero() -> Option<Self> {
        let own = OWN_FS.with(|c| {
            if !c.get() {
                // SAFETY: unshare(CLONE_FS) only detaches this thread's cwd/root/umask.
                c.set(unsafe { libc::unshare(libc::CLONE_FS) } == 0);
            }
            c.get()
        });
        own.then(|| Self {
            // SAFETY: umask only changes this thread's (now private) umask.
            old: unsafe { libc::umask(0) },
        })
    }
}

impl Drop for UmaskGuard {
    fn drop(&mut self) {
        // SAFETY: restores this thread's umask.
        unsafe { libc::umask(self.old) };
    }
}

/// What a creating op runs under: the request's fsuid/fsgid (when the server is root) and
/// umask 0. Why not chown after creating: between create and chown the file exists with the
/// wrong owner (another guest process could open it), chown may fail halfway (leaving a
/// root-owned file), and creating as the caller makes the host kernel apply its own checks
/// (e.g. setgid directories) exactly as for a local process.
struct Creds {
    _ids: Option<sys::FsIdGuard>,
    _umask: Option<UmaskGuard>,
}

pub(super) fn cvt(r: libc::c_int) -> OpResult<()> {
    if r < 0 {
        Err(errno(&std::io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

pub(super) fn cvt_size(r: isize) -> OpResult<usize> {
    if r < 0 {
        Err(errno(&std::io::Error::last_os_error()))
    } else {
        Ok(r as usize)
    }
}

fn fd_name(fd: RawFd) -> CString {
    CString::new(fd.to_string()).unwrap_or_default()
}

impl PassthroughFs {
    fn creds(&self, ctx: Ctx) -> OpResult<Creds> {
        let ids = if self.switch_ids {
            Some(
                sys::FsIdGuard::switch(self.uid_in(ctx.uid), self.gid_in(ctx.gid))
                    .map_err(|e| errno(&e))?,
            )
        } else {
            None
        };
        Ok(Creds {
            _ids: ids,
            _umask: UmaskGuard::zero(),
        })
    }

    pub(super) fn ro(&self) -> OpResult<()> {
        if self.read_only {
            Err(libc::EROFS)
        } else {
            Ok(())
        }
    }

    /// LOOKUP.
    pub fn lookup(&self, parent: u64, name: &CStr) -> OpResult<(u64, libc::stat64)> {
        self.do_lookup(parent, name)
    }

    /// GETATTR (by handle when `fh` is given).
    pub fn getattr(&self, nodeid: u64, fh: Option<u64>) -> OpResult<libc::stat64> {
        match fh {
            Some(fh) => {
                let h = self.handle(nodeid, fh)?;
                sys::fstat(h.fd.as_raw_fd()).map_err(|e| errno(&e))
            }
            None => {
                let fd = self.inode_fd(nodeid)?;
                sys::fstat(fd.as_raw_fd()).map_err(|e| errno(&e))
            }
        }
    }

    /// SETATTR.
    pub fn setattr(&self, nodeid: u64, a: &SetattrArgs) -> OpResult<libc::stat64> {
        self.ro()?;
        let a = a.inner;
        let ifd = self.inode_fd(nodeid)?;
        let st = sys::fstat(ifd.as_raw_fd()).map_err(|e| errno(&e))?;
        let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        let handle = if a.valid & fattr::FH != 0 {
            Some(self.handle(nodeid, a.fh)?)
        } else {
            None
        };
        let proc_name = fd_name(ifd.as_raw_fd());
        if a.valid & fattr::MODE != 0 {
            if is_link {
                return Err(libc::EOPNOTSUPP);
            }
            // SAFETY: `proc_name` is a valid C string naming our own O_PATH fd.
            cvt(unsafe {
                libc::fchmodat(
                    self.proc_fd.as_raw_fd(),
                    proc_name.as_ptr(),
                    a.mode & 0o7777,
                    0,
                )
            })?;
        }
        if a.valid & (fattr::UID | fattr::GID) != 0 {
            let uid = if a.valid & fattr::UID != 0 {
                self.uid_in(a.uid)
            } else {
                u32::MAX
            };
            let gid = if a.valid & fattr::GID != 0 {
                self.gid_in(a.gid)
            } else {
                u32::MAX
            };
            // SAFETY: empty path with AT_EMPTY_PATH acts on the O_PATH fd itself.
            cvt(unsafe {
                libc::fchownat(
                    ifd.as_raw_fd(),
                    c"".as_ptr(),
                    uid,
                    gid,
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        if a.valid & fattr::SIZE != 0 {
            let size = i64::try_from(a.size).map_err(|_| libc::EINVAL)?;
            let r = match &handle {
                // SAFETY: plain syscall on an fd we own.
                Some(h) => unsafe { libc::ftruncate64(h.fd.as_raw_fd(), size) },
                None => {
                    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                        return Err(if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                            libc::EISDIR
                        } else {
                            libc::EINVAL
                        });
                    }
                    let f = self.reopen(ifd.as_raw_fd(), libc::O_WRONLY)?;
                    // SAFETY: plain syscall on an fd we own.
                    unsafe { libc::ftruncate64(f.as_raw_fd(), size) }
                }
            };
            cvt(r)?;
        }
        if a.valid & (fattr::ATIME | fattr::MTIME) != 0 {
            let omit = libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            };
            let now = libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            };
            let pick = |set: u32, now_bit: u32, sec: u64, nsec: u32| {
                if a.valid & set == 0 {
                    omit
                } else if a.valid & now_bit != 0 {
                    now
                } else {
                    libc::timespec {
                        tv_sec: sec as libc::time_t,
                        tv_nsec: i64::from(nsec.min(999_999_999)),
                    }
                }
            };
            let times = [
                pick(fattr::ATIME, fattr::ATIME_NOW, a.atime, a.atimensec),
                pick(fattr::MTIME, fattr::MTIME_NOW, a.mtime, a.mtimensec),
            ];
            let r = match &handle {
                // SAFETY: `times` is a valid array of two timespecs.
                Some(h) => unsafe { libc::futimens(h.fd.as_raw_fd(), times.as_ptr()) },
                None if is_link => self.symlink_times(nodeid, &st, &times)?,
                // SAFETY: `proc_name` names our own fd; `times` holds two timespecs.
                None => unsafe {
                    libc::utimensat(
                        self.proc_fd.as_raw_fd(),
                        proc_name.as_ptr(),
                        times.as_ptr(),
                        0,
                    )
                },
            };
            cvt(r)?;
        }
        sys::fstat(ifd.as_raw_fd()).map_err(|e| errno(&e))
    }

    /// Sets a symlink's times (lutimes) through its recorded parent and name: there is no
    /// fd-based call for a symlink itself. The name is checked to still be this inode.
    fn symlink_times(
        &self,
        nodeid: u64,
        st: &libc::stat64,
        times: &[libc::timespec; 2],
    ) -> OpResult<libc::c_int> {
        let (parent, name) = {
            let t = lock(&self.inodes);
            let d = t.get(nodeid).ok_or(libc::ENOENT)?;
            (d.parent, d.name.clone())
        };
        let pfd = self.inode_fd(parent)?;
        let now = sys::statat(pfd.as_raw_fd(), &name).map_err(|e| errno(&e))?;
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
            return Err(libc::ESTALE);
        }
        // SAFETY: valid C string; `times` holds two timespecs.
        Ok(unsafe {
            libc::utimensat(
                pfd.as_raw_fd(),
                name.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
    }

    /// READLINK: the link's text, unresolved.
    pub fn readlink(&self, nodeid: u64) -> OpResult<Vec<u8>> {
        let fd = self.inode_fd(nodeid)?;
        let st = sys::fstat(fd.as_raw_fd()).map_err(|e| errno(&e))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
            return Err(libc::EINVAL);
        }
        sys::readlinkat(fd.as_raw_fd(), c"").map_err(|e| errno(&e))
    }

    fn after_create(&self, parent: u64, name: &CStr) -> OpResult<(u64, libc::stat64)> {
        self.do_lookup(parent, name)
    }

    /// SYMLINK: `name` in `parent` pointing at `target` (stored as text, never resolved).
    pub fn symlink(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &CStr,
        target: &CStr,
    ) -> OpResult<(u64, libc::stat64)> {
        self.ro()?;
        let pfd = self.inode_fd(parent)?;
        {
            let _c = self.creds(ctx)?;
            // SAFETY: valid C strings; `pfd` is a directory fd.
            cvt(unsafe { libc::symlinkat(target.as_ptr(), pfd.as_raw_fd(), name.as_ptr()) })?;
        }
        self.after_create(parent, name)
    }

    /// MKNOD (regular files, fifos, sockets, devices: the host kernel decides what is allowed).
    pub fn mknod(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
    ) -> OpResult<(u64, libc::stat64)> {
        self.ro()?;
        match mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK => {}
            // Device nodes in a host directory are a hazard for the host's own users of
            // it; the guest never needs them here (its kernel opens device inodes itself,
            // never through the server).
            libc::S_IFCHR | libc::S_IFBLK => return Err(libc::EPERM),
            _ => return Err(libc::EINVAL),
        }
        let pfd = self.inode_fd(parent)?;
        {
            let _c = self.creds(ctx)?;
            // SAFETY: valid C string; `pfd` is a directory fd.
            cvt(unsafe {
                libc::mknodat(
                    pfd.as_raw_fd(),
                    name.as_ptr(),
                    mode,
                    libc::dev_t::from(rdev),
                )
            })?;
        }
        self.after_create(parent, name)
    }

    /// MKDIR.
    pub fn mkdir(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &CStr,
        mode: u32,
    ) -> OpResult<(u64, libc::stat64)> {
        self.ro()?;
        let pfd = self.inode_fd(parent)?;
        {
            let _c = self.creds(ctx)?;
            // SAFETY: valid C string; `pfd` is a directory fd.
            cvt(unsafe { libc::mkdirat(pfd.as_raw_fd(), name.as_ptr(), mode & 0o7777) })?;
        }
        self.after_create(parent, name)
    }

    fn unlink_flags(&self, parent: u64, name: &CStr, flags: libc::c_int) -> OpResult<()> {
        self.ro()?;
        let pfd = self.inode_fd(parent)?;
        // SAFETY: valid C string; `pfd` is a directory fd.
        cvt(unsafe { libc::unlinkat(pfd.as_raw_fd(), name.as_ptr(), flags) })
    }

    /// UNLINK.
    pub fn unlink(&self, parent: u64, name: &CStr) -> OpResult<()> {
        self.unlink_flags(parent, name, 0)
    }

    /// RMDIR.
    pub fn rmdir(&self, parent: u64, name: &CStr) -> OpResult<()> {
        self.unlink_flags(parent, name, libc::AT_REMOVEDIR)
    }

    /// RENAME / RENAME2. RENAME_WHITEOUT is refused (EINVAL): it creates a character device
    /// on the host for overlayfs, which a guest has no business doing in our share.
    pub fn rename(
        &self,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> OpResult<()> {
        self.ro()?;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return Err(libc::EINVAL);
        }
        let ofd = self.inode_fd(olddir)?;
        let nfd = self.inode_fd(newdir)?;
        let moved = sys::statat(ofd.as_raw_fd(), oldname).ok();
        let swapped = if flags & libc::RENAME_EXCHANGE != 0 {
            sys::statat(nfd.as_raw_fd(), newname).ok()
        } else {
            None
        };
        // SAFETY: valid C strings; both fds are directory fds.
        cvt(unsafe {
            libc::renameat2(
                ofd.as_raw_fd(),
                oldname.as_ptr(),
                nfd.as_raw_fd(),
                newname.as_ptr(),
                flags,
            )
        })?;
        // Keep the recorded (parent, name) of known inodes right for re-walks.
        let mut t = lock(&self.inodes);
        if let Some(id) = moved.and_then(|st| t.find(st.st_dev, st.st_ino)) {
            t.set_location(id, newdir, newname.to_owned());
        }
        if let Some(id) = swapped.and_then(|st| t.find(st.st_dev, st.st_ino)) {
            t.set_location(id, olddir, oldname.to_owned());
        }
        Ok(())
    }

    /// LINK: a new name for a node the guest already reached through a lookup.
    pub fn link(
        &self,
        nodeid: u64,
        newparent: u64,
        newname: &CStr,
    ) -> OpResult<(u64, libc::stat64)> {
        self.ro()?;
        let fd = self.inode_fd(nodeid)?;
        let pfd = self.inode_fd(newparent)?;
        let proc_name = fd_name(fd.as_raw_fd());
        // SAFETY: valid C strings; AT_SYMLINK_FOLLOW follows only our own fd's magic link to
        // the inode it names.
        cvt(unsafe {
            libc::linkat(
                self.proc_fd.as_raw_fd(),
                proc_name.as_ptr(),
                pfd.as_raw_fd(),
                newname.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        })?;
        self.after_create(newparent, newname)
    }

    fn check_open_flags(&self, flags: u32) -> OpResult<libc::c_int> {
        let flags = flags as libc::c_int;
        let acc = flags & libc::O_ACCMODE;
        if self.read_only && (acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0) {
            return Err(libc::EROFS);
        }
        // Only flags that make sense for reopening a regular file or directory: no O_PATH,
        // O_TMPFILE, O_CREAT/O_EXCL (CREATE adds those itself), O_NOFOLLOW (the magic link
        // must be followed), O_ASYNC or O_NOCTTY.
        let allowed = libc::O_ACCMODE
            | libc::O_APPEND
            | libc::O_NONBLOCK
            | libc::O_DSYNC
            | libc::O_SYNC
            | libc::O_DIRECT
            | libc::O_LARGEFILE
            | libc::O_NOATIME
            | libc::O_TRUNC;
        Ok(flags & allowed)
    }

    /// OPEN: returns the file handle.
    pub fn open(&self, nodeid: u64, flags: u32) -> OpResult<u64> {
        let flags = self.check_open_flags(flags)?;
        let fd = self.inode_fd(nodeid)?;
        let st = sys::fstat(fd.as_raw_fd()).map_err(|e| errno(&e))?;
        // The guest kernel opens fifos, sockets and device inodes itself; OPEN only comes for
        // regular files, so nothing else is ever opened on the host (opening a device or a
        // fifo there could block the queue or have side effects).
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {}
            libc::S_IFLNK => return Err(libc::ELOOP),
            libc::S_IFDIR if flags & libc::O_ACCMODE == libc::O_RDONLY => {}
            libc::S_IFDIR => return Err(libc::EISDIR),
            _ => return Err(libc::ENXIO),
        }
        let f = self.reopen(fd.as_raw_fd(), flags)?;
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        self.add_handle(f, nodeid, writable)
    }

    /// CREATE: creates (or with O_EXCL insists on creating) and opens `name`.
    pub fn create(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &CStr,
        mode: u32,
        flags: u32,
    ) -> OpResult<(u64, libc::stat64, u64)> {
        self.ro()?;
        let oflags = self.check_open_flags(flags)? | (flags as libc::c_int & libc::O_EXCL);
        let pfd = self.inode_fd(parent)?;
        let f = {
            let _c = self.creds(ctx)?;
            sys::openat(
                pfd.as_raw_fd(),
                name,
                oflags | libc::O_CREAT | libc::O_NOFOLLOW,
                mode & 0o7777,
            )
            .map_err(|e| errno(&e))?
        };
        let (id, st) = self.after_create(parent, name)?;
        let fst = sys::fstat(f.as_raw_fd()).map_err(|e| errno(&e))?;
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) {
            // The name was replaced between create and lookup.
            self.forget(id, 1);
            return Err(libc::EIO);
        }
        let writable = oflags & libc::O_ACCMODE != libc::O_RDONLY;
        match self.add_handle(f, id, writable) {
            Ok(fh) => Ok((id, st, fh)),
            Err(e) => {
                self.forget(id, 1);
                Err(e)
            }
        }
    }

    /// READ: at most `size` bytes at `offset`.
    pub fn read(&self, nodeid: u64, fh: u64, offset: u64, size: usize) -> OpResult<Vec<u8>> {
        let h = self.handle(nodeid, fh)?;
        let off = i64::try_from(offset).map_err(|_| libc::EINVAL)?;
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` is valid for `size` bytes.
        let n = cvt_size(unsafe {
            libc::pread64(h.fd.as_raw_fd(), buf.as_mut_ptr().cast(), size, off)
        })?;
        buf.truncate(n);
        Ok(buf)
    }

    /// WRITE.
    pub fn write(
        &self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
    ) -> OpResult<usize> {
        self.ro()?;
        let h = self.handle(nodeid, fh)?;
        if !h.writable {
            return Err(libc::EBADF);
        }
        let off = i64::try_from(offset).map_err(|_| libc::EINVAL)?;
        if kill_suidgid {
            self.kill_suidgid(h.fd.as_raw_fd())?;
        }
        // SAFETY: `data` is valid for its length.
        cvt_size(unsafe { libc::pwrite64(h.fd.as_raw_fd(), data.as_ptr().cast(), data.len(), off) })
    }

    /// Clears set-uid and set-gid (with group exec) like a write by an unprivileged user
    /// would: the server is root, so the host kernel would not clear them by itself.
    fn kill_suidgid(&self, fd: RawFd) -> OpResult<()> {
        let st = sys::fstat(fd).map_err(|e| errno(&e))?;
        let mut mode = st.st_mode & 0o7777;
        let before = mode;
        mode &= !libc::S_ISUID;
        if mode & libc::S_IXGRP != 0 {
            mode &= !libc::S_ISGID;
        }
        if mode != before {
            // SAFETY: plain syscall on an fd we own.
            cvt(unsafe { libc::fchmod(fd, mode) })?;
        }
        Ok(())
    }

    /// STATFS.
    pub fn statfs(&self, nodeid: u64) -> OpResult<libc::statvfs64> {
        let fd = self.inode_fd(nodeid)?;
        sys::fstatvfs(fd.as_raw_fd()).map_err(|e| errno(&e))
    }

    /// RELEASE, RELEASEDIR: closes the handle.
    pub fn release(&self, nodeid: u64, fh: u64) -> OpResult<()> {
        self.take_handle(nodeid, fh).map(drop)
    }

    /// FLUSH: called on every close of a guest fd. Nothing is buffered in the server; only
    /// the handle is checked.
    pub fn flush(&self, nodeid: u64, fh: u64) -> OpResult<()> {
        self.handle(nodeid, fh).map(drop)
    }

    /// FSYNC, FSYNCDIR: really syncs the host fd.
    pub fn fsync(&self, nodeid: u64, fh: u64, datasync: bool) -> OpResult<()> {
        let h = self.handle(nodeid, fh)?;
        let fd = h.fd.as_raw_fd();
        // SAFETY: plain syscalls on an fd we own.
        cvt(unsafe {
            if datasync {
                libc::fdatasync(fd)
            } else {
                libc::fsync(fd)
            }
        })
    }

    /// SYNCFS: syncs the file system of the share root (the guest's `sync`/`syncfs`).
    pub fn syncfs(&self) -> OpResult<()> {
        let d = self.reopen(self.root.as_raw_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        // SAFETY: plain syscall on an fd we own.
        cvt(unsafe { libc::syncfs(d.as_raw_fd()) })
    }

    /// OPENDIR.
    pub fn opendir(&self, nodeid: u64) -> OpResult<u64> {
        let fd = self.inode_fd(nodeid)?;
        let d = self.reopen(fd.as_raw_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        self.add_handle(d, nodeid, false)
    }

    /// ACCESS: checked by the host kernel as the request's uid/gid (when the server is root).
    pub fn access(&self, ctx: Ctx, nodeid: u64, mask: u32) -> OpResult<()> {
        let fd = self.inode_fd(nodeid)?;
        if self.read_only && mask & libc::W_OK as u32 != 0 {
            return Err(libc::EROFS);
        }
        let st = sys::fstat(fd.as_raw_fd()).map_err(|e| errno(&e))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Ok(());
        }
        let _c = self.creds(ctx)?;
        let proc_name = fd_name(fd.as_raw_fd());
        // SAFETY: valid C string naming our own fd.
        cvt(unsafe {
            libc::faccessat(
                self.proc_fd.as_raw_fd(),
                proc_name.as_ptr(),
                mask as libc::c_int,
                libc::AT_EACCESS,
            )
        })
    }

    /// FALLOCATE (any mode the host file system supports: keep size, punch hole, zero range).
    pub fn fallocate(
        &self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: u32,
    ) -> OpResult<()> {
        self.ro()?;
        let h = self.handle(nodeid, fh)?;
        let off = i64::try_from(offset).map_err(|_| libc::EINVAL)?;
        let len = i64::try_from(length).map_err(|_| libc::EINVAL)?;
        // SAFETY: plain syscall on an fd we own.
        cvt(unsafe { libc::fallocate64(h.fd.as_raw_fd(), mode as libc::c_int, off, len) })
    }

    /// LSEEK (SEEK_DATA / SEEK_HOLE; SET/CUR/END answer trivially).
    pub fn lseek(&self, nodeid: u64, fh: u64, offset: u64, whence: u32) -> OpResult<u64> {
        let h = self.handle(nodeid, fh)?;
        let off = i64::try_from(offset).map_err(|_| libc::EINVAL)?;
        let whence = match whence as libc::c_int {
            w @ (libc::SEEK_SET
            | libc::SEEK_CUR
            | libc::SEEK_END
            | libc::SEEK_DATA
            | libc::SEEK_HOLE) => w,
            _ => return Err(libc::EINVAL),
        };
        sys::lseek(h.fd.as_raw_fd(), off, whence)
            .map(|o| o as u64)
            .map_err(|e| errno(&e))
    }

    /// COPY_FILE_RANGE between two open handles (at most `len` bytes, bounded by the caller).
    #[allow(clippy::too_many_arguments)]
    pub fn copy_file_range(
        &self,
        node_in: u64,
        fh_in: u64,
        off_in: u64,
        node_out: u64,
        fh_out: u64,
        off_out: u64,
        len: usize,
    ) -> OpResult<usize> {
        self.ro()?;
        let hi = self.handle(node_in, fh_in)?;
        let ho = self.handle(node_out, fh_out)?;
        if !ho.writable {
            return Err(libc::EBADF);
        }
        let mut oi = i64::try_from(off_in).map_err(|_| libc::EINVAL)?;
        let mut oo = i64::try_from(off_out).map_err(|_| libc::EINVAL)?;
        // SAFETY: the offsets are valid in/out pointers; fds are ours.
        cvt_size(unsafe {
            libc::copy_file_range(
                hi.fd.as_raw_fd(),
                &mut oi,
                ho.fd.as_raw_fd(),
                &mut oo,
                len,
                0,
            )
        })
    }
}
