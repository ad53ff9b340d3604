//! Checks across several VM configs on one host: names, TAPs, MACs, sockets and subnets must
//! not collide. netctl runs this over every config it sets up; each config must already have
//! passed [`crate::validate_with`].

use std::collections::HashMap;
use std::fmt;

use crate::types::{Ipv4Cidr, VmConfig};

/// One collision between two VMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetProblem {
    /// The VM whose config holds the later of the two colliding values.
    pub vm: String,
    /// JSON path inside that VM's config, e.g. `network[0].mac`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FleetProblem {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: {}: {}", self.vm, self.path, self.message)
    }
}

/// Every collision among `configs` (compared in order; the later one is reported).
pub fn check_fleet(configs: &[VmConfig]) -> Vec<FleetProblem> {
    let mut c = Collisions::default();
    for cfg in configs {
        c.seen(&cfg.name, "name", "name", cfg.name.clone());
        if let Some(sock) = &cfg.control_socket {
            let key = sock.display().to_string();
            c.seen(&cfg.name, "control_socket", "control socket", key);
        }
        for (i, net) in cfg.network.iter().enumerate() {
            let at = |f: &str| format!("network[{i}].{f}");
            c.seen(&cfg.name, &at("tap"), "tap", net.tap.clone());
            c.seen(&cfg.name, &at("mac"), "MAC", net.mac.to_string());
            if let Some(cidr) = net.address {
                c.seen(&cfg.name, &at("address"), "address", cidr.addr.to_string());
                c.subnet(&cfg.name, &at("address"), net.bridge.as_deref(), cidr);
            }
        }
    }
    c.problems
}

#[derive(Default)]
struct Collisions {
    /// (kind, value) -> "vm path" of the first user.
    owners: HashMap<(&'static str, String), String>,
    /// Subnets seen so far with their bridge and first user.
    subnets: Vec<(Ipv4Cidr, Option<String>, String)>,
    problems: Vec<FleetProblem>,
}

impl Collisions {
    fn push(&mut self, vm: &str, path: &str, message: String) {
        self.problems.push(FleetProblem {
            vm: vm.to_string(),
            path: path.to_string(),
            message,
        });
    }

    fn seen(&mut self, vm: &str, path: &str, kind: &'static str, value: String) {
        let here = format!("{vm} {path}");
        match self.owners.get(&(kind, value.clone())) {
            Some(first) => {
                let message = format!("{kind} {value} is also used by {first}");
                self.push(vm, path, message);
            }
            None => {
                self.owners.insert((kind, value), here);
            }
        }
    }

    /// VMs on one bridge share its subnet; VMs on different bridges must not overlap.
    fn subnet(&mut self, vm: &str, path: &str, bridge: Option<&str>, cidr: Ipv4Cidr) {
        let here = format!("{vm} {path}");
        let mut found = None;
        for (other, other_bridge, first) in &self.subnets {
            let overlap = other.contains(cidr.network()) || cidr.contains(other.network());
            let same_bridge = bridge.is_some() && other_bridge.as_deref() == bridge;
            let same_net = other.network() == cidr.network() && other.prefix == cidr.prefix;
            if same_bridge && !same_net {
                found = Some(format!(
                    "subnet {}/{} differs from {}/{} of {first} on the same bridge",
                    cidr.network(),
                    cidr.prefix,
                    other.network(),
                    other.prefix
                ));
            } else if overlap && !same_bridge {
                found = Some(format!(
                    "subnet {}/{} overlaps {}/{} of {first} on another bridge",
                    cidr.network(),
                    cidr.prefix,
                    other.network(),
                    other.prefix
                ));
            }
            if found.is_some() {
                break;
            }
        }
        match found {
            Some(message) => self.push(vm, path, message),
            None => self.subnets.push((cidr, bridge.map(str::to_string), here)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_unchecked;

    fn vm(n: u8, bridge: &str, address: &str) -> VmConfig {
        let text = format!(
            r#"{{"name": "vm{n}", "vcpus": 1, "memory_mib": 64, "kernel": {{"path": "/k"}},
                "network": [{{"tap": "vm-vm{n}", "mac": "02:00:00:00:00:0{n}",
                              "bridge": "{bridge}", "address": "{address}"}}],
                "control_socket": "/run/tinyvmm/vm{n}.sock"}}"#
        );
        parse_unchecked(&text, "t").unwrap()
    }

    #[test]
    fn check_fleet_when_disjoint_then_no_problems() {
        let vms = [
            vm(1, "br-vm1", "10.1.0.2/24"),
            vm(2, "br-vm2", "10.2.0.2/24"),
        ];
        assert_eq!(check_fleet(&vms), []);
    }

    #[test]
    fn check_fleet_when_same_bridge_same_subnet_then_allowed() {
        let vms = [
            vm(1, "br-lan", "10.1.0.2/24"),
            vm(2, "br-lan", "10.1.0.3/24"),
        ];
        assert_eq!(check_fleet(&vms), []);
    }

    #[test]
    fn check_fleet_when_names_taps_macs_collide_then_each_reported() {
        let a = vm(1, "br-vm1", "10.1.0.2/24");
        let mut b = vm(2, "br-vm2", "10.2.0.2/24");
        b.name = "vm1".into();
        b.network[0].tap = "vm-vm1".into();
        b.network[0].mac = a.network[0].mac;
        b.control_socket = a.control_socket.clone();
        let ps = check_fleet(&[a, b]);
        let paths: Vec<&str> = ps.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["name", "control_socket", "network[0].tap", "network[0].mac"]
        );
        assert_eq!(
            ps[2].to_string(),
            "vm1: network[0].tap: tap vm-vm1 is also used by vm1 network[0].tap"
        );
    }

    #[test]
    fn check_fleet_when_subnets_overlap_across_bridges_then_reported() {
        let vms = [
            vm(1, "br-vm1", "10.1.0.2/16"),
            vm(2, "br-vm2", "10.1.5.2/24"),
        ];
        let ps = check_fleet(&vms);
        assert_eq!(ps.len(), 1, "{ps:#?}");
        assert_eq!(
            (ps[0].vm.as_str(), ps[0].path.as_str()),
            ("vm2", "network[0].address")
        );
        assert!(
            ps[0].message.contains("overlaps 10.1.0.0/16 of vm1"),
            "{}",
            ps[0]
        );
    }

    #[test]
    fn check_fleet_when_same_bridge_different_subnet_or_same_address_then_reported() {
        let vms = [
            vm(1, "br-lan", "10.1.0.2/24"),
            vm(2, "br-lan", "10.9.0.2/24"),
        ];
        let ps = check_fleet(&vms);
        assert_eq!(ps.len(), 1, "{ps:#?}");
        assert!(ps[0].message.contains("same bridge"), "{}", ps[0]);
        let vms = [
            vm(1, "br-lan", "10.1.0.2/24"),
            vm(2, "br-lan", "10.1.0.2/24"),
        ];
        let ps = check_fleet(&vms);
        assert_eq!(ps.len(), 1, "{ps:#?}");
        assert!(
            ps[0]
                .message
                .contains("address 10.1.0.2 is also used by vm1"),
            "{}",
            ps[0]
        );
    }
}
