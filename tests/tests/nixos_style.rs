//! NixOS-style guests in the lab: a guest booted with `acpi=off` (as microvm.nix boots NixOS)
//! binds the i8042 keyboard without probe timeouts, and SIGTERM stops it cleanly through
//! Ctrl-Alt-Del: the kernel delivers SIGINT to init (the lab's L2 init disables the kernel's
//! own reboot like busybox init does and answers with `reboot -f`), and the reboot that follows
//! the stop request ends the run with status 0. Also: the guest's rtc_cmos binds the CMOS RTC.
//!
//! Devices without ACPI: with `virtio_mmio_discovery: "cmdline"` and `acpi=off`, the guest's
//! virtio_mmio (the lab's build with CMDLINE_DEVICES, loaded with the `virtio_mmio.device=`
//! arguments tinyvmm appends, as kmod's modprobe would) finds virtio-net and virtio-rng; the
//! guest pings L1 over the TAP and moves 100 MiB each way, reads its hardware RNG, and ends
//! by rebooting (it cannot power off without ACPI): exit status 3.
//!
//! Needs `cargo build --release --workspace` first (the lab copies the release binaries).

use std::time::Duration;

use lab::transfer;
use lab::{Lab, Mode, Scenario};

const L2_SCRIPT: &str = r#"
r() { echo "LAB nixos.$*"; }
r cpus=$(grep -c '^processor' /proc/cpuinfo)
r keyboard=$(grep -c 'AT Translated Set 2 keyboard' /proc/bus/input/devices)
dmesg | grep -E 'i8042|serio|atkbd|input: AT|rtc_cmos|smpboot|APIC' | sed 's/^/dmesg: /'
r ready=1
while :; do sleep 1; done
"#;

const L1_STEPS: &str = r#"
timeout 240 tinyvmm --log-level info run /lab/cad.json >/tmp/cad.log 2>&1 &
pid=$!
i=0
while ! grep -q "LAB nixos.ready=1" /tmp/cad.log && kill -0 "$pid" 2>/dev/null && [ $i -lt 2400 ]; do
    sleep 0.1; i=$((i + 1))
done
kill -TERM "$pid"
start=$(cut -d' ' -f1 /proc/uptime)
wait "$pid"
rc=$?
end=$(cut -d' ' -f1 /proc/uptime)
cat /tmp/cad.log
lab-report "cad.exit=$rc" "cad.signal_to_exit_s=$(echo "$start $end" | awk '{print $2 - $1}')"
"#;

const CONFIG: &str = r#"{"name":"cad","vcpus":2,"memory_mib":256,
"kernel":{"path":"/lab/l2/vmlinuz","initrd":"/lab/l2/initrd.gz",
"cmdline":"console=ttyS0 reboot=k panic=1 quiet earlyprintk=ttyS0 acpi=off"},
"serial":"stdout","boot_timer":true,"virtio_mmio_discovery":"cmdline",
"shutdown_grace_secs":20}"#;

#[test]
fn lab_acpi_off_when_sigterm_then_ctrl_alt_del_reboots_cleanly_and_exit_0() {
    let lab = Lab::new(Mode::Fast).unwrap_or_else(|e| panic!("{e}"));
    let scenario = Scenario::new("nixos-cad")
        .l2_script(L2_SCRIPT)
        .script(L1_STEPS)
        .file("/lab/cad.json", CONFIG)
        .timeout(Duration::from_secs(420))
        .emulation_retries(1);
    let out = lab.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    println!("nixos-cad: lab run took {:?}", out.elapsed);
    for (k, v) in &out.kv {
        println!("  {k}={v}");
    }
    for line in out.output.lines().filter(|l| l.contains("dmesg: ")) {
        println!("  {line}");
    }

    // The i8042 keyboard bound: the guest can receive Ctrl-Alt-Del.
    out.assert_kv("nixos.keyboard", "1");
    assert!(
        out.output
            .contains("sending Ctrl-Alt-Del through the i8042"),
        "{}",
        out.output
    );
    // The CMOS RTC answers: the probe binds instead of polling an "update in progress".
    assert!(
        out.output.contains("rtc_cmos rtc_cmos: registered as rtc0"),
        "{}",
        out.output
    );
    assert!(!out.output.contains("Keylock active"), "{}", out.output);
    // The guest's init got SIGINT and rebooted; the reboot after SIGTERM is a stop.
    out.assert_kv("l2.ctrlaltdel", "1");
    assert!(
        out.output.contains("i8042: guest pulsed the reset line"),
        "{}",
        out.output
    );
    out.assert_kv("cad.exit", "0");
    let waited: f64 = out
        .get("cad.signal_to_exit_s")
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::MAX);
    assert!(waited < 20.0, "stopped within the grace period: {waited}s");
}

