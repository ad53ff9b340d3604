//! A host TAP device opened for virtio-net: Ethernet frames with a 12-byte virtio-net header
//! in front (IFF_VNET_HDR, TUNSETVNETHDRSZ 12), non-blocking.
//!
//! The usual way is [`Tap::open`]: the TAP already exists (netctl or a systemd unit created
//! it persistent and owned by the user tinyvmm runs as) and tinyvmm attaches to it. As root,
//! [`Tap::create_transient`] makes a TAP that disappears when tinyvmm exits.
//!
//! Every step works in the network namespace of the calling thread, which lets tests open
//! TAPs inside a namespace from a thread that `setns`ed into it.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Length of the virtio-net header on the TAP and in the guest (`virtio_net_hdr_v1`, which
/// includes `num_buffers`; VIRTIO_F_VERSION_1 always uses it).
pub const VNET_HDR_LEN: usize = 12;

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;
const TUN_DEVICE: &str = "/dev/net/tun";

/// Why a TAP could not be opened or configured. Each variant names the TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be a Linux interface name.
    #[error("TAP {name:?}: invalid interface name: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Looking up whether the interface exists failed.
    #[error("TAP {name}: cannot look up the interface: {source}")]
    Lookup {
        /// The TAP.
        name: String,
        /// The lookup error.
        #[source]
        source: io::Error,
    },
    /// The TAP does not exist in this network namespace.
    #[error(
        "TAP {name}: missing: no such interface (create it first, e.g. with `netctl up`, or \
         set \"transient\": true in its network entry to let tinyvmm, as root, create one)"
    )]
    Missing {
        /// The TAP.
        name: String,
    },
    /// [`Tap::create_transient`] found an interface of that name already.
    #[error("TAP {name}: already exists; open it instead of creating it")]
    Exists {
        /// The TAP.
        name: String,
    },
    /// `/dev/net/tun` cannot be opened (no tun module, no device node, no access).
    #[error("TAP {name}: cannot open {TUN_DEVICE}: {source}")]
    OpenTunDevice {
        /// The TAP.
        name: String,
        /// The open error.
        #[source]
        source: io::Error,
    },
    /// Another process (or another device of this VM) has the TAP open.
    #[error("TAP {name}: busy: another process (or another interface of this VM) has it open")]
    Busy {
        /// The TAP.
        name: String,
        /// The TUNSETIFF error (EBUSY).
        #[source]
        source: io::Error,
    },
    /// The TAP belongs to another user or group and this process lacks CAP_NET_ADMIN (or it
    /// is missing and this process may not create interfaces).
    #[error(
        "TAP {name}: permission denied: it is owned by another user or group and this \
         process lacks CAP_NET_ADMIN"
    )]
    Permission {
        /// The TAP.
        name: String,
        /// The TUNSETIFF or open error (EPERM/EACCES).
        #[source]
        source: io::Error,
    },
    /// An interface of that name exists but is not a single-queue TAP (a TUN, a
    /// multi-queue TAP, a bridge, ...).
    #[error("TAP {name}: not a single-queue TAP device")]
    NotTap {
        /// The TAP.
        name: String,
        /// The TUNSETIFF error (EINVAL).
        #[source]
        source: io::Error,
    },
    /// TUNSETIFF failed for another reason.
    #[error("TAP {name}: cannot attach (TUNSETIFF): {source}")]
    Attach {
        /// The TAP.
        name: String,
        /// The ioctl error.
        #[source]
        source: io::Error,
    },
    /// TUNSETVNETHDRSZ failed.
    #[error("TAP {name}: cannot set the virtio-net header size: {source}")]
    SetVnetHdrSize {
        /// The TAP.
        name: String,
        /// The ioctl error.
        #[source]
        source: io::Error,
    },
    /// TUNSETOFFLOAD failed.
    #[error("TAP {name}: cannot set offloads {flags:#x}: {source}")]
    SetOffload {
        /// The TAP.
        name: String,
        /// The TUN_F_* flags asked for.
        flags: u32,
        /// The ioctl error.
        #[source]
        source: io::Error,
    },
    /// Bringing a transient TAP up failed.
    #[error("TAP {name}: cannot bring the link up: {source}")]
    SetUp {
        /// The TAP.
        name: String,
        /// The socket or ioctl error.
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq` with the flags member of its union (40 bytes on Linux).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_int) -> Self {
        let mut req = Self {
            name: [0; libc::IFNAMSIZ],
            // The TUN flags all fit in the 16-bit ifr_flags.
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }
}

/// An open TAP. Dropping it closes the file descriptor; a transient TAP then disappears.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    transient: bool,
}

impl Tap {
    /// Attaches to the existing, persistent TAP `name` (as netctl, `ip tuntap add` or
    /// systemd-networkd make them) in the calling thread's network namespace.
    pub fn open(name: &str) -> Result<Self, TapError> {
        validate_name(name)?;
        if !interface_exists(name)? {
            return Err(TapError::Missing { name: name.into() });
        }
        let file = open_tun_device(name)?;
        set_iff(&file, name, 0)?;
        // TUNSETIFF creates a missing TAP when the caller may; if the TAP vanished after
        // the check above, the one attached now is new and non-persistent. Dropping the
        // file deletes it again.
        if !is_persistent(&file, name)? {
            return Err(TapError::Missing { name: name.into() });
        }
        Self::configure(file, name, false)
    }

    /// Creates a non-persistent TAP `name` (needs CAP_NET_ADMIN) and brings it up; it is
    /// deleted when the returned `Tap` is dropped.
    pub fn create_transient(name: &str) -> Result<Self, TapError> {
        validate_name(name)?;
        let file = open_tun_device(name)?;
        // IFF_TUN_EXCL: never attach to an interface someone else made.
        set_iff(&file, name, libc::IFF_TUN_EXCL).map_err(|e| match e {
            TapError::Busy { name, .. } => TapError::Exists { name },
            other => other,
        })?;
        let tap = Self::configure(file, name, true)?;
        set_link_up(name)?;
        Ok(tap)
    }

    /// [`open`](Self::open), or, if the TAP is missing and this process runs as root,
    /// [`create_transient`](Self::create_transient) (logged as a warning).
    pub fn open_or_create_transient(name: &str) -> Result<Self, TapError> {
        match Self::open(name) {
            // SAFETY: geteuid has no preconditions and cannot fail.
            Err(TapError::Missing { .. }) if unsafe { libc::geteuid() } == 0 => {
                let tap = Self::create_transient(name)?;
                log::warn!(
                    "TAP {name} did not exist; created a transient one that disappears when \
                     this VM stops (it is not on any bridge)"
                );
                Ok(tap)
            }
            other => other,
        }
    }

    fn configure(file: File, name: &str, transient: bool) -> Result<Self, TapError> {
        let tap = Self {
            file,
            name: name.into(),
            transient,
        };
        tap.set_vnet_hdr_size()?;
        // Until a driver acks offloads, the host must hand over plain, checksummed frames.
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this process created the TAP (it disappears when dropped).
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    fn set_vnet_hdr_size(&self) -> Result<(), TapError> {
        let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer, which is valid for the
        // duration of the call; the fd is an open TAP.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) };
        if ret < 0 {
            return Err(TapError::SetVnetHdrSize {
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Sets which offloads (TUN_F_* flags) the reader accepts: checksum-less frames
    /// (TUN_F_CSUM) and TSO/UFO super-frames. Frames written to the TAP may always carry
    /// offload requests in their header.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the fd is an open TAP.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(TapError::SetOffload {
                name: self.name.clone(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Reads one frame (virtio-net header + Ethernet frame) into `buf`. `WouldBlock` when
    /// none is waiting; a frame longer than `buf` is truncated.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (virtio-net header + Ethernet frame).
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

fn validate_name(name: &str) -> Result<(), TapError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 15 bytes"
    } else if name == "." || name == ".." {
        "reserved"
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        "contains '/', ':', whitespace or NUL"
    } else {
        return Ok(());
    };
    Err(TapError::InvalidName {
        name: name.into(),
        reason,
    })
}

/// Whether an interface `name` exists in the calling thread's network namespace.
fn interface_exists(name: &str) -> Result<bool, TapError> {
    // The name was validated: no NUL inside.
    let cname = CString::new(name).map_err(|_| TapError::InvalidName {
        name: name.into(),
        reason: "contains NUL",
    })?;
    // SAFETY: `cname` is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::if_nametoindex(cname.as_ptr()) } != 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENODEV) | Some(libc::ENXIO) => Ok(false),
        _ => Err(TapError::Lookup {
            name: name.into(),
            source: err,
        }),
    }
}

fn open_tun_device(name: &str) -> Result<File, TapError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_DEVICE)
        .map_err(|source| match source.kind() {
            io::ErrorKind::PermissionDenied => TapError::Permission {
                name: name.into(),
                source,
            },
            _ => TapError::OpenTunDevice {
                name: name.into(),
                source,
            },
        })
}

/// TUNSETIFF as a single-queue TAP with virtio-net headers; errno mapped to the reasons a
/// user can act on.
fn set_iff(file: &File, name: &str, extra_flags: libc::c_int) -> Result<(), TapError> {
    let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | extra_flags;
    let mut req = IfReq::new(name, flags);
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` has its layout and size
    // and lives for the whole call. The fd is an open /dev/net/tun.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if ret == 0 {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    let name = name.to_string();
    Err(match source.raw_os_error() {
        Some(libc::EBUSY) => TapError::Busy { name, source },
        Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission { name, source },
        Some(libc::EINVAL) => TapError::NotTap { name, source },
        _ => TapError::Attach { name, source },
    })
}

