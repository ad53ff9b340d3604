//! The systemd units: the shipped `contrib/systemd/` files are exactly what
//! `tinyvmm systemd install` generates, `systemd-analyze verify` accepts them (real systemd
//! tools; no systemd as PID 1 needed), and the netctl unit's shell picks the right VM files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TINYVMM: &str = env!("CARGO_BIN_EXE_tinyvmm");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `cmd` under coreutils `timeout` so a hung child cannot hang the test.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("60")
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

fn install(prefix: &Path, bin_dir: &Path, configs: &[PathBuf]) -> PathBuf {
    let mut args = vec![
        "systemd".to_string(),
        "install".into(),
        "--prefix".into(),
        prefix.display().to_string(),
        "--bin-dir".into(),
        bin_dir.display().to_string(),
    ];
    args.extend(configs.iter().map(|c| c.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(TINYVMM, &args);
    assert!(
        out.status.success(),
        "tinyvmm systemd install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    prefix.join("etc/systemd/system")
}

fn examples() -> Vec<PathBuf> {
    (1..=4)
        .map(|n| repo().join(format!("examples/vm{n}.json")))
        .collect()
}

#[test]
fn shipped_units_when_compared_to_generated_then_identical() {
    let dir = tempfile::tempdir().unwrap();
    let units = install(dir.path(), Path::new("/usr/bin"), &[]);

    let shipped = repo().join("contrib/systemd");
    let mut names: Vec<String> = std::fs::read_dir(&shipped)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "tinyvmm-net.service",
            "tinyvmm-storage@.service",
            "tinyvmm@.service",
            "tinyvmms.target"
        ]
    );
    for name in names {
        let want = std::fs::read_to_string(units.join(&name)).unwrap();
        let have = std::fs::read_to_string(shipped.join(&name)).unwrap();
        assert_eq!(
            have, want,
            "contrib/systemd/{name} is stale: regenerate with \
             `tinyvmm systemd install --prefix /tmp/x` and copy /tmp/x/etc/systemd/system/*"
        );
    }
}

/// `systemd-analyze verify` checks that ExecStart binaries exist: the real tinyvmm, and the
/// real netctl / tinyvmm-storage when cargo built them next to it (else a stand-in executable,
/// since only their existence is checked).
fn bin_dir(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let built = Path::new(TINYVMM).parent().unwrap();
    std::os::unix::fs::symlink(TINYVMM, bin.join("tinyvmm")).unwrap();
    for name in ["netctl", "tinyvmm-storage"] {
        let real = built.join(name);
        let target = if real.exists() {
            real
        } else {
            PathBuf::from("/bin/true")
        };
        std::os::unix::fs::symlink(target, bin.join(name)).unwrap();
    }
    bin
}

#[test]
fn systemd_analyze_verify_when_units_and_example_dropins_then_clean() {
    let dir = tempfile::tempdir().unwrap();
    let bin = bin_dir(dir.path());
    let units = install(&dir.path().join("root"), &bin, &examples());
    assert!(units.join("tinyvmm@vm3.service.d/50-tinyvmm.conf").exists());

    let files: Vec<String> = [
        "tinyvmm@.service",
        "tinyvmm@vm1.service",
        "tinyvmm-net.service",
        "tinyvmm-storage@.service",
        "tinyvmm-storage@vm1.service",
        "tinyvmms.target",
    ]
    .iter()
    .map(|f| units.join(f).display().to_string())
    .collect();
    let mut args = vec!["verify", "--man=no"];
    args.extend(files.iter().map(String::as_str));
    let out = run("systemd-analyze", &args);

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify (apt-get install systemd) status {:?}:\n{stderr}",
        out.status
    );
}

#[test]
fn systemd_analyze_verify_when_unit_broken_then_fails() {
    // The check above can fail: a broken key and a missing binary are reported.
    let dir = tempfile::tempdir().unwrap();
    let bin = bin_dir(dir.path());
    let units = install(&dir.path().join("root"), &bin, &[]);
    let unit = units.join("tinyvmm@.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(&unit, text.replace("KillMode=mixed", "KillMode=sometimes")).unwrap();

    let out = run(
        "systemd-analyze",
        &["verify", "--man=no", unit.to_str().unwrap()],
    );

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kill mode"), "{stderr}");
}

#[test]
fn net_unit_shell_when_etc_has_host_and_storage_files_then_only_vm_files_passed() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    for f in ["vm1.json", "vm2.json", "host.json", "storage.json"] {
        std::fs::write(etc.join(f), "{}").unwrap();
    }
    // A netctl stand-in that prints its arguments: this checks the unit's shell text only.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join("netctl");
    std::fs::write(&fake, "#!/bin/sh\nfor a; do echo \"$a\"; done\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let units = install(&dir.path().join("root"), &bin, &[]);
    let text = std::fs::read_to_string(units.join("tinyvmm-net.service")).unwrap();

    let line = |key: &str| -> Vec<String> {
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {text}"));
        // systemd unescapes `$$` to `$`; the unit hard-codes /etc/tinyvmm.
        let exec = exec
            .replace("$$", "$")
            .replace("/etc/tinyvmm", etc.to_str().unwrap());
        let script = exec
            .strip_prefix("/bin/sh -ec '")
            .and_then(|s| s.strip_suffix('\''))
            .unwrap();
        let out = run("/bin/sh", &["-ec", script]);
        assert!(out.status.success(), "{exec}: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };

    let e = etc.display();
    assert_eq!(
        line("ExecStart="),
        [
            "apply".to_string(),
            format!("--host={e}/host.json"),
            format!("{e}/vm1.json"),
            format!("{e}/vm2.json")
        ]
    );
    assert_eq!(
        line("ExecStop="),
        [
            "down".to_string(),
            format!("{e}/vm1.json"),
            format!("{e}/vm2.json")
        ]
    );
}
