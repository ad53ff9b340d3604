//! The Nix side (nix/lib.nix, the pure part of the NixOS module and flake), evaluated with the
//! real `nix-instantiate` (Debian `nix-bin`; no nixpkgs needed): it reproduces the shipped
//! examples, its files pass `tinyvmm validate` and `netctl plan` (the release binaries that
//! scripts/test builds first), the fleet check refuses overlapping ranges, and every .nix file
//! in the repository parses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lab::paths::LabDirs;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a child under coreutils `timeout` (no child may hang the test).
fn run(program: &Path, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("120")
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{} {args:?}: {e}", program.display()))
}

/// `nix-instantiate` with options that keep it from looking for a build user or daemon.
fn nix(args: &[&str]) -> Output {
    let mut all = vec!["--option", "build-users-group", ""];
    all.extend_from_slice(args);
    run(Path::new("nix-instantiate"), &all)
}

fn nix_eval(file: &str, attr: &str, argstrs: &[(&str, &str)]) -> Value {
    let path = repo().join(file);
    let path = path.to_str().unwrap();
    let mut args = vec!["--eval", "--strict", "--json"];
    for (k, v) in argstrs {
        args.extend_from_slice(&["--argstr", k, v]);
    }
    args.extend_from_slice(&[path, "-A", attr]);
    let out = nix(&args);
    assert!(
        out.status.success(),
        "nix-instantiate {args:?} (apt-get install nix-bin): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn release_bin(name: &str) -> PathBuf {
    let bin = LabDirs::discover().unwrap().release.join(name);
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --release --workspace --bins` first (scripts/test does)",
        bin.display()
    );
    bin
}

#[test]
fn nix_example_when_evaluated_then_equals_shipped_examples_and_routes() {
    let etc = nix_eval("nix/tests/example.nix", "etc", &[]);

    for n in 1..=4 {
        let file = format!("vm{n}.json");
        let shipped = read_json(&repo().join("examples").join(&file));
        assert_eq!(
            etc[&file], shipped,
            "{file} from Nix differs from examples/"
        );
    }
    let host = read_json(&repo().join("netctl/examples/host.json"));
    assert_eq!(etc["host.json"], host);
    assert_eq!(etc["storage.json"]["root"], "/var/lib/microvms");
    let routes = nix_eval("nix/tests/example.nix", "tailscaleRoutes", &[]);
    assert_eq!(routes, "10.1.0.0/24,10.2.0.0/24,10.3.0.0/24,10.4.0.0/24");
}

#[test]
fn nix_example_when_written_then_tinyvmm_validate_and_netctl_plan_accept_it() {
    // Arrange: the host layout the files point at, in a tempdir.
    let dir = tempfile::tempdir().unwrap();
    let (state, store, run_dir, etc_dir) = (
        dir.path().join("state"),
        dir.path().join("store"),
        dir.path().join("run"),
        dir.path().join("etc"),
    );
    for d in [&store, &run_dir, &etc_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    for n in 1..=4 {
        let vm = state.join(format!("vm{n}"));
        for sub in ["kernel", "etc", "var"] {
            std::fs::create_dir_all(vm.join(sub)).unwrap();
        }
        std::fs::write(vm.join("kernel/bzImage"), b"").unwrap();
        std::fs::write(vm.join("kernel/initrd"), b"").unwrap();
    }
    let etc = nix_eval(
        "nix/tests/example.nix",
        "etc",
        &[
            ("stateDir", state.to_str().unwrap()),
            ("storeDir", store.to_str().unwrap()),
            ("runDir", run_dir.to_str().unwrap()),
        ],
    );
    let mut vm_files = Vec::new();
    for (name, value) in etc.as_object().unwrap() {
        let path = etc_dir.join(name);
        std::fs::write(&path, serde_json::to_string_pretty(value).unwrap()).unwrap();
        if name.starts_with("vm") {
            vm_files.push(path.display().to_string());
        }
    }
    assert_eq!(vm_files.len(), 4);

    // Act + assert: tinyvmm validate (every file check on), then netctl plan with the host
    // file. The example's uplink eth0 and TAP user tinyvmm need not exist here: flags win.
    let tinyvmm = release_bin("tinyvmm");
    for f in &vm_files {
        let out = run(&tinyvmm, &["validate", f]);
        assert!(
            out.status.success(),
            "tinyvmm validate {f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let host = etc_dir.join("host.json").display().to_string();
    let mut args = vec![
        "plan",
        "--host",
        &host,
        "--uplink",
        "lo",
        "--tap-user",
        "0",
        "--tap-group",
        "0",
    ];
    args.extend(vm_files.iter().map(String::as_str));
    let out = run(&release_bin("netctl"), &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "netctl plan: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("egress tcp:80,tcp:443,udp:53"), "{stdout}");
    for n in 1..=4 {
        assert!(
            stdout.contains(&format!("+ create bridge br-vm{n}")),
            "{stdout}"
        );
    }
}

#[test]
fn nix_fleet_when_ranges_disjoint_then_routes_per_host_else_refused() {
    let ok = nix_eval("nix/tests/fleet.nix", "", &[("variant", "ok")]);
    assert_eq!(ok["hv1"]["routes"], "10.1.1.0/24");
    assert_eq!(ok["hv2"]["routes"], "10.2.1.0/24");
    assert_eq!(ok["hv1"]["host"]["subnet_range"], "10.1.0.0/16");
    assert_eq!(ok["hv2"]["host"]["subnet_range"], "10.2.0.0/16");

    for (variant, message) in [
        ("overlap", "subnetRange of hv1 (10.1.0.0/16) overlaps hv2"),
        (
            "outside",
            "outside its host's subnetRange: hv2/db 10.2.1.2/24",
        ),
    ] {
        let path = repo().join("nix/tests/fleet.nix");
        let out = nix(&[
            "--eval",
            "--strict",
            "--json",
            "--argstr",
            "variant",
            variant,
            path.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{variant} accepted");
        assert!(stderr.contains(message), "{variant}: {stderr}");
    }
}

fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                nix_files(&path, out);
            }
        } else if name.ends_with(".nix") {
            out.push(path);
        }
    }
}

#[test]
fn nix_files_when_parsed_then_all_parse() {
    let mut files = Vec::new();
    nix_files(&repo(), &mut files);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "flake.nix",
        "module.nix",
        "guest.nix",
        "lib.nix",
        "fleet.nix",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} not found");
    }

    for f in &files {
        let out = nix(&["--parse", f.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
