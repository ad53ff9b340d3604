//! The ZFS command layer against captured real `zfs` output (see `zfs_parse::captured` for
//! the sources): which commands each operation runs, in which order, and what it makes of
//! their output. A scripted runner stands in for the `zfs` binary, which these machines lack;
//! `tests/zfs_real.rs` runs the same operations against real ZFS where it exists.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::zfs::ZfsBackend;
use super::zfs_parse::captured::{DATASETS, NOT_FOUND_STDERR, ROLLBACK_NEWER_STDERR, SNAPSHOTS};
use super::{Backend, Outcome};
use crate::error::{Result, StorageError};
use crate::exec::{CmdOutput, Runner};
use crate::store::{Destroyed, Store};

type Effect = Box<dyn Fn() + Send + Sync>;

/// Expects exactly this sequence of `zfs` invocations and answers each with canned output.
#[derive(Default)]
struct Script {
    steps: Mutex<VecDeque<(String, CmdOutput, Option<Effect>)>>,
}

impl Script {
    fn expect(self, cmd: &str, code: i32, stdout: &str, stderr: &str) -> Self {
        self.expect_with(cmd, code, stdout, stderr, None)
    }

    fn expect_with(
        self,
        cmd: &str,
        code: i32,
        stdout: &str,
        stderr: &str,
        effect: Option<Effect>,
    ) -> Self {
        let out = CmdOutput {
            code: Some(code),
            stdout: stdout.to_string(),
            stderr: stderr.to_string(),
        };
        self.steps
            .lock()
            .unwrap()
            .push_back((cmd.to_string(), out, effect));
        self
    }

    fn ok(self, cmd: &str, stdout: &str) -> Self {
        self.expect(cmd, 0, stdout, "")
    }

    fn not_found(self, cmd: &str) -> Self {
        self.expect(cmd, 1, "", NOT_FOUND_STDERR)
    }

    fn assert_done(&self) {
        let left: Vec<String> = self
            .steps
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.0.clone())
            .collect();
        assert!(left.is_empty(), "expected commands not run: {left:?}");
    }
}

impl Runner for Script {
    fn run(&self, program: &str, args: &[String]) -> Result<CmdOutput> {
        let got = crate::exec::render(program, args);
        let (want, out, effect) = self
            .steps
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| panic!("unexpected command: {got}"));
        assert_eq!(got, want);
        if let Some(f) = effect {
            f();
        }
        Ok(out)
    }
}

const SNAP_LIST: &str =
    "zfs list -H -p -t snapshot -o name,used,creation -s createtxg -d 1 rpool/ROOT/debian";
const OLDEST: &str = "zfs-auto-snap_weekly-2020-08-09-0518";
const LATEST: &str = "zfs-auto-snap_hourly-2020-08-28-2117";

fn backend(dataset: &str, root: &Path, script: &Arc<Script>) -> ZfsBackend {
    ZfsBackend::new(dataset, root, script.clone())
}

fn store(dataset: &str, root: &Path, script: &Arc<Script>, run_dir: PathBuf) -> Store {
    Store::from_backend(Box::new(backend(dataset, root, script)), None, run_dir)
}

#[test]
fn zfs_init_when_dataset_missing_then_created_with_mountpoint() {
    let script = Arc::new(
        Script::default()
            .not_found("zfs list -H -p -o name rpool/microvms")
            .ok(
                "zfs create -p -o mountpoint=/var/lib/microvms rpool/microvms",
                "",
            ),
    );
    let b = backend("rpool/microvms", Path::new("/var/lib/microvms"), &script);
    assert_eq!(b.init().unwrap(), Outcome::Created);
    script.assert_done();
}

