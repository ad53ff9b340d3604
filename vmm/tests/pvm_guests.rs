//! End-to-end runs of the `tinyvmm` binary with tiny freestanding guests on this machine's own
//! /dev/kvm (PVM runs such guests; it cannot boot a stock kernel — the lab does that). Each
//! test checks one way a VM ends and the exit status documented in README.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tinyvmm_benches::build_guest;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn guest(&self, name: &str) -> PathBuf {
        build_guest(name, self.dir.path()).unwrap()
    }

    /// Writes a config for `kernel` with extra top-level JSON members.
    fn config(&self, name: &str, kernel: &Path, extra: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.json"));
        let json = format!(
            r#"{{"name":"{name}","vcpus":1,"memory_mib":64,"kernel":{{"path":"{}"}},"serial":"none","boot_timer":true{extra}}}"#,
            kernel.display()
        );
        std::fs::write(&path, json).unwrap();
        path
    }

    fn command(&self, config: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tinyvmm"));
        cmd.arg("run")
            .arg(config)
            .arg("--run-dir")
            .arg(self.dir.path().join("run"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A test that fails before it reaps its VM must not leave the VM running: the child
        // gets SIGKILL when the test's thread ends (PR_SET_PDEATHSIG is tied to that thread).
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        cmd
    }

    /// Waits (up to 30 s) until VM `name` holds its run lock: tinyvmm takes it after it has
    /// blocked the shutdown signals, so from then on a signal is the VM's, not the default
    /// action's.
    fn wait_running(&self, name: &str) {
        let run_dir = self.dir.path().join("run");
        assert!(
            wait_for(Duration::from_secs(30), || {
                vmconfig::is_running(&run_dir, name).unwrap_or(false)
            }),
            "VM {name} did not take its run lock within 30 s"
        );
    }

    fn run(&self, config: &Path) -> Output {
        let child = self.command(config).spawn().unwrap();
        wait_with_timeout(child, Duration::from_secs(60))
    }
}

fn wait_with_timeout(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("tinyvmm did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn timing_events(err: &str) -> Vec<String> {
    err.lines()
        .filter_map(|l| l.split("\"tinyvmm_timing\":\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn run_when_guest_powers_off_then_exit_0_and_all_milestones_in_order() {
    let f = Fixture::new();
    let cfg = f.config("off", &f.guest("poweroff"), "");
    let out = f.run(&cfg);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(
        timing_events(&err),
        [
            "config_parsed",
            "vm_created",
            "memory_ready",
            "kernel_loaded",
            "first_vcpu_entry",
            "exit"
        ],
        "{err}"
    );
}

#[test]
fn run_when_pvh_guest_powers_off_then_exit_0() {
    let f = Fixture::new();
    let cfg = f.config("pvh", &f.guest("pvh_poweroff"), "");
    let out = f.run(&cfg);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn run_when_guest_writes_acpi_reset_then_exit_3() {
    let f = Fixture::new();
    let cfg = f.config("rst", &f.guest("reset"), "");
    let out = f.run(&cfg);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn run_when_guest_pulses_i8042_reset_then_exit_3() {
    let f = Fixture::new();
    let cfg = f.config("kbd", &f.guest("i8042_reset"), "");
    let out = f.run(&cfg);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn run_when_guest_triple_faults_then_exit_3() {
    let f = Fixture::new();
    let cfg = f.config("tf", &f.guest("triple_fault"), "");
    let out = f.run(&cfg);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn run_when_guest_hits_boot_timer_then_timing_line_printed() {
    let f = Fixture::new();
    let cfg = f.config("bt", &f.guest("boot_timer"), "");
    let out = f.run(&cfg);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        timing_events(&err).contains(&"boot_timer".to_owned()),
        "{err}"
    );
}

#[test]
fn run_when_sigterm_and_guest_ignores_button_then_hard_stop_exit_5() {
    let f = Fixture::new();
    let cfg = f.config("spin", &f.guest("spin"), r#","shutdown_grace_secs":1"#);
    let child = f.command(&cfg).env("TINYVMM_LOG", "info").spawn().unwrap();
    f.wait_running("spin");
    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let sent = Instant::now();
    let out = wait_with_timeout(child, Duration::from_secs(30));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        sent.elapsed() >= Duration::from_millis(900),
        "grace period not honoured"
    );
    assert!(err.contains("power button"), "{err}");
}

#[test]
fn run_when_second_signal_then_stops_at_once() {
    let f = Fixture::new();
    let cfg = f.config("spin2", &f.guest("spin"), r#","shutdown_grace_secs":600"#);
    let child = f.command(&cfg).spawn().unwrap();
    f.wait_running("spin2");
    // Two different signals: two of the same kind could merge into one while pending.
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
    }
    let out = wait_with_timeout(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
}

#[test]
fn run_when_same_vm_already_running_then_refused() {
    let f = Fixture::new();
    let cfg = f.config("dup", &f.guest("spin"), r#","shutdown_grace_secs":1"#);
    let first = f.command(&cfg).spawn().unwrap();
    f.wait_running("dup");
    let second = f.run(&cfg);
    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
    let _ = wait_with_timeout(first, Duration::from_secs(30));
    let err = stderr(&second);
    assert_eq!(second.status.code(), Some(7), "refused is exit 7: {err}");
    assert!(err.contains("\"dup\" is already running"), "{err}");
}

#[test]
fn run_when_kernel_missing_then_exit_2_and_no_vm_created() {
    let f = Fixture::new();
    let cfg = f.config("nok", Path::new("/nonexistent/bzImage"), "");
    let out = f.run(&cfg);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("kernel.path"), "{err}");
    assert!(
        !timing_events(&err).contains(&"vm_created".to_owned()),
        "{err}"
    );
}

#[test]
fn run_when_memory_exceeds_host_then_exit_1_and_no_vm_created() {
    let f = Fixture::new();
    let guest = f.guest("poweroff");
    let path = f.dir.path().join("big.json");
    let json = format!(
        r#"{{"name":"big","vcpus":1,"memory_mib":900000,"kernel":{{"path":"{}"}},"serial":"none","boot_timer":true}}"#,
        guest.display()
    );
    std::fs::write(&path, json).unwrap();
    let out = f.run(&path);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a host limit, not a bad config: {err}"
    );
    assert!(err.contains("memory_mib"), "{err}");
    assert!(
        !timing_events(&err).contains(&"vm_created".to_owned()),
        "{err}"
    );
}

#[test]
fn validate_when_config_bad_then_every_problem_named() {
    let f = Fixture::new();
    let path = f.dir.path().join("bad.json");
    std::fs::write(
        &path,
        "{\n  \"name\": \"Bad Name\",\n  \"vcpus\": 0,\n  \"memory_mib\": 64,\n  \"kernel\": {\"path\": \"/nonexistent\"}\n}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tinyvmm"))
        .arg("validate")
        .arg(&path)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for field in ["name", "vcpus", "kernel.path"] {
        assert!(err.contains(field), "{field} not named: {err}");
    }
    assert!(err.contains(":2:"), "line of name missing: {err}");
}

/// Pids of the processes whose parent is `ppid` (from /proc/*/stat).
fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if rest.split_whitespace().nth(1) == Some(&ppid.to_string()) {
            out.push(pid);
        }
    }
    out
}

/// Waits until `cond` holds; false after `limit`.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// A spinning VM with two source shares, its tinyvmm process, and its one server child.
fn spin_with_shares(f: &Fixture, name: &str) -> (Child, u32) {
    for dir in ["store", "etc"] {
        std::fs::create_dir(f.dir.path().join(dir)).unwrap();
    }
    let cfg = f.config(
        name,
        &f.guest("spin"),
        &format!(
            r#","shutdown_grace_secs":1,"shares":[{{"tag":"store","source":"{}","read_only":true}},{{"tag":"etc","source":"{}"}}]"#,
            f.dir.path().join("store").display(),
            f.dir.path().join("etc").display()
        ),
    );
    let mut child = f.command(&cfg).spawn().unwrap();
    let tinyvmm = child.id();
    let mut servers = Vec::new();
    let found = wait_for(Duration::from_secs(20), || {
        servers = children_of(tinyvmm)
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"virtiofsd"))
            })
            .collect();
        !servers.is_empty()
    });
    if !found {
        let _ = child.kill();
        let out = wait_with_timeout(child, Duration::from_secs(30));
        panic!("no virtio-fs server appeared: {}", stderr(&out));
    }
    assert_eq!(servers.len(), 1, "one server process for both shares");
    (child, servers[0])
}

