//! Runs one QEMU TCG machine: streams its serial console to the test log, collects `LAB `
//! reports, enforces a hard timeout, and always kills QEMU's whole process group.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::error::tail_lines;
use crate::scenario::parse_report_line;
use crate::LabError;

/// The QEMU binary (Debian package qemu-system-x86).
pub const QEMU: &str = "qemu-system-x86_64";

/// How the lab's QEMU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Multi-threaded TCG, 4 vCPUs by default (`Scenario::l1_cpus`): the quickest wall-clock
    /// boot. For functional tests.
    Fast,
    /// Single-threaded TCG with `-icount shift=0,sleep=off`, 1 vCPU: time inside the lab is
    /// virtual (1 ns per guest instruction) and immune to host noise. For benchmarks.
    Deterministic,
}

impl Mode {
    /// QEMU arguments selecting the accelerator, CPU and vCPU count of this mode: `cpus`
    /// vCPUs in fast mode, always 1 in deterministic mode.
    pub fn qemu_args(self, cpus: u32) -> Vec<String> {
        let mut args: Vec<String> = match self {
            Mode::Fast => vec![
                "-accel".into(),
                "tcg,thread=multi".into(),
                "-smp".into(),
                cpus.to_string(),
            ],
            Mode::Deterministic => [
                "-accel",
                "tcg",
                "-icount",
                "shift=0,sleep=off",
                "-smp",
                "1",
                "-rtc",
                "clock=vm",
            ]
            .map(String::from)
            .to_vec(),
        };
        args.extend(["-M", "q35", "-cpu", "EPYC,+svm"].map(String::from));
        args
    }
}

/// What to boot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Machine<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub append: &'a str,
    pub memory_mib: u32,
    /// vCPUs (fast mode).
    pub cpus: u32,
}

/// A finished QEMU run (it exited by itself before the deadline).
#[derive(Debug)]
pub(crate) struct RawRun {
    pub output: String,
    pub kv: BTreeMap<String, String>,
    pub qemu_status: ExitStatus,
    pub elapsed: Duration,
    pub boot_to_init: Option<Duration>,
}

/// Kills QEMU's process group and reaps it when dropped: on success, on timeout, on panic.
struct QemuGuard {
    child: Child,
}

impl QemuGuard {
    fn kill(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a negative pid signals the process group QEMU leads (it was
            // spawned with process_group(0)); no memory is involved.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for QemuGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Event {
    Line(String),
    Closed,
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    tag: &'static str,
    tx: mpsc::Sender<Event>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']);
                    if tx.send(Event::Line(format!("{tag}{line}"))).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Event::Closed);
    })
}

/// The full QEMU command line for `machine` in `mode`.
pub(crate) fn command(name: &str, mode: Mode, machine: &Machine<'_>) -> Command {
    let mut cmd = Command::new(QEMU);
    // The name makes the process findable (ps, tests checking nothing is left behind).
    cmd.args(["-name", &format!("lab-{name}")])
        .args(mode.qemu_args(machine.cpus))
        .args(["-m", &machine.memory_mib.to_string()])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
        ])
        .args(["-no-reboot"])
        .arg("-kernel")
        .arg(machine.kernel)
        .arg("-initrd")
        .arg(machine.initrd)
        .args(["-append", machine.append]);
    cmd
}

