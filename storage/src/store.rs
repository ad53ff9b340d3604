//! [`Store`]: the storage operations with their safety rules, over any [`Backend`].
//!
//! Rules that hold for every backend:
//! - VM and snapshot names are validated before anything is touched.
//! - A VM is `<root>/<vm>` holding `etc/` and `var/`, owned by the configured owner.
//! - `create` of an existing VM with that layout succeeds with [`Outcome::AlreadyExisted`];
//!   with another layout it fails and changes nothing.
//! - A command that fails after making a volume deletes it again (no half-made VM).
//! - `rollback` and `destroy` hold the VM's run lock for their whole duration, so they are
//!   refused while tinyvmm runs the VM and the VM cannot start underneath them.
//! - `snapshot` and `prune` are allowed while the VM runs (tinyvmm itself snapshots at start).

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::btrfs::BtrfsBackend;
use crate::backend::dir::DirBackend;
use crate::backend::zfs::ZfsBackend;
use crate::backend::{Backend, Outcome, SnapshotInfo};
use crate::config::{mount_source, BackendKind, HostStorageConfig};
use crate::error::{io_err, Result, StorageError};
use crate::exec::{Runner, SystemRunner};
use crate::name::{validate_snapshot_name, validate_vm_name};
use crate::owner::Owner;
use crate::runlock;
use crate::timestamp::{now_unix, Utc};

/// The subdirectories every VM has (shared into the VM over virtio-fs).
pub const VM_SUBDIRS: [&str; 2] = ["etc", "var"];

/// A VM as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    pub name: String,
    pub path: PathBuf,
    pub running: bool,
    /// Number of snapshots; `None` on backends without snapshots.
    pub snapshots: Option<usize>,
}

/// Result of `destroy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destroyed {
    Destroyed,
    NotFound,
}

/// Per-VM datasets on one backend.
pub struct Store {
    backend: Box<dyn Backend>,
    owner: Option<Owner>,
    run_dir: PathBuf,
}

impl Store {
    /// Opens the store the host config describes, using the real `zfs`/`btrfs` tools.
    pub fn open(cfg: &HostStorageConfig) -> Result<Store> {
        Self::open_with_runner(cfg, Arc::new(SystemRunner))
    }

    /// Like [`Store::open`] with a given command runner.
    pub fn open_with_runner(cfg: &HostStorageConfig, runner: Arc<dyn Runner>) -> Result<Store> {
        cfg.check()?;
        let owner = cfg.owner.as_deref().map(Owner::resolve).transpose()?;
        let backend: Box<dyn Backend> = match cfg.resolve_backend()? {
            BackendKind::Dir => Box::new(DirBackend::new(&cfg.root)),
            BackendKind::Btrfs => Box::new(BtrfsBackend::new(&cfg.root, runner)),
            BackendKind::Zfs => {
                let dataset = match &cfg.dataset {
                    Some(ds) => ds.clone(),
                    None => mount_source(&cfg.root).ok_or_else(|| {
                        StorageError::InvalidConfig(format!(
                            "the zfs backend needs the parent dataset: no dataset is mounted at {}; pass --dataset (e.g. rpool/microvms) or set \"dataset\"",
                            cfg.root.display()
                        ))
                    })?,
                };
                Box::new(ZfsBackend::new(&dataset, &cfg.root, runner))
            }
        };
        Ok(Self::from_backend(backend, owner, cfg.run_dir()))
    }

    /// A store over an already-built backend.
    pub fn from_backend(
        backend: Box<dyn Backend>,
        owner: Option<Owner>,
        run_dir: PathBuf,
    ) -> Store {
        Store {
            backend,
            owner,
            run_dir,
        }
    }

    pub fn kind(&self) -> BackendKind {
        self.backend.kind()
    }

    /// False for the `dir` backend.
    pub fn supports_snapshots(&self) -> bool {
        self.kind() != BackendKind::Dir
    }

    /// Where the VM's files live (`<root>/<vm>`).
    pub fn vm_path(&self, vm: &str) -> PathBuf {
        self.backend.vm_path(vm)
    }

    /// The run-lock directory consulted by rollback and destroy.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Creates the parent dataset/subvolume/directory; idempotent.
    pub fn init(&self) -> Result<Outcome> {
        self.backend.init()
    }

    fn require_vm(&self, vm: &str) -> Result<()> {
        validate_vm_name(vm)?;
        if self.backend.vm_exists(vm)? {
            Ok(())
        } else {
            Err(StorageError::VmNotFound(vm.to_string()))
        }
    }