#[test]
fn zfs_init_when_dataset_exists_then_mountpoint_checked() {
    let script = Arc::new(
        Script::default()
            .ok("zfs list -H -p -o name rpool/microvms", "rpool/microvms\n")
            .ok(
                "zfs get -H -p -o value mountpoint rpool/microvms",
                "/var/lib/microvms\n",
            )
            .ok("zfs list -H -p -o name rpool/microvms", "rpool/microvms\n")
            .ok(
                "zfs get -H -p -o value mountpoint rpool/microvms",
                "/rpool/microvms\n",
            ),
    );
    let b = backend("rpool/microvms", Path::new("/var/lib/microvms"), &script);
    assert_eq!(b.init().unwrap(), Outcome::AlreadyExisted);
    let err = b.init().unwrap_err();
    assert!(matches!(err, StorageError::InitMismatch(_)), "{err}");
    assert!(err.to_string().contains("/rpool/microvms"), "{err}");
    script.assert_done();
}

#[test]
fn zfs_snapshots_when_captured_list_then_parsed_in_order() {
    let script = Arc::new(Script::default().ok(SNAP_LIST, SNAPSHOTS));
    let snaps = backend("rpool/ROOT", Path::new("/"), &script)
        .snapshots("debian")
        .unwrap();
    assert_eq!(snaps.len(), 22);
    assert_eq!(snaps[0].name, OLDEST);
    assert_eq!(snaps[21].name, LATEST);
    assert_eq!(snaps[21].created, Some(1_598_649_426));
    script.assert_done();
}

#[test]
fn zfs_list_vms_when_captured_datasets_then_children_of_parent() {
    let script = Arc::new(Script::default().ok(
        "zfs list -H -p -o name -t filesystem -d 1 rpool/var",
        DATASETS,
    ));
    let vms = backend("rpool/var", Path::new("/var"), &script)
        .list_vms()
        .unwrap();
    assert_eq!(vms, vec!["cache", "log", "spool"]);
    script.assert_done();
}

