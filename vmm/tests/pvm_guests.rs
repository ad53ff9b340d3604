//! End-to-end runs of the `tinyvmm` binary with tiny freestanding guests on this machine's own
//! /dev/kvm (PVM runs such guests; it cannot boot a stock kernel — the lab does that). Each
//! test checks one way a VM ends and the exit status documented in README.

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
        cmd
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
    std::thread::sleep(Duration::from_millis(500));
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
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..2 {
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = wait_with_timeout(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
}

#[test]
fn run_when_same_vm_already_running_then_refused() {
    let f = Fixture::new();
    let cfg = f.config("dup", &f.guest("spin"), r#","shutdown_grace_secs":1"#);
    let first = f.command(&cfg).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let second = f.run(&cfg);
    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
    let _ = wait_with_timeout(first, Duration::from_secs(30));
    let err = stderr(&second);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(err.contains("dup"), "{err}");
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
fn run_when_memory_exceeds_host_then_exit_2_and_no_vm_created() {
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
    assert_eq!(out.status.code(), Some(2), "{err}");
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

#[test]
fn run_when_config_has_shares_then_refused_before_creating_anything() {
    let f = Fixture::new();
    let kernel = f.guest("poweroff");
    let cfg = f.config(
        "shares",
        &kernel,
        &format!(
            r#","shares":[{{"tag":"store","source":"{}","read_only":true}}]"#,
            f.dir.path().display()
        ),
    );
    let out = f.run(&cfg);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("shares"), "{err}");
    assert!(
        !timing_events(&err).contains(&"vm_created".to_owned()),
        "{err}"
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