/// As root the server runs in its own mount namespace whose root holds only the shares, the
/// read-only one mounted read-only (without root it falls back to no sandbox).
fn check_sandbox(f: &Fixture, server: u32) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let root = PathBuf::from(format!("/proc/{server}/root"));
    let names = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&root)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    assert!(
        wait_for(Duration::from_secs(10), || names()
            == ["proc", "share0", "share1"]),
        "server root holds {:?}, not only its proc and the shares",
        names()
    );
    std::fs::write(f.dir.path().join("store/hello"), b"hi").unwrap();
    assert!(root.join("share0/hello").exists(), "store visible inside");
    let ro = std::fs::write(root.join("share0/new"), b"x").unwrap_err();
    assert_eq!(
        ro.raw_os_error(),
        Some(libc::EROFS),
        "store is read-only: {ro}"
    );
    std::fs::write(root.join("share1/new"), b"x").unwrap();
    assert!(f.dir.path().join("etc/new").exists(), "etc is writable");
}

#[test]
fn run_when_config_has_shares_then_one_server_runs_with_the_vm_and_is_reaped_at_exit() {
    let f = Fixture::new();
    let (child, server) = spin_with_shares(&f, "shares");
    assert!(alive(server));
    check_sandbox(&f, server);

    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = wait_with_timeout(child, Duration::from_secs(30));

    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(!err.contains("virtio-fs"), "no virtio-fs errors: {err}");
    // tinyvmm reaped it before exiting: not even a zombie is left.
    assert!(
        !std::path::Path::new(&format!("/proc/{server}")).exists(),
        "server {server} left behind"
    );
}

