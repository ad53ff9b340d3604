//! Renders netctl's nftables ruleset: `table inet tinyvmm` (L3: isolation, egress, NAT) and
//! `table bridge tinyvmm` (L2: per-TAP anti-spoofing). Both are replaced in one `nft -f`
//! transaction, so the kernel sees either the old pair of tables or the new pair.
//!
//! Rules match interfaces by name (`iifname`/`oifname`), which nftables accepts before the
//! interfaces exist: the ruleset is loaded before any bridge or TAP is created.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::model::{Egress, Host, VmNet};

/// Our table name, in both families.
pub const TABLE: &str = "tinyvmm";
/// Prefix of the table comment that carries the ruleset fingerprint.
pub const COMMENT_PREFIX: &str = "netctl fnv64=";

/// FNV-1a 64: a stable fingerprint of the rendered body (no crypto needed).
pub fn fingerprint(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn quoted_set<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let set: BTreeSet<&str> = names.into_iter().collect();
    let items: Vec<String> = set.iter().map(|n| format!("\"{n}\"")).collect();
    items.join(", ")
}

fn plain_set(items: impl IntoIterator<Item = String>) -> String {
    let set: BTreeSet<String> = items.into_iter().collect();
    set.into_iter().collect::<Vec<_>>().join(", ")
}

/// The definitions of both tables (without the replace preamble). `nets` must not be empty.
fn body(nets: &[VmNet], host: &Host) -> String {
    let mut s = String::new();
    let bridges = quoted_set(nets.iter().map(|n| n.bridge.as_str()));
    let subnets = plain_set(nets.iter().map(|n| n.address.subnet_string()));
    let gateways = plain_set(nets.iter().map(|n| n.gateway.to_string()));
    let own_gw = plain_set(
        nets.iter()
            .map(|n| format!("\"{}\" . {}", n.bridge, n.gateway)),
    );
    let up = &host.uplink;
    let ts = &host.tailscale_if;
    let _ = writeln!(s, "table inet {TABLE} {{");
    let _ = writeln!(
        s,
        "  set vm_bridges {{ type ifname; elements = {{ {bridges} }} }}"
    );
    let _ = writeln!(
        s,
        "  set vm_subnets {{ type ipv4_addr; flags interval; elements = {{ {subnets} }} }}"
    );
    let _ = writeln!(
        s,
        "  set vm_gateways {{ type ipv4_addr; elements = {{ {gateways} }} }}"
    );
    let _ = writeln!(
        s,
        "  set own_gateway {{ type ifname . ipv4_addr; elements = {{ {own_gw} }} }}"
    );
    s.push_str("  chain input {\n    type filter hook input priority filter; policy accept;\n");
    s.push_str("    # a VM may talk to its own gateway, never to another VM's gateway\n");
    s.push_str(
        "    iifname @vm_bridges ip daddr @vm_gateways iifname . ip daddr != @own_gateway drop\n",
    );
    s.push_str("  }\n");
    s.push_str("  chain forward {\n    type filter hook forward priority filter; policy accept;\n");
    s.push_str("    # no VM-to-VM forwarding, in any direction\n");
    s.push_str("    iifname @vm_bridges oifname @vm_bridges drop\n");
    s.push_str("    oifname @vm_bridges ct state established,related accept\n");
    let _ = writeln!(s, "    iifname \"{ts}\" oifname @vm_bridges accept");
    s.push_str("    oifname @vm_bridges drop\n");
    s.push_str("    iifname @vm_bridges ct state established,related accept\n");
    match &host.egress {
        Egress::All => {
            let _ = writeln!(s, "    iifname @vm_bridges oifname \"{up}\" accept");
        }
        Egress::Allow { tcp, udp } => {
            for (proto, ports) in [("tcp", tcp), ("udp", udp)] {
                if !ports.is_empty() {
                    let p: Vec<String> = ports.iter().map(u16::to_string).collect();
                    let p = p.join(", ");
                    let _ = writeln!(
                        s,
                        "    iifname @vm_bridges oifname \"{up}\" {proto} dport {{ {p} }} accept"
                    );
                }
            }
        }
    }
    s.push_str("    iifname @vm_bridges drop\n  }\n");
    s.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    let _ = writeln!(s, "    oifname \"{up}\" ip saddr @vm_subnets masquerade");
    s.push_str("  }\n}\n");

    let taps = quoted_set(nets.iter().map(|n| n.tap.as_str()));
    let tap_mac = plain_set(nets.iter().map(|n| format!("\"{}\" . {}", n.tap, n.mac)));
    let tap_ip = plain_set(
        nets.iter()
            .map(|n| format!("\"{}\" . {}", n.tap, n.address.addr)),
    );
    let _ = writeln!(s, "table bridge {TABLE} {{");
    let _ = writeln!(s, "  set taps {{ type ifname; elements = {{ {taps} }} }}");
    let _ = writeln!(
        s,
        "  set tap_mac {{ type ifname . ether_addr; elements = {{ {tap_mac} }} }}"
    );
    let _ = writeln!(
        s,
        "  set tap_ip {{ type ifname . ipv4_addr; elements = {{ {tap_ip} }} }}"
    );
    s.push_str(
        "  chain prerouting {\n    type filter hook prerouting priority -200; policy accept;\n",
    );
    s.push_str("    iifname != @taps accept\n");
    s.push_str("    # anti-spoofing: a VM may only use its own MAC and IPv4 address\n");
    s.push_str("    iifname . ether saddr != @tap_mac drop\n");
    s.push_str("    ether type arp iifname . arp saddr ether != @tap_mac drop\n");
    s.push_str("    ether type arp iifname . arp saddr ip != @tap_ip drop\n");
    s.push_str("    ether type ip iifname . ip saddr != @tap_ip drop\n");
    s.push_str("    # IPv4 and ARP only (no IPv6, no VLAN tags)\n");
    s.push_str("    ether type != { ip, arp } drop\n  }\n");
    s.push_str("  chain forward {\n    type filter hook forward priority filter; policy accept;\n");
    s.push_str("    iifname @taps oifname @taps drop\n  }\n}\n");
    s
}

