//! The run lock: how other tools know a VM is running.
//!
//! While a VM runs, tinyvmm holds `flock(LOCK_EX)` on `<run_dir>/<name>.lock`. The kernel drops
//! the lock when the process dies, however it dies, so a stale file never means "running".
//! The file is left in place on release: unlinking it would race with a concurrent acquirer
//! that already opened the old inode.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::validate::check_name;

/// Environment variable that overrides the run directory.
pub const RUN_DIR_ENV: &str = "TINYVMM_RUN_DIR";
/// Run directory when [`RUN_DIR_ENV`] is unset.
pub const DEFAULT_RUN_DIR: &str = "/run/tinyvmm";

/// `$TINYVMM_RUN_DIR`, or `/run/tinyvmm`.
pub fn default_run_dir() -> PathBuf {
    match std::env::var_os(RUN_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_RUN_DIR),
    }
}

/// `<run_dir>/<name>.lock`.
pub fn lock_path(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.lock"))
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("invalid VM name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("creating run directory {}: {source}", path.display())]
    CreateRunDir { path: PathBuf, source: io::Error },
    #[error("opening lock file {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("locking {}: {source}", path.display())]
    Lock { path: PathBuf, source: io::Error },
    #[error("VM {name:?} is already running (lock {} is held)", path.display())]
    AlreadyRunning { name: String, path: PathBuf },
}

/// An exclusive run lock, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
    name: String,
}

impl Drop for RunLock {
    /// Unlocks explicitly instead of relying on the close. An flock belongs to the open file
    /// description, which a child forked by another thread shares until its exec closes the
    /// O_CLOEXEC copy; closing only our fd would leave the VM "running" for that window.
    /// LOCK_UN releases it whoever else still refers to the description.
    fn drop(&mut self) {
        let _ = flock(&self.file, libc::LOCK_UN);
    }
}