/// Boots `machine`, streaming its console as `[lab NAME +T] line`; kills it at `timeout`.
pub(crate) fn run(
    name: &str,
    mode: Mode,
    machine: &Machine<'_>,
    timeout: Duration,
) -> Result<RawRun, LabError> {
    let mut cmd = command(name, mode, machine);
    let command_line = format_command(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which
    // is async-signal-safe; it makes the kernel kill QEMU if the spawning thread dies (e.g. the
    // test binary is killed), so no QEMU outlives its test even without Drop running.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    println!("[lab {name}] {command_line}");
    let child = cmd.spawn().map_err(|source| LabError::SpawnQemu {
        command: command_line.clone(),
        source,
    })?;
    let mut guard = QemuGuard { child };
    let (tx, rx) = mpsc::channel();
    let mut readers = Vec::new();
    if let Some(out) = guard.child.stdout.take() {
        readers.push(spawn_reader(out, "", tx.clone()));
    }
    if let Some(err) = guard.child.stderr.take() {
        readers.push(spawn_reader(err, "qemu: ", tx.clone()));
    }
    drop(tx);

    let deadline = start + timeout;
    let mut output = String::new();
    let mut kv = BTreeMap::new();
    let mut boot_to_init = None;
    let mut open = readers.len();
    while open > 0 {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(remaining) {
            Ok(Event::Line(line)) => {
                if is_qemu_noise(&line) {
                    continue;
                }
                let t = start.elapsed().as_secs_f64();
                println!("[lab {name} {t:7.2}s] {line}");
                for (k, v) in parse_report_line(&line) {
                    if k == "l1.init_uptime" && boot_to_init.is_none() {
                        boot_to_init = Some(start.elapsed());
                    }
                    kv.insert(k, v);
                }
                output.push_str(&line);
                output.push('\n');
            }
            Ok(Event::Closed) => open -= 1,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(timed_out(start, name, timeout, guard, readers, output));
            }
        }
    }
    // Both pipes are closed: QEMU is exiting. Reap it, still within the deadline.
    let qemu_status = loop {
        match guard.child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => return Err(timed_out(start, name, timeout, guard, readers, output)),
        }
    };
    let elapsed = start.elapsed();
    drop(guard);
    join(readers);
    Ok(RawRun {
        output,
        kv,
        qemu_status,
        elapsed,
        boot_to_init,
    })
}

fn timed_out(
    start: Instant,
    name: &str,
    timeout: Duration,
    mut guard: QemuGuard,
    readers: Vec<JoinHandle<()>>,
    output: String,
) -> LabError {
    guard.kill();
    join(readers);
    println!("[lab {name}] TIMEOUT after {timeout:?}: QEMU killed");
    LabError::Timeout {
        scenario: name.to_string(),
        timeout,
        elapsed: start.elapsed(),
        tail: tail_lines(&output, 30),
        output,
    }
}

/// QEMU's harmless complaints about EPYC CPUID bits TCG cannot emulate (dropped: neither
/// streamed nor kept in the output).
fn is_qemu_noise(line: &str) -> bool {
    line.starts_with("qemu: ") && line.contains("TCG doesn't support requested feature")
}

fn join(readers: Vec<JoinHandle<()>>) {
    for r in readers {
        let _ = r.join();
    }
}

fn format_command(cmd: &Command) -> String {
    let mut parts: Vec<OsString> = vec![cmd.get_program().to_owned()];
    parts.extend(cmd.get_args().map(ToOwned::to_owned));
    parts
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// True once `pid` has exited (gone, or a zombie waiting for a reaper).
    fn exited(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
        }
    }

    #[test]
    fn qemu_guard_when_dropped_then_whole_process_group_killed() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 300 & echo $!; sleep 300"])
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read pid");
        let grandchild: u32 = line.trim().parse().expect("pid");
        let child_pid = child.id();
        drop(QemuGuard { child });
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(exited(child_pid) && exited(grandchild)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(exited(child_pid), "direct child survived the guard");
        assert!(
            exited(grandchild),
            "a process in the group survived the guard"
        );
    }

    #[test]
    fn mode_args_when_deterministic_then_icount_single_vcpu_svm() {
        let args = Mode::Deterministic.qemu_args(4).join(" ");
        assert!(args.contains("-icount shift=0,sleep=off"), "{args}");
        assert!(
            args.contains("-smp 1") && args.contains("EPYC,+svm"),
            "{args}"
        );
        assert!(!args.contains("thread=multi"), "{args}");
    }

    #[test]
    fn mode_args_when_fast_then_mttcg_two_vcpus() {
        let args = Mode::Fast.qemu_args(2).join(" ");
        assert!(
            args.contains("tcg,thread=multi") && args.contains("-smp 2"),
            "{args}"
        );
        assert!(args.contains("-M q35 -cpu EPYC,+svm"), "{args}");
    }
}
