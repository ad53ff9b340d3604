//! READDIR and READDIRPLUS: host `getdents64` records re-encoded as FUSE dirents.
//!
//! The FUSE offset of an entry is the host's `d_off` (the cookie of the entry after it), so a
//! request resumes with `lseek(dir, offset)`. Entries that do not fit in the guest's buffer
//! are dropped and re-read by the next request; READDIRPLUS checks the fit before it looks an
//! entry up, so no lookup count leaks for an entry the guest never sees.

use std::ffi::CStr;
use std::os::fd::AsRawFd;

use super::{errno, lock, sys, OpResult, PassthroughFs};
use crate::abi::{self, bytes_of, dirent_size};

/// Bytes asked from getdents64 at a time.
const GETDENTS_BUF: usize = 32 * 1024;

/// Makes the entry part of a READDIRPLUS record from a node id and its stat.
pub type EntryMaker<'a> = &'a dyn Fn(u64, &libc::stat64) -> abi::EntryOut;

impl PassthroughFs {
    /// READDIR / READDIRPLUS of the open directory `fh`, at most `size` bytes. `entry` makes
    /// the entry reply (timeouts are the server's policy) for READDIRPLUS.
    pub fn readdir(
        &self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: usize,
        plus: Option<EntryMaker<'_>>,
    ) -> OpResult<Vec<u8>> {
        let h = self.handle(nodeid, fh)?;
        let off = i64::try_from(offset).map_err(|_| libc::EINVAL)?;
        let _serial = lock(&h.dir_lock);
        let fd = h.fd.as_raw_fd();
        sys::lseek(fd, off, libc::SEEK_SET).map_err(|e| errno(&e))?;
        let mut out = Vec::with_capacity(size.min(GETDENTS_BUF));
        let mut buf = vec![0u8; GETDENTS_BUF.min(size.max(512))];
        'outer: loop {
            let n = sys::getdents64(fd, &mut buf).map_err(|e| errno(&e))?;
            if n == 0 {
                break;
            }
            let mut pos = 0;
            while pos + 19 <= n {
                let rec = &buf[pos..n];
                let ino = u64::from_ne_bytes(rec[0..8].try_into().unwrap_or_default());
                let d_off = u64::from_ne_bytes(rec[8..16].try_into().unwrap_or_default());
                let reclen = u16::from_ne_bytes([rec[16], rec[17]]) as usize;
                let dtype = rec[18];
                if reclen < 19 || reclen > rec.len() {
                    return Err(libc::EIO);
                }
                pos += reclen;
                let Ok(name) = CStr::from_bytes_until_nul(&rec[19..reclen]) else {
                    continue;
                };
                let nb = name.to_bytes();
                let need = dirent_size(nb.len())
                    + if plus.is_some() {
                        std::mem::size_of::<abi::EntryOut>()
                    } else {
                        0
                    };
                if out.len() + need > size {
                    break 'outer;
                }
                let dot = nb == b"." || nb == b"..";
                let mut dirent = abi::Dirent {
                    ino,
                    off: d_off,
                    namelen: nb.len() as u32,
                    typ: u32::from(dtype),
                };
                if let Some(entry) = plus {
                    let e = if dot {
                        // The guest ignores these; no lookup count is taken.
                        abi::EntryOut::default()
                    } else {
                        match self.do_lookup(nodeid, name) {
                            Ok((id, st)) => {
                                dirent.ino = st.st_ino;
                                dirent.typ = (st.st_mode & libc::S_IFMT) >> 12;
                                entry(id, &st)
                            }
                            // Gone since getdents: skip it.
                            Err(libc::ENOENT) => continue,
                            Err(e) if out.is_empty() => return Err(e),
                            Err(_) => break 'outer,
                        }
                    };
                    out.extend_from_slice(bytes_of(&e));
                }
                out.extend_from_slice(bytes_of(&dirent));
                out.extend_from_slice(nb);
                out.resize(out.len().next_multiple_of(8), 0);
            }
        }
        Ok(out)
    }
}
