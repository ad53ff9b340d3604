//! `tinyvmm virtiofsd`: tinyvmm's vhost-user-fs backend as a command.
//!
//! The standalone form mirrors upstream virtiofsd's basic flags (`--socket-path` or `--fd`,
//! `--shared-dir`, `--readonly`, `--tag`, `--sandbox`, `--cache`, `--log-level`; the thread
//! pool size and `--xattr` are accepted and ignored), so scripts written for virtiofsd work
//! with it. The hidden form `--share fd=N,dir=D[,ro=1][,tag=T]` (repeated) serves several
//! shares over inherited listening sockets: that is how `tinyvmm run` starts the one server
//! process of a VM (see [`crate::fs_server`]).

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use virtiofs::daemon::{self, DaemonShare, SandboxMode};
use virtiofs::{CachePolicy, ShareOptions};

use crate::exit_code::RunExit;

/// Upstream virtiofsd's cache modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheMode {
    /// The default for the share: long-lived caches for read-only shares, coherent otherwise.
    Auto,
    /// The share never changes behind the guest's back: cache everything.
    Always,
    /// The host may change files at any time: short timeouts, no page cache kept.
    Never,
}

/// The flags of `tinyvmm virtiofsd`.
#[derive(Debug, clap::Args)]
pub struct VirtiofsdArgs {
    /// vhost-user socket path to listen on.
    #[arg(long, conflicts_with = "fd")]
    pub socket_path: Option<PathBuf>,
    /// An inherited file descriptor of an already listening vhost-user socket.
    #[arg(long)]
    pub fd: Option<RawFd>,
    /// The directory to share.
    #[arg(long)]
    pub shared_dir: Option<PathBuf>,
    /// Share read-only.
    #[arg(long, alias = "read-only")]
    pub readonly: bool,
    /// The share's tag (for log lines; the VMM presents the tag to the guest).
    #[arg(long, default_value = "virtiofs")]
    pub tag: String,
    /// Sandbox mode: namespace (the default; needs root), chroot, or none.
    #[arg(long, default_value = "namespace")]
    pub sandbox: SandboxMode,
    /// Cache mode.
    #[arg(long, value_enum, default_value = "auto")]
    pub cache: CacheMode,
    /// Accepted for compatibility with virtiofsd; ignored (one worker per queue set).
    #[arg(long)]
    pub thread_pool_size: Option<usize>,
    /// Accepted for compatibility with virtiofsd; extended attributes follow the server.
    #[arg(long)]
    pub xattr: bool,
    /// Internal (tinyvmm run): serve an inherited listening socket, `fd=N,dir=D[,ro=1][,tag=T]`.
    #[arg(long, hide = true, conflicts_with_all = ["socket_path", "fd", "shared_dir"])]
    pub share: Vec<ShareSpec>,
}

/// One `--share` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    /// The inherited listening socket.
    pub fd: RawFd,
    /// The shared directory.
    pub dir: PathBuf,
    /// Read-only.
    pub read_only: bool,
    /// The tag.
    pub tag: String,
}

impl ShareSpec {
    /// The `--share` argument for this share.
    pub fn to_arg(&self) -> std::ffi::OsString {
        let mut arg = std::ffi::OsString::from(format!(
            "fd={},ro={},tag={},dir=",
            self.fd,
            u8::from(self.read_only),
            self.tag
        ));
        // Last, so that a directory name may contain commas.
        arg.push(self.dir.as_os_str());
        arg
    }
}

impl std::str::FromStr for ShareSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut fd, mut dir, mut read_only, mut tag) = (None, None, false, None);
        let mut rest = s;
        while !rest.is_empty() {
            let (key, value_and_rest) = rest
                .split_once('=')
                .ok_or_else(|| format!("{rest:?}: expected key=value"))?;
            if key == "dir" {
                // The rest of the argument is the directory.
                dir = Some(PathBuf::from(value_and_rest));
                break;
            }
            let (value, next) = value_and_rest
                .split_once(',')
                .unwrap_or((value_and_rest, ""));
            match key {
                "fd" => fd = Some(value.parse().map_err(|_| format!("fd={value:?}"))?),
                "ro" => read_only = value == "1",
                "tag" => tag = Some(value.to_owned()),
                other => return Err(format!("unknown key {other:?}")),
            }
            rest = next;
        }
        Ok(Self {
            fd: fd.ok_or("missing fd=")?,
            dir: dir.ok_or("missing dir=")?,
            read_only,
            tag: tag.unwrap_or_else(|| "virtiofs".into()),
        })
    }
}

