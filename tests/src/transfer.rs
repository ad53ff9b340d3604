//! A bulk TCP transfer between an L2 guest and L1 across the guest's TAP: ping both ways, then
//! 100 MiB each way (busybox httpd + wget), with the MD5 computed at both ends and the time
//! each direction took. Used by the virtio-net lab test and the lab network benchmark, so both
//! measure exactly the same thing for every VMM.
//!
//! The guest takes its run name from `lab.run=<tag>` on its kernel command line and reports
//! `LAB <tag>.guest_*` keys; the host side reports `LAB <tag>.host_*` keys. Keys:
//! `ping`, `h2g_md5` (both sides), `g2h_md5` (both sides), `h2g_secs` (guest side),
//! `g2h_secs` (host side), and `<tag>.exit` (the VMM's exit status).

/// MiB sent in each direction.
pub const TRANSFER_MIB: u32 = 100;

/// The L2 script: 10.1.0.2/24 on eth0, the transfer, then `poweroff -f`.
pub const GUEST_SCRIPT: &str = r#"
tag=$(sed -n 's/.*lab\.run=\([^ ]*\).*/\1/p' /proc/cmdline)
r() { echo "LAB $tag.guest_$*"; }
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
sum=$(wget -q -O - http://10.1.0.1:8080/$tag/h2g.bin | md5sum | cut -d' ' -f1)
t1=$(now)
r h2g_md5=$sum
r h2g_secs=$(echo "$t0 $t1" | awk '{print $2 - $1}')
i=0
until wget -q -O /dev/null http://10.1.0.1:8080/$tag/done 2>/dev/null || [ $i -ge 600 ]; do
    sleep 0.5; i=$((i + 1))
done
# With lab.reload=1: unload and reload the driver (the device is reset and activated again),
# then check the network still works.
if grep -q "lab.reload=1" /proc/cmdline; then
    ip link set eth0 down
    rmmod virtio_net && insmod /lib/modules/virtio_net.ko && r reload=ok || r reload=failed
    i=0; until ip link show eth0 >/dev/null 2>&1 || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
    ip link set eth0 up
    ip addr add 10.1.0.2/24 dev eth0
    ping -c 3 -W 5 10.1.0.1 >/dev/null && r reload_ping=ok || r reload_ping=failed
fi
poweroff -f
"#;

/// The L1 side for one VM run named `tag`. `start_vmm` is a shell command that boots the
/// guest with [`GUEST_SCRIPT`] and `lab.run=<tag>` on its command line, attached to the TAP
/// `tap`, writing its console to stdout; it is run in the background. The TAP may be created
/// by the VMM itself: the script waits for it, then gives it 10.1.0.1/24.
pub fn host_script(tag: &str, tap: &str, start_vmm: &str) -> String {
    format!(
        r#"
modprobe tun
mkdir -p /srv/{tag}
pidof httpd >/dev/null || httpd -p 8080 -h /srv
head -c 1048576 /dev/urandom > /tmp/block
i=0; while [ $i -lt 100 ]; do cat /tmp/block; i=$((i + 1)); done > /srv/{tag}/h2g.bin
rm /tmp/block
lab-report {tag}.host_h2g_md5=$(md5sum < /srv/{tag}/h2g.bin | cut -d' ' -f1)
({start_vmm}) >/tmp/{tag}.log 2>&1 &
pid=$!
i=0; until ip link show {tap} >/dev/null 2>&1 || [ $i -ge 600 ]; do sleep 0.1; i=$((i + 1)); done
ip addr add 10.1.0.1/24 dev {tap}
ip link set {tap} up
i=0; until grep -q "LAB {tag}.guest_h2g_secs" /tmp/{tag}.log || [ $i -ge 3000 ]; do sleep 0.2; i=$((i + 1)); done
ping -c 3 -W 5 10.1.0.2 >/dev/null && lab-report {tag}.host_ping=ok || lab-report {tag}.host_ping=failed
t0=$(cut -d' ' -f1 /proc/uptime)
sum=$(wget -q -O - http://10.1.0.2:8081/g2h.bin | md5sum | cut -d' ' -f1)
t1=$(cut -d' ' -f1 /proc/uptime)
lab-report {tag}.host_g2h_md5=$sum {tag}.host_g2h_secs=$(echo "$t0 $t1" | awk '{{print $2 - $1}}')
touch /srv/{tag}/done
wait $pid
rc=$?
cat /tmp/{tag}.log
lab-report {tag}.exit=$rc
"#
    )
}

/// The kernel command line for a transfer guest.
pub fn guest_cmdline(tag: &str) -> String {
    format!("console=ttyS0 reboot=k panic=1 pci=off quiet lab.run={tag}")
}

/// A tinyvmm config for a transfer guest on `tap`.
pub fn tinyvmm_config(tag: &str, tap: &str) -> String {
    format!(
        r#"{{"name":"{tag}","vcpus":2,"memory_mib":512,
"kernel":{{"path":"/lab/l2/vmlinuz","initrd":"/lab/l2/initrd.gz","cmdline":"{}"}},
"serial":"stdout","network":[{{"tap":"{tap}","mac":"02:00:00:00:00:01","transient":true}}]}}"#,
        guest_cmdline(tag)
    )
}

