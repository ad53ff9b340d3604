//! The project's demo, in the lab: the seed's 4-VM template. `netctl apply` builds the
//! networks of `examples/vm1..4.json` inside L1, four tinyvmm VMs boot at once on those TAPs,
//! and from inside each guest: the gateway answers, a server in an "upstream" namespace is
//! reached through NAT (it sees the host's uplink address), and no other VM — nor another
//! VM's gateway — is reachable over ICMP or TCP. Each VM also mounts the examples' three
//! shares (one read-only store for all, its own etc and var). Then `netctl down` leaves no
//! trace.
//!
//! Run it alone: `cargo build --release --workspace && cargo test -p tinyvmm-lab --test demo -- --nocapture`

use std::path::Path;
use std::time::Duration;

use lab::{Lab, Mode, Scenario};

const VMS: [u32; 4] = [1, 2, 3, 4];

/// Each guest: its address from the examples' layout, then the checks, reported as
/// `LAB vmN.<check>=<result>`.
const L2_SCRIPT: &str = r#"
me=$(sed -n 's/.*lab\.run=\([^ ]*\).*/\1/p' /proc/cmdline)
n=${me#vm}
r() { echo "LAB $me.$*"; }
up=http://100.64.0.2:8080
ip link set lo up
ip link set eth0 up
ip addr add 10.$n.0.2/24 dev eth0
ip route add default via 10.$n.0.1
mkdir -p /srv && echo "$me" > /srv/index.html && httpd -p 8081 -h /srv
ping -c 2 -W 3 10.$n.0.1 >/dev/null && r gateway=ok || r gateway=failed
# The examples' shares: the host's store read-only, this VM's own etc and var.
mkdir -p /nix/store /mnt/etc /mnt/var
mount -t virtiofs nix-store /nix/store && mount -t virtiofs etc /mnt/etc &&
    mount -t virtiofs var /mnt/var && r shares=ok || r shares=failed
r store=$(cat /nix/store/demo-hello/bin/hello)
touch /nix/store/x 2>/dev/null && r store_write=allowed || r store_write=refused
echo "$me" > /mnt/var/who && sync && r var_write=ok || r var_write=failed
r ready=1
i=0; until timeout 5 wget -q -O /dev/null $up/go 2>/dev/null || [ $i -ge 300 ]; do sleep 1; i=$((i + 1)); done
# busybox httpd listens on IPv6 and reports IPv4 peers as [::ffff:a.b.c.d].
seen=$(timeout 5 wget -q -O - $up/cgi-bin/ip 2>/dev/null | sed 's/^\[::ffff://; s/\]$//')
r upstream_sees=${seen:-unreachable}
for o in 1 2 3 4; do
    [ "$o" = "$n" ] && continue
    ping -c 1 -W 2 10.$o.0.2 >/dev/null 2>&1 && r icmp_vm$o=reached || r icmp_vm$o=blocked
    timeout 5 wget -q -O /dev/null http://10.$o.0.2:8081/ 2>/dev/null && r tcp_vm$o=reached || r tcp_vm$o=blocked
    ping -c 1 -W 2 10.$o.0.1 >/dev/null 2>&1 && r icmp_gw$o=reached || r icmp_gw$o=blocked
done
r tested=1
i=0; until timeout 5 wget -q -O /dev/null $up/done 2>/dev/null || [ $i -ge 300 ]; do sleep 1; i=$((i + 1)); done
poweroff -f
"#;

const L1_SCRIPT: &str = r#"
for m in tun veth bridge nf_tables nft_chain_nat nft_masq nft_ct nf_conntrack; do modprobe $m; done
IP=/usr/sbin/ip
# The "upstream" network: a namespace with a web server, behind the uplink veth up0.
$IP netns add upstream
$IP link add up0 type veth peer name up1
$IP link set up1 netns upstream
$IP addr add 100.64.0.1/24 dev up0
$IP link set up0 up
$IP route add default via 100.64.0.2
$IP -n upstream addr add 100.64.0.2/24 dev up1
$IP -n upstream link set up1 up
$IP -n upstream link set lo up
mkdir -p /srv/up/cgi-bin
printf '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n%%s" "$REMOTE_ADDR"\n' > /srv/up/cgi-bin/ip
chmod +x /srv/up/cgi-bin/ip
$IP netns exec upstream httpd -p 8080 -h /srv/up

# What the examples' shares point at: one store for all, etc/var per VM.
mkdir -p /nix/store/demo-hello/bin && echo hello-from-the-store > /nix/store/demo-hello/bin/hello
for n in 1 2 3 4; do mkdir -p /var/lib/microvms/vm$n/etc /var/lib/microvms/vm$n/var; done

nft list ruleset > /tmp/nft.before
$IP -br link > /tmp/link.before
netctl apply --uplink up0 /lab/examples/vm1.json /lab/examples/vm2.json /lab/examples/vm3.json /lab/examples/vm4.json
lab-report netctl.apply=$?
netctl apply --uplink up0 /lab/examples/vm1.json /lab/examples/vm2.json /lab/examples/vm3.json /lab/examples/vm4.json > /tmp/apply2.out 2>&1
grep -qi "no changes" /tmp/apply2.out && lab-report netctl.reapply=noop || { cat /tmp/apply2.out; lab-report netctl.reapply=changed; }

for n in 1 2 3 4; do
    # Whole lines only (one write each), so four consoles never interleave mid-line.
    (timeout 900 tinyvmm --log-level info run /lab/vm$n.json 2>&1; echo "LAB vm$n.exit=$?") |
        while IFS= read -r line; do
            printf '%s\n' "$line" >> /tmp/vm$n.log
            printf '%s\n' "$line"
        done &
done
wait_all() {
    i=0
    while [ $i -lt 3000 ]; do
        c=0
        for n in 1 2 3 4; do grep -q "LAB vm$n.$1=1" /tmp/vm$n.log && c=$((c + 1)); done
        [ $c -eq 4 ] && return 0
        sleep 0.2; i=$((i + 1))
    done
    return 1
}
wait_all ready && lab-report all.ready=1
touch /srv/up/go
wait_all tested && lab-report all.tested=1
touch /srv/up/done
wait

for n in 1 2 3 4; do lab-report vm$n.host_who=$(cat /var/lib/microvms/vm$n/var/who 2>/dev/null || echo none); done
netctl down /lab/examples/vm1.json /lab/examples/vm2.json /lab/examples/vm3.json /lab/examples/vm4.json
lab-report netctl.down=$?
nft list ruleset > /tmp/nft.after
$IP -br link > /tmp/link.after
cmp -s /tmp/nft.before /tmp/nft.after && lab-report trace.nft=none || { diff /tmp/nft.before /tmp/nft.after; lab-report trace.nft=left; }
cmp -s /tmp/link.before /tmp/link.after && lab-report trace.links=none || { diff /tmp/link.before /tmp/link.after; lab-report trace.links=left; }
"#;

/// The tinyvmm config for VM `n`: the example's name and network section (what netctl
/// applied) and shares (served by tinyvmm's embedded server), the lab's kernel and initrd
/// instead of the host paths, 1 vCPU and 256 MiB (four VMs fit L1's 4 CPUs and 3 GiB).
fn lab_vm_config(example: &str, n: u32) -> String {
    let mut v: serde_json::Value = serde_json::from_str(example).unwrap();
    let obj = v.as_object_mut().unwrap();
    assert_eq!(obj["shares"].as_array().map(Vec::len), Some(3), "{example}");
    obj.remove("control_socket");
    obj.insert("memory_mib".into(), 256.into());
    obj.insert("vcpus".into(), 1.into());
    obj.insert("serial".into(), "stdout".into());
    obj.insert(
        "kernel".into(),
        serde_json::json!({
            "path": "/lab/l2/vmlinuz",
            "initrd": "/lab/l2/initrd.gz",
            "cmdline": format!("console=ttyS0 reboot=k panic=1 pci=off quiet lab.run=vm{n}"),
        }),
    );
    serde_json::to_string_pretty(&v).unwrap()
}

#[test]
fn demo_when_four_vms_on_netctl_networks_then_nat_works_and_vms_are_isolated() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let lab = Lab::new(Mode::Fast).unwrap_or_else(|e| panic!("{e}"));
    let mut scenario = Scenario::new("demo-4vm")
        .l2_script(L2_SCRIPT)
        .script(L1_SCRIPT)
        .host_binary("/usr/sbin/nft")
        .host_binary("/usr/sbin/ip")
        .timeout(Duration::from_secs(600))
        .emulation_retries(1);
    for n in VMS {
        let example = std::fs::read_to_string(examples.join(format!("vm{n}.json"))).unwrap();
        scenario = scenario
            .file(&format!("/lab/vm{n}.json"), lab_vm_config(&example, n))
            .file(&format!("/lab/examples/vm{n}.json"), example);
    }
    let out = lab.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    println!("demo: lab run took {:?}", out.elapsed);

    out.assert_kv("netctl.apply", "0");
    out.assert_kv("netctl.reapply", "noop");
    out.assert_kv("all.ready", "1");
    out.assert_kv("all.tested", "1");
    for n in VMS {
        out.assert_kv(&format!("vm{n}.exit"), "0");
        out.assert_kv(&format!("vm{n}.gateway"), "ok");
        out.assert_kv(&format!("vm{n}.shares"), "ok");
        out.assert_kv(&format!("vm{n}.store"), "hello-from-the-store");
        out.assert_kv(&format!("vm{n}.store_write"), "refused");
        out.assert_kv(&format!("vm{n}.var_write"), "ok");
        // Each VM wrote its own var share, nobody else's.
        out.assert_kv(&format!("vm{n}.host_who"), &format!("vm{n}"));
        // NAT: the upstream server sees the host's uplink address, not 10.N.0.2.
        out.assert_kv(&format!("vm{n}.upstream_sees"), "100.64.0.1");
        for o in VMS.iter().filter(|&&o| o != n) {
            for check in ["icmp_vm", "tcp_vm", "icmp_gw"] {
                out.assert_kv(&format!("vm{n}.{check}{o}"), "blocked");
            }
        }
    }
    out.assert_kv("netctl.down", "0");
    out.assert_kv("trace.nft", "none");
    out.assert_kv("trace.links", "none");
}
