//! The FUSE server: options, session state (INIT/DESTROY), and the descriptor-chain front end.
//! Per-opcode decoding lives in `dispatch`.

use std::path::PathBuf;
use std::sync::{RwLock, RwLockReadGuard};

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

use crate::abi::{self, init, InHeader, OutHeader};
use crate::passthrough::{OpenError, PassthroughFs};
use crate::ratelimit::{guest_warn, RateLimiter};

/// How long the guest may cache entries and attributes, and whether it keeps page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePolicy {
    /// The share never changes behind the guest's back (the read-only store): long
    /// entry/attr timeouts, page cache kept across opens.
    Immutable,
    /// The host may change files: short timeouts, page cache dropped on open.
    Coherent,
}

impl CachePolicy {
    /// (entry_valid, attr_valid) in seconds.
    ///
    /// Immutable: one day for both; nothing changes, and every avoided LOOKUP/GETATTR is a
    /// round trip through the queue saved. Coherent: names are cached for 1 s (path walks of
    /// hot directories stay cheap; a host-side rename is seen within a second) and attributes
    /// not at all, so the size and mtime the guest uses on the next open or read are the
    /// host's current ones (with AUTO_INVAL_DATA an mtime change also drops cached pages).
    pub fn timeouts(self) -> (u64, u64) {
        match self {
            CachePolicy::Immutable => (86_400, 86_400),
            CachePolicy::Coherent => (1, 0),
        }
    }
}

/// A uid or gid range mapping: guest ids `guest_base..guest_base + count` are host ids
/// `host_base..host_base + count`. Ids outside the range map to [`IdMap::OVERFLOW_ID`] (both
/// ways: a host file owned by an unmapped id shows as 65534; a guest request from an unmapped
/// id creates files owned by host 65534).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// First guest id.
    pub guest_base: u32,
    /// First host id.
    pub host_base: u32,
    /// Number of ids.
    pub count: u32,
}

impl IdMap {
    /// The overflow id ("nobody").
    pub const OVERFLOW_ID: u32 = 65534;

    fn map(id: u32, from: u32, to: u32, count: u32) -> u32 {
        match id.checked_sub(from) {
            Some(d) if d < count => to.checked_add(d).unwrap_or(Self::OVERFLOW_ID),
            _ => Self::OVERFLOW_ID,
        }
    }

    /// Host id → guest id.
    pub fn to_guest(&self, host: u32) -> u32 {
        Self::map(host, self.host_base, self.guest_base, self.count)
    }

    /// Guest id → host id.
    pub fn to_host(&self, guest: u32) -> u32 {
        Self::map(guest, self.guest_base, self.host_base, self.count)
    }
}

/// One shared directory.
#[derive(Debug, Clone)]
pub struct ShareOptions {
    /// The host directory (the root of what the guest sees).
    pub source: PathBuf,
    /// Refuse every mutating request with EROFS.
    pub read_only: bool,
    /// Cache policy; [`ShareOptions::new`] picks Immutable for read-only shares.
    pub cache: CachePolicy,
    /// Guest↔host uid mapping (None: identity).
    pub uid_map: Option<IdMap>,
    /// Guest↔host gid mapping (None: identity).
    pub gid_map: Option<IdMap>,
    /// Most open file/directory handles at once (EMFILE beyond).
    pub max_handles: usize,
    /// Most node ids the guest may hold at once (ENFILE for a lookup of a new file beyond):
    /// the server's memory per known inode is ~400 bytes (measured: 82.6 MB peak RSS after a
    /// guest walked 202,001 entries), and a guest decides when it forgets, so the table needs
    /// a bound of its own.
    pub max_inodes: usize,
    /// O_PATH fds kept for hot inodes.
    pub fd_cache_size: usize,
    /// Remember inodes by file handle when running as root (else by parent and name).
    pub use_file_handles: bool,
    /// Largest WRITE and READ payload (also offered as max_write).
    pub max_write: u32,
}

/// Default for [`ShareOptions::max_inodes`]: 1,048,576 (a large /nix/store has a few hundred
/// thousand entries), at most ~420 MB of inode table per share.
pub const DEFAULT_MAX_INODES: usize = 1 << 20;

