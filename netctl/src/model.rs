//! The desired state: one isolated network per VM network entry, plus host settings.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Linux interface names are at most 15 bytes (IFNAMSIZ 16 with the NUL).
pub const IFNAME_MAX: usize = 15;

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("`{s}` is not a MAC address (aa:bb:cc:dd:ee:ff)"));
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(&parts) {
            if p.len() != 2 {
                return Err(format!("`{s}` is not a MAC address (aa:bb:cc:dd:ee:ff)"));
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| format!("`{s}` is not a MAC address"))?;
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// An IPv4 address with a prefix length, e.g. `10.1.0.2/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }
    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }
    /// `10.1.0.0/24` for `10.1.0.2/24`.
    pub fn subnet_string(&self) -> String {
        format!("{}/{}", self.network(), self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` needs a prefix length, e.g. 10.1.0.2/24"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("`{a}` is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("`{p}` is not a prefix length"))?;
        if !(1..=30).contains(&prefix) {
            return Err(format!("prefix /{prefix} must be between /1 and /30"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One VM network: a bridge holding the gateway address with exactly one TAP (the VM).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VmNet {
    /// The VM's name (config `name`).
    pub vm: String,
    /// Where it came from (for messages).
    pub source: String,
    pub tap: String,
    pub bridge: String,
    pub mac: Mac,
    /// The VM's own address and prefix.
    pub address: Cidr,
    /// The host side of the bridge.
    pub gateway: Ipv4Addr,
}

impl VmNet {
    /// Equal networks, wherever they were read from.
    pub fn same_net(&self, other: &VmNet) -> bool {
        let key = |n: &VmNet| {
            (
                n.vm.clone(),
                n.tap.clone(),
                n.bridge.clone(),
                n.mac,
                n.address,
                n.gateway,
            )
        };
        key(self) == key(other)
    }

    /// The gateway with the VM's prefix: what goes on the bridge.
    pub fn gateway_cidr(&self) -> Cidr {
        Cidr {
            addr: self.gateway,
            prefix: self.address.prefix,
        }
    }
}

/// Outbound policy for VM traffic leaving through the uplink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Egress {
    /// Everything may leave.
    #[default]
    All,
    /// Only these TCP and UDP destination ports (default-deny otherwise).
    Allow {
        tcp: BTreeSet<u16>,
        udp: BTreeSet<u16>,
    },
}

impl FromStr for Egress {
    type Err = String;
    /// `all`, or a comma list like `tcp:80,tcp:443,udp:53` (`none` allows nothing).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s == "all" {
            return Ok(Egress::All);
        }
        let mut tcp = BTreeSet::new();
        let mut udp = BTreeSet::new();
        if s == "none" {
            return Ok(Egress::Allow { tcp, udp });
        }
        for item in s.split(',').map(str::trim) {
            let (proto, port) = item
                .split_once(':')
                .ok_or_else(|| format!("egress item `{item}` must be tcp:PORT or udp:PORT"))?;
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("egress item `{item}`: bad port"))?;
            match proto {
                "tcp" => tcp.insert(port),
                "udp" => udp.insert(port),
                _ => return Err(format!("egress item `{item}`: protocol must be tcp or udp")),
            };
        }
        Ok(Egress::Allow { tcp, udp })
    }
}

impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Egress::All => write!(f, "all"),
            Egress::Allow { tcp, udp } => {
                let items: Vec<String> = tcp
                    .iter()
                    .map(|p| format!("tcp:{p}"))
                    .chain(udp.iter().map(|p| format!("udp:{p}")))
                    .collect();
                if items.is_empty() {
                    write!(f, "none")
                } else {
                    write!(f, "{}", items.join(","))
                }
            }
        }
    }
}

/// Host-wide settings, resolved (uplink known).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub uplink: String,
    pub tap_uid: Option<u32>,
    pub tap_gid: Option<u32>,
    pub egress: Egress,
    pub tailscale_if: String,
}

/// Checks that `name` is a usable Linux interface name.
pub fn check_ifname(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if name.len() > IFNAME_MAX {
        return Err(format!(
            "interface name `{name}` is {} bytes, Linux allows at most {IFNAME_MAX}",
            name.len()
        ));
    }
    if name == "." || name == ".." || name.contains(['/', ':', '"', '\\']) {
        return Err(format!(
            "interface name `{name}` contains a forbidden character"
        ));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("interface name `{name}` contains whitespace"));
    }
    Ok(())
}

/// Validates one entry on its own. Returns every problem.
fn check_entry(n: &VmNet, problems: &mut Vec<String>) {
    let at = format!("{} (vm {}, tap {})", n.source, n.vm, n.tap);
    for name in [&n.tap, &n.bridge] {
        if let Err(e) = check_ifname(name) {
            problems.push(format!("{at}: {e}"));
        }
    }
    if n.tap == n.bridge {
        problems.push(format!("{at}: tap and bridge have the same name"));
    }
    if n.mac.0[0] & 1 == 1 || n.mac.0 == [0; 6] {
        problems.push(format!("{at}: mac {} is not a unicast address", n.mac));
    }
    let a = n.address;
    if a.addr == a.network() || a.addr == a.broadcast() {
        problems.push(format!(
            "{at}: address {a} is the network or broadcast address"
        ));
    }
    if !a.contains(n.gateway) {
        problems.push(format!(
            "{at}: gateway {} is outside {}",
            n.gateway,
            a.subnet_string()
        ));
    } else if n.gateway == a.addr {
        problems.push(format!("{at}: gateway {} equals the VM address", n.gateway));
    } else if n.gateway == a.network() || n.gateway == a.broadcast() {
        problems.push(format!(
            "{at}: gateway {} is the network or broadcast address",
            n.gateway
        ));
    }
}

/// Validates the whole set: each entry and every cross-entry conflict. Returns every problem.
pub fn validate(nets: &[VmNet], host: &Host) -> Result<()> {
    let mut problems = Vec::new();
    for n in nets {
        check_entry(n, &mut problems);
    }
    let mut names: BTreeMap<&str, &VmNet> = BTreeMap::new();
    for n in nets {
        for name in [n.tap.as_str(), n.bridge.as_str()] {
            if let Some(prev) = names.insert(name, n) {
                problems.push(format!(
                    "interface name `{name}` is used by both {} (vm {}) and {} (vm {})",
                    prev.source, prev.vm, n.source, n.vm
                ));
            }
        }
        if n.tap == host.uplink || n.bridge == host.uplink {
            problems.push(format!(
                "{}: uses the uplink name `{}`",
                n.source, host.uplink
            ));
        }
    }
    for (i, a) in nets.iter().enumerate() {
        for b in &nets[i + 1..] {
            if a.mac == b.mac {
                problems.push(format!(
                    "duplicate mac {} in {} and {}",
                    a.mac, a.source, b.source
                ));
            }
            if a.address.addr == b.address.addr {
                problems.push(format!(
                    "duplicate address {} in {} and {}",
                    a.address.addr, a.source, b.source
                ));
            }
            if a.address.overlaps(&b.address) {
                problems.push(format!(
                    "subnet {} ({}) overlaps {} ({})",
                    a.address.subnet_string(),
                    a.source,
                    b.address.subnet_string(),
                    b.source
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Validate(problems))
    }
}

/// VM `i` of the seed layout (`vm-vmI` on `br-vmI`, 10.I.0.2/24), for unit tests.
#[cfg(test)]
pub(crate) fn test_net(i: u8) -> VmNet {
    VmNet {
        vm: format!("vm{i}"),
        source: format!("vm{i}.json"),
        tap: format!("vm-vm{i}"),
        bridge: format!("br-vm{i}"),
        mac: Mac([2, 0, 0, 0, 0, i]),
        address: format!("10.{i}.0.2/24").parse().unwrap(),
        gateway: Ipv4Addr::new(10, i, 0, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_net as net;

    fn host() -> Host {
        Host {
            uplink: "eth0".into(),
            tap_uid: None,
            tap_gid: None,
            egress: Egress::All,
            tailscale_if: "tailscale0".into(),
        }
    }

    fn problems(nets: &[VmNet]) -> Vec<String> {
        match validate(nets, &host()) {
            Err(Error::Validate(p)) => p,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn validate_when_distinct_then_ok() {
        validate(&[net(1), net(2), net(3)], &host()).unwrap();
    }

    #[test]
    fn validate_when_subnets_overlap_then_reports_overlap() {
        let mut b = net(2);
        b.address = "10.1.0.0/16"
            .parse::<Cidr>()
            .map(|c| Cidr {
                addr: Ipv4Addr::new(10, 1, 9, 9),
                ..c
            })
            .unwrap();
        b.gateway = Ipv4Addr::new(10, 1, 9, 1);
        let p = problems(&[net(1), b]);
        assert!(p.iter().any(|m| m.contains("overlaps")), "{p:?}");
    }

    #[test]
    fn validate_when_duplicate_names_macs_addresses_then_reports_each() {
        let mut b = net(2);
        b.tap = "vm-vm1".into();
        b.mac = net(1).mac;
        b.address = net(1).address;
        b.gateway = net(1).gateway;
        let p = problems(&[net(1), b]);
        assert!(
            p.iter().any(|m| m.contains("`vm-vm1` is used by both")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.contains("duplicate mac")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("duplicate address")), "{p:?}");
    }

    #[test]
    fn validate_when_name_too_long_then_reports_length() {
        let mut a = net(1);
        a.bridge = "br-this-is-too-long".into();
        let p = problems(&[a]);
        assert!(p.iter().any(|m| m.contains("at most 15")), "{p:?}");
    }

    #[test]
    fn validate_when_gateway_outside_or_multicast_mac_then_reports() {
        let mut a = net(1);
        a.gateway = Ipv4Addr::new(10, 9, 0, 1);
        a.mac = Mac([1, 0, 0, 0, 0, 1]);
        let p = problems(&[a]);
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn egress_when_parsed_then_roundtrips() {
        let e: Egress = "tcp:443,tcp:80,udp:53".parse().unwrap();
        assert_eq!(e.to_string(), "tcp:80,tcp:443,udp:53");
        assert_eq!("all".parse::<Egress>().unwrap(), Egress::All);
        assert!("icmp:1".parse::<Egress>().is_err());
        assert!("tcp:0".parse::<Egress>().is_err());
    }

    #[test]
    fn cidr_when_parsed_then_network_and_overlap_work() {
        let c: Cidr = "10.1.0.2/24".parse().unwrap();
        assert_eq!(c.subnet_string(), "10.1.0.0/24");
        assert!(c.contains(Ipv4Addr::new(10, 1, 0, 254)));
        assert!(!c.contains(Ipv4Addr::new(10, 2, 0, 1)));
        assert!("10.1.0.2".parse::<Cidr>().is_err());
        assert!("10.1.0.2/32".parse::<Cidr>().is_err());
    }

    #[test]
    fn mac_when_parsed_then_displays_lowercase() {
        let m: Mac = "02:AB:00:00:00:01".parse().unwrap();
        assert_eq!(m.to_string(), "02:ab:00:00:00:01");
        assert!("02:ab:00:00:00".parse::<Mac>().is_err());
        assert!("02:ab:00:00:00:zz".parse::<Mac>().is_err());
    }
}
