//! Shared test fixtures: a real loop-mounted btrfs, helpers, and a failure-injecting backend.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use storage::backend::{Backend, Outcome, SnapshotInfo};
use storage::{BackendKind, Result};

pub mod scenario;

/// Runs a command, returning stdout or panicking with its stderr.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(program).is_file()
        || Path::new("/sbin").join(program).is_file()
}

/// The btrfs tests are the acceptance tests: missing prerequisites fail, they never skip.
pub fn require_btrfs_prerequisites() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "btrfs tests need root (loop devices, mount): run `sudo -E cargo test -p storage`"
    );
    for tool in ["mkfs.btrfs", "btrfs"] {
        assert!(
            which(tool),
            "{tool} not found: apt-get install -y btrfs-progs"
        );
    }
    assert!(
        which("losetup"),
        "losetup not found: apt-get install -y mount"
    );
}

/// A fresh btrfs in a sparse image file, loop-attached and mounted in a tempdir. Dropping it
/// unmounts and detaches, also after a failed assertion.
pub struct BtrfsFs {
    pub dir: tempfile::TempDir,
    pub mnt: PathBuf,
    loopdev: Option<String>,
    mounted: bool,
}

impl BtrfsFs {
    pub fn new() -> BtrfsFs {
        require_btrfs_prerequisites();
        let dir = tempfile::Builder::new()
            .prefix("tinyvmm-storage-btrfs-")
            .tempdir()
            .unwrap();
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut fs = BtrfsFs {
            dir,
            mnt,
            loopdev: None,
            mounted: false,
        };
        let file = std::fs::File::create(&img).unwrap();
        file.set_len(256 << 20).unwrap();
        drop(file);
        sh("mkfs.btrfs", &["-q", img.to_str().unwrap()]);
        fs.loopdev = Some(attach_loop(&img));
        sh(
            "mount",
            &[fs.loopdev.as_deref().unwrap(), fs.mnt.to_str().unwrap()],
        );
        fs.mounted = true;
        fs
    }

    /// All subvolume paths of the file system (relative to its top level).
    pub fn subvolumes(&self) -> Vec<String> {
        sh("btrfs", &["subvolume", "list", self.mnt.to_str().unwrap()])
            .lines()
            .filter_map(|l| l.split(" path ").nth(1).map(str::to_string))
            .collect()
    }
}

/// `losetup --find --show`, retried: parallel tests can race for the same free device.
fn attach_loop(img: &Path) -> String {
    let mut last = String::new();
    for _ in 0..10 {
        let out = Command::new("losetup")
            .args(["--find", "--show", img.to_str().unwrap()])
            .output()
            .unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("losetup --find --show failed: {last}");
}

impl Drop for BtrfsFs {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.mnt)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
        }
        if let Some(dev) = &self.loopdev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
    }
}

/// Reads a file to a string (panics with the path on error).
pub fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Writes a file (panics with the path on error).
pub fn write(path: impl AsRef<Path>, text: &str) {
    let path = path.as_ref();
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()))
}

/// A real backend whose volume creation leaves something that breaks the layout step: a
/// plain file where `etc/` must go. Used to test that `create` deletes the half-made volume.
pub struct EtcIsAFile<B: Backend>(pub B);

impl<B: Backend> Backend for EtcIsAFile<B> {
    fn kind(&self) -> BackendKind {
        self.0.kind()
    }
    fn root(&self) -> PathBuf {
        self.0.root()
    }
    fn vm_path(&self, vm: &str) -> PathBuf {
        self.0.vm_path(vm)
    }
    fn init(&self) -> Result<Outcome> {
        self.0.init()
    }
    fn is_initialized(&self) -> Result<bool> {
        self.0.is_initialized()
    }
    fn vm_exists(&self, vm: &str) -> Result<bool> {
        self.0.vm_exists(vm)
    }
    fn create_volume(&self, vm: &str) -> Result<()> {
        self.0.create_volume(vm)?;
        std::fs::write(self.0.vm_path(vm).join("etc"), "not a directory").unwrap();
        Ok(())
    }
    fn delete_volume(&self, vm: &str) -> Result<()> {
        self.0.delete_volume(vm)
    }
    fn list_vms(&self) -> Result<Vec<String>> {
        self.0.list_vms()
    }
    fn snapshot(&self, vm: &str, snap: &str) -> Result<()> {
        self.0.snapshot(vm, snap)
    }
    fn snapshots(&self, vm: &str) -> Result<Vec<SnapshotInfo>> {
        self.0.snapshots(vm)
    }
    fn rollback(&self, vm: &str, snap: &str, destroy_newer: bool) -> Result<()> {
        self.0.rollback(vm, snap, destroy_newer)
    }
    fn clone_snapshot(&self, vm: &str, snap: &str, new_vm: &str) -> Result<()> {
        self.0.clone_snapshot(vm, snap, new_vm)
    }
    fn delete_snapshot(&self, vm: &str, snap: &str) -> Result<()> {
        self.0.delete_snapshot(vm, snap)
    }
}