#[test]
fn zfs_rollback_when_older_snapshot_without_destroy_newer_then_refused_without_rollback() {
    let run = tempfile::tempdir().unwrap();
    let target = "zfs-auto-snap_frequent-2020-08-28-2100";
    let script = Arc::new(
        Script::default()
            .ok(
                "zfs list -H -p -o name rpool/ROOT/debian",
                "rpool/ROOT/debian\n",
            )
            .ok(SNAP_LIST, SNAPSHOTS)
            .ok(SNAP_LIST, SNAPSHOTS),
    );
    let s = store("rpool/ROOT", Path::new("/"), &script, run.path().into());
    let err = s.rollback("debian", target, false).unwrap_err();
    let StorageError::RollbackNewerSnapshots { newer, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(
        newer,
        &[
            "zfs-auto-snap_frequent-2020-08-28-2115".to_string(),
            LATEST.to_string()
        ]
    );
    script.assert_done();
}

#[test]
fn zfs_rollback_when_destroy_newer_then_rollback_r() {
    let run = tempfile::tempdir().unwrap();
    let script = Arc::new(
        Script::default()
            .ok(
                "zfs list -H -p -o name rpool/ROOT/debian",
                "rpool/ROOT/debian\n",
            )
            .ok(SNAP_LIST, SNAPSHOTS)
            .ok(SNAP_LIST, SNAPSHOTS)
            .ok(&format!("zfs rollback -r rpool/ROOT/debian@{OLDEST}"), "")
            .ok(
                "zfs list -H -p -o name rpool/ROOT/debian",
                "rpool/ROOT/debian\n",
            )
            .ok(SNAP_LIST, SNAPSHOTS)
            .ok(SNAP_LIST, SNAPSHOTS)
            .ok(&format!("zfs rollback rpool/ROOT/debian@{LATEST}"), ""),
    );
    let s = store("rpool/ROOT", Path::new("/"), &script, run.path().into());
    s.rollback("debian", OLDEST, true).unwrap();
    s.rollback("debian", LATEST, false).unwrap();
    script.assert_done();
}

#[test]
fn zfs_rollback_when_zfs_refuses_then_its_message_is_reported() {
    let run = tempfile::tempdir().unwrap();
    let script = Arc::new(
        Script::default()
            .ok(
                "zfs list -H -p -o name rpool/ROOT/debian",
                "rpool/ROOT/debian\n",
            )
            .ok(SNAP_LIST, SNAPSHOTS)
            .ok(SNAP_LIST, SNAPSHOTS)
            .expect(
                &format!("zfs rollback rpool/ROOT/debian@{LATEST}"),
                1,
                "",
                ROLLBACK_NEWER_STDERR,
            ),
    );
    let s = store("rpool/ROOT", Path::new("/"), &script, run.path().into());
    let err = s.rollback("debian", LATEST, false).unwrap_err();
    assert!(matches!(err, StorageError::CommandFailed { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("more recent snapshots or bookmarks exist"),
        "{err}"
    );
    script.assert_done();
}

#[test]
fn zfs_rollback_when_vm_running_then_no_zfs_rollback_runs() {
    let run = tempfile::tempdir().unwrap();
    let _running = vmconfig::RunLock::acquire(run.path(), "debian").unwrap();
    let script = Arc::new(Script::default().ok(
        "zfs list -H -p -o name rpool/ROOT/debian",
        "rpool/ROOT/debian\n",
    ));
    let s = store("rpool/ROOT", Path::new("/"), &script, run.path().into());
    let err = s.rollback("debian", LATEST, false).unwrap_err();
    assert!(matches!(err, StorageError::VmRunning { .. }), "{err}");
    script.assert_done();
}

#[test]
fn zfs_prune_when_22_snapshots_keep_20_then_two_oldest_destroyed() {
    let script = Arc::new(
        Script::default()
            .ok(
                "zfs list -H -p -o name rpool/ROOT/debian",
                "rpool/ROOT/debian\n",
            )
            .ok(SNAP_LIST, SNAPSHOTS)
            .ok(&format!("zfs destroy rpool/ROOT/debian@{OLDEST}"), "")
            .ok(
                "zfs destroy rpool/ROOT/debian@zfs-auto-snap_weekly-2020-08-16-0518",
                "",
            ),
    );
    let s = store("rpool/ROOT", Path::new("/"), &script, "/nonexistent".into());
    let deleted = s.prune("debian", 20).unwrap();
    assert_eq!(
        deleted,
        vec![
            OLDEST.to_string(),
            "zfs-auto-snap_weekly-2020-08-16-0518".into()
        ]
    );
    script.assert_done();
}

#[test]
fn zfs_create_when_new_then_dataset_mounted_checked_and_layout_made() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let mount = root.join("vm1");
    let mp = format!("{}\n", mount.display());
    // `zfs create` mounts the new dataset at <root>/vm1 (inherited mountpoint).
    let mkdir: Effect = Box::new(move || std::fs::create_dir(&mount).unwrap());
    let script = Arc::new(
        Script::default()
            .ok("zfs list -H -p -o name rpool/microvms", "rpool/microvms\n")
            .not_found("zfs list -H -p -o name rpool/microvms/vm1")
            .expect_with("zfs create rpool/microvms/vm1", 0, "", "", Some(mkdir))
            .ok("zfs get -H -p -o value mounted rpool/microvms/vm1", "yes\n")
            .ok("zfs get -H -p -o value mountpoint rpool/microvms/vm1", &mp),
    );
    let s = store("rpool/microvms", &root, &script, tmp.path().join("run"));
    assert_eq!(s.create("vm1").unwrap(), Outcome::Created);
    assert!(root.join("vm1/etc").is_dir() && root.join("vm1/var").is_dir());
    script.assert_done();
}

#[test]
fn zfs_create_when_dataset_made_but_not_mounted_then_destroyed_again() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let mp = format!("{}\n", root.join("vm2").display());
    let script = Arc::new(
        Script::default()
            // Case 1: zfs succeeds but the dataset is not mounted.
            .ok("zfs list -H -p -o name rpool/microvms", "rpool/microvms\n")
            .not_found("zfs list -H -p -o name rpool/microvms/vm2")
            .ok("zfs create rpool/microvms/vm2", "")
            .ok("zfs get -H -p -o value mounted rpool/microvms/vm2", "no\n")
            .ok("zfs get -H -p -o value mountpoint rpool/microvms/vm2", &mp)
            .ok("zfs destroy -r rpool/microvms/vm2", "")
            // Case 2: zfs fails after creating the dataset (it exits non-zero with
            // "filesystem successfully created, but not mounted" when the mount fails).
            .ok("zfs list -H -p -o name rpool/microvms", "rpool/microvms\n")
            .not_found("zfs list -H -p -o name rpool/microvms/vm2")
            .expect(
                "zfs create rpool/microvms/vm2",
                1,
                "",
                "filesystem successfully created, but not mounted",
            )
            .ok("zfs destroy -r rpool/microvms/vm2", "")
            // Case 3: a plain failure (e.g. a name clash) destroys nothing.
            .ok("zfs list -H -p -o name rpool/microvms", "rpool/microvms\n")
            .not_found("zfs list -H -p -o name rpool/microvms/vm2")
            .expect(
                "zfs create rpool/microvms/vm2",
                1,
                "",
                "cannot create 'rpool/microvms/vm2': dataset already exists",
            ),
    );
    let s = store("rpool/microvms", &root, &script, tmp.path().join("run"));
    let err = s.create("vm2").unwrap_err();
    assert!(matches!(err, StorageError::NotAVolume { .. }), "{err}");
    assert!(
        !root.join("vm2").exists(),
        "nothing written into an unmounted directory"
    );
    let err = s.create("vm2").unwrap_err();
    assert!(matches!(err, StorageError::CommandFailed { .. }), "{err}");
    let err = s.create("vm2").unwrap_err();
    assert!(err.to_string().contains("dataset already exists"), "{err}");
    script.assert_done();
}

#[test]
fn zfs_clone_and_destroy_when_called_then_zfs_clone_and_destroy_r() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let mount = root.join("new");
    let mp = format!("{}\n", mount.display());
    let mkdirs: Effect = Box::new(move || {
        std::fs::create_dir_all(mount.join("etc")).unwrap();
        std::fs::create_dir_all(mount.join("var")).unwrap();
    });
    let script = Arc::new(
        Script::default()
            .ok(
                "zfs list -H -p -o name rpool/ROOT/debian",
                "rpool/ROOT/debian\n",
            )
            .ok(SNAP_LIST, SNAPSHOTS)
            .not_found("zfs list -H -p -o name rpool/ROOT/new")
            .ok(
                &format!("zfs list -H -p -o name rpool/ROOT/debian@{LATEST}"),
                "x\n",
            )
            .expect_with(
                &format!("zfs clone rpool/ROOT/debian@{LATEST} rpool/ROOT/new"),
                0,
                "",
                "",
                Some(mkdirs),
            )
            .ok("zfs get -H -p -o value mounted rpool/ROOT/new", "yes\n")
            .ok("zfs get -H -p -o value mountpoint rpool/ROOT/new", &mp)
            .ok("zfs list -H -p -o name rpool/ROOT/new", "rpool/ROOT/new\n")
            .ok("zfs destroy -r rpool/ROOT/new", "")
            .not_found("zfs list -H -p -o name rpool/ROOT/new"),
    );
    let s = store("rpool/ROOT", &root, &script, tmp.path().join("run"));
    s.clone_vm("debian", LATEST, "new").unwrap();
    assert_eq!(s.destroy("new").unwrap(), Destroyed::Destroyed);
    assert_eq!(s.destroy("new").unwrap(), Destroyed::NotFound);
    script.assert_done();
}

#[test]
fn zfs_exists_when_other_failure_then_error_not_absent() {
    let script = Arc::new(Script::default().expect(
        "zfs list -H -p -o name rpool/microvms/vm1",
        1,
        "",
        "cannot open 'rpool/microvms/vm1': permission denied",
    ));
    let err = backend("rpool/microvms", Path::new("/x"), &script)
        .vm_exists("vm1")
        .unwrap_err();
    assert!(matches!(err, StorageError::CommandFailed { .. }), "{err}");
    script.assert_done();
}
