//! The same end-to-end scenario for every backend with snapshots (btrfs here; ZFS where a
//! `zfs` module exists).

use std::os::unix::fs::MetadataExt;

use storage::{BackendKind, Destroyed, Outcome, StorageError, Store};
use vmconfig::RunLock;

use super::{read, write};

/// Runs every command against an initialised store whose owner is 4242:4343, checking file
/// contents after rollback and clone, and that rollback/destroy of a running VM are refused.
pub fn every_command(store: &Store) {
    let kind = store.kind();
    // create: layout and owner; again: idempotent.
    assert_eq!(store.create("vm1").unwrap(), Outcome::Created);
    let vm1 = store.vm_path("vm1");
    for sub in ["", "etc", "var"] {
        let m = std::fs::metadata(vm1.join(sub)).unwrap();
        assert!(m.is_dir(), "{sub}");
        assert_eq!((m.uid(), m.gid()), (4242, 4343), "owner of {sub}");
    }
    assert_eq!(store.create("vm1").unwrap(), Outcome::AlreadyExisted);

    // snapshot with a name, then with the default (UTC timestamp) name.
    write(vm1.join("etc/hostname"), "v1\n");
    assert_eq!(store.snapshot("vm1", Some("s1")).unwrap(), "s1");
    write(vm1.join("etc/hostname"), "v2\n");
    write(vm1.join("var/state"), "later\n");
    let auto = store.snapshot("vm1", None).unwrap();
    assert!(
        auto.len() == 16 && auto.ends_with('Z') && auto.as_bytes()[8] == b'T',
        "{auto}"
    );
    assert!(matches!(
        store.snapshot("vm1", Some("s1")),
        Err(StorageError::SnapshotExists { .. })
    ));
    let names: Vec<String> = store
        .snapshots("vm1")
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, vec!["s1".to_string(), auto.clone()]);
    write(vm1.join("etc/hostname"), "v3\n");

    // rollback is refused while the VM runs (tinyvmm's real run lock), files untouched.
    {
        let _running = RunLock::acquire(store.run_dir(), "vm1").unwrap();
        assert!(matches!(
            store.rollback("vm1", "s1", true),
            Err(StorageError::VmRunning { .. })
        ));
        assert!(matches!(
            store.destroy("vm1"),
            Err(StorageError::VmRunning { .. })
        ));
        assert_eq!(read(vm1.join("etc/hostname")), "v3\n");
        let listed = store.list().unwrap();
        assert!(listed.iter().any(|v| v.name == "vm1" && v.running));
    }

    // rollback to the latest, then to the older snapshot.
    store.rollback("vm1", &auto, false).unwrap();
    assert_eq!(read(vm1.join("etc/hostname")), "v2\n");
    assert_eq!(read(vm1.join("var/state")), "later\n");
    if kind == BackendKind::Zfs {
        assert!(matches!(
            store.rollback("vm1", "s1", false),
            Err(StorageError::RollbackNewerSnapshots { .. })
        ));
    }
    store.rollback("vm1", "s1", true).unwrap();
    assert_eq!(read(vm1.join("etc/hostname")), "v1\n");
    assert!(!vm1.join("var/state").exists());
    assert_eq!(
        (std::fs::metadata(&vm1).unwrap().uid()),
        4242,
        "owner survives rollback"
    );
    // rollback is idempotent.
    store.rollback("vm1", "s1", true).unwrap();
    assert_eq!(read(vm1.join("etc/hostname")), "v1\n");
    let after: Vec<String> = store
        .snapshots("vm1")
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    match kind {
        // ZFS destroys snapshots newer than the rollback target.
        BackendKind::Zfs => assert_eq!(after, vec!["s1".to_string()]),
        _ => assert_eq!(after, vec!["s1".to_string(), auto.clone()]),
    }

    // clone: a new, independent VM with the snapshot's files.
    store.clone_vm("vm1", "s1", "vm2").unwrap();
    let vm2 = store.vm_path("vm2");
    assert_eq!(read(vm2.join("etc/hostname")), "v1\n");
    write(vm2.join("etc/hostname"), "clone\n");
    assert_eq!(read(vm1.join("etc/hostname")), "v1\n");
    assert!(matches!(
        store.clone_vm("vm1", "s1", "vm2"),
        Err(StorageError::VmExists(_))
    ));
    assert!(matches!(
        store.clone_vm("vm1", "nope", "vm3"),
        Err(StorageError::SnapshotNotFound { .. })
    ));
    let names: Vec<String> = store.list().unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, vec!["vm1".to_string(), "vm2".to_string()]);

    // prune: oldest first, idempotent.
    for n in ["p1", "p2", "p3"] {
        store.snapshot("vm2", Some(n)).unwrap();
    }
    assert_eq!(
        store.prune("vm2", 1).unwrap(),
        vec!["p1".to_string(), "p2".to_string()]
    );
    assert_eq!(store.prune("vm2", 1).unwrap(), Vec::<String>::new());
    let left: Vec<String> = store
        .snapshots("vm2")
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(left, vec!["p3".to_string()]);

    // destroy: the clone first (on ZFS it depends on vm1@s1), then the template.
    assert_eq!(store.destroy("vm2").unwrap(), Destroyed::Destroyed);
    assert!(!vm2.join("etc").exists());
    assert_eq!(store.destroy("vm2").unwrap(), Destroyed::NotFound);
    assert_eq!(store.destroy("vm1").unwrap(), Destroyed::Destroyed);
    assert!(store.list().unwrap().is_empty());
}
