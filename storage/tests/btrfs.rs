//! The btrfs backend on a real, loop-mounted btrfs (needs root and btrfs-progs; fails with an
//! install hint otherwise — these are acceptance tests, they do not skip).

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{read, write, BtrfsFs, EtcIsAFile};
use storage::backend::btrfs::{is_subvolume, BtrfsBackend};
use storage::config::{detect, BackendChoice};
use storage::exec::SystemRunner;
use storage::owner::Owner;
use storage::{BackendKind, HostStorageConfig, Outcome, StorageError, Store};

fn config(fs: &BtrfsFs) -> HostStorageConfig {
    HostStorageConfig {
        backend: BackendChoice::Auto,
        root: fs.mnt.join("microvms"),
        dataset: None,
        owner: Some("4242:4343".into()),
        run_dir: Some(fs.dir.path().join("run")),
    }
}

fn open(fs: &BtrfsFs) -> Store {
    let cfg = config(fs);
    let store = Store::open(&cfg).unwrap();
    assert_eq!(store.kind(), BackendKind::Btrfs, "detected from statfs");
    store
}

#[test]
fn btrfs_every_command_when_real_filesystem_then_files_follow_snapshots() {
    let fs = BtrfsFs::new();
    let store = open(&fs);
    assert_eq!(store.init().unwrap(), Outcome::Created);
    assert!(is_subvolume(&fs.mnt.join("microvms")));
    assert_eq!(store.init().unwrap(), Outcome::AlreadyExisted);
    common::scenario::every_command(&store);
    // Nothing left behind: only the root subvolume remains.
    assert_eq!(fs.subvolumes(), vec!["microvms".to_string()]);
}

#[test]
fn btrfs_detect_when_mounted_then_btrfs_and_parent_of_missing_root_probed() {
    let fs = BtrfsFs::new();
    assert_eq!(detect(&fs.mnt).unwrap(), BackendKind::Btrfs);
    assert_eq!(detect(&fs.mnt.join("not/yet")).unwrap(), BackendKind::Btrfs);
}

#[test]
fn btrfs_rollback_when_vm_running_then_refused_until_it_stops() {
    let fs = BtrfsFs::new();
    let store = open(&fs);
    store.init().unwrap();
    store.create("web").unwrap();
    let etc = store.vm_path("web").join("etc");
    write(etc.join("app.conf"), "good\n");
    store.snapshot("web", Some("good")).unwrap();
    write(etc.join("app.conf"), "broken\n");

    let running = vmconfig::RunLock::acquire(store.run_dir(), "web").unwrap();
    let err = store.rollback("web", "good", false).unwrap_err();
    assert!(matches!(err, StorageError::VmRunning { .. }), "{err}");
    assert!(err.to_string().contains("running"), "{err}");
    assert_eq!(read(etc.join("app.conf")), "broken\n");
    drop(running);

    store.rollback("web", "good", false).unwrap();
    assert_eq!(read(store.vm_path("web").join("etc/app.conf")), "good\n");
    // The rollback temp subvolume is gone.
    assert!(!fs.mnt.join("microvms/.web.rollback").exists());
}

#[test]
fn btrfs_create_when_layout_step_fails_then_no_subvolume_left() {
    let fs = BtrfsFs::new();
    let root = fs.mnt.join("microvms");
    let backend = EtcIsAFile(BtrfsBackend::new(&root, Arc::new(SystemRunner)));
    let store = Store::from_backend(
        Box::new(backend),
        Some(Owner { uid: 1, gid: 1 }),
        fs.dir.path().join("run"),
    );
    store.init().unwrap();
    let err = store.create("vm1").unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Io {
                op: "create directory",
                ..
            }
        ),
        "{err}"
    );
    assert!(!root.join("vm1").exists());
    assert_eq!(fs.subvolumes(), vec!["microvms".to_string()]);
}

#[test]
fn btrfs_create_when_existing_with_other_layout_then_refused_and_unchanged() {
    let fs = BtrfsFs::new();
    let store = open(&fs);
    store.init().unwrap();
    store.create("vm1").unwrap();
    std::fs::remove_dir(store.vm_path("vm1").join("var")).unwrap();
    let err = store.create("vm1").unwrap_err();
    assert!(
        matches!(&err, StorageError::LayoutMismatch { problems, .. } if problems == &["var/ is missing"]),
        "{err}"
    );
    assert!(!store.vm_path("vm1").join("var").exists());
    // A plain directory where a subvolume belongs is not mistaken for a VM.
    std::fs::create_dir(fs.mnt.join("microvms/plain")).unwrap();
    assert!(matches!(
        store.create("plain"),
        Err(StorageError::NotAVolume { .. })
    ));
}