/// Why `tinyvmm virtiofsd` could not start.
#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    /// Neither a socket nor a share was given.
    #[error("give --socket-path or --fd, and --shared-dir")]
    MissingArgs,
    /// The socket could not be bound.
    #[error("listen on {0}")]
    Listen(PathBuf, #[source] std::io::Error),
    /// The inherited fd is not an open listening socket.
    #[error("--fd {0} is not an open socket")]
    BadFd(RawFd, #[source] std::io::Error),
    /// The daemon failed.
    #[error("serve")]
    Serve(#[source] daemon::DaemonError),
}

/// Runs the command until every share's frontend has disconnected.
pub fn run(args: VirtiofsdArgs) -> RunExit {
    match serve(args) {
        Ok(()) => RunExit::Poweroff,
        Err(e) => {
            eprintln!("tinyvmm virtiofsd: error: {}", crate::cli::error_chain(&e));
            RunExit::Error
        }
    }
}

fn serve(args: VirtiofsdArgs) -> Result<(), VirtiofsdError> {
    raise_fd_limit();
    let cache = args.cache;
    // The servers of one process share its fd limit: each gets its part of the handle cap.
    let servers = args.share.len().max(1);
    let options = |dir: PathBuf, read_only: bool| {
        let mut opts = ShareOptions::new(dir, read_only);
        opts.max_handles = (opts.max_handles / servers).max(1);
        match cache {
            CacheMode::Auto => {}
            CacheMode::Always => opts.cache = CachePolicy::Immutable,
            CacheMode::Never => opts.cache = CachePolicy::Coherent,
        }
        opts
    };
    let shares = if args.share.is_empty() {
        let dir = args.shared_dir.ok_or(VirtiofsdError::MissingArgs)?;
        let listener = match (args.socket_path, args.fd) {
            (Some(path), None) => listen(&path)?,
            (None, Some(fd)) => inherited_listener(fd)?,
            _ => return Err(VirtiofsdError::MissingArgs),
        };
        vec![DaemonShare {
            tag: args.tag,
            listener,
            options: options(dir, args.readonly),
        }]
    } else {
        args.share
            .into_iter()
            .map(|spec| {
                Ok(DaemonShare {
                    listener: inherited_listener(spec.fd)?,
                    options: options(spec.dir, spec.read_only),
                    tag: spec.tag,
                })
            })
            .collect::<Result<_, VirtiofsdError>>()?
    };
    daemon::serve(shares, args.sandbox).map_err(VirtiofsdError::Serve)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: open FUSE handles hold fds, and the
/// handle cap is derived from the soft limit (what `ulimit -n` or systemd's LimitNOFILE set
/// as the hard limit is the operator's bound).
fn raise_fd_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0;
    if ok && rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: as above; a failure leaves the old limit, which is still correct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
            log::warn!(
                "virtiofsd: cannot raise the fd limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Binds `path`, replacing a stale socket file (but nothing else).
fn listen(path: &std::path::Path) -> Result<UnixListener, VirtiofsdError> {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|e| VirtiofsdError::Listen(path.to_owned(), e))
}

/// Takes ownership of an inherited listening socket.
fn inherited_listener(fd: RawFd) -> Result<UnixListener, VirtiofsdError> {
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `accepting`, a valid c_int; an
    // invalid fd only makes it fail.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            std::ptr::addr_of_mut!(accepting).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(VirtiofsdError::BadFd(fd, std::io::Error::last_os_error()));
    }
    if accepting == 0 {
        return Err(VirtiofsdError::BadFd(
            fd,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not listening"),
        ));
    }
    // Close-on-exec again: nothing this process runs should inherit it.
    // SAFETY: fcntl on a valid fd with a valid command.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the fd is an open listening socket (checked above) that the parent handed to
    // this process for it to own; nothing else in this process uses it.
    Ok(unsafe { UnixListener::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_spec_when_round_tripped_then_equal_even_with_commas_in_dir() {
        let spec = ShareSpec {
            fd: 7,
            dir: PathBuf::from("/srv/a,b=c"),
            read_only: true,
            tag: "store".into(),
        };

        let parsed: ShareSpec = spec.to_arg().to_str().unwrap().parse().unwrap();

        assert_eq!(parsed, spec);
    }

    #[test]
    fn share_spec_when_fd_missing_or_key_unknown_then_error() {
        assert!("dir=/x".parse::<ShareSpec>().unwrap_err().contains("fd"));
        assert!("fd=3,bogus=1,dir=/x"
            .parse::<ShareSpec>()
            .unwrap_err()
            .contains("bogus"));
    }
}
