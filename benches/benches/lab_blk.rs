//! virtio-blk throughput in the lab: the same guest `dd` runs (O_DIRECT in the guest, 64 MiB
//! at 1 MiB blocks, 16 MiB at 4 KiB blocks, write and read) through tinyvmm and through QEMU
//! microvm (virtio-blk-device, cache=writeback, aio=threads), both inside one L1 boot on
//! images in L1's tmpfs, same guest kernel and initrd, same lab mode. Prints MiB/s and IOPS;
//! asserts only that every run reported.
//!
//! Run: `cargo build --release -p vmm --bin tinyvmm -p tinyvmm-lab --bin kvm-smoke &&
//! cargo bench -p tinyvmm-benches --bench lab_blk` (LAB_MODE=deterministic for virtual time).

use std::path::Path;
use std::time::Duration;

use lab::{Lab, Mode, Scenario};

const GUEST: &str = r#"
run=$(sed -n 's/.*lab\.run=\([^ ]*\).*/\1/p' /proc/cmdline)
r() { echo "LAB $run.$*"; }
now() { cut -d' ' -f1 /proc/uptime; }
# rate MIB START END
rate() { awk -v m="$1" -v a="$2" -v b="$3" 'BEGIN { d = b - a; if (d <= 0) d = 0.01; printf "%.1f", m / d }'; }
t() { t0=$(now); "$@" 2>/dev/null || r failed="$*"; t1=$(now); }
t dd if=/dev/zero of=/dev/vda bs=1M count=64 oflag=direct; r seq_write_mib_s=$(rate 64 $t0 $t1)
t dd if=/dev/vda of=/dev/null bs=1M count=64 iflag=direct; r seq_read_mib_s=$(rate 64 $t0 $t1)
t dd if=/dev/zero of=/dev/vda bs=4k count=4096 oflag=direct; r write_4k_iops=$(rate 4096 $t0 $t1)
t dd if=/dev/vda of=/dev/null bs=4k count=4096 iflag=direct; r read_4k_iops=$(rate 4096 $t0 $t1)
r done=1
"#;

fn cmdline(tag: &str) -> String {
    format!("console=ttyS0 reboot=k panic=1 pci=off quiet lab.run={tag}")
}

fn qemu_command(tag: &str) -> String {
    format!(
        "timeout 600 qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off -enable-kvm -cpu host \
         -smp 1 -m 256 -nodefaults -no-user-config -display none -serial stdio -no-reboot \
         -kernel /lab/l2/vmlinuz -initrd /lab/l2/initrd.gz -append '{}' \
         -drive file=/tmp/{tag}.img,format=raw,if=none,id=d0,cache=writeback,aio=threads \
         -device virtio-blk-device,drive=d0",
        cmdline(tag)
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
    let tiny = format!(
        r#"{{"name":"tiny","vcpus":1,"memory_mib":256,
"kernel":{{"path":"/lab/l2/vmlinuz","initrd":"/lab/l2/initrd.gz","cmdline":"{}"}},
"serial":"stdout","volumes":[{{"path":"/tmp/tiny.img","read_only":false}}]}}"#,
        cmdline("tiny")
    );
    let script = format!(
        "head -c 67108864 /dev/zero > /tmp/tiny.img\n\
         cp /tmp/tiny.img /tmp/qemu.img\n\
         timeout 600 tinyvmm run /lab/tiny.json 2>&1\n\
         {} 2>&1\n",
        qemu_command("qemu")
    );
    let mut scenario = Scenario::new("bench-blk")
        .l2_script(GUEST)
        .script(&script)
        .file("/lab/tiny.json", tiny)
        .host_binary("/usr/bin/qemu-system-x86_64")
        .timeout(Duration::from_secs(900))
        .emulation_retries(1);
    for fw in QEMU_FIRMWARE {
        let data = std::fs::read(Path::new(fw)).unwrap_or_else(|e| panic!("{fw}: {e}"));
        scenario = scenario.file(fw, data);
    }
    let out = lab.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "lab virtio-blk benchmark ({mode:?} mode, guest O_DIRECT, host page cache on L1 tmpfs):"
    );
    for (tag, name) in [("tiny", "tinyvmm"), ("qemu", "QEMU microvm")] {
        let get = |k: &str| {
            out.get(&format!("{tag}.{k}"))
                .unwrap_or_else(|| panic!("{name}: no {k}\n--- L1 console ---\n{}", out.output))
        };
        assert_eq!(get("done"), "1");
        assert!(
            out.get(&format!("{tag}.failed")).is_none(),
            "{}",
            out.output
        );
        println!(
            "  {name:13} seq write {:>6} MiB/s  seq read {:>6} MiB/s  4k write {:>6} IOPS  4k read {:>6} IOPS",
            get("seq_write_mib_s"),
            get("seq_read_mib_s"),
            get("write_4k_iops"),
            get("read_4k_iops")
        );
    }
    println!("  (one L1 boot, both VMMs, wall {:?})", out.elapsed);
}
