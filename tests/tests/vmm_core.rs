//! The VMM core, proven in the lab: tinyvmm boots the Debian cloud kernel (bzImage and the ELF
//! vmlinux inside it) under nested KVM, with 1 and 2 vCPUs, finds virtio-rng through ACPI,
//! and ends with the documented exit status for poweroff, reboot, panic and SIGTERM.
//!
//! One L1 boot per test; inside it several L2 boots run one after another. Each L2 boot gets
//! `lab.run=<name> lab.action=<what to do>` on its kernel command line, and the shared L2
//! script below acts on it and reports `LAB <name>.<key>=<value>` lines.
//!
//! Needs `cargo build --release --workspace` first (the lab copies the release binaries).

use std::time::Duration;

use lab::{Lab, LabOutcome, Mode, Scenario};

const L2_SCRIPT: &str = r#"
arg() { sed -n "s/.*lab\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
run=$(arg run)
action=$(arg action)
r() { echo "LAB $run.$*"; }
r cpus=$(grep -c '^processor' /proc/cpuinfo)
r uptime=$(cut -d' ' -f1 /proc/uptime)
r rng=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null || echo none)
bytes=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')
r rng_bytes=${bytes:-none}
r virtio_devices=$(ls /sys/bus/virtio/devices 2>/dev/null | wc -l)
v=$(grep -o 'virtio_mmio.device=[^ ]*' /proc/cmdline | head -n1)
r cmdline_virtio=${v:-none}
power_button() {
    for d in /sys/class/input/event*; do
        grep -q "Power Button" "$d/device/name" 2>/dev/null && { echo "/dev/input/${d##*/}"; return; }
    done
}
case "$action" in
    reboot) reboot -f ;;
    panic) echo c > /proc/sysrq-trigger ;;
    button)
        ev=$(power_button)
        r button_device=${ev:-none}
        r ready=1
        # Blocks until the power button reports a key event (struct input_event is 24 bytes).
        [ -n "$ev" ] && dd if="$ev" of=/dev/null bs=24 count=1 2>/dev/null && r button=pressed
        poweroff -f ;;
    ignore)
        r ready=1
        while :; do sleep 1; done ;;
    *) poweroff -f ;;
esac
"#;

/// `boot NAME [timeout]`: runs tinyvmm on /lab/NAME.json, prints its output, reports the exit
/// status and the guest's boot-timer time. `boot_bg NAME` starts one in the background and
/// `signal_when_ready NAME SIG` sends SIG once the guest says it is ready.
const L1_HELPERS: &str = r#"
boot() {
    timeout "${2:-240}" tinyvmm --log-level info run "/lab/$1.json" >"/tmp/$1.log" 2>&1
    rc=$?
    cat "/tmp/$1.log"
    lab-report "$1.exit=$rc"
    bt=$(grep -o '"tinyvmm_timing":"boot_timer","us":[0-9]*' "/tmp/$1.log" | grep -o '[0-9]*$')
    lab-report "$1.boot_timer_us=${bt:-none}"
}
signal_when_ready() {
    timeout 240 tinyvmm --log-level info run "/lab/$1.json" >"/tmp/$1.log" 2>&1 &
    pid=$!
    i=0
    while ! grep -q "LAB $1.ready=1" "/tmp/$1.log" && [ $i -lt 2400 ]; do
        sleep 0.1; i=$((i + 1))
    done
    kill -"$2" "$pid"
    start=$(cut -d' ' -f1 /proc/uptime)
    wait "$pid"
    rc=$?
    end=$(cut -d' ' -f1 /proc/uptime)
    cat "/tmp/$1.log"
    lab-report "$1.exit=$rc" "$1.signal_to_exit_s=$(echo "$start $end" | awk '{print $2 - $1}')"
}
"#;

struct Boot<'a> {
    name: &'a str,
    vcpus: u32,
    kernel: &'a str,
    action: &'a str,
    discovery: &'a str,
    grace_secs: u32,
    reboot_mode: &'a str,
}

impl Boot<'_> {
    fn config(&self) -> String {
        format!(
            r#"{{"name":"{name}","vcpus":{vcpus},"memory_mib":256,
"kernel":{{"path":"{kernel}","initrd":"/lab/l2/initrd.gz",
"cmdline":"console=ttyS0 reboot={reboot} panic=1 quiet lab.run={name} lab.action={action}"}},
"serial":"stdout","boot_timer":true,"virtio_mmio_discovery":"{discovery}",
"shutdown_grace_secs":{grace}}}"#,
            name = self.name,
            vcpus = self.vcpus,
            kernel = self.kernel,
            action = self.action,
            discovery = self.discovery,
            grace = self.grace_secs,
            reboot = self.reboot_mode,
        )
    }
}

fn boot<'a>(name: &'a str, vcpus: u32, action: &'a str) -> Boot<'a> {
    Boot {
        name,
        vcpus,
        kernel: "/lab/l2/vmlinuz",
        action,
        discovery: "both",
        grace_secs: 10,
        reboot_mode: "k",
    }
}

fn run(name: &str, boots: &[Boot], l1_steps: &str, extra: Vec<(String, Vec<u8>)>) -> LabOutcome {
    let lab = Lab::new(Mode::Fast).unwrap_or_else(|e| panic!("{e}"));
    let mut scenario = Scenario::new(name)
        .l2_script(L2_SCRIPT)
        .script(&format!("{L1_HELPERS}\n{l1_steps}"))
        .timeout(Duration::from_secs(420))
        .emulation_retries(1);
    for b in boots {
        scenario = scenario.file(&format!("/lab/{}.json", b.name), b.config());
    }
    for (dest, data) in extra {
        scenario = scenario.file(&dest, data);
    }
    let out = lab.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    println!("{name}: lab run took {:?}", out.elapsed);
    for (k, v) in &out.kv {
        println!("  {k}={v}");
    }
    out
}