impl RunLock {
    /// Takes the run lock for VM `name`, creating `run_dir` if needed. Never blocks: a held
    /// lock gives [`LockError::AlreadyRunning`]. The holder's pid is written into the file for
    /// humans; the lock itself is what counts.
    pub fn acquire(run_dir: &Path, name: &str) -> Result<RunLock, LockError> {
        check_lock_name(name)?;
        std::fs::create_dir_all(run_dir).map_err(|source| LockError::CreateRunDir {
            path: run_dir.to_path_buf(),
            source,
        })?;
        let path = lock_path(run_dir, name);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| LockError::Open {
                path: path.clone(),
                source,
            })?;
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(true) => {}
            Ok(false) => {
                return Err(LockError::AlreadyRunning {
                    name: name.to_string(),
                    path,
                })
            }
            Err(source) => return Err(LockError::Lock { path, source }),
        }
        // Best effort: the pid is informational only.
        let _ = file
            .set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(RunLock {
            file,
            path,
            name: name.to_string(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Whether some process holds VM `name`'s run lock. Does not create anything.
pub fn is_running(run_dir: &Path, name: &str) -> Result<bool, LockError> {
    check_lock_name(name)?;
    let path = lock_path(run_dir, name);
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(LockError::Open { path, source }),
    };
    // A shared lock conflicts only with the runner's exclusive one. It is released explicitly
    // (see `RunLock::drop` for why closing is not enough): a probe must never make a
    // concurrent `acquire` fail.
    match flock(&file, libc::LOCK_SH | libc::LOCK_NB) {
        Ok(true) => {
            let _ = flock(&file, libc::LOCK_UN);
            Ok(false)
        }
        Ok(false) => Ok(true),
        Err(source) => Err(LockError::Lock { path, source }),
    }
}

fn check_lock_name(name: &str) -> Result<(), LockError> {
    check_name(name).map_err(|reason| LockError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

/// Non-blocking flock: `Ok(true)` when taken, `Ok(false)` when someone else holds it.
fn flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock only reads the fd, which `file` keeps open for the whole call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_lock_when_acquired_then_running_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("run"); // does not exist yet
        assert!(!is_running(&run_dir, "vm1").unwrap());

        let lock = RunLock::acquire(&run_dir, "vm1").unwrap();
        assert_eq!(lock.path(), run_dir.join("vm1.lock"));
        assert!(is_running(&run_dir, "vm1").unwrap());
        assert!(!is_running(&run_dir, "vm2").unwrap());
        let pid = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());

        match RunLock::acquire(&run_dir, "vm1") {
            Err(LockError::AlreadyRunning { name, .. }) => assert_eq!(name, "vm1"),
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }
        let other = RunLock::acquire(&run_dir, "vm2").unwrap();

        drop(lock);
        assert!(!is_running(&run_dir, "vm1").unwrap());
        assert!(is_running(&run_dir, "vm2").unwrap());
        let again = RunLock::acquire(&run_dir, "vm1").unwrap();
        assert!(is_running(&run_dir, "vm1").unwrap());
        drop((again, other));
    }

    /// A child that another thread forked shares the lock's open file description until its
    /// exec (the fd is O_CLOEXEC). Here a spawning thread's child is parked in that window on
    /// purpose (blocked in `pre_exec` on a pipe) while the lock is dropped and probed.
    #[test]
    fn run_lock_when_dropped_while_a_forked_child_shares_the_fd_then_released() {
        use std::io::{Read as _, Write as _};
        use std::os::unix::process::CommandExt;

        let dir = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(dir.path(), "vm5").unwrap();
        let (go_read, mut go_write) = std::io::pipe().unwrap();
        let (mut parked_read, parked_write) = std::io::pipe().unwrap();
        let (go_fd, parked_fd) = (go_read.as_raw_fd(), parked_write.as_raw_fd());
        let mut cmd = std::process::Command::new("true");
        // SAFETY: the closure runs in the forked child before exec and only calls write(2) and
        // read(2), which are async-signal-safe, on fds the child inherited.
        unsafe {
            cmd.pre_exec(move || {
                let mut byte = 0u8;
                libc::write(parked_fd, (&raw const byte).cast(), 1);
                libc::read(go_fd, (&raw mut byte).cast(), 1);
                Ok(())
            });
        }
        // `spawn` returns only after the exec, so it runs on its own thread, like the other
        // thread of a VMM that forks while this one releases the lock.
        let spawner = std::thread::spawn(move || cmd.spawn().unwrap().wait().unwrap());
        let mut byte = [0u8];
        parked_read.read_exact(&mut byte).unwrap();
        drop((go_read, parked_write));

        drop(lock);
        let running = is_running(dir.path(), "vm5").unwrap();
        let again = RunLock::acquire(dir.path(), "vm5");
        go_write.write_all(b"x").unwrap();
        spawner.join().unwrap();
        assert!(!running, "a dropped lock still looked held");
        again.expect("a dropped lock could not be taken again");
    }

    #[test]
    fn run_lock_when_is_running_probes_then_lock_still_acquirable() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(lock_path(dir.path(), "vm3"), "stale\n").unwrap();
        assert!(!is_running(dir.path(), "vm3").unwrap());
        let _lock = RunLock::acquire(dir.path(), "vm3").unwrap();
    }

    #[test]
    fn run_lock_when_name_has_slash_then_invalid_name() {
        let dir = tempfile::tempdir().unwrap();
        let err = RunLock::acquire(dir.path(), "../etc/x").unwrap_err();
        assert!(matches!(err, LockError::InvalidName { .. }), "{err}");
        assert!(is_running(dir.path(), "").is_err());
    }

    #[test]
    fn run_lock_when_run_dir_is_a_file_then_create_run_dir_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let err = RunLock::acquire(&file.join("sub"), "vm1").unwrap_err();
        assert!(matches!(err, LockError::CreateRunDir { .. }), "{err}");
    }

    #[test]
    fn is_running_when_held_by_another_process_then_true() {
        // A separate process proves the lock is visible across processes, as storage sees it.
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(dir.path(), "vm4");
        let mut child = std::process::Command::new("flock")
            // -F: no fork, so killing the child releases the lock.
            .args(["-x", "-F"])
            .arg(&path)
            .args(["sleep", "30"])
            .spawn()
            .expect("flock(1) from util-linux is needed for this test");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !is_running(dir.path(), "vm4").unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "child never took the lock"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(matches!(
            RunLock::acquire(dir.path(), "vm4"),
            Err(LockError::AlreadyRunning { .. })
        ));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_running(dir.path(), "vm4").unwrap());
    }
}