/// Prepended to the transfer guest's script: the RNG and what virtio_mmio registered.
const DEVICES_CHECK: &str = r#"
echo "LAB nixos.cpus=$(grep -c '^processor' /proc/cpuinfo) nixos.rng=$(tr ' ' _ </sys/class/misc/hw_random/rng_current) nixos.hwrng_bytes=$(head -c 64 /dev/hwrng | wc -c)"
echo "LAB nixos.cmdline_devices=$(dmesg | grep -c 'virtio-mmio: Registering device')"
"#;

#[test]
fn lab_acpi_off_when_cmdline_discovery_then_net_and_rng_are_found_and_work() {
    let lab = Lab::new(Mode::Fast).unwrap_or_else(|e| panic!("{e}"));
    let config = transfer::tinyvmm_config("nnet", "vm-vm1")
        .replace(" quiet ", " quiet acpi=off ")
        .replace(
            r#""serial":"stdout","#,
            r#""serial":"stdout","virtio_mmio_discovery":"cmdline","rng":true,"#,
        );
    assert!(
        config.contains("acpi=off") && config.contains("cmdline"),
        "{config}"
    );
    // Without ACPI the guest cannot power off (the kernel only halts): it ends by rebooting,
    // as microvm.nix guests do under Firecracker, and tinyvmm reports that as exit 3.
    let guest_script =
        format!("{DEVICES_CHECK}{}", transfer::GUEST_SCRIPT).replace("poweroff -f", "reboot -f");
    assert!(guest_script.contains("reboot -f"));
    let start = "timeout 600 tinyvmm --log-level info run /lab/nnet.json";
    let scenario = Scenario::new("nixos-net")
        .l2_script(&guest_script)
        .script(&transfer::host_script("nnet", "vm-vm1", start))
        .file("/lab/nnet.json", config)
        .timeout(Duration::from_secs(420))
        .emulation_retries(1);
    let out = lab.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    for (k, v) in out
        .kv
        .iter()
        .filter(|(k, _)| k.starts_with("l2.") || k.starts_with("nixos."))
    {
        println!("  {k}={v}");
    }

    // Found from the command line, not from ACPI: the cmdline build bound both devices.
    out.assert_kv("l2.virtio_mmio", "cmdline");
    out.assert_kv("l2.modules", "ok");
    out.assert_kv("nixos.cmdline_devices", "2");
    assert!(
        out.get("nixos.rng")
            .is_some_and(|r| r.starts_with("virtio_rng")),
        "{}",
        out.output
    );
    out.assert_kv("nixos.hwrng_bytes", "64");
    // And they work: ping both ways and 100 MiB each way with matching checksums.
    let rates = transfer::check_with_exit(&out.kv, "nnet", 3)
        .unwrap_or_else(|e| panic!("{e}\n--- L1 console ---\n{}", out.output));
    println!(
        "nixos-net: host->guest {:.1} MiB/s, guest->host {:.1} MiB/s, lab run {:?}",
        rates.host_to_guest_mib_s, rates.guest_to_host_mib_s, out.elapsed
    );
}
