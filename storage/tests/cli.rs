//! The `tinyvmm-storage` binary, run for real on a loop-mounted btrfs and on plain
//! directories.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{read, write, BtrfsFs};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `--config <cfg>` and `args`, feeding `stdin`.
fn run(cfg: &Path, args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tinyvmm-storage"))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn ok(cfg: &Path, args: &[&str]) -> String {
    let r = run(cfg, args, "");
    assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
    r.stdout
}

#[test]
fn cli_every_command_when_btrfs_then_works_and_guards_hold() {
    let fs = BtrfsFs::new();
    let root = fs.mnt.join("microvms");
    let run_dir = fs.dir.path().join("run");
    let cfg = fs.dir.path().join("storage.json");
    write(
        &cfg,
        &format!(
            r#"{{"root": "{}", "owner": "4242:4343", "run_dir": "{}"}}"#,
            root.display(),
            run_dir.display()
        ),
    );
    assert_eq!(ok(&cfg, &["detect"]), "btrfs\n");
    assert!(ok(&cfg, &["init"]).starts_with("initialised btrfs storage"));
    assert!(ok(&cfg, &["init"]).contains("already initialised"));
    assert!(ok(&cfg, &["create", "vm1"]).starts_with("created VM vm1"));
    assert!(ok(&cfg, &["create", "vm1"]).contains("already exists"));

    write(root.join("vm1/etc/hostname"), "one\n");
    assert_eq!(
        ok(&cfg, &["snapshot", "vm1", "s1"]),
        "created snapshot vm1@s1\n"
    );
    write(root.join("vm1/etc/hostname"), "two\n");
    let auto = ok(&cfg, &["snapshot", "vm1"]);
    let auto = auto
        .trim()
        .strip_prefix("created snapshot vm1@")
        .unwrap()
        .to_string();
    let listing = ok(&cfg, &["snapshots", "vm1"]);
    let names: Vec<&str> = listing
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(names, vec!["s1", auto.as_str()]);

    // Rollback and destroy of a running VM: refused with exit code 7.
    let running = vmconfig::RunLock::acquire(&run_dir, "vm1").unwrap();
    let r = run(&cfg, &["rollback", "vm1", "s1"], "");
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(r.stderr.contains("running"), "{}", r.stderr);
    let r = run(&cfg, &["destroy", "vm1", "--force"], "");
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(ok(&cfg, &["list"]).contains("vm1\tyes\t2\t"));
    drop(running);

    ok(&cfg, &["rollback", "vm1", "s1"]);
    assert_eq!(read(root.join("vm1/etc/hostname")), "one\n");
    ok(&cfg, &["clone", "vm1", "s1", "vm2"]);
    assert_eq!(read(root.join("vm2/etc/hostname")), "one\n");
    let list = ok(&cfg, &["list"]);
    assert!(
        list.contains("vm1\tno\t2\t") && list.contains("vm2\tno\t0\t"),
        "{list}"
    );

    let pruned = ok(&cfg, &["prune", "vm1", "--keep", "1"]);
    assert!(pruned.contains("deleted snapshot vm1@s1"), "{pruned}");

    // Destroy needs --force or the typed VM name.
    let r = run(&cfg, &["destroy", "vm2"], "vm1\n");
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(r.stderr.contains("Type the VM name"), "{}", r.stderr);
    assert!(root.join("vm2/etc").is_dir());
    let r = run(&cfg, &["destroy", "vm2"], "vm2\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!root.join("vm2").exists());
    assert!(ok(&cfg, &["destroy", "vm1", "--force"]).contains("destroyed VM vm1"));
    assert!(ok(&cfg, &["destroy", "vm1"]).contains("does not exist"));
    assert_eq!(fs.subvolumes(), vec!["microvms".to_string()]);
}

#[test]
fn cli_errors_when_bad_input_then_exit_2_and_no_snapshots_on_dir_then_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("storage.json");
    write(
        &cfg,
        &format!(
            r#"{{"backend": "dir", "root": "{}", "run_dir": "{}"}}"#,
            dir.path().join("vms").display(),
            dir.path().join("run").display()
        ),
    );
    ok(&cfg, &["init"]);
    for args in [
        &["create", "a/b"][..],
        &["create", "a b"],
        &["create", "x@y"],
        &["frobnicate"],
    ] {
        let r = run(&cfg, args, "");
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
    }
    ok(&cfg, &["create", "vm1"]);
    let r = run(&cfg, &["snapshot", "vm1"], "");
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("the dir backend has no snapshots"),
        "{}",
        r.stderr
    );
    // Flags override the file.
    let r = run(
        &cfg,
        &["--backend", "dir", "--root", "relative", "list"],
        "",
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    let missing = dir.path().join("missing.json");
    assert_eq!(run(&missing, &["list"], "").code, 2);
}
