//! Plain directories: `<root>/<vm>`. No snapshots.

use std::io;
use std::path::{Path, PathBuf};

use super::{Backend, Outcome, SnapshotInfo};
use crate::config::BackendKind;
use crate::error::{io_err, Result, StorageError};

/// The `dir` backend.
#[derive(Debug, Clone)]
pub struct DirBackend {
    root: PathBuf,
}

impl DirBackend {
    pub fn new(root: &Path) -> Self {
        DirBackend {
            root: root.to_path_buf(),
        }
    }
}

/// Names of the directories in `root` that are valid VM names (hidden entries and
/// leftovers are skipped), sorted.
pub(crate) fn list_dirs(root: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(root).map_err(io_err("read directory", root))?;
    for entry in entries {
        let entry = entry.map_err(io_err("read directory", root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if crate::name::validate_vm_name(&name).is_ok() && path.is_dir() && keep(&path) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

impl Backend for DirBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Dir
    }

    fn root(&self) -> PathBuf {
        self.root.clone()
    }

    fn vm_path(&self, vm: &str) -> PathBuf {
        self.root.join(vm)
    }

    fn init(&self) -> Result<Outcome> {
        if self.root.is_dir() {
            return Ok(Outcome::AlreadyExisted);
        }
        std::fs::create_dir_all(&self.root).map_err(io_err("create directory", &self.root))?;
        Ok(Outcome::Created)
    }

    fn is_initialized(&self) -> Result<bool> {
        Ok(self.root.is_dir())
    }

    fn vm_exists(&self, vm: &str) -> Result<bool> {
        let path = self.vm_path(vm);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => Ok(true),
            Ok(_) => Err(StorageError::NotAVolume {
                path,
                expected: "directory".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("stat", path)(e)),
        }
    }

    fn create_volume(&self, vm: &str) -> Result<()> {
        let path = self.vm_path(vm);
        std::fs::create_dir(&path).map_err(io_err("create directory", path))
    }

    fn delete_volume(&self, vm: &str) -> Result<()> {
        let path = self.vm_path(vm);
        std::fs::remove_dir_all(&path).map_err(io_err("remove directory", path))
    }

    fn list_vms(&self) -> Result<Vec<String>> {
        list_dirs(&self.root, |_| true)
    }

    fn snapshot(&self, _vm: &str, _snap: &str) -> Result<()> {
        Err(StorageError::NoSnapshots(BackendKind::Dir))
    }

    fn snapshots(&self, _vm: &str) -> Result<Vec<SnapshotInfo>> {
        Err(StorageError::NoSnapshots(BackendKind::Dir))
    }

    fn rollback(&self, _vm: &str, _snap: &str, _destroy_newer: bool) -> Result<()> {
        Err(StorageError::NoSnapshots(BackendKind::Dir))
    }

    fn clone_snapshot(&self, _vm: &str, _snap: &str, _new_vm: &str) -> Result<()> {
        Err(StorageError::NoSnapshots(BackendKind::Dir))
    }

    fn delete_snapshot(&self, _vm: &str, _snap: &str) -> Result<()> {
        Err(StorageError::NoSnapshots(BackendKind::Dir))
    }
}
