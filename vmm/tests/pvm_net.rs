//! virtio-net attach on this host's KVM, inside a network namespace the test creates: tinyvmm
//! opens the TAP named in the config, creates a non-persistent one when it is missing (root),
//! and names the TAP when it cannot use it; a tinyvmm killed with SIGKILL leaves neither its
//! persistent TAP busy nor a transient TAP behind. Every child runs under a deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tinyvmm_benches::build_guest;

/// A throwaway network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "tvmm-vmmnet-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip (apt-get install iproute2)")
            .success();
        assert!(ok, "ip netns add {name} failed (needs root)");
        Netns(name)
    }

    fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn config(dir: &Path, name: &str, kernel: &Path, tap: &str) -> PathBuf {
    config_with(dir, name, kernel, tap, false)
}

fn config_with(dir: &Path, name: &str, kernel: &Path, tap: &str, transient: bool) -> PathBuf {
    let path = dir.join(format!("{name}.json"));
    let json = format!(
        r#"{{"name":"{name}","vcpus":1,"memory_mib":64,"kernel":{{"path":"{}"}},"serial":"none",
"network":[{{"tap":"{tap}","mac":"02:00:00:00:00:01","transient":{transient}}}]}}"#,
        kernel.display()
    );
    std::fs::write(&path, json).unwrap();
    path
}

fn tinyvmm(ns: &Netns, dir: &Path, cfg: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns.0,
        env!("CARGO_BIN_EXE_tinyvmm"),
        "--log-level",
        "info",
    ])
    .arg("run")
    .arg(cfg)
    .arg("--run-dir")
    .arg(dir.join("run"))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

/// How long any child of these tests may run.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `cmd` to completion within [`LIMIT`]; kills it and panics past the deadline.
fn output(cmd: &mut Command) -> Output {
    let child = cmd.spawn().unwrap();
    wait_output(child)
}

fn wait_output(mut child: Child) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "child still running after {LIMIT:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Waits until `child` has a /dev/net/tun descriptor attached to `tap` (its fdinfo names the
/// interface): the state the busy and kill -9 cases need, not just a running process.
fn wait_tap_open(child: &mut Child, tap: &str) {
    let start = Instant::now();
    let pid = child.id();
    let want = format!("iff:\t{tap}\n");
    loop {
        let attached = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|t| t == Path::new("/dev/net/tun"))
                    && std::fs::read_to_string(format!(
                        "/proc/{pid}/fdinfo/{}",
                        fd.file_name().to_string_lossy()
                    ))
                    .is_ok_and(|info| info.contains(&want))
            });
        if attached {
            return;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("tinyvmm exited before it opened {tap}: {st}");
        }
        assert!(start.elapsed() < LIMIT, "tinyvmm never opened {tap}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn run_when_tap_exists_in_namespace_then_device_attached_and_guest_runs() {
    let ns = Netns::new();
    let made = ns.exec(&[
        "ip", "tuntap", "add", "dev", "vm-t1", "mode", "tap", "vnet_hdr",
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "net1",
        &build_guest("poweroff", dir.path()).unwrap(),
        "vm-t1",
    );
    let out = output(&mut tinyvmm(&ns, dir.path(), &cfg));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    // The persistent TAP is still there afterwards: tinyvmm only borrowed it.
    let link = ns.exec(&["ip", "link", "show", "vm-t1"]);
    assert!(link.status.success());
}

/// Runs a powering-off guest on the missing TAP `tap` in a fresh namespace; returns the exit
/// code, stderr, and whether `tap` exists afterwards.
fn run_on_missing_tap(name: &str, tap: &str, transient: bool) -> (Option<i32>, String, bool) {
    let ns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    poweroff_on(&ns, dir.path(), name, tap, transient)
}

/// Runs a powering-off guest as `name` on `tap` in `ns`; returns the exit code, stderr, and
/// whether `tap` exists afterwards.
fn poweroff_on(
    ns: &Netns,
    dir: &Path,
    name: &str,
    tap: &str,
    transient: bool,
) -> (Option<i32>, String, bool) {
    let guest = build_guest("poweroff", dir).unwrap();
    let cfg = config_with(dir, name, &guest, tap, transient);
    let out = output(&mut tinyvmm(ns, dir, &cfg));
    let left = ns.exec(&["ip", "link", "show", tap]).status.success();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        left,
    )
}