/// Default for [`ShareOptions::max_write`]: 1 MiB.
pub const DEFAULT_MAX_WRITE: u32 = 1 << 20;

/// The default handle cap: the fd soft limit minus room for the fd cache and the process's
/// own fds, at most 65536.
fn default_max_handles(fd_cache: usize) -> usize {
    // SAFETY: all-zero is a valid rlimit.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `rl` is a valid out pointer.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur as usize
    } else {
        1024
    };
    soft.min(65_536).saturating_sub(fd_cache + 128).max(16)
}

impl ShareOptions {
    /// Options for `source` with the default cache policy for `read_only`.
    pub fn new(source: impl Into<PathBuf>, read_only: bool) -> Self {
        let fd_cache_size = 256;
        Self {
            source: source.into(),
            read_only,
            cache: if read_only {
                CachePolicy::Immutable
            } else {
                CachePolicy::Coherent
            },
            uid_map: None,
            gid_map: None,
            max_handles: default_max_handles(fd_cache_size),
            max_inodes: DEFAULT_MAX_INODES,
            fd_cache_size,
            use_file_handles: true,
            max_write: DEFAULT_MAX_WRITE,
        }
    }
}

/// Why a server could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The shared directory could not be opened.
    #[error("open the shared directory {path}")]
    OpenSharedDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `/proc/self/fd` could not be opened (it is needed to reopen inodes for I/O).
    #[error("open /proc/self/fd")]
    OpenProcFd(#[source] std::io::Error),
    /// The read-only clone of the share's mount could not be made.
    #[error("make a read-only mount of {path}")]
    ReadOnlyMount {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An option is out of range.
    #[error("option {field}: {reason}")]
    InvalidOption {
        /// The field of [`ShareOptions`].
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

/// What INIT negotiated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Session {
    /// Negotiated minor version (the reply layouts we use are the same for 7.31+).
    #[allow(dead_code)]
    pub minor: u32,
    pub flags: u32,
}

/// Counters for guest-triggered log lines.
#[derive(Debug, Default)]
pub(crate) struct Limits {
    pub malformed: RateLimiter,
    pub unsupported: RateLimiter,
}

/// A FUSE server for one share. `Send + Sync`: queues may be served from several threads.
#[derive(Debug)]
pub struct Server {
    pub(crate) opts: ShareOptions,
    pub(crate) fs: PassthroughFs,
    session: RwLock<Option<Session>>,
    pub(crate) limits: Limits,
}

/// Largest request the server reads: a maximal WRITE, or a SETXATTR with a maximal value and
/// name, plus headers.
fn max_request(max_write: u32) -> usize {
    let xattr = 65_536 + 256 + 16;
    std::mem::size_of::<InHeader>() + 64 + (max_write as usize).max(xattr) + 4096
}

/// A reply: an errno (0 for success) and the body after the out header.
pub(crate) enum Reply {
    /// Nothing goes back (FORGET, BATCH_FORGET, INTERRUPT).
    None,
    /// Success with this body.
    Ok(Vec<u8>),
    /// Failure with this errno.
    Err(i32),
}

impl Server {
    /// Opens the shared directory.
    pub fn new(opts: ShareOptions) -> Result<Self, ServerError> {
        if opts.max_write < 4096 || opts.max_write > 16 << 20 {
            return Err(ServerError::InvalidOption {
                field: "max_write",
                reason: "must be between 4 KiB and 16 MiB",
            });
        }
        if opts.max_inodes == 0 {
            return Err(ServerError::InvalidOption {
                field: "max_inodes",
                reason: "must be at least 1",
            });
        }
        if opts.max_handles == 0 {
            return Err(ServerError::InvalidOption {
                field: "max_handles",
                reason: "must be at least 1",
            });
        }
        let fs = PassthroughFs::new(&opts).map_err(|e| match e {
            OpenError::Source(source) => ServerError::OpenSharedDir {
                path: opts.source.clone(),
                source,
            },
            OpenError::Proc(source) => ServerError::OpenProcFd(source),
            OpenError::ReadOnlyTree(source) => ServerError::ReadOnlyMount {
                path: opts.source.clone(),
                source,
            },
        })?;
        Ok(Self {
            opts,
            fs,
            session: RwLock::new(None),
            limits: Limits::default(),
        })
    }

    /// The options the server was created with.
    pub fn options(&self) -> &ShareOptions {
        &self.opts
    }

    /// Node ids held, O_PATH fds cached, open handles (for tests and metrics).
    pub fn counts(&self) -> (usize, usize, usize) {
        self.fs.counts()
    }

    /// Malformed requests seen so far (each also logged, rate-limited).
    pub fn malformed_requests(&self) -> u64 {
        self.limits.malformed.total()
    }

    /// Whether inodes are remembered by file handle (root) or by parent and name.
    pub fn uses_file_handles(&self) -> bool {
        self.fs.uses_file_handles()
    }

    fn session(&self) -> RwLockReadGuard<'_, Option<Session>> {
        self.session.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn negotiated(&self) -> Option<Session> {
        *self.session()
    }

    /// Serves one request: reads it from the chain's readable descriptors, performs it, and
    /// writes the reply into the writable descriptors. Returns the number of bytes written
    /// (the `len` for the used ring; 0 for requests that have no reply, e.g. FORGET).
    pub fn handle_chain<M>(&self, mem: &M, chain: DescriptorChain<&M>) -> u32
    where
        M: GuestMemory,
    {
        use std::io::{Read, Write};
        let (mut reader, mut writer) = match (chain.clone().reader(mem), chain.writer(mem)) {
            (Ok(r), Ok(w)) => (r, w),
            _ => {
                guest_warn!(
                    self.limits.malformed;
                    "virtio-fs: descriptor chain outside guest memory"
                );
                return 0;
            }
        };
        let avail = reader.available_bytes();
        let take = avail.min(max_request(self.opts.max_write));
        let mut req = vec![0u8; take];
        if reader.read_exact(&mut req).is_err() {
            guest_warn!(self.limits.malformed; "virtio-fs: unreadable request");
            return 0;
        }
        let out_cap = writer.available_bytes();
        let Some(reply) = self.serve(&req, avail, out_cap) else {
            return 0;
        };
        match writer.write_all(&reply) {
            Ok(()) => reply.len() as u32,
            Err(_) => {
                guest_warn!(
                    self.limits.malformed;
                    "virtio-fs: reply could not be written"
                );
                0
            }
        }
    }

    /// Serves one request from plain bytes (tests, fuzzing); the reply may be up to
    /// `max_write` plus headers. Empty when the request has no reply.
    pub fn handle_bytes(&self, req: &[u8]) -> Vec<u8> {
        let cap = self.opts.max_write as usize + 4096;
        self.serve(req, req.len(), cap).unwrap_or_default()
    }

    /// `req` holds the first bytes of a request of `total` bytes; the reply may be at most
    /// `out_cap` bytes. Returns the encoded reply, or None when nothing is to be written.
    fn serve(&self, req: &[u8], total: usize, out_cap: usize) -> Option<Vec<u8>> {
        let out_hdr = std::mem::size_of::<OutHeader>();
        let Some(h) = abi::read_prefix::<InHeader>(req) else {
            guest_warn!(
                self.limits.malformed;
                "virtio-fs: request of {total} bytes is shorter than a FUSE header"
            );
            return None;
        };
        let len = h.len as usize;
        let reply = if len < std::mem::size_of::<InHeader>() || len > total || len > req.len() {
            guest_warn!(
                self.limits.malformed;
                "virtio-fs: opcode {} header len {} but request is {} bytes (read {})",
                h.opcode,
                h.len,
                total,
                req.len()
            );
            Reply::Err(libc::EINVAL)
        } else {
            let ext = usize::from(h.total_extlen) * 8;
            let end = len
                .checked_sub(ext)
                .filter(|&e| e >= std::mem::size_of::<InHeader>());
            match end {
                Some(end) => self.dispatch(
                    &h,
                    &req[std::mem::size_of::<InHeader>()..end],
                    out_cap.saturating_sub(out_hdr),
                ),
                None => Reply::Err(libc::EINVAL),
            }
        };
        let (error, body) = match reply {
            Reply::None => return None,
            Reply::Ok(b) => (0, b),
            Reply::Err(e) => (e, Vec::new()),
        };
        let (error, body) = if out_hdr + body.len() > out_cap {
            guest_warn!(
                self.limits.malformed;
                "virtio-fs: opcode {} reply of {} bytes does not fit the {} writable bytes",
                h.opcode,
                out_hdr + body.len(),
                out_cap
            );
            (libc::EIO, Vec::new())
        } else {
            (error, body)
        };
        if out_hdr > out_cap {
            guest_warn!(
                self.limits.malformed;
                "virtio-fs: opcode {} has no room for a reply",
                h.opcode
            );
            return None;
        }
        let hdr = OutHeader {
            len: (out_hdr + body.len()) as u32,
            error: -error,
            unique: h.unique,
        };
        let mut out = Vec::with_capacity(out_hdr + body.len());
        out.extend_from_slice(abi::bytes_of(&hdr));
        out.extend_from_slice(&body);
        Some(out)
    }

    /// INIT. A second INIT on a live session is refused with EIO: the guest kernel sends one
    /// per mount, and renegotiating under open handles would change the request layouts
    /// (e.g. SETXATTR_EXT) mid-stream. DESTROY ends a session, after which INIT works again.
    pub(crate) fn do_init(&self, body: &[u8]) -> Reply {
        let mut inb = [0u8; std::mem::size_of::<abi::InitIn>()];
        if body.len() < abi::INIT_IN_COMPAT_SIZE {
            return Reply::Err(libc::EINVAL);
        }
        let n = body.len().min(inb.len());
        inb[..n].copy_from_slice(&body[..n]);
        let Some(i) = abi::read_prefix::<abi::InitIn>(&inb) else {
            return Reply::Err(libc::EINVAL);
        };
        if i.major != abi::KERNEL_VERSION || i.minor < abi::MIN_KERNEL_MINOR_VERSION {
            guest_warn!(
                self.limits.unsupported;
                "virtio-fs: guest speaks FUSE {}.{}",
                i.major,
                i.minor
            );
            return Reply::Err(libc::EPROTO);
        }
        let minor = i.minor.min(abi::KERNEL_MINOR_VERSION);
        let mut ours = init::ASYNC_READ
            | init::ATOMIC_O_TRUNC
            | init::BIG_WRITES
            | init::DO_READDIRPLUS
            | init::READDIRPLUS_AUTO
            | init::PARALLEL_DIROPS
            | init::MAX_PAGES
            | init::SETXATTR_EXT;
        ours |= match self.opts.cache {
            CachePolicy::Coherent => init::AUTO_INVAL_DATA,
            CachePolicy::Immutable => init::CACHE_SYMLINKS,
        };
        let flags = i.flags & ours;
        {
            let mut s = self.session.write().unwrap_or_else(|p| p.into_inner());
            if s.is_some() {
                guest_warn!(self.limits.malformed; "virtio-fs: second INIT refused");
                return Reply::Err(libc::EIO);
            }
            *s = Some(Session { minor, flags });
        }
        let max_write = self.opts.max_write;
        let out = abi::InitOut {
            major: abi::KERNEL_VERSION,
            minor,
            max_readahead: i.max_readahead.min(max_write),
            flags,
            max_background: 64,
            congestion_threshold: 48,
            max_write,
            time_gran: 1,
            max_pages: (max_write / 4096) as u16,
            map_alignment: 0,
            flags2: 0,
            unused: [0; 7],
        };
        let mut b = abi::bytes_of(&out).to_vec();
        if minor < 23 {
            b.truncate(abi::INIT_OUT_COMPAT_SIZE);
        }
        Reply::Ok(b)
    }

    /// Ends the FUSE session as DESTROY does (every node id and handle dropped, INIT accepted
    /// again). The daemon calls it when the device is reset: a driver that reloads without
    /// unmounting (crash, module reload) starts with a fresh INIT and must not inherit handles.
    pub fn end_session(&self) {
        let _ = self.do_destroy();
    }

    /// DESTROY: the guest unmounted; every node id and handle is dropped.
    pub(crate) fn do_destroy(&self) -> Reply {
        *self.session.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.fs.reset();
        Reply::Ok(Vec::new())
    }
}
