//! btrfs: one subvolume per VM, read-only snapshots beside it.
//!
//! Layout under the root (itself a subvolume or any directory on btrfs):
//! ```text
//! <root>/<vm>/                    the VM's subvolume (etc/, var/)
//! <root>/.snapshots/<vm>/<snap>   read-only snapshots of <root>/<vm>
//! ```
//! Rollback makes a writable snapshot of `<snap>` at `<root>/.<vm>.rollback`, swaps it with
//! `<root>/<vm>` in one `renameat2(RENAME_EXCHANGE)`, then deletes the old state. A clone is a
//! writable snapshot at `<root>/<new_vm>`. All subvolume work goes through the `btrfs` tool.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Backend, Outcome, SnapshotInfo};
use crate::config::{fs_magic, BackendKind, BTRFS_SUPER_MAGIC};
use crate::error::{io_err, Result, StorageError};
use crate::exec::{args, run_ok, Runner};

/// Inode number of the root directory of every btrfs subvolume (BTRFS_FIRST_FREE_OBJECTID).
const SUBVOLUME_ROOT_INO: u64 = 256;
/// Directory under the root that holds the snapshots.
pub const SNAPSHOT_DIR: &str = ".snapshots";

/// The `btrfs` backend.
pub struct BtrfsBackend {
    root: PathBuf,
    runner: Arc<dyn Runner>,
}

/// Whether `path` is the top directory of a btrfs subvolume.
pub fn is_subvolume(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(m) => m.is_dir() && m.ino() == SUBVOLUME_ROOT_INO && on_btrfs(path),
        Err(_) => false,
    }
}

fn on_btrfs(path: &Path) -> bool {
    fs_magic(path)
        .map(|m| m == BTRFS_SUPER_MAGIC)
        .unwrap_or(false)
}

/// What `btrfs subvolume show` says about a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubvolumeShow {
    pub id: u64,
    pub created: Option<i64>,
}

/// Parses `btrfs subvolume show` output (btrfs-progs 6.x: `Key:` then tabs, then the value).
pub fn parse_subvolume_show(text: &str) -> Option<SubvolumeShow> {
    let mut id = None;
    let mut created = None;
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        match key.trim() {
            "Subvolume ID" => id = value.trim().parse().ok(),
            "Creation time" => created = crate::timestamp::parse_btrfs_time(value.trim()),
            _ => {}
        }
    }
    Some(SubvolumeShow { id: id?, created })
}

impl BtrfsBackend {
    pub fn new(root: &Path, runner: Arc<dyn Runner>) -> Self {
        BtrfsBackend {
            root: root.to_path_buf(),
            runner,
        }
    }

    fn snap_dir(&self, vm: &str) -> PathBuf {
        self.root.join(SNAPSHOT_DIR).join(vm)
    }

    fn snap_path(&self, vm: &str, snap: &str) -> PathBuf {
        self.snap_dir(vm).join(snap)
    }

    fn btrfs(&self, argv: Vec<String>) -> Result<String> {
        run_ok(self.runner.as_ref(), "btrfs", &argv).map(|o| o.stdout)
    }

    fn subvol_create(&self, path: &Path) -> Result<()> {
        self.btrfs(
            args(["subvolume", "create"])
                .into_iter()
                .chain([path_arg(path)])
                .collect(),
        )
        .map(drop)
    }

    fn subvol_delete(&self, path: &Path) -> Result<()> {
        self.btrfs(
            args(["subvolume", "delete"])
                .into_iter()
                .chain([path_arg(path)])
                .collect(),
        )
        .map(drop)
    }

    fn subvol_snapshot(&self, src: &Path, dst: &Path, read_only: bool) -> Result<()> {
        let mut argv = args(["subvolume", "snapshot"]);
        if read_only {
            argv.push("-r".into());
        }
        argv.push(path_arg(src));
        argv.push(path_arg(dst));
        self.btrfs(argv).map(drop)
    }

