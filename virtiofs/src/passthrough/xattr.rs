//! Extended attributes: GETXATTR/SETXATTR/LISTXATTR/REMOVEXATTR.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, OwnedFd};

use super::ops::{cvt, cvt_size};
use super::{errno, sys, OpResult, PassthroughFs};

/// GETXATTR/LISTXATTR result: the size (for a size-0 probe) or the data.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrReply {
    /// The size the value needs.
    Size(u32),
    /// The value.
    Data(Vec<u8>),
}

impl PassthroughFs {
    /// An fd for xattr calls: regular files and directories reopened read-only (the f*xattr
    /// calls do not take O_PATH fds). Other types (symlinks, devices, fifos) are not opened:
    /// opening a device can have side effects.
    fn xattr_fd(&self, nodeid: u64) -> OpResult<Option<OwnedFd>> {
        let fd = self.inode_fd(nodeid)?;
        let st = sys::fstat(fd.as_raw_fd()).map_err(|e| errno(&e))?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFDIR => self
                .reopen(fd.as_raw_fd(), libc::O_RDONLY | libc::O_NONBLOCK)
                .map(Some),
            _ => Ok(None),
        }
    }

    /// SETXATTR.
    pub fn setxattr(&self, nodeid: u64, name: &CStr, value: &[u8], flags: u32) -> OpResult<()> {
        self.ro()?;
        let f = self.xattr_fd(nodeid)?.ok_or(libc::EPERM)?;
        // SAFETY: valid C string and value buffer.
        cvt(unsafe {
            libc::fsetxattr(
                f.as_raw_fd(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags as libc::c_int,
            )
        })
    }

    /// GETXATTR: with `size` 0 the size of the value, else the value (ERANGE if larger).
    pub fn getxattr(&self, nodeid: u64, name: &CStr, size: usize) -> OpResult<XattrReply> {
        let Some(f) = self.xattr_fd(nodeid)? else {
            return Err(libc::ENODATA);
        };
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` is valid for `size` bytes (a null-length probe when 0).
        let n = cvt_size(unsafe {
            libc::fgetxattr(f.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), size)
        })?;
        Ok(if size == 0 {
            XattrReply::Size(n as u32)
        } else {
            buf.truncate(n);
            XattrReply::Data(buf)
        })
    }

    /// LISTXATTR: like GETXATTR, for the NUL-separated name list.
    pub fn listxattr(&self, nodeid: u64, size: usize) -> OpResult<XattrReply> {
        let Some(f) = self.xattr_fd(nodeid)? else {
            return Ok(if size == 0 {
                XattrReply::Size(0)
            } else {
                XattrReply::Data(Vec::new())
            });
        };
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` is valid for `size` bytes.
        let n =
            cvt_size(unsafe { libc::flistxattr(f.as_raw_fd(), buf.as_mut_ptr().cast(), size) })?;
        Ok(if size == 0 {
            XattrReply::Size(n as u32)
        } else {
            buf.truncate(n);
            XattrReply::Data(buf)
        })
    }

    /// REMOVEXATTR.
    pub fn removexattr(&self, nodeid: u64, name: &CStr) -> OpResult<()> {
        self.ro()?;
        let f = self.xattr_fd(nodeid)?.ok_or(libc::EPERM)?;
        // SAFETY: valid C string.
        cvt(unsafe { libc::fremovexattr(f.as_raw_fd(), name.as_ptr()) })
    }
}