#[test]
fn btrfs_names_when_invalid_then_rejected_before_any_change() {
    let fs = BtrfsFs::new();
    let store = open(&fs);
    store.init().unwrap();
    for bad in ["a/b", "a@b", "a b", "../x", ""] {
        assert!(
            matches!(store.create(bad), Err(StorageError::InvalidName { .. })),
            "{bad:?}"
        );
    }
    store.create("vm1").unwrap();
    for bad in ["a/b", "a@b", "a b", ".x"] {
        assert!(
            matches!(
                store.snapshot("vm1", Some(bad)),
                Err(StorageError::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        store.clone_vm("vm1", "s", "x/y"),
        Err(StorageError::InvalidName { .. })
    ));
    assert_eq!(
        fs.subvolumes(),
        vec!["microvms".to_string(), "microvms/vm1".to_string()]
    );
}

#[test]
fn btrfs_default_snapshot_names_when_same_second_then_unique_and_ordered() {
    let fs = BtrfsFs::new();
    let store = open(&fs);
    store.init().unwrap();
    store.create("vm1").unwrap();
    let names: Vec<String> = (0..3)
        .map(|_| store.snapshot("vm1", None).unwrap())
        .collect();
    let listed: Vec<String> = store
        .snapshots("vm1")
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(listed, names, "listing order is creation order");
    let mut unique = names.clone();
    unique.dedup();
    assert_eq!(unique.len(), 3);
    assert!(store
        .snapshots("vm1")
        .unwrap()
        .iter()
        .all(|s| s.created.is_some()));
    assert_eq!(store.prune("vm1", 1).unwrap(), names[..2].to_vec());
}

#[test]
fn btrfs_snapshot_on_start_when_config_asks_then_snapshot_and_retention() {
    let fs = BtrfsFs::new();
    let store = open(&fs);
    store.init().unwrap();
    store.create("vm1").unwrap();
    let off = vmconfig::StorageConfig {
        snapshot_on_start: false,
        keep_snapshots: Some(2),
    };
    assert_eq!(store.snapshot_on_start("vm1", &off).unwrap(), None);
    let on = vmconfig::StorageConfig {
        snapshot_on_start: true,
        keep_snapshots: Some(2),
    };
    // tinyvmm holds the run lock while it does this: snapshots are allowed then.
    let _running = vmconfig::RunLock::acquire(store.run_dir(), "vm1").unwrap();
    let mut taken = Vec::new();
    for _ in 0..3 {
        taken.push(store.snapshot_on_start("vm1", &on).unwrap().unwrap().taken);
    }
    let listed: Vec<String> = store
        .snapshots("vm1")
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(listed, taken[1..].to_vec());
}

#[test]
fn btrfs_init_when_root_not_on_btrfs_then_refused() {
    let dir = tempfile::tempdir().unwrap();
    let backend = BtrfsBackend::new(dir.path(), Arc::new(SystemRunner));
    let store = Store::from_backend(Box::new(backend), None, dir.path().join("run"));
    assert_ne!(
        storage::config::fs_magic(Path::new(dir.path())).unwrap(),
        storage::config::BTRFS_SUPER_MAGIC,
        "this test needs a temp dir that is not on btrfs"
    );
    assert!(matches!(store.init(), Err(StorageError::InitMismatch(_))));
}

#[test]
fn btrfs_clone_when_snapshot_lacks_layout_then_clone_deleted() {
    let fs = BtrfsFs::new();
    let store = open(&fs);
    store.init().unwrap();
    store.create("tpl").unwrap();
    std::fs::remove_dir(store.vm_path("tpl").join("var")).unwrap();
    store.snapshot("tpl", Some("broken")).unwrap();
    let err = store.clone_vm("tpl", "broken", "vm2").unwrap_err();
    assert!(matches!(err, StorageError::LayoutMismatch { .. }), "{err}");
    assert!(!store.vm_path("vm2").exists());
    assert!(!fs.subvolumes().iter().any(|s| s.ends_with("vm2")));
}
