//! Host memory and log volume under a hostile guest, on this machine's own KVM: the
//! `mmio_flood` guest writes COM1, notifies a queue that does not exist, writes device config
//! space and reserved registers, and touches unclaimed MMIO, in a loop that never ends.
//! Samples tinyvmm's RSS (VmRSS) and the bytes it wrote to stdout (the serial console) and
//! stderr (its log) once a second for SECS seconds (default 60), then stops it with SIGTERM
//! (the guest ignores the power button, so the grace period ends it: exit 5). Prints numbers;
//! asserts nothing about them.
//!
//! Run: `cargo build --release --workspace && cargo bench -p tinyvmm-benches --bench flood`
//! (SECS=N to change the duration).

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tinyvmm_benches::build_guest;
use tinyvmm_benches::measure::release_binary;

fn main() {
    let secs: u64 = std::env::var("SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().expect("tempdir");
    let guest = build_guest("mmio_flood", dir.path()).expect("build guest");
    let tinyvmm = release_binary("tinyvmm").unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("flood.json");
    let json = format!(
        r#"{{"name":"flood","vcpus":1,"memory_mib":128,"kernel":{{"path":"{}"}},"serial":"stdout","rng":true,"shutdown_grace_secs":1}}"#,
        guest.display()
    );
    std::fs::write(&config, json).expect("write config");

    let mut child = Command::new(&tinyvmm)
        .args(["--log-level", "info", "run"])
        .arg(&config)
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tinyvmm");
    let serial = count_bytes(child.stdout.take().expect("piped"), None);
    let log_tail = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let log = count_bytes(
        child.stderr.take().expect("piped"),
        Some(Arc::clone(&log_tail)),
    );

    println!(
        "guest: mmio_flood (1 vCPU, 128 MiB, rng device 0), {secs} s, tinyvmm pid {}",
        child.id()
    );
    println!(
        "{:>4} {:>10} {:>14} {:>12}",
        "t_s", "rss_kib", "serial_bytes", "log_bytes"
    );
    let start = Instant::now();
    let mut rss = Vec::new();
    for t in 0..=secs {
        let deadline = start + Duration::from_secs(t);
        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let Some(kib) = vm_rss_kib(child.id()) else {
            println!("tinyvmm exited early: {:?}", child.wait());
            return;
        };
        rss.push(kib);
        println!(
            "{t:>4} {kib:>10} {:>14} {:>12}",
            serial.load(Ordering::Relaxed),
            log.load(Ordering::Relaxed)
        );
    }
    // SAFETY: kill(2) on our own child's pid; it has not been reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().expect("wait tinyvmm");

    let first = rss.get(1).copied().unwrap_or_default();
    let last = rss.last().copied().unwrap_or_default();
    let max = rss.iter().copied().max().unwrap_or_default();
    println!(
        "rss_kib: at 1 s {first}, at {secs} s {last}, max {max}; serial {} bytes, log {} bytes; exit {status}",
        serial.load(Ordering::Relaxed),
        log.load(Ordering::Relaxed),
    );
    let tail = log_tail.lock().map(|t| t.clone()).unwrap_or_default();
    let tail = String::from_utf8_lossy(&tail);
    let lines: Vec<&str> = tail.lines().collect();
    println!("last log lines:");
    for l in &lines[lines.len().saturating_sub(8)..] {
        println!("  {l}");
    }
}

/// Counts what `pipe` delivers in a thread; keeps the last 4 KiB in `tail` if given.
fn count_bytes(
    mut pipe: impl Read + Send + 'static,
    tail: Option<Arc<std::sync::Mutex<Vec<u8>>>>,
) -> Arc<AtomicU64> {
    let n = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&n);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(len) = pipe.read(&mut buf) {
            if len == 0 {
                break;
            }
            counter.fetch_add(len as u64, Ordering::Relaxed);
            if let Some(t) = &tail {
                if let Ok(mut t) = t.lock() {
                    t.extend_from_slice(&buf[..len]);
                    let excess = t.len().saturating_sub(4096);
                    t.drain(..excess);
                }
            }
        }
    });
    n
}

/// VmRSS of `pid` in KiB, or None once it is gone.
fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    if status
        .lines()
        .any(|l| l.starts_with("State:") && l.contains('Z'))
    {
        return None;
    }
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
