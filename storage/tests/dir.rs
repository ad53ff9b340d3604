//! The dir backend, for real, in a temp directory.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{read, write, EtcIsAFile};
use storage::backend::dir::DirBackend;
use storage::config::BackendChoice;
use storage::{BackendKind, Destroyed, HostStorageConfig, Outcome, StorageError, Store};

fn setup() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = HostStorageConfig {
        backend: BackendChoice::Dir,
        root: dir.path().join("microvms"),
        dataset: None,
        owner: Some("4242:4343".into()),
        run_dir: Some(dir.path().join("run")),
    };
    let store = Store::open(&cfg).unwrap();
    (dir, store)
}

#[test]
fn dir_every_command_when_plain_directories_then_work_or_say_no_snapshots() {
    let (dir, store) = setup();
    assert_eq!(store.kind(), BackendKind::Dir);
    assert!(!store.supports_snapshots());
    assert!(matches!(
        store.create("vm1"),
        Err(StorageError::NotInitialized(_))
    ));
    assert_eq!(store.init().unwrap(), Outcome::Created);
    assert_eq!(store.init().unwrap(), Outcome::AlreadyExisted);

    assert_eq!(store.create("vm1").unwrap(), Outcome::Created);
    let vm1 = dir.path().join("microvms/vm1");
    for sub in ["", "etc", "var"] {
        let m = std::fs::metadata(vm1.join(sub)).unwrap();
        assert!(m.is_dir());
        assert_eq!((m.uid(), m.gid()), (4242, 4343), "owner of {sub:?}");
    }
    write(vm1.join("etc/hostname"), "vm1\n");
    assert_eq!(store.create("vm1").unwrap(), Outcome::AlreadyExisted);
    assert_eq!(read(vm1.join("etc/hostname")), "vm1\n");

    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].name.as_str(),
            listed[0].running,
            listed[0].snapshots
        ),
        ("vm1", false, None)
    );

    for result in [
        store.snapshot("vm1", None).map(drop),
        store.snapshots("vm1").map(drop),
        store.rollback("vm1", "s1", false),
        store.clone_vm("vm1", "s1", "vm2"),
        store.prune("vm1", 3).map(drop),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(err, StorageError::NoSnapshots(BackendKind::Dir)),
            "{err}"
        );
        assert!(err.to_string().contains("has no snapshots"), "{err}");
    }

    assert_eq!(store.destroy("vm1").unwrap(), Destroyed::Destroyed);
    assert!(!vm1.exists());
    assert_eq!(store.destroy("vm1").unwrap(), Destroyed::NotFound);
}

#[test]
fn dir_destroy_when_vm_running_then_refused_and_kept() {
    let (_dir, store) = setup();
    store.init().unwrap();
    store.create("vm1").unwrap();
    let running = vmconfig::RunLock::acquire(store.run_dir(), "vm1").unwrap();
    assert!(store.list().unwrap()[0].running);
    let err = store.destroy("vm1").unwrap_err();
    assert!(matches!(err, StorageError::VmRunning { .. }), "{err}");
    assert!(store.vm_path("vm1").join("etc").is_dir());
    drop(running);
    assert_eq!(store.destroy("vm1").unwrap(), Destroyed::Destroyed);
}

#[test]
fn dir_create_when_layout_step_fails_then_directory_removed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("microvms");
    let store = Store::from_backend(
        Box::new(EtcIsAFile(DirBackend::new(&root))),
        None,
        dir.path().join("run"),
    );
    store.init().unwrap();
    assert!(store.create("vm1").is_err());
    assert!(!root.join("vm1").exists());
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
}

#[test]
fn dir_create_when_existing_with_other_layout_then_refused_and_unchanged() {
    let (_dir, store) = setup();
    store.init().unwrap();
    let vm = store.vm_path("vm1");
    std::fs::create_dir_all(vm.join("etc")).unwrap();
    write(vm.join("var"), "a file\n");
    let err = store.create("vm1").unwrap_err();
    let StorageError::LayoutMismatch { problems, .. } = &err else {
        panic!("{err}");
    };
    assert!(
        problems.contains(&"var is not a directory".to_string()),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("owned by 0:0, not 4242:4343")),
        "{problems:?}"
    );
    assert_eq!(read(vm.join("var")), "a file\n");

    write(store.vm_path("file"), "x");
    assert!(matches!(
        store.create("file"),
        Err(StorageError::NotAVolume { .. })
    ));
}

#[test]
fn dir_names_when_invalid_then_rejected() {
    let (dir, store) = setup();
    store.init().unwrap();
    for bad in ["a/b", "a@b", "a b", "..", "-rf", ""] {
        assert!(
            matches!(store.create(bad), Err(StorageError::InvalidName { .. })),
            "{bad:?}"
        );
        assert!(
            matches!(store.destroy(bad), Err(StorageError::InvalidName { .. })),
            "{bad:?}"
        );
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join("microvms"))
            .unwrap()
            .count(),
        0
    );
}
