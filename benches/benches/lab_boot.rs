//! Boot latency in the lab: exec → the guest's init, for tinyvmm and for QEMU microvm booting
//! the same Debian kernel and initramfs inside the same L1 (nested KVM), three boots each.
//! Deterministic mode by default: time inside the lab is virtual, so the numbers repeat and do
//! not depend on the load of the machine running the lab. Prints numbers; asserts only that
//! every boot reached init and powered off.
//!
//! Run: `cargo build --release --workspace && cargo bench -p tinyvmm-benches --bench lab_boot`
//! (LAB_MODE=fast for wall-clock mode, BOOTS=N boots per VMM).

use std::path::Path;
use std::time::Duration;

use lab::{Lab, LabOutcome, Mode, Scenario, L2_CMDLINE};

/// `measure TAG CMD...`: L1 uptime from exec to the guest init's first report line, the
/// guest's own uptime at that point, and the exit status.
const MEASURE: &str = r#"
measure() {
    tag=$1; shift
    t0=$(cut -d' ' -f1 /proc/uptime)
    "$@" >/tmp/$tag.log 2>&1 &
    pid=$!
    i=0
    until grep -q "LAB l2.init_uptime" /tmp/$tag.log || [ $i -ge 30000 ]; do usleep 10000; i=$((i + 1)); done
    t1=$(cut -d' ' -f1 /proc/uptime)
    wait $pid
    rc=$?
    up=$(grep -o 'l2.init_uptime=[0-9.]*' /tmp/$tag.log | head -n1 | cut -d= -f2)
    bt=$(grep -o '"tinyvmm_timing":"boot_timer","us":[0-9]*' /tmp/$tag.log | grep -o '[0-9]*$')
    lab-report $tag.exit=$rc $tag.exec_to_init_s=$(echo "$t0 $t1" | awk '{print $2 - $1}') \
        $tag.guest_uptime_s=${up:-none} $tag.boot_timer_us=${bt:-none}
}
"#;

const QEMU_FIRMWARE: &[&str] = &[
    "/usr/share/qemu/bios-microvm.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/pvh.bin",
    "/usr/share/qemu/kvmvapic.bin",
];

fn tinyvmm_config() -> String {
    format!(
        r#"{{"name":"boot","vcpus":1,"memory_mib":256,"rng":false,"boot_timer":true,
"kernel":{{"path":"/lab/l2/vmlinuz","initrd":"/lab/l2/initrd.gz","cmdline":"{L2_CMDLINE}"}},
"serial":"stdout"}}"#
    )
}

fn qemu_command() -> String {
    format!(
        "qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off -enable-kvm -cpu host -smp 1 \
         -m 256 -nodefaults -no-user-config -display none -serial stdio -no-reboot \
         -kernel /lab/l2/vmlinuz -initrd /lab/l2/initrd.gz -append '{L2_CMDLINE}'"
    )
}

fn values(out: &LabOutcome, prefix: &str, boots: usize, key: &str) -> Vec<f64> {
    (1..=boots)
        .map(|i| {
            let k = format!("{prefix}{i}.{key}");
            out.get(&k)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{k} missing\n{}", out.output))
        })
        .collect()
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    format!(
        "{:.2} / {:.2} / {:.2}",
        v[0],
        v[v.len() / 2],
        v[v.len() - 1]
    )
}

fn main() {
    let mode = match std::env::var("LAB_MODE").as_deref() {
        Ok("fast") => Mode::Fast,
        _ => Mode::Deterministic,
    };
    let boots: usize = std::env::var("BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut script = MEASURE.to_owned();
    for i in 1..=boots {
        script.push_str(&format!("measure tiny{i} tinyvmm run /lab/boot.json\n"));
        script.push_str(&format!("measure qemu{i} {}\n", qemu_command()));
    }
    let mut scenario = Scenario::new("bench-boot")
        .script(&script)
        .file("/lab/boot.json", tinyvmm_config())
        .host_binary("/usr/bin/qemu-system-x86_64")
        .timeout(Duration::from_secs(1200))
        .emulation_retries(1);
    for fw in QEMU_FIRMWARE {
        let data = std::fs::read(Path::new(fw)).unwrap_or_else(|e| panic!("{fw}: {e}"));
        scenario = scenario.file(fw, data);
    }
    let lab = Lab::new(mode).unwrap_or_else(|e| panic!("{e}"));
    let out = lab.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    for prefix in ["tiny", "qemu"] {
        for i in 1..=boots {
            out.assert_kv(&format!("{prefix}{i}.exit"), "0");
        }
    }
    println!("lab boot latency ({mode:?} mode; L1 time; min / median / max over {boots} boots):");
    for (prefix, name) in [("tiny", "tinyvmm"), ("qemu", "QEMU microvm")] {
        println!(
            "  {name:13} exec->init {} s   guest uptime at init {} s",
            summary(values(&out, prefix, boots, "exec_to_init_s")),
            summary(values(&out, prefix, boots, "guest_uptime_s")),
        );
    }
    let bt: Vec<f64> = values(&out, "tiny", boots, "boot_timer_us")
        .into_iter()
        .map(|us| us / 1e6)
        .collect();
    println!(
        "  tinyvmm boot-timer (exec->guest's devmem write): {} s",
        summary(bt)
    );
    println!("  (one L1 boot, wall {:?})", out.elapsed);
}
