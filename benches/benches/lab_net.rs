//! virtio-net throughput in the lab: the same 100 MiB-each-way TCP transfer
//! (`lab::transfer`) through tinyvmm and through QEMU microvm (virtio-net-device on a TAP,
//! no vhost), both inside one L1 boot, same guest kernel and initrd, same lab mode. Prints
//! MiB/s; asserts only that the data arrived intact.
//!
//! Run: `cargo build --release --workspace && cargo bench -p tinyvmm-benches --bench lab_net`
//! (LAB_MODE=deterministic for virtual time; default fast).

use std::path::Path;
use std::time::Duration;

use lab::transfer::{self, GUEST_SCRIPT};
use lab::{Lab, Mode, Scenario};

/// QEMU microvm inside L1 on a TAP it creates, the way the issue asks: virtio-net-device,
/// no vhost, serial on stdout.
fn qemu_command(tag: &str, tap: &str) -> String {
    format!(
        "timeout 600 qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off -enable-kvm -cpu host \
         -smp 2 -m 512 -nodefaults -no-user-config -display none -serial stdio -no-reboot \
         -kernel /lab/l2/vmlinuz -initrd /lab/l2/initrd.gz -append '{}' \
         -netdev tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off \
         -device virtio-net-device,netdev=n0,mac=02:00:00:00:00:01",
        transfer::guest_cmdline(tag)
    )
}

const QEMU_FIRMWARE: &[&str] = &[
    "/usr/share/qemu/bios-microvm.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/pvh.bin",
    "/usr/share/qemu/kvmvapic.bin",
];

fn main() {
    let mode = match std::env::var("LAB_MODE").as_deref() {
        Ok("deterministic") => Mode::Deterministic,
        _ => Mode::Fast,
    };
    let lab = Lab::new(mode).unwrap_or_else(|e| panic!("{e}"));
    let tiny = "timeout 600 tinyvmm run /lab/tiny.json";
    let script = format!(
        "{}\n{}",
        transfer::host_script("tiny", "vm-t", tiny),
        transfer::host_script("qemu", "vm-q", &qemu_command("qemu", "vm-q"))
    );
    let mut scenario = Scenario::new("bench-net")
        .l2_script(GUEST_SCRIPT)
        .script(&script)
        .file("/lab/tiny.json", transfer::tinyvmm_config("tiny", "vm-t"))
        .host_binary("/usr/bin/qemu-system-x86_64")
        .timeout(Duration::from_secs(900))
        .emulation_retries(1);
    for fw in QEMU_FIRMWARE {
        let data = std::fs::read(Path::new(fw)).unwrap_or_else(|e| panic!("{fw}: {e}"));
        scenario = scenario.file(fw, data);
    }
    let out = lab.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "lab network benchmark ({mode:?} mode), {} MiB each way:",
        transfer::TRANSFER_MIB
    );
    for (tag, name) in [("tiny", "tinyvmm"), ("qemu", "QEMU microvm")] {
        match transfer::check(&out.kv, tag) {
            Ok(r) => println!(
                "  {name:13} host->guest {:6.1} MiB/s   guest->host {:6.1} MiB/s",
                r.host_to_guest_mib_s, r.guest_to_host_mib_s
            ),
            Err(e) => panic!("{name}: {e}\n--- L1 console ---\n{}", out.output),
        }
    }
    println!("  (one L1 boot, both VMMs, wall {:?})", out.elapsed);
}
