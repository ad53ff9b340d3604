//! VMM overhead on this machine's own KVM: exec → first vCPU entry and exec → exit for a guest
//! that stops at its first instruction, plus peak RSS; tinyvmm next to QEMU microvm running the
//! identical PVH guest. Prints numbers; asserts nothing about speed.
//!
//! Run: `cargo build --release --workspace && cargo bench -p tinyvmm-benches --bench overhead`
//! (RUNS=N to change the number of runs, default 20).

use std::process::Command;

use tinyvmm_benches::build_guest;
use tinyvmm_benches::measure::{measure, release_binary, summary, RunSample};

const MEM_MIB: u64 = 128;

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().expect("tempdir");
    let guest = build_guest("pvh_poweroff", dir.path()).expect("build guest");

    let tinyvmm = release_binary("tinyvmm").unwrap_or_else(|e| panic!("{e}"));
    println!(
        "guest: {} ({} MiB, 1 vCPU), {runs} runs each",
        guest.display(),
        MEM_MIB
    );
    for (label, extra) in [("tinyvmm", ""), ("tinyvmm pit=false", r#","pit":false"#)] {
        let config = dir.path().join("bench.json");
        let json = format!(
            r#"{{"name":"bench","vcpus":1,"memory_mib":{MEM_MIB},"kernel":{{"path":"{}"}},"serial":"none","boot_timer":true{extra}}}"#,
            guest.display()
        );
        std::fs::write(&config, json).expect("write config");
        let samples = tinyvmm_samples(&tinyvmm, &config, &dir.path().join("run"), runs);
        report(label, &samples);
    }

    match qemu_samples(&guest, runs) {
        Ok(q) => report("qemu microvm", &q),
        Err(e) => println!("qemu microvm: not measured: {e}"),
    }
}

fn tinyvmm_samples(
    tinyvmm: &std::path::Path,
    config: &std::path::Path,
    run_dir: &std::path::Path,
    runs: usize,
) -> Vec<RunSample> {
    (0..runs)
        .map(|_| {
            let mut cmd = Command::new(tinyvmm);
            cmd.arg("run").arg(config).arg("--run-dir").arg(run_dir);
            let s = measure(cmd).expect("run tinyvmm");
            assert_eq!(s.status.code(), Some(0), "tinyvmm failed: {}", s.stderr);
            s
        })
        .collect()
}

fn qemu_samples(guest: &std::path::Path, runs: usize) -> Result<Vec<RunSample>, String> {
    let qemu = "/usr/bin/qemu-system-x86_64";
    if !std::path::Path::new(qemu).exists() {
        return Err("qemu-system-x86_64 missing (apt-get install qemu-system-x86)".into());
    }
    (0..runs)
        .map(|_| {
            let mut cmd = Command::new(qemu);
            cmd.args([
                "-M",
                "microvm,x-option-roms=off,rtc=off,isa-serial=off",
                "-enable-kvm",
                "-m",
                &MEM_MIB.to_string(),
                "-nographic",
                "-nodefaults",
                "-no-reboot",
                "-device",
                "isa-debug-exit,iobase=0x3c0,iosize=1",
                "-kernel",
            ])
            .arg(guest);
            let s = measure(cmd).map_err(|e| e.to_string())?;
            // isa-debug-exit turns the guest's 0x34 into exit status (0x34 << 1) | 1.
            if s.status.code() != Some(0x69) {
                return Err(format!("qemu exited {:?}: {}", s.status, s.stderr));
            }
            Ok(s)
        })
        .collect()
}

fn report(name: &str, samples: &[RunSample]) {
    let mut exit: Vec<u64> = samples.iter().map(|s| s.to_exit_us).collect();
    let mut rss: Vec<u64> = samples.iter().map(|s| s.max_rss_kib).collect();
    let mut entry: Vec<u64> = samples.iter().filter_map(|s| s.to_first_entry_us).collect();
    let (emin, emed, emax) = summary(&mut exit);
    let (rmin, rmed, rmax) = summary(&mut rss);
    println!(
        "{name}: exec->exit ms min {:.2} median {:.2} max {:.2}; peak RSS KiB min {rmin} median {rmed} max {rmax}",
        ms(emin),
        ms(emed),
        ms(emax)
    );
    if entry.is_empty() {
        println!("{name}: exec->first vCPU entry: not reported by this VMM");
    } else {
        let (fmin, fmed, fmax) = summary(&mut entry);
        println!(
            "{name}: exec->first vCPU entry ms min {:.2} median {:.2} max {:.2}",
            ms(fmin),
            ms(fmed),
            ms(fmax)
        );
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}