    /// Creates the VM's volume with etc/ and var/; succeeds without change if it exists with
    /// that layout.
    pub fn create(&self, vm: &str) -> Result<Outcome> {
        validate_vm_name(vm)?;
        if !self.backend.is_initialized()? {
            return Err(StorageError::NotInitialized(self.backend.root()));
        }
        if self.backend.vm_exists(vm)? {
            let problems = self.layout_problems(vm, true);
            if problems.is_empty() {
                return Ok(Outcome::AlreadyExisted);
            }
            return Err(StorageError::LayoutMismatch {
                vm: vm.to_string(),
                problems,
            });
        }
        self.backend.create_volume(vm)?;
        if let Err(e) = self.populate(vm) {
            return Err(self.undo_volume(vm, "create", e));
        }
        Ok(Outcome::Created)
    }

    /// Makes etc/ and var/ and applies the owner.
    fn populate(&self, vm: &str) -> Result<()> {
        let top = self.vm_path(vm);
        let mut builder = std::fs::DirBuilder::new();
        builder.mode(0o755);
        for sub in VM_SUBDIRS {
            let path = top.join(sub);
            builder
                .create(&path)
                .map_err(io_err("create directory", &path))?;
        }
        if let Some(owner) = self.owner {
            owner.apply(&top)?;
            for sub in VM_SUBDIRS {
                owner.apply(&top.join(sub))?;
            }
        }
        Ok(())
    }

    /// Deletes a volume made by a failed command; returns the error to report.
    fn undo_volume(&self, vm: &str, op: &'static str, err: StorageError) -> StorageError {
        match self.backend.delete_volume(vm) {
            Ok(()) => err,
            Err(cleanup) => StorageError::Cleanup {
                op,
                what: self.vm_path(vm).display().to_string(),
                source: Box::new(err),
                cleanup: Box::new(cleanup),
            },
        }
    }

    /// What differs from the expected layout (empty when it matches).
    fn layout_problems(&self, vm: &str, check_owner: bool) -> Vec<String> {
        let top = self.vm_path(vm);
        let mut problems = Vec::new();
        let mut owned = vec![(top.clone(), String::new())];
        for sub in VM_SUBDIRS {
            match std::fs::symlink_metadata(top.join(sub)) {
                Ok(m) if m.is_dir() => owned.push((top.join(sub), format!("{sub}/"))),
                Ok(_) => problems.push(format!("{sub} is not a directory")),
                Err(_) => problems.push(format!("{sub}/ is missing")),
            }
        }
        if let (true, Some(owner)) = (check_owner, self.owner) {
            for (path, label) in owned {
                if let Ok(m) = std::fs::symlink_metadata(&path) {
                    if (m.uid(), m.gid()) != (owner.uid, owner.gid) {
                        problems.push(format!(
                            "{}{label} is owned by {}:{}, not {}:{}",
                            if label.is_empty() {
                                "the VM directory"
                            } else {
                                ""
                            },
                            m.uid(),
                            m.gid(),
                            owner.uid,
                            owner.gid
                        ));
                    }
                }
            }
        }
        problems
    }

