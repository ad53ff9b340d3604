//! Apply time for 4 and 100 VMs, a no-op re-apply, and down, each in a fresh network
//! namespace made for the run (never the root namespace). Prints min / median / max.
//!
//! Run: `cargo bench -p netctl --bench apply` (as root). NETCTL_BENCH_ROUNDS sets rounds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Ns(String);

impl Ns {
    fn new(tag: &str, n: usize) -> Ns {
        let name = format!("nctlbench{}-{n}-{tag}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        Ns(name)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A host namespace with an uplink and a default route, like the tests'.
fn topology(n: usize) -> (Ns, Ns) {
    let host = Ns::new("host", n);
    let inet = Ns::new("inet", n);
    let ip = |ns: &Ns, a: &[&str]| {
        let mut v = vec!["ip", "-n", &ns.0];
        v.extend_from_slice(a);
        sh(&v);
    };
    ip(
        &host,
        &[
            "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &inet.0,
        ],
    );
    ip(&host, &["addr", "add", "100.64.0.1/24", "dev", "up0"]);
    ip(&host, &["link", "set", "up0", "up"]);
    ip(&host, &["route", "add", "default", "via", "100.64.0.2"]);
    ip(&inet, &["addr", "add", "100.64.0.2/24", "dev", "eth0"]);
    ip(&inet, &["link", "set", "eth0", "up"]);
    (host, inet)
}

fn write_configs(dir: &Path, count: u8) -> Vec<PathBuf> {
    (1..=count)
        .map(|i| {
            let p = dir.join(format!("vm{i}.json"));
            let text = format!(
                r#"{{"name":"vm{i}","vcpus":1,"memory_mib":64,"kernel":{{"path":"/k"}},
"network":[{{"tap":"vm-vm{i}","mac":"02:00:00:00:{:02x}:{:02x}","bridge":"br-vm{i}",
"address":"10.{i}.0.2/24","gateway":"10.{i}.0.1"}}]}}"#,
                i / 100,
                i % 100
            );
            std::fs::write(&p, text).expect("write config");
            p
        })
        .collect()
}

/// Runs netctl in `ns` and returns the wall time (including `ip netns exec`).
fn netctl(ns: &Ns, state: &Path, args: &[&str], files: &[PathBuf]) -> Duration {
    let t = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "env"])
        .arg(format!("NETCTL_TEST_NETNS={}", ns.0))
        .arg(format!("NETCTL_STATE_DIR={}", state.display()))
        .arg(env!("CARGO_BIN_EXE_netctl"))
        .args(args)
        .args(files)
        .output()
        .expect("run netctl");
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "netctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{what:<34} min {:>8} ms  median {:>8} ms  max {:>8} ms  (n={})",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1]),
        v.len()
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probing; nothing to list.
    }
    let rounds: usize = std::env::var("NETCTL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut n = 0;
    // Baseline: the cost of entering the namespace and starting a process.
    let (host, _inet) = topology(n);
    let base: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            sh(&["ip", "netns", "exec", &host.0, "true"]);
            t.elapsed()
        })
        .collect();
    report("baseline: ip netns exec true", base);
    drop(host);
    for count in [4u8, 100] {
        let files = write_configs(dir.path(), count);
        let (mut first, mut noop, mut down) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            n += 1;
            let (host, _inet) = topology(n);
            let state = dir.path().join(format!("state{n}"));
            first.push(netctl(&host, &state, &["apply"], &files));
            noop.push(netctl(&host, &state, &["apply"], &files));
            down.push(netctl(&host, &state, &["down"], &files));
        }
        report(&format!("apply {count} VMs (fresh namespace)"), first);
        report(&format!("re-apply {count} VMs (no-op)"), noop);
        report(&format!("down {count} VMs"), down);
    }
}
