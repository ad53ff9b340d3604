//! ZFS: one dataset per VM under a parent dataset, native snapshots and clones.
//!
//! ```text
//! rpool/microvms            mountpoint=<root> (e.g. /var/lib/microvms)
//! rpool/microvms/<vm>       mounted at <root>/<vm> (inherited mountpoint)
//! rpool/microvms/<vm>@<s>   snapshots
//! ```
//! Everything goes through the `zfs` tool with `-H -p` (no libzfs). ZFS can only roll back to
//! the latest snapshot; rolling back further destroys the newer ones and needs
//! `destroy_newer`. A clone depends on its origin snapshot: that snapshot cannot be pruned
//! while the clone exists (zfs refuses and the error says so).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::zfs_parse::{is_not_found, parse_children, parse_single_value, parse_snapshot_list};
use super::{Backend, Outcome, SnapshotInfo};
use crate::config::BackendKind;
use crate::error::{Result, StorageError};
use crate::exec::{args, failed, render, run_ok, Runner};

/// The `zfs` backend.
pub struct ZfsBackend {
    dataset: String,
    root: PathBuf,
    runner: Arc<dyn Runner>,
}

impl ZfsBackend {
    /// `dataset` is the parent (e.g. `rpool/microvms`), mounted at `root`.
    pub fn new(dataset: &str, root: &Path, runner: Arc<dyn Runner>) -> Self {
        ZfsBackend {
            dataset: dataset.to_string(),
            root: root.to_path_buf(),
            runner,
        }
    }

    fn vm_dataset(&self, vm: &str) -> String {
        format!("{}/{vm}", self.dataset)
    }

    fn zfs(&self, argv: Vec<String>) -> Result<String> {
        run_ok(self.runner.as_ref(), "zfs", &argv).map(|o| o.stdout)
    }

    /// Whether a dataset or snapshot exists (`zfs list` of it fails with "does not exist").
    fn exists(&self, name: &str) -> Result<bool> {
        let argv = args(["list", "-H", "-p", "-o", "name", name]);
        let out = self.runner.run("zfs", &argv)?;
        if out.success() {
            Ok(true)
        } else if is_not_found(&out.stderr) {
            Ok(false)
        } else {
            Err(failed("zfs", &argv, &out))
        }
    }

    /// Runs `zfs create`/`zfs clone` for VM `vm`'s dataset and checks it is mounted. If zfs made
    /// the dataset but the step failed ("filesystem successfully created, but not mounted") or
    /// it is not mounted where expected, the dataset is destroyed again: a failed command
    /// leaves no half-made dataset. (Only a dataset this call made is ever destroyed: a name
    /// clash fails inside zfs before anything is made.)
    fn make_dataset(&self, vm: &str, argv: Vec<String>) -> Result<()> {
        let out = self.runner.run("zfs", &argv)?;
        let err = if out.success() {
            match self.require_mounted(vm) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            }
        } else if out.stderr.contains("successfully created") {
            failed("zfs", &argv, &out)
        } else {
            return Err(failed("zfs", &argv, &out));
        };
        let destroy = args(["destroy".to_string(), "-r".into(), self.vm_dataset(vm)]);
        match self.zfs(destroy) {
            Ok(_) => Err(err),
            Err(cleanup) => Err(StorageError::Cleanup {
                op: "create dataset",
                what: self.vm_dataset(vm),
                source: Box::new(err),
                cleanup: Box::new(cleanup),
            }),
        }
    }

    /// A new VM dataset must be mounted where the VM's files are expected, or the layout step
    /// would write into whatever directory is there instead.
    fn require_mounted(&self, vm: &str) -> Result<()> {
        let ds = self.vm_dataset(vm);
        let mounted = self.get("mounted", &ds)?;
        let mountpoint = self.get("mountpoint", &ds)?;
        if mounted == "yes" && Path::new(&mountpoint) == self.vm_path(vm) {
            return Ok(());
        }
        Err(StorageError::NotAVolume {
            path: self.vm_path(vm),
            expected: format!("mount of {ds} (mounted={mounted}, mountpoint={mountpoint})"),
        })
    }

    fn get(&self, prop: &str, name: &str) -> Result<String> {
        let argv = args(["get", "-H", "-p", "-o", "value", prop, name]);
        let out = self.zfs(argv.clone())?;
        parse_single_value(&out).ok_or_else(|| StorageError::ParseOutput {
            command: render("zfs", &argv),
            reason: format!("expected one value, got {out:?}"),
        })
    }
}