fn rng_bytes_look_random(out: &LabOutcome, key: &str) {
    let bytes = out.get(key).unwrap_or("none");
    assert!(
        bytes.len() == 32
            && bytes.chars().all(|c| c.is_ascii_hexdigit())
            && bytes != "0".repeat(32),
        "{key}={bytes}\n{}",
        out.output
    );
}

/// The ELF vmlinux inside the lab's bzImage (LZ4 payload, Debian's compression), so the ELF
/// loader and the PVH entry are exercised on the very same kernel.
fn extract_vmlinux(bzimage: &[u8]) -> Vec<u8> {
    let setup_sects = match bzimage[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let word = |off: usize| u32::from_le_bytes(bzimage[off..off + 4].try_into().unwrap()) as usize;
    let (offset, len) = (word(0x248), word(0x24c));
    let start = (setup_sects + 1) * 512 + offset;
    let payload = &bzimage[start..start + len];
    assert_eq!(
        &payload[..4],
        [0x02, 0x21, 0x4c, 0x18],
        "not an LZ4 legacy payload"
    );
    let mut child = std::process::Command::new("lz4")
        .args(["-dc"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("lz4 (apt-get install lz4)");
    let mut stdin = child.stdin.take().unwrap();
    let data = payload.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.stdout.starts_with(b"\x7fELF"),
        "lz4 did not produce an ELF"
    );
    out.stdout
}

#[test]
fn lab_boot_when_bzimage_and_elf_with_1_and_2_vcpus_then_init_runs_and_rng_found() {
    let lab = Lab::new(Mode::Fast).unwrap_or_else(|e| panic!("{e}"));
    let bzimage = std::fs::read(&lab.images().vmlinuz).unwrap();
    let vmlinux = extract_vmlinux(&bzimage);
    drop(lab);

    let smp1 = boot("smp1", 1, "poweroff");
    let mut acpi2 = boot("acpi2", 2, "poweroff");
    acpi2.discovery = "acpi";
    let mut cmdline = boot("cmdline", 1, "poweroff");
    cmdline.discovery = "cmdline";
    let mut elf = boot("elf", 2, "poweroff");
    elf.kernel = "/lab/l2/vmlinux";
    let out = run(
        "vmm-boot",
        &[smp1, acpi2, cmdline, elf],
        "boot smp1\nboot acpi2\nboot cmdline\nboot elf\n",
        vec![("/lab/l2/vmlinux".into(), vmlinux)],
    );

    for name in ["smp1", "acpi2", "cmdline", "elf"] {
        out.assert_kv(&format!("{name}.exit"), "0");
        let bt = out.get(&format!("{name}.boot_timer_us")).unwrap_or("none");
        assert!(
            bt.parse::<u64>().is_ok(),
            "{name}: no boot timer line\n{}",
            out.output
        );
    }
    out.assert_kv("smp1.cpus", "1");
    out.assert_kv("acpi2.cpus", "2");
    out.assert_kv("elf.cpus", "2");
    // ACPI discovery: the DSDT's LNRO0005 device is found and virtio_rng binds to it.
    out.assert_kv("acpi2.rng", "virtio_rng.0");
    rng_bytes_look_random(&out, "acpi2.rng_bytes");
    out.assert_kv("smp1.rng", "virtio_rng.0");
    out.assert_kv("elf.rng", "virtio_rng.0");
    // Command-line discovery: the parameter reaches the kernel. Debian's kernel lacks
    // CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, so it finds no device that way.
    out.assert_kv(
        "cmdline.cmdline_virtio",
        "virtio_mmio.device=4K@0xd0002000:10",
    );
    out.assert_kv("acpi2.cmdline_virtio", "none");
}

#[test]
fn lab_lifecycle_when_guest_reboots_panics_or_gets_sigterm_then_documented_exit_status() {
    let reboot = boot("reboot", 1, "reboot");
    let mut acpi_reboot = boot("acpireboot", 1, "reboot");
    acpi_reboot.reboot_mode = "a";
    let panic = boot("panic", 1, "panic");
    let button = boot("button", 2, "button");
    let mut ignore = boot("ignore", 1, "ignore");
    ignore.grace_secs = 3;
    let out = run(
        "vmm-lifecycle",
        &[reboot, acpi_reboot, panic, button, ignore],
        "boot reboot\nboot acpireboot\nboot panic\nsignal_when_ready button TERM\nsignal_when_ready ignore TERM\n",
        Vec::new(),
    );

    // reboot=k resets through the i8042, reboot=a through the FADT reset register.
    out.assert_kv("reboot.exit", "3");
    assert!(
        out.output.contains("i8042: guest pulsed the reset line"),
        "{}",
        out.output
    );
    out.assert_kv("acpireboot.exit", "3");
    assert!(
        out.output.contains("acpi pm: guest requested reset"),
        "{}",
        out.output
    );
    // The guest's pvpanic driver reports the panic before panic=1 reboots it: a crash.
    out.assert_kv("panic.exit", "4");
    assert!(out.output.contains("Kernel panic"), "{}", out.output);
    assert!(
        out.output.contains("pvpanic: the guest kernel panicked"),
        "{}",
        out.output
    );
    // SIGTERM presses the ACPI power button; the guest sees it and powers off.
    out.assert_kv("button.button", "pressed");
    out.assert_kv("button.exit", "0");
    // A guest that ignores the button is stopped when the 3 s grace period ends.
    out.assert_kv("ignore.exit", "5");
    let waited: f64 = out
        .get("ignore.signal_to_exit_s")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!((2.9..30.0).contains(&waited), "grace period: {waited}s");
}
