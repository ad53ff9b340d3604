//! `tinyvmm ls/status/stop/pause/resume`: the CLI over the control sockets in the run dir.
//!
//! Whether a VM runs is decided by its run lock, never by the socket file: a socket whose VM's
//! lock is free is stale and reported as such, not connected to.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::api::client::{self, ClientError};
use crate::api::VmStatus;
use crate::cli::{exit_path, socket_path};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the VM-management commands.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("read the run directory {}", path.display())]
    ReadRunDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("check whether VM {name} runs")]
    Lock {
        name: String,
        #[source]
        source: vmconfig::lock::LockError,
    },
    #[error("VM {name} is not running")]
    NotRunning { name: String },
    #[error("VM {name} is not running; its control socket {} is stale", socket.display())]
    StaleSocket { name: String, socket: PathBuf },
    #[error("ask VM {name}")]
    Request {
        name: String,
        #[source]
        source: ClientError,
    },
    #[error("VM {name} answered with an unreadable status")]
    BadStatus { name: String },
    #[error("VM {name} is still running after {secs} s")]
    StopTimeout { name: String, secs: u64 },
}

/// One line of `tinyvmm ls`.
#[derive(Debug, serde::Serialize)]
pub struct Listed {
    pub name: String,
    /// running, paused, stopping, stale (socket without a live VM) or unreachable.
    pub state: String,
    #[serde(flatten)]
    pub status: Option<VmStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn running(run_dir: &Path, name: &str) -> Result<bool, CommandError> {
    vmconfig::lock::is_running(run_dir, name).map_err(|source| CommandError::Lock {
        name: name.to_string(),
        source,
    })
}

/// The socket of a VM whose run lock is held.
fn live_socket(run_dir: &Path, name: &str) -> Result<PathBuf, CommandError> {
    let socket = socket_path(run_dir, name);
    if running(run_dir, name)? {
        return Ok(socket);
    }
    if socket.symlink_metadata().is_ok() {
        return Err(CommandError::StaleSocket {
            name: name.to_string(),
            socket,
        });
    }
    Err(CommandError::NotRunning {
        name: name.to_string(),
    })
}

fn ask(
    run_dir: &Path,
    name: &str,
    method: &str,
    path: &str,
) -> Result<serde_json::Value, CommandError> {
    let socket = live_socket(run_dir, name)?;
    client::request(&socket, method, path, REQUEST_TIMEOUT).map_err(|source| {
        CommandError::Request {
            name: name.to_string(),
            source,
        }
    })
}

/// `GET /vm` of a running VM.
pub fn status(run_dir: &Path, name: &str) -> Result<VmStatus, CommandError> {
    let v = ask(run_dir, name, "GET", "/vm")?;
    serde_json::from_value(v).map_err(|_| CommandError::BadStatus {
        name: name.to_string(),
    })
}

/// `PUT /vm/pause` or `/vm/resume`.
pub fn pause(run_dir: &Path, name: &str, pause: bool) -> Result<(), CommandError> {
    let path = if pause { "/vm/pause" } else { "/vm/resume" };
    ask(run_dir, name, "PUT", path).map(|_| ())
}

/// Asks the VM to shut down (or kills it with `force`) and waits until its process is gone.
/// Returns its exit status, when it left one.
pub fn stop(
    run_dir: &Path,
    name: &str,
    timeout: Duration,
    force: bool,
) -> Result<Option<i32>, CommandError> {
    let path = if force { "/vm/kill" } else { "/vm/shutdown" };
    match ask(run_dir, name, "PUT", path) {
        Ok(_) => {}
        // The VM may end between the request and the reply.
        Err(CommandError::Request { .. }) if !running(run_dir, name)? => {}
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + timeout;
    // The run lock is the only reliable "gone": poll it (it is a cheap flock probe).
    while running(run_dir, name)? {
        if Instant::now() >= deadline {
            return Err(CommandError::StopTimeout {
                name: name.to_string(),
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(read_exit_status(run_dir, name))
}

/// The exit status the VM's last run wrote.
pub fn read_exit_status(run_dir: &Path, name: &str) -> Option<i32> {
    std::fs::read_to_string(exit_path(run_dir, name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Every VM with a run lock or a socket in `run_dir`, sorted by name.
pub fn list(run_dir: &Path) -> Result<Vec<Listed>, CommandError> {
    let entries = match std::fs::read_dir(run_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CommandError::ReadRunDir {
                path: run_dir.to_path_buf(),
                source,
            })
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let f = e.file_name().to_string_lossy().into_owned();
            let name = f
                .strip_suffix(".lock")
                .or_else(|| f.strip_suffix(".sock"))?;
            (!name.starts_with('.')).then(|| name.to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        let socket = socket_path(run_dir, &name);
        let listed = match running(run_dir, &name) {
            Ok(false) if socket.symlink_metadata().is_ok() => Listed {
                name,
                state: "stale".into(),
                status: None,
                error: Some(format!("{} has no live VM", socket.display())),
            },
            Ok(false) | Err(_) => continue,
            Ok(true) => match status(run_dir, &name) {
                Ok(s) => Listed {
                    name,
                    state: serde_json::to_value(s.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    status: Some(s),
                    error: None,
                },
                Err(e) => Listed {
                    name,
                    state: "unreachable".into(),
                    status: None,
                    error: Some(crate::cli::error_chain(&e)),
                },
            },
        };
        out.push(listed);
    }
    Ok(out)
}

/// The `ls` table.
pub fn format_table(vms: &[Listed]) -> String {
    let mut out = format!(
        "{:<16} {:<11} {:>8} {:>10} {:>5} {:>8}  {}\n",
        "NAME", "STATE", "PID", "UPTIME", "VCPUS", "MEMORY", "ADDRESS"
    );
    for vm in vms {
        let line = match &vm.status {
            Some(s) => format!(
                "{:<16} {:<11} {:>8} {:>10} {:>5} {:>7}M  {}\n",
                vm.name,
                vm.state,
                s.pid,
                format_uptime(s.uptime_ms),
                s.vcpus,
                s.memory_mib,
                if s.addresses.is_empty() {
                    "-".to_string()
                } else {
                    s.addresses.join(",")
                }
            ),
            None => format!(
                "{:<16} {:<11} {:>8} {:>10} {:>5} {:>8}  {}\n",
                vm.name,
                vm.state,
                "-",
                "-",
                "-",
                "-",
                vm.error.as_deref().unwrap_or("-")
            ),
        };
        out.push_str(&line);
    }
    out
}

fn format_uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s / 60) % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn list_when_socket_without_lock_holder_then_stale_and_not_connected() {
        let dir = tempfile::tempdir().unwrap();
        let _listener = UnixListener::bind(socket_path(dir.path(), "ghost")).unwrap();
        std::fs::write(dir.path().join("ghost.lock"), "123\n").unwrap();
        std::fs::write(dir.path().join("gone.lock"), "9\n").unwrap();
        let vms = list(dir.path()).unwrap();
        assert_eq!(vms.len(), 1, "{vms:?}");
        assert_eq!(
            (vms[0].name.as_str(), vms[0].state.as_str()),
            ("ghost", "stale")
        );
        let err = status(dir.path(), "ghost").unwrap_err();
        assert!(matches!(err, CommandError::StaleSocket { .. }), "{err}");
        let err = status(dir.path(), "gone").unwrap_err();
        assert!(matches!(err, CommandError::NotRunning { .. }), "{err}");
    }

    #[test]
    fn format_uptime_when_ranges_then_human() {
        assert_eq!(format_uptime(5_400), "5s");
        assert_eq!(format_uptime(61_000), "1m01s");
        assert_eq!(format_uptime(7_260_000), "2h01m");
    }
}
