//! virtio-net in the lab: the Debian guest gets 10.1.0.2/24 on eth0 behind a TAP whose host
//! side (L1) has 10.1.0.1; ping both ways, then 100 MiB over TCP in each direction (busybox
//! httpd + wget) with the MD5 computed at both ends. Prints the throughput it saw.
//!
//! Needs `cargo build --release --workspace` first (the lab copies the release binaries).

use std::time::Duration;

use lab::{Lab, LabOutcome, Mode, Scenario};

/// The guest: address eth0, ping the host, serve 100 MiB, fetch the host's 100 MiB, wait
/// until the host has fetched ours, power off.
const L2_SCRIPT: &str = r#"
r() { echo "LAB guest.$*"; }
now() { cut -d' ' -f1 /proc/uptime; }
ip link set lo up
ip link set eth0 up
ip addr add 10.1.0.2/24 dev eth0
r mac=$(cat /sys/class/net/eth0/address)
ping -c 3 -W 5 10.1.0.1 >/dev/null && r ping=ok || r ping=failed
mkdir -p /srv
head -c 1048576 /dev/urandom > /tmp/block
i=0; while [ $i -lt 100 ]; do cat /tmp/block; i=$((i + 1)); done > /srv/g2h.bin
rm /tmp/block
r g2h_md5=$(md5sum < /srv/g2h.bin | cut -d' ' -f1)
httpd -p 8081 -h /srv
t0=$(now)
sum=$(wget -q -O - http://10.1.0.1:8080/h2g.bin | md5sum | cut -d' ' -f1)
t1=$(now)
r h2g_md5=$sum h2g_secs=$(echo "$t0 $t1" | awk '{print $2 - $1}')
i=0
until wget -q -O /dev/null http://10.1.0.1:8080/done 2>/dev/null || [ $i -ge 600 ]; do
    sleep 0.5; i=$((i + 1))
done
poweroff -f
"#;

const L1_SCRIPT: &str = r#"
now() { cut -d' ' -f1 /proc/uptime; }
modprobe tun
timeout 600 tinyvmm --log-level info run /lab/net1.json >/tmp/net1.log 2>&1 &
pid=$!
# tinyvmm (root, TAP missing) creates a non-persistent vm-vm1 and brings it up.
i=0; until ip link show vm-vm1 >/dev/null 2>&1 || [ $i -ge 600 ]; do sleep 0.1; i=$((i + 1)); done
ip addr add 10.1.0.1/24 dev vm-vm1
ip link set vm-vm1 up
mkdir -p /srv
head -c 1048576 /dev/urandom > /tmp/block
i=0; while [ $i -lt 100 ]; do cat /tmp/block; i=$((i + 1)); done > /srv/h2g.bin
lab-report host.h2g_md5=$(md5sum < /srv/h2g.bin | cut -d' ' -f1)
httpd -p 8080 -h /srv
# Wait until the guest has fetched our file, then fetch its file.
i=0; until grep -q "LAB guest.h2g_md5" /tmp/net1.log || [ $i -ge 3000 ]; do sleep 0.2; i=$((i + 1)); done
ping -c 3 -W 5 10.1.0.2 >/dev/null && lab-report host.ping=ok || lab-report host.ping=failed
t0=$(now)
sum=$(wget -q -O - http://10.1.0.2:8081/g2h.bin | md5sum | cut -d' ' -f1)
t1=$(now)
lab-report host.g2h_md5=$sum host.g2h_secs=$(echo "$t0 $t1" | awk '{print $2 - $1}')
touch /srv/done
wait $pid
rc=$?
cat /tmp/net1.log
lab-report net1.exit=$rc
"#;

const VM: &str = r#"{"name":"net1","vcpus":2,"memory_mib":512,
"kernel":{"path":"/lab/l2/vmlinuz","initrd":"/lab/l2/initrd.gz",
"cmdline":"console=ttyS0 reboot=k panic=1 pci=off quiet"},
"serial":"stdout","network":[{"tap":"vm-vm1","mac":"02:00:00:00:00:01"}]}"#;

fn expect(out: &LabOutcome, key: &str, want: &str) {
    assert_eq!(
        out.get(key),
        Some(want),
        "{key}: wanted {want}\n--- L1 console ---\n{}",
        out.output
    );
}

fn md5(out: &LabOutcome, key: &str) -> String {
    let v = out.get(key).unwrap_or("").to_owned();
    assert!(
        v.len() == 32 && v.chars().all(|c| c.is_ascii_hexdigit()),
        "{key}={v}\n{}",
        out.output
    );
    v
}

fn mib_per_s(out: &LabOutcome, key: &str) -> f64 {
    let secs: f64 = out
        .get(key)
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    100.0 / secs
}

#[test]
fn lab_net_when_guest_on_tap_then_ping_both_ways_and_100mib_each_way_intact() {
    let lab = Lab::new(Mode::Fast).unwrap_or_else(|e| panic!("{e}"));
    let scenario = Scenario::new("net-tap")
        .l2_script(L2_SCRIPT)
        .script(L1_SCRIPT)
        .file("/lab/net1.json", VM)
        .timeout(Duration::from_secs(900));
    let out = lab.run(&scenario).unwrap_or_else(|e| panic!("{e}"));

    expect(&out, "net1.exit", "0");
    expect(&out, "guest.mac", "02:00:00:00:00:01");
    expect(&out, "guest.ping", "ok");
    expect(&out, "host.ping", "ok");
    assert_eq!(
        md5(&out, "guest.h2g_md5"),
        md5(&out, "host.h2g_md5"),
        "host→guest corrupted"
    );
    assert_eq!(
        md5(&out, "host.g2h_md5"),
        md5(&out, "guest.g2h_md5"),
        "guest→host corrupted"
    );
    println!(
        "lab net (fast mode, nested TCG): host->guest {:.1} MiB/s, guest->host {:.1} MiB/s, lab run {:?}",
        mib_per_s(&out, "guest.h2g_secs"),
        mib_per_s(&out, "host.g2h_secs"),
        out.elapsed
    );
}
