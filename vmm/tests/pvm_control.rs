//! The control socket and `tinyvmm ls/status/pause/resume/stop` against a real VM on this
//! machine's /dev/kvm (the freestanding `spin` guest: it halts forever with interrupts off, so
//! its vCPU sits in KVM_RUN and a pause must kick it out).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tinyvmm_benches::build_guest;

const LIMIT: Duration = Duration::from_secs(30);

struct Vm {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Vm {
    /// Starts `spin` as VM `name` and waits until `tinyvmm status` answers.
    fn start(name: &str, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // World-traversable, so the non-root test reaches the socket's own permission check.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let kernel = build_guest("spin", dir.path()).unwrap();
        let cfg = dir.path().join(format!("{name}.json"));
        std::fs::write(
            &cfg,
            format!(
                r#"{{"name":"{name}","vcpus":2,"memory_mib":64,"kernel":{{"path":"{}"}},"serial":"none","shutdown_grace_secs":1}}"#,
                kernel.display()
            ),
        )
        .unwrap();
        let mut vm = Vm { dir, child: None };
        vm.run(name, extra_args);
        vm
    }

    /// Runs `<dir>/<name>.json` (again) and waits until `tinyvmm status` says it runs.
    fn run(&mut self, name: &str, extra_args: &[&str]) {
        let child = Command::new(env!("CARGO_BIN_EXE_tinyvmm"))
            .arg("run")
            .arg(self.dir.path().join(format!("{name}.json")))
            .arg("--run-dir")
            .arg(self.run_dir())
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_for(name, |s| s["state"] == "running");
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn cli(&self, args: &[&str]) -> Output {
        cli(&self.run_dir(), args, None)
    }

    fn status(&self, name: &str) -> Option<serde_json::Value> {
        let out = self.cli(&["status", name, "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Polls `tinyvmm status` until `want` holds, with a deadline.
    fn wait_for(&mut self, name: &str, want: impl Fn(&serde_json::Value) -> bool) {
        let start = Instant::now();
        loop {
            if let Some(s) = self.status(name) {
                if want(&s) {
                    return;
                }
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait().unwrap() {
                    panic!("tinyvmm exited early: {st}");
                }
            }
            assert!(start.elapsed() < LIMIT, "VM {name} never reached the state");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the `tinyvmm run` process to end.
    fn wait_exit(&mut self) -> i32 {
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            if start.elapsed() > LIMIT {
                let _ = child.kill();
                panic!("tinyvmm run did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the CLI with a timeout; `as_user` = (uid, gid) drops privileges first.
fn cli(run_dir: &Path, args: &[&str], as_user: Option<(u32, u32)>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tinyvmm"));
    cmd.args(args)
        .arg("--run-dir")
        .arg(run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((uid, gid)) = as_user {
        // std also resets the supplementary groups when it changes the uid as root.
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("tinyvmm {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn control_when_vm_runs_then_ls_status_pause_resume_and_stop_force_exit_5() {
    let mut vm = Vm::start("ctl1", &[]);

    let ls = vm.cli(&["ls", "--json"]);
    assert!(ls.status.success(), "{}", text(&ls.stderr));
    let list: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(list[0]["name"], "ctl1", "{list}");
    assert_eq!(list[0]["state"], "running");
    assert_eq!(list[0]["vcpus"], 2);
    assert_eq!(list[0]["memory_mib"], 64);
    let pid = list[0]["pid"].as_u64().unwrap();
    assert_eq!(Some(pid as u32), vm.child.as_ref().map(Child::id));
    let table = text(&vm.cli(&["ls"]).stdout);
    assert!(
        table.lines().nth(1).unwrap().starts_with("ctl1 "),
        "{table}"
    );

    let p = vm.cli(&["pause", "ctl1"]);
    assert!(p.status.success(), "{}", text(&p.stderr));
    assert_eq!(vm.status("ctl1").unwrap()["state"], "paused");
    let again = vm.cli(&["pause", "ctl1"]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("409"),
        "{}",
        text(&again.stderr)
    );
    let r = vm.cli(&["resume", "ctl1"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert_eq!(vm.status("ctl1").unwrap()["state"], "running");

    let stop = vm.cli(&["stop", "ctl1", "--force"]);
    assert_eq!(stop.status.code(), Some(5), "{}", text(&stop.stderr));
    assert!(text(&stop.stdout).contains("exit status 5"));
    assert_eq!(vm.wait_exit(), 5);
    assert!(!vm.run_dir().join("ctl1.sock").exists());
    let after = vm.cli(&["status", "ctl1"]);
    assert!(
        text(&after.stderr).contains("not running"),
        "{}",
        text(&after.stderr)
    );
}

#[test]
fn control_when_stop_on_guest_ignoring_button_then_grace_expires_and_exit_5() {
    let mut vm = Vm::start("ctl2", &[]);
    let start = Instant::now();
    let stop = vm.cli(&["stop", "ctl2", "--timeout", "20"]);
    assert_eq!(stop.status.code(), Some(5), "{}", text(&stop.stderr));
    // The 1 s grace period ran: the power button was pressed, not a kill.
    assert!(start.elapsed() >= Duration::from_millis(900));
    assert_eq!(vm.wait_exit(), 5);
}

#[test]
fn control_when_peer_lacks_permission_then_refused_until_in_socket_group() {
    let nobody = (65534, 65534);
    let mut vm = Vm::start("ctl3", &[]);
    let denied = cli(&vm.run_dir(), &["status", "ctl3"], Some(nobody));
    assert!(!denied.status.success());
    assert!(
        text(&denied.stderr).contains("ermission denied"),
        "{}",
        text(&denied.stderr)
    );
    // The VM keeps running and serving its owner.
    assert_eq!(vm.status("ctl3").unwrap()["state"], "running");
    drop(vm.cli(&["stop", "ctl3", "--force"]));
    vm.wait_exit();

    let mut grouped = Vm::start("ctl4", &["--socket-group", "65534"]);
    let allowed = cli(
        &grouped.run_dir(),
        &["status", "ctl4", "--json"],
        Some(nobody),
    );
    assert!(allowed.status.success(), "{}", text(&allowed.stderr));
    drop(grouped.cli(&["stop", "ctl4", "--force"]));
    grouped.wait_exit();
}

#[test]
fn control_when_tinyvmm_was_sigkilled_then_stale_files_do_not_block_the_next_start() {
    let mut vm = Vm::start("kill9", &[]);
    let first_pid = vm.child.as_ref().map(Child::id).unwrap();
    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(first_pid as i32, libc::SIGKILL) };
    assert_eq!(vm.wait_exit(), -1, "killed by a signal");
    // kill -9 left the socket file (and the lock file) behind: they must read as stale.
    assert!(vm.run_dir().join("kill9.sock").exists());
    let status = vm.cli(&["status", "kill9"]);
    assert!(
        !status.status.success() && text(&status.stderr).contains("not running"),
        "{}",
        text(&status.stderr)
    );
    let ls = vm.cli(&["ls", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] != "running"),
        "{list}"
    );

    // The same VM starts again in the same run dir and its new socket answers.
    vm.run("kill9", &[]);
    let s = vm.status("kill9").unwrap();
    assert_ne!(s["pid"].as_u64(), Some(u64::from(first_pid)), "{s}");
    let stop = vm.cli(&["stop", "kill9", "--force"]);
    assert_eq!(stop.status.code(), Some(5), "{}", text(&stop.stderr));
    assert_eq!(vm.wait_exit(), 5);
    assert!(!vm.run_dir().join("kill9.sock").exists());
}