impl Backend for ZfsBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Zfs
    }

    fn root(&self) -> PathBuf {
        self.root.clone()
    }

    fn vm_path(&self, vm: &str) -> PathBuf {
        self.root.join(vm)
    }

    fn init(&self) -> Result<Outcome> {
        let root = self.root.to_string_lossy().into_owned();
        if self.exists(&self.dataset)? {
            let mountpoint = self.get("mountpoint", &self.dataset)?;
            if Path::new(&mountpoint) != self.root {
                return Err(StorageError::InitMismatch(format!(
                    "dataset {} exists with mountpoint {mountpoint}, not {root} (zfs set mountpoint={root} {} to move it)",
                    self.dataset, self.dataset
                )));
            }
            return Ok(Outcome::AlreadyExisted);
        }
        let mp = format!("mountpoint={root}");
        self.zfs(args([
            "create",
            "-p",
            "-o",
            mp.as_str(),
            self.dataset.as_str(),
        ]))?;
        Ok(Outcome::Created)
    }

    fn is_initialized(&self) -> Result<bool> {
        self.exists(&self.dataset)
    }

    fn vm_exists(&self, vm: &str) -> Result<bool> {
        self.exists(&self.vm_dataset(vm))
    }

    fn create_volume(&self, vm: &str) -> Result<()> {
        self.make_dataset(vm, args(["create".to_string(), self.vm_dataset(vm)]))
    }

    fn delete_volume(&self, vm: &str) -> Result<()> {
        self.zfs(args([
            "destroy".to_string(),
            "-r".into(),
            self.vm_dataset(vm),
        ]))
        .map(drop)
    }

    fn list_vms(&self) -> Result<Vec<String>> {
        let out = self.zfs(args([
            "list",
            "-H",
            "-p",
            "-o",
            "name",
            "-t",
            "filesystem",
            "-d",
            "1",
            &self.dataset,
        ]))?;
        Ok(parse_children(&out, &self.dataset)
            .into_iter()
            .filter(|n| crate::name::validate_vm_name(n).is_ok())
            .collect())
    }

    fn snapshot(&self, vm: &str, snap: &str) -> Result<()> {
        let full = format!("{}@{snap}", self.vm_dataset(vm));
        self.zfs(args(["snapshot".to_string(), full])).map(drop)
    }

    fn snapshots(&self, vm: &str) -> Result<Vec<SnapshotInfo>> {
        let ds = self.vm_dataset(vm);
        // createtxg orders snapshots exactly; creation has 1 s resolution.
        let argv = args([
            "list",
            "-H",
            "-p",
            "-t",
            "snapshot",
            "-o",
            "name,used,creation",
            "-s",
            "createtxg",
            "-d",
            "1",
            &ds,
        ]);
        let out = self.zfs(argv.clone())?;
        parse_snapshot_list(&out, &ds, &render("zfs", &argv))
    }

    fn rollback(&self, vm: &str, snap: &str, destroy_newer: bool) -> Result<()> {
        let snaps = self.snapshots(vm)?;
        let Some(pos) = snaps.iter().position(|s| s.name == snap) else {
            return Err(StorageError::SnapshotNotFound {
                vm: vm.into(),
                snap: snap.into(),
            });
        };
        let newer: Vec<String> = snaps[pos + 1..].iter().map(|s| s.name.clone()).collect();
        if !newer.is_empty() && !destroy_newer {
            return Err(StorageError::RollbackNewerSnapshots {
                vm: vm.into(),
                snap: snap.into(),
                newer,
            });
        }
        let mut argv = args(["rollback"]);
        if !newer.is_empty() {
            argv.push("-r".into());
        }
        argv.push(format!("{}@{snap}", self.vm_dataset(vm)));
        self.zfs(argv).map(drop)
    }

    fn clone_snapshot(&self, vm: &str, snap: &str, new_vm: &str) -> Result<()> {
        let origin = format!("{}@{snap}", self.vm_dataset(vm));
        if !self.exists(&origin)? {
            return Err(StorageError::SnapshotNotFound {
                vm: vm.into(),
                snap: snap.into(),
            });
        }
        let argv = args(["clone".to_string(), origin, self.vm_dataset(new_vm)]);
        self.make_dataset(new_vm, argv)
    }

    fn delete_snapshot(&self, vm: &str, snap: &str) -> Result<()> {
        let full = format!("{}@{snap}", self.vm_dataset(vm));
        self.zfs(args(["destroy".to_string(), full])).map(drop)
    }
}