#[test]
fn run_when_tinyvmm_is_sigkilled_then_its_server_dies_too() {
    let f = Fixture::new();
    let (child, server) = spin_with_shares(&f, "shares9");

    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = wait_with_timeout(child, Duration::from_secs(30));

    assert!(
        wait_for(Duration::from_secs(10), || !alive(server)),
        "server {server} outlived tinyvmm (PDEATHSIG)"
    );
}

#[test]
fn run_when_serial_is_stdout_file_or_none_then_guest_output_goes_there() {
    let f = Fixture::new();
    let kernel = f.guest("serial_hello");

    let cfg = f.config("ser-out", &kernel, "");
    let json = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(r#""serial":"none""#, r#""serial":"stdout""#);
    std::fs::write(&cfg, json).unwrap();
    let out = f.run(&cfg);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the guest\n"
    );

    let log = f.dir.path().join("console.log");
    let cfg = f.config("ser-file", &kernel, "");
    let json = std::fs::read_to_string(&cfg).unwrap().replace(
        r#""serial":"none""#,
        &format!(r#""serial":{{"file":"{}"}}"#, log.display()),
    );
    std::fs::write(&cfg, json).unwrap();
    let out = f.run(&cfg);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "hello from the guest\n"
    );

    let cfg = f.config("ser-none", &kernel, "");
    let out = f.run(&cfg);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn run_when_stdin_is_a_pipe_then_input_reaches_the_guest_serial() {
    use std::io::Write;
    let f = Fixture::new();
    let cfg = f.config("echo", &f.guest("serial_echo"), "");
    let json = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(r#""serial":"none""#, r#""serial":"stdout""#);
    std::fs::write(&cfg, json).unwrap();
    let mut child = f.command(&cfg).stdin(Stdio::piped()).spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"typed by the host\nq")
        .unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "typed by the host\n");
}

#[test]
fn run_when_guest_reports_panic_through_pvpanic_then_exit_4() {
    let f = Fixture::new();
    let cfg = f.config("pvp", &f.guest("pvpanic"), "");
    let out = f.run(&cfg);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn run_when_share_names_external_socket_then_connects_even_if_backend_starts_later() {
    let f = Fixture::new();
    let socket = f.dir.path().join("ext.sock");
    let cfg = f.config(
        "extfs",
        &f.guest("poweroff"),
        &format!(
            r#","shares":[{{"tag":"ext","socket":"{}"}}]"#,
            socket.display()
        ),
    );
    // tinyvmm first: it waits (bounded) for the backend's socket to appear.
    let vm = f.command(&cfg).spawn().unwrap();
    let mut backend = Command::new(env!("CARGO_BIN_EXE_tinyvmm"))
        .arg("virtiofsd")
        .arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(f.dir.path())
        .args(["--sandbox", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    let out = wait_with_timeout(vm, Duration::from_secs(60));

    let err = stderr(&out);
    let backend_done = wait_for(Duration::from_secs(10), || {
        backend.try_wait().unwrap().is_some()
    });
    if !backend_done {
        let _ = backend.kill();
    }
    let status = backend.wait().unwrap();
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        backend_done && status.success(),
        "backend exits once the VM is gone"
    );
}

#[test]
fn run_when_external_socket_never_appears_then_error_names_the_share() {
    let f = Fixture::new();
    let socket = f.dir.path().join("none.sock");
    let cfg = f.config(
        "extnone",
        &f.guest("poweroff"),
        &format!(
            r#","shares":[{{"tag":"ghost","socket":"{}"}}]"#,
            socket.display()
        ),
    );

    let out = f.run(&cfg);

    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("share ghost"), "{err}");
    assert!(err.contains("none.sock"), "{err}");
}

#[test]
fn run_when_notify_socket_set_and_guest_hits_boot_timer_then_ready_sent() {
    // Arrange: a config without `boot_timer` (systemd's NOTIFY_SOCKET alone attaches it) and
    // a datagram socket standing where systemd's would be.
    let f = Fixture::new();
    let kernel = f.guest("boot_timer");
    let cfg = f.dir.path().join("nt.json");
    let json = format!(
        r#"{{"name":"nt","vcpus":1,"memory_mib":64,"kernel":{{"path":"{}"}},"serial":"none"}}"#,
        kernel.display()
    );
    std::fs::write(&cfg, json).unwrap();
    let sock_path = f.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();

    // Act
    let child = f
        .command(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .spawn()
        .unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(60));

    // Assert: exit 0 and exactly one READY=1 datagram (the guest writes the timer once).
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("no READY=1 from tinyvmm");
    let msg = String::from_utf8_lossy(&buf[..n]);
    assert!(
        msg.starts_with("READY=1\nSTATUS=guest reached init after "),
        "{msg}"
    );
    sock.set_nonblocking(true).unwrap();
    assert!(sock.recv(&mut buf).is_err(), "a second datagram arrived");
}