    /// All VMs, sorted by name.
    pub fn list(&self) -> Result<Vec<VmInfo>> {
        if !self.backend.is_initialized()? {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for name in self.backend.list_vms()? {
            let snapshots = if self.supports_snapshots() {
                Some(self.backend.snapshots(&name)?.len())
            } else {
                None
            };
            out.push(VmInfo {
                path: self.vm_path(&name),
                running: runlock::is_running(&self.run_dir, &name)?,
                snapshots,
                name,
            });
        }
        Ok(out)
    }

    /// Takes a snapshot named `name`, or by default the UTC time (`20261126T034350Z`, with
    /// `-2`, `-3`, ... appended if taken twice in one second). Returns the name.
    pub fn snapshot(&self, vm: &str, name: Option<&str>) -> Result<String> {
        if let Some(n) = name {
            validate_snapshot_name(n)?;
        }
        self.require_vm(vm)?;
        let existing: Vec<String> = self
            .backend
            .snapshots(vm)?
            .into_iter()
            .map(|s| s.name)
            .collect();
        let name = match name {
            Some(n) if existing.iter().any(|e| e == n) => {
                return Err(StorageError::SnapshotExists {
                    vm: vm.into(),
                    snap: n.into(),
                })
            }
            Some(n) => n.to_string(),
            None => unique_default_name(&Utc::from_unix(now_unix()).compact(), &existing),
        };
        self.backend.snapshot(vm, &name)?;
        Ok(name)
    }

    /// The VM's snapshots, oldest first.
    pub fn snapshots(&self, vm: &str) -> Result<Vec<SnapshotInfo>> {
        self.require_vm(vm)?;
        self.backend.snapshots(vm)
    }

    fn require_snapshot(&self, vm: &str, snap: &str) -> Result<()> {
        validate_snapshot_name(snap)?;
        if self.backend.snapshots(vm)?.iter().any(|s| s.name == snap) {
            Ok(())
        } else {
            Err(StorageError::SnapshotNotFound {
                vm: vm.into(),
                snap: snap.into(),
            })
        }
    }

    /// Returns the VM's files to the state of `snap`. Refused while the VM runs.
    pub fn rollback(&self, vm: &str, snap: &str, destroy_newer: bool) -> Result<()> {
        validate_snapshot_name(snap)?;
        self.require_vm(vm)?;
        if !self.supports_snapshots() {
            return Err(StorageError::NoSnapshots(self.kind()));
        }
        let _stopped = runlock::hold_stopped(&self.run_dir, vm, "roll back")?;
        self.require_snapshot(vm, snap)?;
        self.backend.rollback(vm, snap, destroy_newer)
    }

    /// Creates VM `new_vm` from `vm@snap` (a template snapshot).
    pub fn clone_vm(&self, vm: &str, snap: &str, new_vm: &str) -> Result<()> {
        validate_snapshot_name(snap)?;
        validate_vm_name(new_vm)?;
        self.require_vm(vm)?;
        self.require_snapshot(vm, snap)?;
        if self.backend.vm_exists(new_vm)? {
            return Err(StorageError::VmExists(new_vm.to_string()));
        }
        self.backend.clone_snapshot(vm, snap, new_vm)?;
        let problems = self.layout_problems(new_vm, false);
        if !problems.is_empty() {
            let err = StorageError::LayoutMismatch {
                vm: format!("{vm}@{snap}"),
                problems,
            };
            return Err(self.undo_volume(new_vm, "clone", err));
        }
        Ok(())
    }

    /// Deletes all but the newest `keep` snapshots; returns the deleted names, oldest first.
    pub fn prune(&self, vm: &str, keep: usize) -> Result<Vec<String>> {
        self.require_vm(vm)?;
        let snaps = self.backend.snapshots(vm)?;
        let excess = snaps.len().saturating_sub(keep);
        let mut deleted = Vec::new();
        for snap in snaps.into_iter().take(excess) {
            self.backend.delete_snapshot(vm, &snap.name)?;
            deleted.push(snap.name);
        }
        Ok(deleted)
    }

    /// Deletes the VM and all its snapshots. Refused while the VM runs; a VM that does not
    /// exist is reported, not an error. Confirmation is the caller's job.
    pub fn destroy(&self, vm: &str) -> Result<Destroyed> {
        validate_vm_name(vm)?;
        if !self.backend.vm_exists(vm)? {
            return Ok(Destroyed::NotFound);
        }
        let _stopped = runlock::hold_stopped(&self.run_dir, vm, "destroy")?;
        self.backend.delete_volume(vm)?;
        Ok(Destroyed::Destroyed)
    }
}

/// Snapshots kept by `snapshot_on_start` when the VM config gives no `keep_snapshots`.
pub const DEFAULT_KEEP_SNAPSHOTS: usize = 10;

/// What [`Store::snapshot_on_start`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartSnapshot {
    pub taken: String,
    pub pruned: Vec<String>,
}

impl Store {
    /// The VM config's `storage` section applied before boot: when `snapshot_on_start` is set,
    /// take a snapshot (default name) and prune to `keep_snapshots` (default
    /// [`DEFAULT_KEEP_SNAPSHOTS`]; the new snapshot always survives). `Ok(None)` when not asked.
    pub fn snapshot_on_start(
        &self,
        vm: &str,
        cfg: &vmconfig::types::StorageConfig,
    ) -> Result<Option<StartSnapshot>> {
        if !cfg.snapshot_on_start {
            return Ok(None);
        }
        let keep = cfg
            .keep_snapshots
            .map_or(DEFAULT_KEEP_SNAPSHOTS, |k| k as usize)
            .max(1);
        let taken = self.snapshot(vm, None)?;
        let pruned = self.prune(vm, keep)?;
        Ok(Some(StartSnapshot { taken, pruned }))
    }
}

/// `base`, or `base-2`, `base-3`, ... whichever is not in `existing`.
fn unique_default_name(base: &str, existing: &[String]) -> String {
    if !existing.iter().any(|e| e == base) {
        return base.to_string();
    }
    (2..)
        .map(|i| format!("{base}-{i}"))
        .find(|n| !existing.iter().any(|e| e == n))
        .unwrap_or_else(|| base.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_default_name_when_taken_then_suffixed() {
        let existing = vec!["T".to_string(), "T-2".to_string()];
        assert_eq!(unique_default_name("U", &existing), "U");
        assert_eq!(unique_default_name("T", &existing), "T-3");
    }
}