    fn show(&self, path: &Path) -> Result<SubvolumeShow> {
        let argv: Vec<String> = args(["subvolume", "show"])
            .into_iter()
            .chain([path_arg(path)])
            .collect();
        let out = self.btrfs(argv.clone())?;
        parse_subvolume_show(&out).ok_or_else(|| StorageError::ParseOutput {
            command: crate::exec::render("btrfs", &argv),
            reason: "no \"Subvolume ID:\" line".into(),
        })
    }

    fn require_snapshot(&self, vm: &str, snap: &str) -> Result<PathBuf> {
        let path = self.snap_path(vm, snap);
        if is_subvolume(&path) {
            Ok(path)
        } else {
            Err(StorageError::SnapshotNotFound {
                vm: vm.into(),
                snap: snap.into(),
            })
        }
    }
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Atomically exchanges two paths on the same file system (renameat2 RENAME_EXCHANGE).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let ca = CString::new(a.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let cb = CString::new(b.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: both arguments are valid NUL-terminated paths; AT_FDCWD makes them relative to
    // the working directory (they are absolute in practice).
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Backend for BtrfsBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Btrfs
    }

    fn root(&self) -> PathBuf {
        self.root.clone()
    }

    fn vm_path(&self, vm: &str) -> PathBuf {
        self.root.join(vm)
    }

    fn init(&self) -> Result<Outcome> {
        let outcome = if self.root.exists() {
            if !self.root.is_dir() || !on_btrfs(&self.root) {
                return Err(StorageError::InitMismatch(format!(
                    "{} exists but is not a directory on btrfs",
                    self.root.display()
                )));
            }
            Outcome::AlreadyExisted
        } else {
            self.subvol_create(&self.root)?;
            Outcome::Created
        };
        let snaps = self.root.join(SNAPSHOT_DIR);
        if let Err(e) = std::fs::create_dir_all(&snaps) {
            let err = io_err("create directory", &snaps)(e);
            if outcome == Outcome::Created {
                // Do not leave a half-made root behind.
                if let Err(cleanup) = self.subvol_delete(&self.root) {
                    return Err(StorageError::Cleanup {
                        op: "init",
                        what: self.root.display().to_string(),
                        source: Box::new(err),
                        cleanup: Box::new(cleanup),
                    });
                }
            }
            return Err(err);
        }
        Ok(outcome)
    }

    fn is_initialized(&self) -> Result<bool> {
        Ok(self.root.is_dir() && on_btrfs(&self.root))
    }

    fn vm_exists(&self, vm: &str) -> Result<bool> {
        let path = self.vm_path(vm);
        if !path.exists() && std::fs::symlink_metadata(&path).is_err() {
            return Ok(false);
        }
        if is_subvolume(&path) {
            Ok(true)
        } else {
            Err(StorageError::NotAVolume {
                path,
                expected: "btrfs subvolume".into(),
            })
        }
    }

    fn create_volume(&self, vm: &str) -> Result<()> {
        self.subvol_create(&self.vm_path(vm))
    }

    fn delete_volume(&self, vm: &str) -> Result<()> {
        for snap in self.snapshots(vm)? {
            self.subvol_delete(&self.snap_path(vm, &snap.name))?;
        }
        let dir = self.snap_dir(vm);
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove directory", dir)(e)),
        }
        self.subvol_delete(&self.vm_path(vm))
    }

    fn list_vms(&self) -> Result<Vec<String>> {
        super::dir::list_dirs(&self.root, is_subvolume)
    }

    fn snapshot(&self, vm: &str, snap: &str) -> Result<()> {
        let dir = self.snap_dir(vm);
        std::fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        self.subvol_snapshot(&self.vm_path(vm), &dir.join(snap), true)
    }

