//! Persistent TAP devices through /dev/net/tun (rtnetlink cannot create TAPs).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

use crate::error::{Error, Result};

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

// _IOW('T', n, int)
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;

/// The part of `struct ifreq` TUNSETIFF uses: name, then the flags member of the union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

/// Who should own a TAP; `None` leaves that part alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

fn ioctl_val(fd: i32, req: libc::c_ulong, val: libc::c_ulong) -> io::Result<()> {
    // SAFETY: these TUN ioctls take an integer argument by value, not a pointer.
    let r = unsafe { libc::ioctl(fd, req, val) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Creates (or re-opens) the persistent TAP `name` with IFF_VNET_HDR and sets its owner.
/// Opening an existing TAP by name also re-applies owner and flags (used to fix drift).
pub fn ensure(name: &str, owner: Owner) -> Result<()> {
    let err = |source| Error::CreateTap {
        name: name.to_string(),
        source,
    };
    if name.len() >= libc::IFNAMSIZ || name.is_empty() {
        return Err(err(io::Error::from_raw_os_error(libc::EINVAL)));
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(err)?;
    let fd = f.as_raw_fd();
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `req` is a valid, initialised ifreq-sized buffer that outlives the call; the
    // kernel reads the name and flags and writes back the name.
    let r = unsafe { libc::ioctl(fd, TUNSETIFF, &mut req as *mut IfReq) };
    if r < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // The kernel cannot clear an owner (-1 is rejected), so unset means "leave as is".
    if let Some(uid) = owner.uid {
        ioctl_val(fd, TUNSETOWNER, libc::c_ulong::from(uid)).map_err(err)?;
    }
    if let Some(gid) = owner.gid {
        ioctl_val(fd, TUNSETGROUP, libc::c_ulong::from(gid)).map_err(err)?;
    }
    ioctl_val(fd, TUNSETPERSIST, 1).map_err(err)?;
    Ok(())
}
