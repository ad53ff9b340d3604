//! Lab scenarios that boot real kernels under QEMU TCG (nested SVM). They need
//! `cargo build --release --workspace` first and the packages in .ci/lab-packages.txt; if
//! either is missing they fail with the fix in the message (never skipped).

use std::time::Duration;

use lab::{Lab, LabError, Mode, Scenario};

fn lab(mode: Mode) -> Lab {
    Lab::new(mode).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether any process's command line contains `needle` (QEMU runs with `-name lab-<scenario>`).
fn process_running(needle: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(needle))
            .unwrap_or(false)
    })
}

const SMOKE_L1: &str = r#"
test -c /dev/kvm || { echo "no /dev/kvm"; exit 1; }
# A hang of the nested guest is reported as such instead of running into the lab timeout.
echo "LAB $(timeout 60 kvm-smoke || echo kvm_smoke_exit=$?)"
for f in /lab/l2/vmlinuz /lab/l2/initrd.gz /lab/vm.json /lab/bin/tinyvmm; do
    test -s "$f" || { echo "missing $f"; exit 2; }
done
# 127 would mean the dynamic loader or a library is missing in L1.
tinyvmm --help >/dev/null 2>&1; lab-report tinyvmm_rc=$?
modprobe tun && modprobe bridge && modprobe veth && modprobe nft_masq && modprobe virtio_net \
    && lab-report l1_modules=ok
test -c /dev/net/tun && lab-report tun=1
# A host binary with its shared libraries (Scenario::host_binary); nft autoloads nf_tables.
nft add table inet lab && nft list tables | grep -q 'inet lab' && lab-report nft=ok
"#;

#[test]
fn nested_kvm_smoke_when_l1_boots_then_dev_kvm_runs_a_guest() {
    let lab = lab(Mode::Fast);
    let scenario = Scenario::new("kvm-smoke")
        .script(SMOKE_L1)
        .host_binary("/usr/sbin/nft")
        .timeout(Duration::from_secs(120));
    let out = lab
        .run(&scenario)
        .expect("lab run")
        .ensure_success()
        .expect("scenario");
    assert_eq!(out.get("l1.kvm"), Some("1"), "{}", out.output);
    assert_eq!(out.get("kvm_smoke"), Some("ok"), "{}", out.output);
    assert_eq!(out.get("port"), Some("0x10"));
    assert_eq!(out.get("value"), Some("0x42"));
    assert_ne!(
        out.get("tinyvmm_rc"),
        Some("127"),
        "tinyvmm cannot start in L1: {}",
        out.output
    );
    assert_eq!(out.get("l1_modules"), Some("ok"), "{}", out.output);
    assert_eq!(out.get("tun"), Some("1"), "{}", out.output);
    assert_eq!(out.get("nft"), Some("ok"), "{}", out.output);
    println!(
        "lab timing (fast): boot_to_init={:?} elapsed={:?} l1.init_uptime={:?}",
        out.boot_to_init,
        out.elapsed,
        out.get("l1.init_uptime")
    );
}

#[test]
fn scenario_when_script_fails_then_status_output_and_reports_returned() {
    let lab = lab(Mode::Fast);
    let scenario = Scenario::new("fails")
        .file("/lab/data/greeting.txt", "hello-from-host")
        .script(
            "echo \"before failure\"\nlab-report greeting=$(cat /lab/data/greeting.txt)\nexit 3\n",
        )
        .timeout(Duration::from_secs(120));
    let out = lab
        .run(&scenario)
        .expect("a failing scenario is still an outcome");
    assert_eq!(out.status, 3, "{}", out.output);
    assert!(out.output.contains("before failure"), "{}", out.output);
    assert_eq!(out.get("greeting"), Some("hello-from-host"));
    let err = out
        .ensure_success()
        .expect_err("status 3 is a failure")
        .to_string();
    assert!(
        err.contains("status 3") && err.contains("before failure"),
        "{err}"
    );
}

#[test]
fn scenario_when_it_hangs_then_killed_at_timeout_with_clear_message() {
    let lab = lab(Mode::Fast);
    let timeout = Duration::from_secs(20);
    let scenario = Scenario::new("hangs")
        .script("echo \"about to hang\"\nsleep 100000\n")
        .timeout(timeout);
    let err = lab.run(&scenario).expect_err("must time out");
    let LabError::Timeout {
        ref output,
        elapsed: took,
        ..
    } = err
    else {
        panic!("expected a timeout, got: {err}");
    };
    assert!(
        output.contains("about to hang"),
        "the scenario should have started: {output}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("timed out after 20s") && msg.contains("QEMU killed"),
        "{msg}"
    );
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(10),
        "took {took:?}"
    );
    assert!(
        !process_running("lab-hangs"),
        "QEMU of the hung scenario is still running"
    );
}

#[test]
fn l2_image_when_booted_directly_then_modules_load_and_script_reports() {
    let lab = lab(Mode::Fast);
    let l2 = r#"
lab-report probe=1
grep -q '^virtio_mmio ' /proc/modules && lab-report virtio_mmio=loaded
grep -q virtiofs /proc/filesystems && lab-report virtiofs=registered
exit 4
"#;
    let scenario = Scenario::new("l2-direct")
        .l2_script(l2)
        .timeout(Duration::from_secs(120));
    let out = lab.run_l2_direct(&scenario).expect("L2 boot");
    assert_eq!(
        out.status, 4,
        "l2.status carries the L2 script's exit status: {}",
        out.output
    );
    assert_eq!(out.get("l2.boot_timer_write"), Some("0"), "{}", out.output);
    assert_eq!(out.get("l2.modules"), Some("ok"), "{}", out.output);
    assert_eq!(out.get("l2.probe"), Some("1"));
    assert_eq!(out.get("l2.virtio_mmio"), Some("loaded"));
    assert_eq!(out.get("l2.virtiofs"), Some("registered"));
    assert!(out.get("l2.init_uptime").is_some());
}

#[test]
fn deterministic_mode_when_l1_booted_twice_then_virtual_uptime_repeats() {
    let lab = lab(Mode::Deterministic);
    let scenario = Scenario::new("deterministic")
        .script("test -c /dev/kvm && echo \"LAB $(kvm-smoke)\"")
        .timeout(Duration::from_secs(300));
    let mut uptimes = Vec::new();
    for _ in 0..2 {
        let out = lab
            .run(&scenario)
            .expect("lab run")
            .ensure_success()
            .expect("scenario");
        assert_eq!(out.get("kvm_smoke"), Some("ok"), "{}", out.output);
        let up: f64 = out
            .get("l1.init_uptime")
            .and_then(|u| u.parse().ok())
            .expect("l1.init_uptime");
        println!(
            "lab timing (deterministic): boot_to_init={:?} elapsed={:?} l1.init_uptime={up}",
            out.boot_to_init, out.elapsed
        );
        uptimes.push(up);
    }
    let spread = (uptimes[0] - uptimes[1]).abs() / uptimes[0];
    assert!(
        spread < 0.02,
        "virtual boot time should repeat: {uptimes:?}"
    );
}