    fn snapshots(&self, vm: &str) -> Result<Vec<SnapshotInfo>> {
        let dir = self.snap_dir(vm);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read directory", dir)(e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            let path = entry.path();
            if !is_subvolume(&path) {
                continue;
            }
            let show = self.show(&path)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            found.push((
                show.id,
                SnapshotInfo {
                    name,
                    created: show.created,
                    used: None,
                },
            ));
        }
        // Subvolume ids grow with every new subvolume: they order snapshots by creation even
        // within one second (Creation time has 1 s resolution).
        found.sort_by_key(|(id, _)| *id);
        Ok(found.into_iter().map(|(_, s)| s).collect())
    }

    fn rollback(&self, vm: &str, snap: &str, _destroy_newer: bool) -> Result<()> {
        let src = self.require_snapshot(vm, snap)?;
        let live = self.vm_path(vm);
        let tmp = self.root.join(format!(".{vm}.rollback"));
        if is_subvolume(&tmp) {
            // Left over from an interrupted rollback: it holds either the new or the old
            // state, and neither is live.
            self.subvol_delete(&tmp)?;
        }
        self.subvol_snapshot(&src, &tmp, false)?;
        if let Err(e) = exchange(&tmp, &live) {
            let swap_err = io_err("swap in rolled-back subvolume", &live)(e);
            return match self.subvol_delete(&tmp) {
                Ok(()) => Err(swap_err),
                Err(cleanup) => Err(StorageError::Cleanup {
                    op: "rollback",
                    what: tmp.display().to_string(),
                    source: Box::new(swap_err),
                    cleanup: Box::new(cleanup),
                }),
            };
        }
        // `tmp` now holds the pre-rollback state.
        if let Err(e) = self.subvol_delete(&tmp) {
            log::warn!(
                "rolled back {vm} to {snap}, but deleting the old state at {} failed: {e}",
                tmp.display()
            );
        }
        Ok(())
    }

    fn clone_snapshot(&self, vm: &str, snap: &str, new_vm: &str) -> Result<()> {
        let src = self.require_snapshot(vm, snap)?;
        self.subvol_snapshot(&src, &self.vm_path(new_vm), false)
    }

    fn delete_snapshot(&self, vm: &str, snap: &str) -> Result<()> {
        let path = self.require_snapshot(vm, snap)?;
        self.subvol_delete(&path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `btrfs subvolume show` of a read-only snapshot, captured on this project's machine
    /// (Debian 12, btrfs-progs v6.2) on 2026-11-26.
    const SHOW_V6_2: &str = ".snapshots/vm1/s1\n\
\tName: \t\t\ts1\n\
\tUUID: \t\t\tf7c1b820-3c03-3c4b-bf68-9fac95933443\n\
\tParent UUID: \t\t38858149-961c-7945-be47-e946a3242678\n\
\tReceived UUID: \t\t-\n\
\tCreation time: \t\t2026-11-26 03:43:50 +0000\n\
\tSubvolume ID: \t\t257\n\
\tGeneration: \t\t7\n\
\tGen at creation: \t7\n\
\tParent ID: \t\t5\n\
\tTop level ID: \t\t5\n\
\tFlags: \t\t\treadonly\n\
\tSend transid: \t\t0\n\
\tSend time: \t\t2026-11-26 03:43:50 +0000\n\
\tReceive transid: \t0\n\
\tReceive time: \t\t-\n\
\tSnapshot(s):\n";

    #[test]
    fn parse_subvolume_show_when_captured_output_then_id_and_time() {
        let show = parse_subvolume_show(SHOW_V6_2).unwrap();
        assert_eq!(show.id, 257);
        assert_eq!(
            show.created
                .map(|t| crate::timestamp::Utc::from_unix(t).display()),
            Some("2026-11-26 03:43:50Z".to_string())
        );
    }

    #[test]
    fn parse_subvolume_show_when_no_id_then_none() {
        assert_eq!(parse_subvolume_show("ERROR: not a subvolume\n"), None);
    }
}
