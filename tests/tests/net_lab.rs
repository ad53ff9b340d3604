//! virtio-net in the lab: the Debian guest gets 10.1.0.2/24 on eth0 behind a TAP whose host
//! side (L1) has 10.1.0.1; ping both ways, then 100 MiB over TCP in each direction with the MD5
//! computed at both ends (`lab::transfer`). tinyvmm creates the TAP itself here (root, TAP
//! missing); the demo covers TAPs made by netctl. Afterwards the guest reloads virtio_net
//! (device reset and re-activation) and pings again. Prints the throughput it saw.
//!
//! Needs `cargo build --release --workspace` first (the lab copies the release binaries).

use std::time::Duration;

use lab::transfer::{self, GUEST_SCRIPT};
use lab::{Lab, Mode, Scenario};

#[test]
fn lab_net_when_guest_on_tap_then_ping_both_ways_and_100mib_each_way_intact() {
    let lab = Lab::new(Mode::Fast).unwrap_or_else(|e| panic!("{e}"));
    let start = "timeout 600 tinyvmm --log-level info run /lab/net1.json";
    let scenario = Scenario::new("net-tap")
        .l2_script(GUEST_SCRIPT)
        .script(&transfer::host_script("net1", "vm-vm1", start))
        .file(
            "/lab/net1.json",
            transfer::tinyvmm_config("net1", "vm-vm1")
                .replace("lab.run=net1", "lab.run=net1 lab.reload=1"),
        )
        .timeout(Duration::from_secs(420))
        .emulation_retries(1);
    let out = lab.run(&scenario).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(
        out.get("net1.guest_mac"),
        Some("02:00:00:00:00:01"),
        "{}",
        out.output
    );
    // The guest reloaded its driver (device reset + re-activation) and still reaches L1.
    out.assert_kv("net1.guest_reload", "ok");
    out.assert_kv("net1.guest_reload_ping", "ok");
    let rates = transfer::check(&out.kv, "net1")
        .unwrap_or_else(|e| panic!("{e}\n--- L1 console ---\n{}", out.output));
    println!(
        "lab net (fast mode, nested TCG): host->guest {:.1} MiB/s, guest->host {:.1} MiB/s, lab run {:?}",
        rates.host_to_guest_mib_s, rates.guest_to_host_mib_s, out.elapsed
    );
}
