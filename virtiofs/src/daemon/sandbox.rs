//! The daemon's sandbox: a mount namespace whose root holds only the shared directories.
//!
//! Why: the FUSE server parses guest-controlled requests. If a bug lets a hostile guest take
//! it over, the process it takes over sees no host file system but the shares themselves
//! (plus, optionally, a private /proc): no /etc, no /home, no other VM's shares. The shares
//! are opened after the switch, from inside the new root, so every path the server resolves
//! is confined to them by the kernel, not only by the server's own checks.
//!
//! How ([`SandboxMode::Namespace`]):
//! 1. `unshare(CLONE_NEWNS)`: a private copy of the mount table;
//! 2. `/` recursively private, so nothing done here propagates back to the host;
//! 3. a tmpfs becomes the new root; each share is bind-mounted into it as `/share<i>`
//!    (read-only shares are remounted read-only, so even a server bug cannot write them);
//! 4. `pivot_root` into the tmpfs and detach the old root: the host tree is unreachable.
//!
//! It needs CAP_SYS_ADMIN. Without root the daemon falls back to [`SandboxMode::None`] with a
//! warning (tests and developer runs as a normal user keep working; production runs as root).
//! Must run before the daemon starts any thread: mount namespaces and roots are per task, and
//! threads spawned later inherit them. seccomp is not applied here.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// How the daemon confines itself (upstream virtiofsd's `--sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// A private mount namespace whose root holds only the shares (the default).
    #[default]
    Namespace,
    /// `chroot` into the (single) shared directory.
    Chroot,
    /// No confinement.
    None,
}

impl std::str::FromStr for SandboxMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "namespace" => Ok(Self::Namespace),
            "chroot" => Ok(Self::Chroot),
            "none" => Ok(Self::None),
            other => Err(format!(
                "unknown sandbox mode {other:?} (expected namespace, chroot or none)"
            )),
        }
    }
}