/// What a transfer run reported, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferResult {
    /// MiB/s host → guest (guest-timed download).
    pub host_to_guest_mib_s: f64,
    /// MiB/s guest → host (host-timed download).
    pub guest_to_host_mib_s: f64,
}

/// Checks a run's reports (exit status 0, pings, matching checksums in both directions) and
/// returns the throughput, or a message naming what failed.
pub fn check(
    kv: &std::collections::BTreeMap<String, String>,
    tag: &str,
) -> Result<TransferResult, String> {
    check_with_exit(kv, tag, 0)
}

/// [`check`] for a VMM expected to exit with `exit` (e.g. 3 when the guest ends by rebooting,
/// as guests without ACPI do).
pub fn check_with_exit(
    kv: &std::collections::BTreeMap<String, String>,
    tag: &str,
    exit: i32,
) -> Result<TransferResult, String> {
    let get = |k: &str| kv.get(&format!("{tag}.{k}")).map(String::as_str);
    let want = |k: &str, v: &str| match get(k) {
        Some(got) if got == v => Ok(()),
        other => Err(format!("{tag}.{k}: wanted {v}, got {other:?}")),
    };
    want("exit", &exit.to_string())?;
    want("guest_ping", "ok")?;
    want("host_ping", "ok")?;
    let md5 = |k: &str| {
        get(k)
            .filter(|v| v.len() == 32 && v.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| format!("{tag}.{k}: no MD5 ({:?})", get(k)))
    };
    if md5("host_h2g_md5")? != md5("guest_h2g_md5")? {
        return Err(format!("{tag}: host→guest data corrupted"));
    }
    if md5("guest_g2h_md5")? != md5("host_g2h_md5")? {
        return Err(format!("{tag}: guest→host data corrupted"));
    }
    let rate = |k: &str| {
        get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .map(|s| f64::from(TRANSFER_MIB) / s)
            .ok_or_else(|| format!("{tag}.{k}: no duration ({:?})", get(k)))
    };
    Ok(TransferResult {
        host_to_guest_mib_s: rate("guest_h2g_secs")?,
        guest_to_host_mib_s: rate("host_g2h_secs")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn kv(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const A: &str = "0123456789abcdef0123456789abcdef";
    const B: &str = "fedcba9876543210fedcba9876543210";

    fn good() -> Vec<(&'static str, &'static str)> {
        vec![
            ("t.exit", "0"),
            ("t.guest_ping", "ok"),
            ("t.host_ping", "ok"),
            ("t.host_h2g_md5", A),
            ("t.guest_h2g_md5", A),
            ("t.guest_g2h_md5", B),
            ("t.host_g2h_md5", B),
            ("t.guest_h2g_secs", "4"),
            ("t.host_g2h_secs", "10"),
        ]
    }

    #[test]
    fn check_when_all_reported_and_sums_match_then_rates() {
        let r = check(&kv(&good()), "t").unwrap();
        assert_eq!(r.host_to_guest_mib_s, 25.0);
        assert_eq!(r.guest_to_host_mib_s, 10.0);
    }

    #[test]
    fn check_when_checksum_differs_then_error_names_direction() {
        let mut pairs = good();
        pairs[4] = ("t.guest_h2g_md5", B);
        let err = check(&kv(&pairs), "t").unwrap_err();
        assert!(err.contains("host→guest"), "{err}");
    }

    #[test]
    fn check_when_vmm_failed_then_error() {
        let mut pairs = good();
        pairs[0] = ("t.exit", "1");
        assert!(check(&kv(&pairs), "t").unwrap_err().contains("t.exit"));
    }

    #[test]
    fn host_script_when_rendered_then_names_tag_and_tap() {
        let s = host_script("q1", "tap9", "qemu ...");
        assert!(s.contains("ip addr add 10.1.0.1/24 dev tap9"));
        assert!(s.contains("/srv/q1/done"));
        assert!(tinyvmm_config("q1", "tap9").contains("lab.run=q1"));
    }
}