/// The full `nft -f` script that atomically replaces both tables with the ruleset for
/// `nets`, or deletes them when `nets` is empty. Returns (script, fingerprint).
pub fn render(nets: &[VmNet], host: &Host) -> (String, Option<String>) {
    let mut s = String::new();
    // `add table` first so the `delete table` cannot fail on a first apply.
    for fam in ["inet", "bridge"] {
        let _ = writeln!(s, "add table {fam} {TABLE}");
        let _ = writeln!(s, "delete table {fam} {TABLE}");
    }
    if nets.is_empty() {
        return (s, None);
    }
    let b = body(nets, host);
    let fp = fingerprint(&b);
    // The fingerprint goes in as a table comment: `status`/no-op detection read it back.
    let with_comment = b.replacen(
        &format!("table inet {TABLE} {{\n"),
        &format!("table inet {TABLE} {{\n  comment \"{COMMENT_PREFIX}{fp}\"\n"),
        1,
    );
    s.push_str(&with_comment);
    (s, Some(fp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mac;
    use std::net::Ipv4Addr;

    fn net(i: u8) -> VmNet {
        VmNet {
            vm: format!("vm{i}"),
            source: String::new(),
            tap: format!("vm-vm{i}"),
            bridge: format!("br-vm{i}"),
            mac: Mac([2, 0, 0, 0, 0, i]),
            address: format!("10.{i}.0.2/24").parse().unwrap(),
            gateway: Ipv4Addr::new(10, i, 0, 1),
        }
    }

    fn host(egress: Egress) -> Host {
        Host {
            uplink: "up0".into(),
            tap_uid: None,
            tap_gid: None,
            egress,
            tailscale_if: "tailscale0".into(),
        }
    }

    #[test]
    fn render_when_two_vms_then_sets_list_both_and_fingerprint_in_comment() {
        let (s, fp) = render(&[net(1), net(2)], &host(Egress::All));
        let fp = fp.unwrap();
        assert!(s.contains(&format!("comment \"{COMMENT_PREFIX}{fp}\"")));
        assert!(s.contains("elements = { \"br-vm1\", \"br-vm2\" }"));
        assert!(s.contains("\"vm-vm2\" . 02:00:00:00:00:02"));
        assert!(s.contains("\"vm-vm1\" . 10.1.0.2"));
        assert!(s.contains("oifname \"up0\" ip saddr @vm_subnets masquerade"));
        assert!(s.contains("iifname @vm_bridges oifname \"up0\" accept"));
        assert!(s.starts_with("add table inet tinyvmm\ndelete table inet tinyvmm\n"));
    }

    #[test]
    fn render_when_allow_list_then_only_those_ports_accepted() {
        let e: Egress = "tcp:80,tcp:443".parse().unwrap();
        let (s, _) = render(&[net(1)], &host(e));
        assert!(
            s.contains("oifname \"up0\" tcp dport { 80, 443 } accept"),
            "{s}"
        );
        assert!(!s.contains("oifname \"up0\" accept"));
        assert!(!s.contains("udp dport"));
    }

    #[test]
    fn render_when_order_differs_then_same_fingerprint() {
        let h = host(Egress::All);
        assert_eq!(
            render(&[net(1), net(2)], &h).1,
            render(&[net(2), net(1)], &h).1
        );
        assert_ne!(render(&[net(1)], &h).1, render(&[net(1), net(2)], &h).1);
    }

    #[test]
    fn render_when_empty_then_only_deletes() {
        let (s, fp) = render(&[], &host(Egress::All));
        assert!(fp.is_none());
        assert_eq!(
            s.lines().filter(|l| l.starts_with("delete table")).count(),
            2
        );
        assert!(!s.contains('{'));
    }
}