/// Whether the attached TAP is persistent (made by `ip tuntap add`, netctl, systemd).
fn is_persistent(file: &File, name: &str) -> Result<bool, TapError> {
    let mut req = IfReq::new("", 0);
    // SAFETY: TUNGETIFF fills the `struct ifreq` that `req` lays out; the fd is attached.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut req) } < 0 {
        return Err(TapError::Attach {
            name: name.into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(libc::c_int::from(req.flags) & libc::IFF_PERSIST != 0)
}

/// Sets IFF_UP on `name` (SIOCGIFFLAGS/SIOCSIFFLAGS on a socket of the current namespace).
fn set_link_up(name: &str) -> Result<(), TapError> {
    let err = |source| TapError::SetUp {
        name: name.into(),
        source,
    };
    // SAFETY: plain socket creation; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a freshly created socket owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq::new(name, 0);
    // SAFETY: SIOCGIFFLAGS fills the flags of the `struct ifreq` that `req` lays out.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    req.flags |= libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the `struct ifreq` that `req` lays out.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_when_name_invalid_then_invalid_name_error() {
        for name in ["", "abcdefghijklmnop", "a/b", "a b", ".."] {
            let err = Tap::open(name).unwrap_err();
            assert!(
                matches!(err, TapError::InvalidName { .. }),
                "{name:?}: {err}"
            );
        }
    }

    #[test]
    fn ifreq_when_laid_out_then_matches_struct_ifreq_size() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
