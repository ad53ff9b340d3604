//! The control socket: bound with its final mode and owner before it becomes visible, one
//! accept thread, one short-lived thread per connection (bounded in number, with timeouts), so
//! a slow or hostile client never blocks the VM or other clients.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::http::{self, Parse, Response, MAX_BODY, MAX_HEAD};
use super::VmApi;

/// Socket file mode: owner and group may connect, nobody else.
pub const SOCKET_MODE: u32 = 0o660;
/// Connections served at once; more get 503 and are closed.
const MAX_CONNECTIONS: usize = 16;
/// How long one request may take to arrive or its answer to leave.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("remove the stale socket {}", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bind the control socket {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("set mode and owner of the control socket {}", path.display())]
    SetPermissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("publish the control socket at {}", path.display())]
    Publish {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("start the control socket thread")]
    SpawnThread(#[source] std::io::Error),
}

/// Who owns the socket file (None: leave as created, i.e. tinyvmm's user and group).
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketOwner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// A listening control socket; the file is removed when this is dropped.
pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path` and starts serving `api`. Call only while holding the VM's run lock: an
    /// existing socket at `path` then belongs to a dead run and is replaced.
    pub fn start(
        path: &Path,
        owner: SocketOwner,
        api: Arc<dyn VmApi>,
    ) -> Result<Self, ServerError> {
        remove_stale(path)?;
        let listener = bind_private(path, owner)?;
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(listener, api))
            .map_err(ServerError::SpawnThread)?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn remove_stale(path: &Path) -> Result<(), ServerError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| ServerError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })
        }
        Ok(_) => Err(ServerError::NotASocket {
            path: path.to_path_buf(),
        }),
        Err(_) => Ok(()),
    }
}

/// Binds under a temporary name, sets mode and owner, then renames into place, so no client
/// ever sees the socket with the umask's permissions.
fn bind_private(path: &Path, owner: SocketOwner) -> Result<UnixListener, ServerError> {
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        file.unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let perms = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))
        .and_then(|()| std::os::unix::fs::chown(&tmp, owner.uid, owner.gid));
    if let Err(source) = perms {
        let _ = std::fs::remove_file(&tmp);
        return Err(ServerError::SetPermissions {
            path: path.to_path_buf(),
            source,
        });
    }
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        ServerError::Publish {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

fn accept_loop(listener: UnixListener, api: Arc<dyn VmApi>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("control socket: accept: {e}");
                continue;
            }
        };
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.write_all(&Response::error(503, "too many connections").to_bytes());
            continue;
        }
        let api = api.clone();
        let guard = ActiveGuard(active.clone());
        let spawned = std::thread::Builder::new()
            .name("control-conn".into())
            .spawn(move || {
                let _guard = guard;
                serve(stream, api.as_ref());
            });
        if let Err(e) = spawned {
            log::warn!("control socket: cannot start a connection thread: {e}");
        }
    }
}

struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads one bounded request, answers it, closes.
fn serve(mut stream: UnixStream, api: &dyn VmApi) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let response = match read_request(&mut stream) {
        Ok(Some((method, path))) => http::route(&method, &path, api),
        Ok(None) => return,
        Err(r) => r,
    };
    if response.status >= 400 {
        log::info!(
            "control socket: answered {}: {}",
            response.status,
            response.body
        );
    }
    let _ = stream.write_all(&response.to_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// `Ok(None)`: the peer went away or timed out before sending a whole request.
fn read_request(stream: &mut UnixStream) -> Result<Option<(String, String)>, Response> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = loop {
        match http::parse_head(&buf) {
            Parse::Complete(h) => break h,
            Parse::Reject(r) => return Err(r),
            Parse::Partial => {}
        }
        let want = (MAX_HEAD + 1).saturating_sub(buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    // Drain the (bounded) body so closing does not reset the connection before the reply.
    let mut have = buf.len() - head.head_len;
    while have < head.content_length.min(MAX_BODY) {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => have += n,
        }
    }
    Ok(Some((head.method, head.path)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ApiError, VmState, VmStatus};

    struct StaticVm;
    impl VmApi for StaticVm {
        fn status(&self) -> VmStatus {
            VmStatus {
                name: "t".into(),
                state: VmState::Running,
                pid: 1,
                uptime_ms: 0,
                vcpus: 1,
                memory_mib: 1,
                kernel: String::new(),
                boot_timer_us: None,
                addresses: vec![],
                devices: Default::default(),
            }
        }
        fn shutdown(&self) -> Result<(), ApiError> {
            Ok(())
        }
        fn kill(&self) -> Result<(), ApiError> {
            Ok(())
        }
        fn pause(&self) -> Result<(), ApiError> {
            Err(ApiError::Conflict("no".into()))
        }
        fn resume(&self) -> Result<(), ApiError> {
            Ok(())
        }
    }

    fn raw(path: &Path, req: &[u8]) -> String {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(req).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn server_when_started_then_mode_0660_and_answers_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.sock");
        let server =
            ControlServer::start(&path, SocketOwner::default(), Arc::new(StaticVm)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);

        let garbage = raw(&path, b"\xff\xfe\r\n\r\n");
        assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
        // A client that connects and says nothing does not block the next one.
        let _idle = UnixStream::connect(&path).unwrap();
        let ok = raw(&path, b"GET /vm HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("\"state\":\"running\""), "{ok}");
        let conflict = raw(&path, b"PUT /vm/pause HTTP/1.1\r\n\r\n");
        assert!(conflict.starts_with("HTTP/1.1 409"), "{conflict}");

        drop(server);
        assert!(!path.exists());
    }

    #[test]
    fn server_when_path_is_a_regular_file_then_refuses_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.sock");
        std::fs::write(&path, "data").unwrap();
        let err = ControlServer::start(&path, SocketOwner::default(), Arc::new(StaticVm))
            .err()
            .unwrap();
        assert!(matches!(err, ServerError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    }

    #[test]
    fn server_when_stale_socket_exists_then_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.sock");
        drop(UnixListener::bind(&path).unwrap());
        let _server =
            ControlServer::start(&path, SocketOwner::default(), Arc::new(StaticVm)).unwrap();
        let ok = raw(&path, b"GET /vm HTTP/1.0\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    }
}
