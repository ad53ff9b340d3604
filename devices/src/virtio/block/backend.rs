//! The host side of a virtio-blk volume: a raw image file or block device, locked against a
//! second writer, read and written with positioned I/O.
//!
//! Cache modes:
//! - [`CacheMode::Writeback`]: the host page cache; the guest's FLUSH becomes `fdatasync`.
//! - [`CacheMode::None`]: `O_DIRECT` where the file system supports it (data bypasses the page
//!   cache; FLUSH still becomes `fdatasync` for the device's own cache and metadata). Where
//!   `open(O_DIRECT)` is refused (tmpfs before Linux 6.6, some FUSE file systems) the volume
//!   falls back to the page cache with a warning, and so does a single request whose
//!   `O_DIRECT` I/O is refused (`EINVAL`, e.g. a 4 KiB-sector device and a 512-byte request).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The virtio-blk sector size; capacities and request offsets count in these.
pub const SECTOR_SIZE: u64 = 512;
/// Alignment of the bounce buffer, enough for `O_DIRECT` on 4 KiB-sector devices.
pub const DIRECT_ALIGN: usize = 4096;

/// How the host caches the volume's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// `O_DIRECT` where supported (see the module docs for the fallback).
    None,
    /// The host page cache; FLUSH → `fdatasync`.
    #[default]
    Writeback,
}

/// What to open.
#[derive(Debug, Clone)]
pub struct VolumeOptions {
    pub path: PathBuf,
    pub read_only: bool,
    pub cache: CacheMode,
}

/// Why a volume could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is in use by another process (flock)")]
    Locked {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("find the size of {path}")]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is smaller than one 512-byte sector")]
    Empty { path: PathBuf },
}

/// An open, locked volume.
#[derive(Debug)]
pub struct Backend {
    /// Opened without `O_DIRECT`: FLUSH, fallocate, and the fallback for refused direct I/O.
    buffered: File,
    /// Opened with `O_DIRECT` (cache mode none, where supported).
    direct: Option<File>,
    read_only: bool,
    sectors: u64,
    path: PathBuf,
    direct_fallbacks: u64,
}

impl Backend {
    /// Opens and locks the volume: an exclusive `flock` when writable, a shared one when
    /// read-only, so a writer excludes every other user and readers exclude writers.
    pub fn open(opts: &VolumeOptions) -> Result<Self, BackendError> {
        let path = opts.path.clone();
        let buffered =
            open_file(&path, opts.read_only, false).map_err(|source| BackendError::Open {
                path: path.clone(),
                source,
            })?;
        lock(&buffered, opts.read_only).map_err(|source| BackendError::Locked {
            path: path.clone(),
            source,
        })?;
        let bytes = size_of(&buffered).map_err(|source| BackendError::Size {
            path: path.clone(),
            source,
        })?;
        let sectors = bytes / SECTOR_SIZE;
        if sectors == 0 {
            return Err(BackendError::Empty { path });
        }
        if !bytes.is_multiple_of(SECTOR_SIZE) {
            log::warn!(
                "virtio-blk: {}: size {bytes} is not a multiple of 512; the last {} bytes are not visible",
                path.display(),
                bytes % SECTOR_SIZE
            );
        }
        let direct = match opts.cache {
            CacheMode::Writeback => None,
            CacheMode::None => match open_file(&path, opts.read_only, true) {
                Ok(f) => Some(f),
                Err(e) => {
                    log::warn!(
                        "virtio-blk: {}: O_DIRECT refused ({e}); cache \"none\" falls back to the page cache",
                        path.display()
                    );
                    None
                }
            },
        };
        Ok(Self {
            buffered,
            direct,
            read_only: opts.read_only,
            sectors,
            path,
            direct_fallbacks: 0,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether data I/O bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Requests whose `O_DIRECT` I/O was refused and redone through the page cache.
    pub fn direct_fallbacks(&self) -> u64 {
        self.direct_fallbacks
    }

    /// Reads exactly `buf.len()` bytes at `offset`. `buf` must be [`DIRECT_ALIGN`]-aligned
    /// for direct I/O to be tried.
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if let Some(direct) = &self.direct {
            match direct.read_exact_at(buf, offset) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.note_fallback(&e),
                other => return other,
            }
        }
        self.buffered.read_exact_at(buf, offset)
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if let Some(direct) = &self.direct {
            match direct.write_all_at(buf, offset) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.note_fallback(&e),
                other => return other,
            }
        }
        self.buffered.write_all_at(buf, offset)
    }

    fn note_fallback(&mut self, e: &io::Error) {
        if self.direct_fallbacks == 0 {
            log::warn!(
                "virtio-blk: {}: O_DIRECT I/O refused ({e}); such requests go through the page cache",
                self.path.display()
            );
        }
        self.direct_fallbacks += 1;
    }

    /// Makes written data durable (the guest's FLUSH).
    pub fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.buffered.sync_data()
    }

    /// Deallocates `len` bytes at `offset`; reads of the range return zeros afterwards.
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Zeroes `len` bytes at `offset`, keeping them allocated where the file system can;
    /// writes zeros where it cannot.
    pub fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        match self.fallocate(mode, offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.write_zero_bytes(offset, len)
            }
            other => other,
        }
    }

    fn write_zero_bytes(&mut self, mut offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: u64 = 64 * 1024;
        let zeros = vec![0u8; CHUNK as usize];
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(CHUNK);
            // n <= CHUNK, which fits in usize.
            self.buffered.write_all_at(&zeros[..n as usize], offset)?;
            offset += n;
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::fallocate(self.buffered.as_raw_fd(), mode, off, len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for Backend {
    /// Unlocks explicitly: the flock belongs to the open file description, which a child
    /// forked by another thread shares until its exec, so a plain close could leave the volume
    /// "in use" for a moment after the device is gone.
    fn drop(&mut self) {
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        unsafe { libc::flock(self.buffered.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn open_file(path: &Path, read_only: bool, direct: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(!read_only);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    opts.open(path)
}

fn lock(file: &File, shared: bool) -> io::Result<()> {
    let op = if shared { libc::LOCK_SH } else { libc::LOCK_EX };
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The size in bytes; `SEEK_END` works for regular files and block devices alike.
fn size_of(file: &File) -> io::Result<u64> {
    let mut f = file;
    let size = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(size)
}
