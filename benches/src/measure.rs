//! Spawning a VMM and measuring it: exec → milestone times from tinyvmm's timing lines, exec →
//! exit, and the child's peak RSS from `wait4`.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// One run of a VMM process.
#[derive(Debug, Clone)]
pub struct RunSample {
    /// exec → first vCPU entry, in µs, when the VMM reports it.
    pub to_first_entry_us: Option<u64>,
    /// exec → process exit, in µs.
    pub to_exit_us: u64,
    /// Peak resident set size of the child, in KiB.
    pub max_rss_kib: u64,
    /// How the process ended.
    pub status: ExitStatus,
    /// What it printed on stderr.
    pub stderr: String,
}

/// Runs `cmd` to completion and measures it.
pub fn measure(mut cmd: Command) -> std::io::Result<RunSample> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t0 = monotonic_us();
    let mut child = cmd.spawn()?;
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    let (raw_status, rusage) = wait4(child.id() as libc::pid_t)?;
    let t_exit = monotonic_us();
    let stderr = reader.join().unwrap_or_default();
    let to_first_entry_us = timing_mono_us(&stderr, "first_vcpu_entry").map(|m| m - t0);
    Ok(RunSample {
        to_first_entry_us,
        to_exit_us: t_exit - t0,
        max_rss_kib: rusage.ru_maxrss as u64,
        status: ExitStatus::from_raw(raw_status),
        stderr,
    })
}

fn wait4(pid: libc::pid_t) -> std::io::Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to locals; pid is our own child.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((status, usage))
}

/// The `mono_us` of tinyvmm's timing line for `event`, if printed.
pub fn timing_mono_us(stderr: &str, event: &str) -> Option<u64> {
    let needle = format!("\"tinyvmm_timing\":\"{event}\"");
    let line = stderr.lines().find(|l| l.contains(&needle))?;
    let rest = line.split("\"mono_us\":").nth(1)?;
    rest.trim_end_matches('}').trim().parse().ok()
}

/// CLOCK_MONOTONIC in µs (the clock tinyvmm's `mono_us` uses).
pub fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// min / median / max of a sample set.
pub fn summary(values: &mut [u64]) -> (u64, u64, u64) {
    values.sort_unstable();
    let n = values.len();
    if n == 0 {
        return (0, 0, 0);
    }
    (values[0], values[n / 2], values[n - 1])
}

/// The workspace's `target/release/<name>`, or an error telling how to build it.
pub fn release_binary(name: &str) -> Result<PathBuf, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("release").join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: run `cargo build --release --workspace` first",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_mono_us_when_line_present_then_parsed() {
        let err = "noise\n{\"tinyvmm_timing\":\"first_vcpu_entry\",\"us\":10,\"mono_us\":12345}\n";
        assert_eq!(timing_mono_us(err, "first_vcpu_entry"), Some(12345));
        assert_eq!(timing_mono_us(err, "exit"), None);
    }

    #[test]
    fn summary_when_odd_count_then_middle_is_median() {
        assert_eq!(summary(&mut [5, 1, 3]), (1, 3, 5));
    }

    #[test]
    fn measure_when_true_runs_then_exit_time_and_rss_recorded() {
        let s = measure(Command::new("true")).unwrap();
        assert!(s.status.success());
        assert!(s.max_rss_kib > 0);
        assert!(s.to_first_entry_us.is_none());
    }
}
