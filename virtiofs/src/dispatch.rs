//! Per-opcode decoding of FUSE requests and encoding of their replies.

use std::ffi::CStr;
use std::mem::size_of;

use vm_memory::ByteValued;

use crate::abi::{self, bytes_of, op, read_prefix, InHeader};
use crate::passthrough::{Ctx, OpResult, SetattrArgs, XattrReply};
use crate::ratelimit::guest_warn;
use crate::server::{CachePolicy, Reply, Server};

/// Longest file name component.
const NAME_MAX: usize = 255;
/// Longest symlink target (PATH_MAX including the NUL).
const TARGET_MAX: usize = libc::PATH_MAX as usize - 1;
/// Largest xattr value / list (XATTR_SIZE_MAX).
const XATTR_SIZE_MAX: usize = 65_536;
/// Most bytes one COPY_FILE_RANGE copies (the guest loops on short copies).
const COPY_MAX: u64 = 64 << 20;

/// A fixed-size argument struct at the front of `body`, and what follows it.
fn arg<T: ByteValued + Default>(body: &[u8]) -> OpResult<(T, &[u8])> {
    let v = read_prefix::<T>(body).ok_or(libc::EINVAL)?;
    Ok((v, &body[size_of::<T>()..]))
}

/// A NUL-terminated string at the front of `b`, and what follows it.
fn cstr(b: &[u8]) -> OpResult<(&CStr, &[u8])> {
    let s = CStr::from_bytes_until_nul(b).map_err(|_| libc::EINVAL)?;
    Ok((s, &b[s.to_bytes().len() + 1..]))
}

/// A file name: one path component, not "." or "..", at most NAME_MAX bytes.
fn name(b: &[u8]) -> OpResult<(&CStr, &[u8])> {
    let (s, rest) = cstr(b)?;
    let n = s.to_bytes();
    if n.is_empty() || n == b"." || n == b".." || n.contains(&b'/') {
        return Err(libc::EINVAL);
    }
    if n.len() > NAME_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    Ok((s, rest))
}

/// An xattr name: non-empty, at most XATTR_NAME_MAX (255) bytes.
fn xattr_name(b: &[u8]) -> OpResult<(&CStr, &[u8])> {
    let (s, rest) = cstr(b)?;
    match s.to_bytes().len() {
        0 => Err(libc::EINVAL),
        n if n > NAME_MAX => Err(libc::ERANGE),
        _ => Ok((s, rest)),
    }
}

/// Requires that nothing follows the last argument: a name with an embedded NUL ("a\0b")
/// would otherwise silently mean "a".
fn end(rest: &[u8]) -> OpResult<()> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(libc::EINVAL)
    }
}

/// A name that must be the last argument.
fn last_name(b: &[u8]) -> OpResult<&CStr> {
    let (n, rest) = name(b)?;
    end(rest)?;
    Ok(n)
}

fn ok<T: ByteValued>(v: T) -> Reply {
    Reply::Ok(bytes_of(&v).to_vec())
}

fn to_reply(r: OpResult<Reply>) -> Reply {
    r.unwrap_or_else(Reply::Err)
}

impl Server {
    fn timeouts(&self) -> (u64, u64) {
        self.opts.cache.timeouts()
    }

    pub(crate) fn entry_out(&self, id: u64, st: &libc::stat64) -> abi::EntryOut {
        let (entry, attr) = self.timeouts();
        abi::EntryOut {
            nodeid: id,
            generation: 0,
            entry_valid: entry,
            attr_valid: attr,
            entry_valid_nsec: 0,
            attr_valid_nsec: 0,
            attr: self.fs.attr(st),
        }
    }

    fn attr_out(&self, st: &libc::stat64) -> Reply {
        ok(abi::AttrOut {
            attr_valid: self.timeouts().1,
            attr_valid_nsec: 0,
            dummy: 0,
            attr: self.fs.attr(st),
        })
    }

    fn entry_reply(&self, r: OpResult<(u64, libc::stat64)>) -> OpResult<Reply> {
        let (id, st) = r?;
        Ok(ok(self.entry_out(id, &st)))
    }

