//! The VM's virtio-fs server process and the backend connections of its shares.
//!
//! All `source` shares of a VM are served by ONE child process, `/proc/self/exe virtiofsd
//! --share ...` (see `virtiofs::daemon` for why one process per VM). There is no start-order
//! race and nothing is left on disk:
//! 1. in a private 0700 directory, bind and listen one unix socket per share;
//! 2. connect to each (the kernel's backlog completes the connection before anyone accepts);
//! 3. unlink the socket files and remove the directory (the listening sockets keep working,
//!    but no other process can reach them any more);
//! 4. spawn the child with the listening sockets as inherited fds. In the child, before exec,
//!    PR_SET_PDEATHSIG(SIGKILL) ties its life to this process (a `kill -9` of tinyvmm kills
//!    it too), and a getppid check catches a parent that died before the prctl.
//!
//! The parent-death signal fires when the *thread* that forked exits, so the server must be
//! spawned from the thread that lives as long as the VM: the main thread (builder and event
//! loop). [`FsServer`] kills and reaps the child when dropped (VM exit).
//!
//! `socket` shares connect to an external backend, retrying for [`EXTERNAL_CONNECT_TIMEOUT`]
//! while the socket does not exist yet or refuses connections.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmconfig::VmConfig;

use crate::virtiofsd::ShareSpec;

/// How long a `socket` share waits for its external backend.
pub const EXTERNAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the server or a backend connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FsServerError {
    /// The private socket directory could not be created.
    #[error("create the private socket directory under {0}")]
    SocketDir(PathBuf, #[source] nix::Error),
    /// A share's socket could not be bound or connected.
    #[error("create the vhost-user socket of share {tag}")]
    Socket {
        /// The share.
        tag: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server process could not be started.
    #[error("spawn the virtio-fs server process")]
    Spawn(#[source] std::io::Error),
    /// An external backend did not accept a connection in time.
    #[error("connect share {tag} to the external backend {socket} (waited {waited:?})")]
    ConnectExternal {
        /// The share.
        tag: String,
        /// The socket.
        socket: PathBuf,
        /// How long it was retried.
        waited: Duration,
        /// The last error.
        #[source]
        source: std::io::Error,
    },
}

/// The running server process; killed and reaped on drop.
#[derive(Debug)]
pub struct FsServer {
    /// `None` only after [`FsServer::into_child`].
    child: Option<Child>,
    pid: u32,
}

impl FsServer {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Gives up ownership: the process is no longer killed on drop (tests of the
    /// parent-death signal).
    pub fn into_child(mut self) -> Option<Child> {
        self.child.take()
    }
}

impl Drop for FsServer {
    fn drop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        // The frontends are gone or going; the server has nothing left to do.
        let _ = child.kill();
        match child.wait() {
            Ok(status) => log::debug!("virtio-fs server {} ended: {status}", self.pid),
            Err(e) => log::warn!("virtio-fs server {}: cannot reap: {e}", self.pid),
        }
    }
}

/// A share with a connected vhost-user stream, ready for the frontend handshake.
#[derive(Debug)]
pub struct ConnectedShare {
    /// The tag.
    pub tag: String,
    /// The connection to its backend.
    pub stream: UnixStream,
}

/// Starts the server for the config's `source` shares (none if there are none) and connects
/// every share, in config order. `socket` shares connect to their external backends.
pub fn spawn_fs_server(
    cfg: &VmConfig,
) -> Result<(Option<FsServer>, Vec<ConnectedShare>), FsServerError> {
    let embedded: Vec<_> = cfg.shares.iter().filter(|s| s.source.is_some()).collect();
    let mut pairs = Vec::new();
    if !embedded.is_empty() {
        let base = std::env::temp_dir();
        let dir = nix::unistd::mkdtemp(&base.join("tinyvmm-fs-XXXXXX"))
            .map_err(|e| FsServerError::SocketDir(base.clone(), e))?;
        let result = bind_and_connect(&dir, &embedded);
        // The sockets are connected (or failed): nobody else needs to find them.
        let _ = std::fs::remove_dir_all(&dir);
        pairs = result?;
    }
    let specs: Vec<ShareSpec> = embedded
        .iter()
        .zip(&pairs)
        .map(|(share, (listener, _))| ShareSpec {
            fd: listener.as_raw_fd(),
            dir: share.source.clone().unwrap_or_default(),
            read_only: share.read_only,
            tag: share.tag.clone(),
        })
        .collect();
    let server = if specs.is_empty() {
        None
    } else {
        Some(spawn_server(Path::new("/proc/self/exe"), &specs)?)
    };
    // Our copies of the listeners close here: only the server holds them now.
    let mut streams = pairs.into_iter().map(|(_, stream)| stream);
    let mut connected = Vec::with_capacity(cfg.shares.len());
    for share in &cfg.shares {
        let stream = match &share.socket {
            Some(socket) => connect_external(&share.tag, socket)?,
            // In the order of `embedded`.
            None => streams.next().ok_or_else(|| FsServerError::Socket {
                tag: share.tag.clone(),
                source: std::io::Error::other("no socket was created for this share"),
            })?,
        };
        connected.push(ConnectedShare {
            tag: share.tag.clone(),
            stream,
        });
    }
    Ok((server, connected))
}

fn bind_and_connect(
    dir: &Path,
    shares: &[&vmconfig::ShareConfig],
) -> Result<Vec<(UnixListener, UnixStream)>, FsServerError> {
    shares
        .iter()
        .enumerate()
        .map(|(i, share)| {
            let err = |source| FsServerError::Socket {
                tag: share.tag.clone(),
                source,
            };
            let path = dir.join(format!("{i}.sock"));
            let listener = UnixListener::bind(&path).map_err(err)?;
            let stream = UnixStream::connect(&path).map_err(err)?;
            let _ = std::fs::remove_file(&path);
            Ok((listener, stream))
        })
        .collect()
}

/// Spawns `exe virtiofsd --share ...` (`exe` is tinyvmm itself) for listening sockets the
/// caller owns (their fds are in `specs`), tied to the calling thread by PR_SET_PDEATHSIG.
pub fn spawn_server(exe: &Path, specs: &[ShareSpec]) -> Result<FsServer, FsServerError> {
    let mut cmd = Command::new(exe);
    cmd.arg("--log-level")
        .arg(log::max_level().to_string())
        .arg("virtiofsd");
    for spec in specs {
        cmd.arg("--share").arg(spec.to_arg());
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let parent = std::process::id();
    let fds: Vec<RawFd> = specs.iter().map(|s| s.fd).collect();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (prctl, getppid, fcntl, _exit); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then no signal will come.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                libc::_exit(1);
            }
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(FsServerError::Spawn)?;
    log::info!(
        "virtio-fs server {} started for {} share(s)",
        child.id(),
        specs.len()
    );
    Ok(FsServer {
        pid: child.id(),
        child: Some(child),
    })
}

/// Connects to an external backend, retrying while its socket is missing or refuses.
fn connect_external(tag: &str, socket: &Path) -> Result<UnixStream, FsServerError> {
    let start = Instant::now();
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => return Ok(stream),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && start.elapsed() < EXTERNAL_CONNECT_TIMEOUT =>
            {
                // Polling an external resource that has no readiness signal to wait on.
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(FsServerError::ConnectExternal {
                    tag: tag.to_owned(),
                    socket: socket.to_owned(),
                    waited: start.elapsed(),
                    source,
                })
            }
        }
    }
}
