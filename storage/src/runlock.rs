//! "Is this VM running?" — through tinyvmm's run lock.
//!
//! tinyvmm holds `flock(LOCK_EX)` on `<run_dir>/<name>.lock` while a VM runs (crate vmconfig,
//! `vmconfig::lock`). Storage operations that must not touch a live VM's files (rollback,
//! destroy) take that same lock exclusively for their whole duration: if it is held the VM
//! is running and the operation is refused; while storage holds it, tinyvmm cannot start the
//! VM, so there is no window between the check and the change.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Result, StorageError};

/// `<run_dir>/<name>.lock`.
pub fn lock_path(run_dir: &Path, vm: &str) -> PathBuf {
    run_dir.join(format!("{vm}.lock"))
}

/// Proof that the VM is not running; it cannot start while this lives.
#[derive(Debug)]
pub struct StoppedGuard {
    _file: File,
}

/// Takes the VM's run lock exclusively, or fails with [`StorageError::VmRunning`] when tinyvmm
/// (or another storage command) holds it. `op` names the refused operation in the error.
pub fn hold_stopped(run_dir: &Path, vm: &str, op: &'static str) -> Result<StoppedGuard> {
    let path = lock_path(run_dir, vm);
    let check = |source| StorageError::CheckRunning {
        vm: vm.to_string(),
        source,
    };
    std::fs::create_dir_all(run_dir).map_err(check)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(check)?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(StorageError::VmRunning {
                vm: vm.to_string(),
                op,
                lock: path,
            });
        }
        return Err(check(err));
    }
    Ok(StoppedGuard { _file: file })
}

/// Whether tinyvmm currently runs the VM (its run lock is held).
pub fn is_running(run_dir: &Path, vm: &str) -> Result<bool> {
    let path = lock_path(run_dir, vm);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(StorageError::CheckRunning {
                vm: vm.to_string(),
                source,
            })
        }
    };
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(false);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(true)
    } else {
        Err(StorageError::CheckRunning {
            vm: vm.to_string(),
            source: err,
        })
    }
}