    fn open_out(&self, fh: u64, dir: bool) -> abi::OpenOut {
        let open_flags = match (self.opts.cache, dir) {
            (CachePolicy::Immutable, false) => abi::FOPEN_KEEP_CACHE,
            (CachePolicy::Immutable, true) => abi::FOPEN_KEEP_CACHE | abi::FOPEN_CACHE_DIR,
            (CachePolicy::Coherent, _) => 0,
        };
        abi::OpenOut {
            fh,
            open_flags,
            padding: 0,
        }
    }

    fn max_io(&self, room: usize) -> usize {
        (self.opts.max_write as usize).min(room)
    }

    /// Decodes and performs one request. `body` is everything after the header (up to the
    /// header's len, without extensions); `room` is how many reply bytes fit after the out
    /// header.
    pub(crate) fn dispatch(&self, h: &InHeader, body: &[u8], room: usize) -> Reply {
        let Some(session) = self.negotiated() else {
            return match h.opcode {
                op::INIT => self.do_init(body),
                _ => {
                    guest_warn!(
                        self.limits.malformed;
                        "virtio-fs: opcode {} before INIT",
                        h.opcode
                    );
                    Reply::Err(libc::EIO)
                }
            };
        };
        let ctx = Ctx {
            uid: h.uid,
            gid: h.gid,
        };
        let n = h.nodeid;
        let fs = &self.fs;
        let r = match h.opcode {
            op::INIT => self.do_init(body),
            op::DESTROY => self.do_destroy(),
            op::INTERRUPT => {
                // Every request is served synchronously before the next is read, so by the
                // time an INTERRUPT arrives its target has already been answered.
                Reply::None
            }
            op::FORGET => {
                if let Ok((f, _)) = arg::<abi::ForgetIn>(body) {
                    fs.forget(n, f.nlookup);
                }
                Reply::None
            }
            op::BATCH_FORGET => {
                if let Ok((b, mut rest)) = arg::<abi::BatchForgetIn>(body) {
                    for _ in 0..b.count {
                        let Ok((one, r)) = arg::<abi::ForgetOne>(rest) else {
                            break;
                        };
                        fs.forget(one.nodeid, one.nlookup);
                        rest = r;
                    }
                }
                Reply::None
            }
            op::LOOKUP => to_reply(last_name(body).and_then(|nm| match fs.lookup(n, nm) {
                // On an immutable share a missing name stays missing: answer with node id 0
                // and the entry timeout, which the guest caches as a negative dentry (the
                // dynamic linker probes many absent paths in a store).
                Err(libc::ENOENT) if self.opts.cache == CachePolicy::Immutable => {
                    Ok(ok(abi::EntryOut {
                        entry_valid: self.timeouts().0,
                        ..Default::default()
                    }))
                }
                r => self.entry_reply(r),
            })),
            op::GETATTR => to_reply((|| {
                let (g, _) = arg::<abi::GetattrIn>(body)?;
                let fh = (g.getattr_flags & abi::GETATTR_FH != 0).then_some(g.fh);
                Ok(self.attr_out(&fs.getattr(n, fh)?))
            })()),
            op::SETATTR => to_reply((|| {
                let (s, _) = arg::<abi::SetattrIn>(body)?;
                Ok(self.attr_out(&fs.setattr(n, &SetattrArgs { inner: s })?))
            })()),
            op::READLINK => to_reply(fs.readlink(n).map(Reply::Ok)),
            op::SYMLINK => to_reply((|| {
                let (nm, rest) = name(body)?;
                let (target, rest) = cstr(rest)?;
                end(rest)?;
                if target.to_bytes().is_empty() {
                    return Err(libc::ENOENT);
                }
                if target.to_bytes().len() > TARGET_MAX {
                    return Err(libc::ENAMETOOLONG);
                }
                self.entry_reply(fs.symlink(ctx, n, nm, target))
            })()),
            op::MKNOD => to_reply((|| {
                let (m, rest) = arg::<abi::MknodIn>(body)?;
                let nm = last_name(rest)?;
                self.entry_reply(fs.mknod(ctx, n, nm, m.mode, m.rdev))
            })()),
            op::MKDIR => to_reply((|| {
                let (m, rest) = arg::<abi::MkdirIn>(body)?;
                let nm = last_name(rest)?;
                self.entry_reply(fs.mkdir(ctx, n, nm, m.mode))
            })()),
            op::UNLINK => to_reply(
                last_name(body)
                    .and_then(|nm| fs.unlink(n, nm))
                    .map(|()| Reply::Ok(vec![])),
            ),
            op::RMDIR => to_reply(
                last_name(body)
                    .and_then(|nm| fs.rmdir(n, nm))
                    .map(|()| Reply::Ok(vec![])),
            ),
            op::RENAME | op::RENAME2 => to_reply((|| {
                let (newdir, flags, rest) = if h.opcode == op::RENAME {
                    let (r, rest) = arg::<abi::RenameIn>(body)?;
                    (r.newdir, 0, rest)
                } else {
                    let (r, rest) = arg::<abi::Rename2In>(body)?;
                    (r.newdir, r.flags, rest)
                };
                let (old, rest) = name(rest)?;
                let new = last_name(rest)?;
                fs.rename(n, old, newdir, new, flags)?;
                Ok(Reply::Ok(vec![]))
            })()),
            op::LINK => to_reply((|| {
                let (l, rest) = arg::<abi::LinkIn>(body)?;
                let nm = last_name(rest)?;
                self.entry_reply(fs.link(l.oldnodeid, n, nm))
            })()),
            op::OPEN => to_reply((|| {
                let (o, _) = arg::<abi::OpenIn>(body)?;
                Ok(ok(self.open_out(fs.open(n, o.flags)?, false)))
            })()),
            op::CREATE => to_reply((|| {
                let (c, rest) = arg::<abi::CreateIn>(body)?;
                let nm = last_name(rest)?;
                let (id, st, fh) = fs.create(ctx, n, nm, c.mode, c.flags)?;
                let mut b = bytes_of(&self.entry_out(id, &st)).to_vec();
                b.extend_from_slice(bytes_of(&self.open_out(fh, false)));
                Ok(Reply::Ok(b))
            })()),
            op::READ => to_reply((|| {
                let (r, _) = arg::<abi::ReadIn>(body)?;
                let size = r.size as usize;
                if size > self.opts.max_write as usize || size > room {
                    guest_warn!(
                        self.limits.malformed;
                        "virtio-fs: READ of {} bytes, {} writable",
                        size,
                        room
                    );
                    return Err(libc::EINVAL);
                }
                fs.read(n, r.fh, r.offset, size).map(Reply::Ok)
            })()),
            op::WRITE => to_reply((|| {
                let (w, rest) = arg::<abi::WriteIn>(body)?;
                let size = w.size as usize;
                if size > self.opts.max_write as usize || size > rest.len() {
                    guest_warn!(
                        self.limits.malformed;
                        "virtio-fs: WRITE of {} bytes with {} present",
                        size,
                        rest.len()
                    );
                    return Err(libc::EINVAL);
                }
                let kill = w.write_flags & abi::WRITE_KILL_SUIDGID != 0;
                let done = fs.write(n, w.fh, w.offset, &rest[..size], kill)?;
                Ok(ok(abi::WriteOut {
                    size: done as u32,
                    padding: 0,
                }))
            })()),
            op::STATFS => to_reply(fs.statfs(n).map(|s| {
                ok(abi::StatfsOut {
                    blocks: s.f_blocks,
                    bfree: s.f_bfree,
                    bavail: s.f_bavail,
                    files: s.f_files,
                    ffree: s.f_ffree,
                    bsize: s.f_bsize as u32,
                    namelen: s.f_namemax as u32,
                    frsize: s.f_frsize as u32,
                    padding: 0,
                    spare: [0; 6],
                })
            })),
            op::RELEASE | op::RELEASEDIR => to_reply((|| {
                let (r, _) = arg::<abi::ReleaseIn>(body)?;
                fs.release(n, r.fh)?;
                Ok(Reply::Ok(vec![]))
            })()),
            op::FSYNC | op::FSYNCDIR => to_reply((|| {
                let (f, _) = arg::<abi::FsyncIn>(body)?;
                fs.fsync(n, f.fh, f.fsync_flags & abi::FSYNC_FDATASYNC != 0)?;
                Ok(Reply::Ok(vec![]))
            })()),
            op::FLUSH => to_reply((|| {
                let (f, _) = arg::<abi::FlushIn>(body)?;
                fs.flush(n, f.fh)?;
                Ok(Reply::Ok(vec![]))
            })()),
            op::SETXATTR => to_reply((|| {
                let (size, flags, rest) = if session.flags & abi::init::SETXATTR_EXT != 0 {
                    let (s, rest) = arg::<abi::SetxattrInExt>(body)?;
                    (s.size, s.flags, rest)
                } else {
                    let (s, rest) = arg::<abi::SetxattrIn>(body)?;
                    (s.size, s.flags, rest)
                };
                let (nm, value) = xattr_name(rest)?;
                let size = size as usize;
                if size > XATTR_SIZE_MAX {
                    return Err(libc::E2BIG);
                }
                if value.len() != size {
                    return Err(libc::EINVAL);
                }
                fs.setxattr(n, nm, value, flags)?;
                Ok(Reply::Ok(vec![]))
            })()),
            op::GETXATTR | op::LISTXATTR => to_reply((|| {
                let (g, rest) = arg::<abi::GetxattrIn>(body)?;
                let size = (g.size as usize).min(XATTR_SIZE_MAX);
                if size > room {
                    return Err(libc::EINVAL);
                }
                let r = if h.opcode == op::GETXATTR {
                    let (nm, rest) = xattr_name(rest)?;
                    end(rest)?;
                    fs.getxattr(n, nm, size)?
                } else {
                    fs.listxattr(n, size)?
                };
                Ok(match r {
                    XattrReply::Size(s) => ok(abi::GetxattrOut {
                        size: s,
                        padding: 0,
                    }),
                    XattrReply::Data(d) => Reply::Ok(d),
                })
            })()),
            op::REMOVEXATTR => to_reply(
                xattr_name(body)
                    .and_then(|(nm, rest)| end(rest).map(|()| nm))
                    .and_then(|nm| fs.removexattr(n, nm))
                    .map(|()| Reply::Ok(vec![])),
            ),
            op::OPENDIR => to_reply((|| {
                let (_o, _) = arg::<abi::OpenIn>(body)?;
                Ok(ok(self.open_out(fs.opendir(n)?, true)))
            })()),
            op::READDIR | op::READDIRPLUS => to_reply((|| {
                let (r, _) = arg::<abi::ReadIn>(body)?;
                let size = (r.size as usize).min(self.max_io(room));
                let entry = |id: u64, st: &libc::stat64| self.entry_out(id, st);
                let plus: Option<crate::passthrough::EntryMaker<'_>> =
                    (h.opcode == op::READDIRPLUS).then_some(&entry);
                fs.readdir(n, r.fh, r.offset, size, plus).map(Reply::Ok)
            })()),
            op::ACCESS => to_reply((|| {
                let (a, _) = arg::<abi::AccessIn>(body)?;
                fs.access(ctx, n, a.mask)?;
                Ok(Reply::Ok(vec![]))
            })()),
            op::FALLOCATE => to_reply((|| {
                let (f, _) = arg::<abi::FallocateIn>(body)?;
                fs.fallocate(n, f.fh, f.offset, f.length, f.mode)?;
                Ok(Reply::Ok(vec![]))
            })()),
            op::LSEEK => to_reply((|| {
                let (l, _) = arg::<abi::LseekIn>(body)?;
                let offset = fs.lseek(n, l.fh, l.offset, l.whence)?;
                Ok(ok(abi::LseekOut { offset }))
            })()),
            op::COPY_FILE_RANGE => to_reply((|| {
                let (c, _) = arg::<abi::CopyFileRangeIn>(body)?;
                if c.flags != 0 {
                    return Err(libc::EINVAL);
                }
                let len = c.len.min(COPY_MAX) as usize;
                let done = fs.copy_file_range(
                    n,
                    c.fh_in,
                    c.off_in,
                    c.nodeid_out,
                    c.fh_out,
                    c.off_out,
                    len,
                )?;
                Ok(ok(abi::WriteOut {
                    size: done as u32,
                    padding: 0,
                }))
            })()),
            op::SYNCFS => to_reply(fs.syncfs().map(|()| Reply::Ok(vec![]))),
            op::GETLK
            | op::SETLK
            | op::SETLKW
            | op::POLL
            | op::IOCTL
            | op::BMAP
            | op::SETUPMAPPING
            | op::REMOVEMAPPING
            | op::TMPFILE
            | op::NOTIFY_REPLY => Reply::Err(libc::ENOSYS),
            other => {
                guest_warn!(self.limits.unsupported; "virtio-fs: unknown opcode {other}");
                Reply::Err(libc::ENOSYS)
            }
        };
        r
    }
}
