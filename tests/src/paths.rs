//! Where the lab keeps things: the workspace target dir and target/lab below it, plus the
//! lab-wide lock that serializes QEMU runs across test threads and processes.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::LabError;

/// Directories the lab uses, all under the workspace target dir.
#[derive(Debug, Clone)]
pub struct LabDirs {
    /// The workspace target dir (CARGO_TARGET_DIR or `<workspace>/target`).
    pub target: PathBuf,
    /// `target/release`: the binaries copied into L1.
    pub release: PathBuf,
    /// `target/lab`: caches, lock, per-run files.
    pub lab: PathBuf,
}

impl LabDirs {
    /// Finds the target dir: `$CARGO_TARGET_DIR` if set, else the nearest ancestor of
    /// `$CARGO_MANIFEST_DIR` (runtime, else compile time) whose Cargo.toml has `[workspace]`.
    pub fn discover() -> Result<Self, LabError> {
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => {
                let dir = PathBuf::from(dir);
                if dir.is_absolute() {
                    dir
                } else {
                    workspace_root()?.join(dir)
                }
            }
            _ => workspace_root()?.join("target"),
        };
        Ok(Self::at(target))
    }

    /// Lab directories under an explicit target dir. `$TINYVMM_LAB_DIR`, if set, moves the
    /// lab's caches (downloaded packages, images) and lock elsewhere, e.g. to a directory that
    /// outlives fresh CI checkouts so the kernel package is downloaded once per machine.
    pub fn at(target: PathBuf) -> Self {
        let lab = match std::env::var_os("TINYVMM_LAB_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => target.join("lab"),
        };
        Self {
            release: target.join("release"),
            lab,
            target,
        }
    }
}

fn workspace_root() -> Result<PathBuf, LabError> {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    find_workspace_root(&start).ok_or(LabError::FindTargetDir)
}

/// The nearest directory at or above `start` whose Cargo.toml declares a `[workspace]`.
pub fn find_workspace_root(start: &Path) -> Option<PathBuf> {
    start.ancestors().find_map(|dir| {
        let manifest = fs::read_to_string(dir.join("Cargo.toml")).ok()?;
        manifest
            .lines()
            .any(|l| l.trim() == "[workspace]")
            .then(|| dir.to_path_buf())
    })
}

/// Creates `path` and its parents.
pub(crate) fn create_dir(path: &Path) -> Result<(), LabError> {
    fs::create_dir_all(path).map_err(|source| LabError::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// An exclusive flock on `target/lab/lab.lock`, released on drop (or when the process dies).
#[derive(Debug)]
pub struct LabLock {
    _file: File,
}

impl LabLock {
    /// Blocks until this process holds the lab lock.
    pub fn acquire(lab_dir: &Path) -> Result<Self, LabError> {
        create_dir(lab_dir)?;
        let path = lab_dir.join("lab.lock");
        let lock_err = |source| LabError::Lock {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(lock_err)?;
        loop {
            // SAFETY: flock on a valid, owned file descriptor; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Self { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(lock_err(err));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_workspace_root_when_started_in_member_then_returns_workspace() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join("Cargo.toml"),
            "[workspace]\nmembers = [\"m\"]\n",
        )
        .expect("write");
        let member = dir.path().join("m/src");
        fs::create_dir_all(&member).expect("mkdir");
        fs::write(dir.path().join("m/Cargo.toml"), "[package]\nname = \"m\"\n").expect("write");
        assert_eq!(find_workspace_root(&member), Some(dir.path().to_path_buf()));
    }

    #[test]
    fn find_workspace_root_when_no_workspace_then_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("Cargo.toml"), "[package]\nname = \"x\"\n").expect("write");
        // Ancestors of a tempdir (/tmp, /) have no workspace manifest.
        assert_eq!(find_workspace_root(dir.path()), None);
    }

    #[test]
    fn lab_lock_when_held_then_second_nonblocking_attempt_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _held = LabLock::acquire(dir.path()).expect("lock");
        let other = File::open(dir.path().join("lab.lock")).expect("open");
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(
            rc, -1,
            "a second open file description must not get the lock"
        );
    }
}
