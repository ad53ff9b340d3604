//! "Is this VM running?" — through tinyvmm's run lock (`vmconfig::lock`).
//!
//! tinyvmm holds `flock(LOCK_EX)` on `<run_dir>/<name>.lock` while a VM runs. Storage
//! operations that must not touch a live VM's files (rollback, destroy) take that same lock
//! with [`vmconfig::RunLock::acquire`] for their whole duration: if it is held, the VM is
//! running and the operation is refused; while storage holds it, tinyvmm cannot start the VM,
//! so nothing can change between the check and the operation.

use std::path::{Path, PathBuf};

use vmconfig::{LockError, RunLock};

use crate::error::{Result, StorageError};

/// `<run_dir>/<name>.lock`.
pub fn lock_path(run_dir: &Path, vm: &str) -> PathBuf {
    vmconfig::lock::lock_path(run_dir, vm)
}

/// Proof that the VM is not running; it cannot start while this lives.
#[derive(Debug)]
pub struct StoppedGuard {
    _lock: RunLock,
}

fn lock_err(vm: &str, err: LockError) -> StorageError {
    StorageError::CheckRunning {
        vm: vm.to_string(),
        source: std::io::Error::other(err),
    }
}

/// Takes the VM's run lock, or fails with [`StorageError::VmRunning`] when tinyvmm (or
/// another storage command) holds it. `op` names the refused operation in the error.
pub fn hold_stopped(run_dir: &Path, vm: &str, op: &'static str) -> Result<StoppedGuard> {
    match RunLock::acquire(run_dir, vm) {
        Ok(lock) => Ok(StoppedGuard { _lock: lock }),
        Err(LockError::AlreadyRunning { path, .. }) => Err(StorageError::VmRunning {
            vm: vm.to_string(),
            op,
            lock: path,
        }),
        Err(e) => Err(lock_err(vm, e)),
    }
}

/// Whether tinyvmm currently runs the VM (its run lock is held).
pub fn is_running(run_dir: &Path, vm: &str) -> Result<bool> {
    vmconfig::is_running(run_dir, vm).map_err(|e| lock_err(vm, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_stopped_when_vm_running_then_refused_and_when_stopped_then_held() {
        let dir = tempfile::tempdir().unwrap();
        let running = RunLock::acquire(dir.path(), "vm1").unwrap();
        assert!(is_running(dir.path(), "vm1").unwrap());
        assert!(matches!(
            hold_stopped(dir.path(), "vm1", "destroy"),
            Err(StorageError::VmRunning { op: "destroy", .. })
        ));
        drop(running);
        assert!(!is_running(dir.path(), "vm1").unwrap());
        let guard = hold_stopped(dir.path(), "vm1", "destroy").unwrap();
        // While storage holds it, tinyvmm cannot start the VM.
        assert!(matches!(
            RunLock::acquire(dir.path(), "vm1"),
            Err(LockError::AlreadyRunning { .. })
        ));
        drop(guard);
        assert!(RunLock::acquire(dir.path(), "vm1").is_ok());
    }
}
