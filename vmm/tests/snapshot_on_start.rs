//! `storage.snapshot_on_start`: tinyvmm snapshots the VM's dataset (and prunes) before boot,
//! on a real btrfs on a loop device; with a backend that has no snapshots the boot is refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use tinyvmm_benches::build_guest;

/// A btrfs image loop-mounted in a tempdir; unmounted and detached on drop.
struct Btrfs {
    dir: tempfile::TempDir,
    loopdev: String,
    mnt: PathBuf,
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {} (needs root and btrfs-progs: apt-get install btrfs-progs)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Btrfs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        sh(Command::new("mkfs.btrfs").arg("-q").arg(&img));
        let loopdev = sh(Command::new("losetup").args(["--find", "--show"]).arg(&img));
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let fs = Btrfs { dir, loopdev, mnt };
        sh(Command::new("mount").arg(&fs.loopdev).arg(&fs.mnt));
        fs
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(&self.loopdev)
            .status();
    }
}

fn write_configs(dir: &Path, backend: &str, root: &Path, kernel: &Path) -> (PathBuf, PathBuf) {
    let storage = dir.join("storage.json");
    std::fs::write(
        &storage,
        format!(
            r#"{{"backend":"{backend}","root":"{}","run_dir":"{}"}}"#,
            root.display(),
            dir.join("run").display()
        ),
    )
    .unwrap();
    let vm = dir.join("snap.json");
    std::fs::write(
        &vm,
        format!(
            r#"{{"name":"snap","vcpus":1,"memory_mib":64,"kernel":{{"path":"{}"}},"serial":"none",
"storage":{{"snapshot_on_start":true,"keep_snapshots":2}}}}"#,
            kernel.display()
        ),
    )
    .unwrap();
    (storage, vm)
}

fn tinyvmm_run(dir: &Path, vm: &Path, storage: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tinyvmm"))
        .arg("run")
        .arg(vm)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--storage-config")
        .arg(storage)
        .output()
        .unwrap()
}

#[test]
fn run_when_snapshot_on_start_on_btrfs_then_snapshot_taken_and_pruned_to_keep() {
    let fs = Btrfs::new();
    let kernel = build_guest("poweroff", fs.dir.path()).unwrap();
    let root = fs.mnt.join("microvms");
    let (storage_cfg, vm) = write_configs(fs.dir.path(), "btrfs", &root, &kernel);
    let host = storage::HostStorageConfig::load(&storage_cfg, true).unwrap();
    let store = storage::Store::open(&host).unwrap();
    store.init().unwrap();
    store.create("snap").unwrap();
    std::fs::write(store.vm_path("snap").join("etc/marker"), "v1").unwrap();

    for expected in [1, 2, 2] {
        let out = tinyvmm_run(fs.dir.path(), &vm, &storage_cfg);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        let snaps = store.snapshots("snap").unwrap();
        assert_eq!(snaps.len(), expected, "{snaps:?}");
    }
}

#[test]
fn run_when_snapshot_on_start_with_dir_backend_then_boot_refused() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = build_guest("poweroff", dir.path()).unwrap();
    let root = dir.path().join("microvms");
    let (storage_cfg, vm) = write_configs(dir.path(), "dir", &root, &kernel);
    let host = storage::HostStorageConfig::load(&storage_cfg, true).unwrap();
    let store = storage::Store::open(&host).unwrap();
    store.init().unwrap();
    store.create("snap").unwrap();

    let out = tinyvmm_run(dir.path(), &vm, &storage_cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("snapshot"), "{err}");
}