#[test]
fn run_when_tap_missing_and_transient_then_tap_created_and_removed() {
    let (code, err, left) = run_on_missing_tap("net2", "vm-new", true);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("vm-new"), "creation not reported: {err}");
    assert!(!left, "transient TAP left behind");
}

#[test]
fn run_when_tap_missing_and_not_transient_then_error_names_it_and_nothing_created() {
    let (code, err, left) = run_on_missing_tap("net3", "vm-typo", false);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("TAP vm-typo: missing") && err.contains("\"transient\": true"),
        "{err}"
    );
    assert!(!left, "a TAP was created for a mistyped name");
}

#[test]
fn run_when_tap_busy_then_error_names_the_tap() {
    let ns = Netns::new();
    let made = ns.exec(&[
        "ip", "tuntap", "add", "dev", "vm-busy", "mode", "tap", "vnet_hdr",
    ]);
    assert!(made.status.success());
    let dir = tempfile::tempdir().unwrap();
    let spin = build_guest("spin", dir.path()).unwrap();
    let first_cfg = config(dir.path(), "holder", &spin, "vm-busy");
    let mut first = tinyvmm(&ns, dir.path(), &first_cfg).spawn().unwrap();
    wait_tap_open(&mut first, "vm-busy");
    let second_cfg = config(dir.path(), "second", &spin, "vm-busy");
    let out = output(&mut tinyvmm(&ns, dir.path(), &second_cfg));
    let _ = first.kill();
    let _ = first.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("vm-busy"), "{err}");
}

/// Starts the `spin` guest as `name` on `tap`, waits until it runs, SIGKILLs it (`ip netns
/// exec` execs tinyvmm, so the child is tinyvmm itself) and reaps it.
fn spin_then_kill9(ns: &Netns, dir: &Path, name: &str, tap: &str, transient: bool) {
    let cfg = config_with(
        dir,
        name,
        &build_guest("spin", dir).unwrap(),
        tap,
        transient,
    );
    let mut child = tinyvmm(ns, dir, &cfg).spawn().unwrap();
    wait_tap_open(&mut child, tap);
    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let out = wait_output(child);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGKILL)
    );
}

#[test]
fn run_when_previous_tinyvmm_was_sigkilled_then_its_persistent_tap_is_free_again() {
    let ns = Netns::new();
    let made = ns.exec(&[
        "ip", "tuntap", "add", "dev", "vm-k9", "mode", "tap", "vnet_hdr",
    ]);
    assert!(made.status.success());
    let dir = tempfile::tempdir().unwrap();
    spin_then_kill9(&ns, dir.path(), "k9", "vm-k9", false);
    // The same VM on the same TAP: attached (not busy), runs and powers off.
    let (code, err, left) = poweroff_on(&ns, dir.path(), "k9", "vm-k9", false);
    assert_eq!(code, Some(0), "{err}");
    assert!(left, "the persistent TAP stays");
}

#[test]
fn run_when_previous_tinyvmm_with_transient_tap_was_sigkilled_then_no_tap_is_left() {
    let ns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    spin_then_kill9(&ns, dir.path(), "k9t", "vm-k9t", true);
    // A non-persistent TAP lives as long as its file descriptor: the kernel removed it.
    assert!(!ns.exec(&["ip", "link", "show", "vm-k9t"]).status.success());
    let (code, err, left) = poweroff_on(&ns, dir.path(), "k9t", "vm-k9t", true);
    assert_eq!(code, Some(0), "{err}");
    assert!(!left, "transient TAP left behind");
}