/// Why entering the sandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A shared directory could not be opened before the switch.
    #[error("open the shared directory {path}")]
    OpenShare {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `unshare(CLONE_NEWNS)` failed.
    #[error("unshare the mount namespace")]
    Unshare(#[source] nix::Error),
    /// A mount step failed.
    #[error("mount {what}")]
    Mount {
        /// What was being mounted.
        what: String,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// Creating a mount point in the new root failed.
    #[error("create the mount point {path}")]
    MountPoint {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `pivot_root` or detaching the old root failed.
    #[error("pivot into the new root")]
    PivotRoot(#[source] nix::Error),
    /// `chroot` failed.
    #[error("chroot into {path}")]
    Chroot {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// `/proc/self/fd` could not be opened before the chroot.
    #[error("opening /proc/self/fd before the chroot")]
    KeepProcFd(#[source] std::io::Error),
    /// Chroot mode confines to one directory; several shares need the namespace mode.
    #[error("--sandbox chroot serves exactly one share, got {0}")]
    ChrootShares(usize),
}

/// Where the new root is built (in the private namespace, so the host never sees it).
const BUILD_DIR: &str = "/tmp";

/// Enters the sandbox and returns, for each source, the path to open it by from now on.
/// `read_only[i]` says whether share `i` is mounted read-only.
pub fn enter(
    mode: SandboxMode,
    sources: &[PathBuf],
    read_only: &[bool],
) -> Result<Vec<PathBuf>, SandboxError> {
    let mode = if mode != SandboxMode::None && !nix::unistd::geteuid().is_root() {
        log::warn!("virtiofsd: not running as root: --sandbox {mode:?} needs CAP_SYS_ADMIN; falling back to --sandbox none");
        SandboxMode::None
    } else {
        mode
    };
    match mode {
        SandboxMode::None => Ok(sources.to_vec()),
        SandboxMode::Chroot => {
            let [source] = sources else {
                return Err(SandboxError::ChrootShares(sources.len()));
            };
            // The share has no /proc; the server reopens inodes through /proc/self/fd.
            crate::passthrough::keep_proc_fd().map_err(SandboxError::KeepProcFd)?;
            nix::unistd::chroot(source).map_err(|e| SandboxError::Chroot {
                path: source.clone(),
                source: e,
            })?;
            nix::unistd::chdir("/").map_err(|e| SandboxError::Chroot {
                path: source.clone(),
                source: e,
            })?;
            Ok(vec![PathBuf::from("/")])
        }
        // The passthrough server reopens inodes for I/O through /proc/self/fd, so the sandbox
        // gets a fresh proc. Residual risk, for the hardening work (issue 13): without a PID
        // namespace, a taken-over server could reach other processes' /proc/PID/root.
        SandboxMode::Namespace => enter_namespace(sources, read_only, true),
    }
}

/// [`SandboxMode::Namespace`]; `with_proc` also mounts a fresh proc at `/proc` (for a server
/// that reopens files through `/proc/self/fd`).
pub fn enter_namespace(
    sources: &[PathBuf],
    read_only: &[bool],
    with_proc: bool,
) -> Result<Vec<PathBuf>, SandboxError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(SandboxError::Unshare)?;
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|source| mount_err("/ private", source))?;
    // Open the shares before the tmpfs may cover their paths (e.g. shares under /tmp), and
    // after unshare: a handle opened before it names a mount of the host namespace, which
    // cannot be bind-mounted here.
    let handles = sources
        .iter()
        .map(|path| {
            open_path(path).map_err(|source| SandboxError::OpenShare {
                path: path.clone(),
                source,
            })
        })
        .collect::<Result<Vec<File>, _>>()?;
    mount(
        Some("tmpfs"),
        BUILD_DIR,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )
    .map_err(|source| mount_err("the tmpfs root", source))?;
    let mut inside = Vec::with_capacity(sources.len());
    for (index, (handle, ro)) in handles.iter().zip(read_only).enumerate() {
        let name = format!("share{index}");
        let target = Path::new(BUILD_DIR).join(&name);
        std::fs::create_dir(&target).map_err(|source| SandboxError::MountPoint {
            path: target.clone(),
            source,
        })?;
        let from = format!("/proc/self/fd/{}", handle.as_raw_fd());
        mount(
            Some(from.as_str()),
            &target,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )
        .map_err(|source| mount_err(&format!("share {index} (bind)"), source))?;
        if *ro {
            // Only the share's own mount; mounts below it keep their flags.
            mount(
                none,
                &target,
                none,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                none,
            )
            .map_err(|source| mount_err(&format!("share {index} (read-only)"), source))?;
        }
        inside.push(PathBuf::from("/").join(name));
    }
    drop(handles);
    if with_proc {
        let target = Path::new(BUILD_DIR).join("proc");
        std::fs::create_dir(&target).map_err(|source| SandboxError::MountPoint {
            path: target.clone(),
            source,
        })?;
        mount(
            Some("proc"),
            &target,
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            none,
        )
        .map_err(|source| mount_err("/proc", source))?;
    }
    nix::unistd::chdir(BUILD_DIR).map_err(SandboxError::PivotRoot)?;
    switch_root()?;
    // The tmpfs itself holds nothing but mount points: make it read-only too.
    mount(
        none,
        "/",
        none,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        none,
    )
    .map_err(|source| mount_err("the new root read-only", source))?;
    Ok(inside)
}

/// Makes the current directory (the tmpfs) the root of this mount namespace.
///
/// `pivot_root(".", ".")` stacks the old root on the new one, and detaching it leaves the host
/// tree unreachable. A host whose root is the initramfs (rootfs: the lab's L1 machine, some
/// appliances) cannot pivot away from it (EINVAL); there the tmpfs is moved over `/` and
/// chrooted into, as switch_root does. The host tree is then hidden under the moved mount
/// rather than detached, so a process that keeps CAP_SYS_CHROOT could climb out: warn.
fn switch_root() -> Result<(), SandboxError> {
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => umount2(".", MntFlags::MNT_DETACH).map_err(SandboxError::PivotRoot)?,
        Err(nix::errno::Errno::EINVAL) => {
            log::warn!(
                "virtiofsd: the host root cannot be pivoted (initramfs); confining with \
                 MS_MOVE + chroot instead"
            );
            let none: Option<&str> = None;
            mount(Some("."), "/", none, MsFlags::MS_MOVE, none)
                .map_err(|source| mount_err("the tmpfs root over /", source))?;
            nix::unistd::chroot(".").map_err(SandboxError::PivotRoot)?;
        }
        Err(e) => return Err(SandboxError::PivotRoot(e)),
    }
    nix::unistd::chdir("/").map_err(SandboxError::PivotRoot)
}

fn mount_err(what: &str, source: nix::Error) -> SandboxError {
    SandboxError::Mount {
        what: what.to_owned(),
        source,
    }
}

/// An `O_PATH | O_DIRECTORY` handle on `path` (bind-mountable through /proc/self/fd).
fn open_path(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
}
