//! Resolves host settings: flags, then an optional host file, then the last apply's
//! settings, then defaults (uplink = interface of the default route).

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::{check_ifname, Cidr, Egress, Host, VmNet};
use crate::netlink::{Netlink, Snapshot};

/// Host settings as given on the command line (all optional).
#[derive(Debug, Clone, Default)]
pub struct HostArgs {
    pub host_file: Option<PathBuf>,
    pub uplink: Option<String>,
    /// User name or numeric uid that owns the TAPs.
    pub tap_user: Option<String>,
    /// Group name or numeric gid that owns the TAPs.
    pub tap_group: Option<String>,
    pub egress: Option<String>,
    pub tailscale_if: Option<String>,
    /// The VM subnet range this host owns in a fleet (`10.1.0.0/16`): every VM subnet must lie
    /// inside it (README "Outgrowing one host"). Checked on every plan/apply, not persisted.
    pub subnet_range: Option<String>,
}

/// The `--host FILE` JSON: `{"uplink": "eth0", "tap_user": "tinyvmm", "tap_group": "kvm",
/// "egress": "tcp:80,tcp:443", "tailscale_interface": "tailscale0", "subnet_range": "10.0.0.0/8"}`,
/// every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFile {
    uplink: Option<String>,
    tap_user: Option<String>,
    tap_group: Option<String>,
    egress: Option<String>,
    tailscale_interface: Option<String>,
    subnet_range: Option<String>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::HostSettings(msg.into())
}

fn uid_of(user: &str) -> Result<u32> {
    if let Ok(n) = user.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(bad(format!("unknown TAP user `{user}`"))),
    }
}

fn gid_of(group: &str) -> Result<u32> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(bad(format!("unknown TAP group `{group}`"))),
    }
}

fn merged(args: &HostArgs) -> Result<HostArgs> {
    let file = match &args.host_file {
        None => HostFile::default(),
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|source| Error::ReadConfig {
                path: p.clone(),
                source,
            })?;
            serde_json::from_str(&t).map_err(|e| Error::ParseConfig {
                path: p.clone(),
                msg: e.to_string(),
            })?
        }
    };
    Ok(HostArgs {
        host_file: None,
        uplink: args.uplink.clone().or(file.uplink),
        tap_user: args.tap_user.clone().or(file.tap_user),
        tap_group: args.tap_group.clone().or(file.tap_group),
        egress: args.egress.clone().or(file.egress),
        tailscale_if: args.tailscale_if.clone().or(file.tailscale_interface),
        subnet_range: args.subnet_range.clone().or(file.subnet_range),
    })
}

/// Refuses VM subnets outside the host's `subnet_range` (flag, else host file), naming each.
pub fn check_subnet_range(args: &HostArgs, nets: &[VmNet]) -> Result<()> {
    let Some(range) = merged(args)?.subnet_range else {
        return Ok(());
    };
    let range: Cidr = range
        .parse()
        .map_err(|e| bad(format!("subnet_range: {e}")))?;
    let outside: Vec<String> = nets
        .iter()
        .filter(|n| n.address.prefix < range.prefix || !range.contains(n.address.network()))
        .map(|n| {
            format!(
                "{}: VM {} subnet {} lies outside this host's subnet_range {}",
                n.source,
                n.vm,
                n.address.subnet_string(),
                range.subnet_string()
            )
        })
        .collect();
    if outside.is_empty() {
        Ok(())
    } else {
        Err(Error::Validate(outside))
    }
}

/// Resolves the effective host settings and checks the uplink exists.
pub fn resolve(
    args: &HostArgs,
    previous: Option<&Host>,
    nl: &Netlink,
    snap: &Snapshot,
) -> Result<Host> {
    let a = merged(args)?;
    let uplink = match a.uplink.or_else(|| previous.map(|h| h.uplink.clone())) {
        Some(u) => u,
        None => {
            let oif = nl.default_route_oif()?.ok_or_else(|| {
                Error::FindUplink("no IPv4 default route; pass --uplink IFACE".into())
            })?;
            snap.name_of(oif)
                .ok_or_else(|| {
                    Error::FindUplink(format!("default route via unknown ifindex {oif}"))
                })?
                .to_string()
        }
    };
    check_ifname(&uplink).map_err(Error::FindUplink)?;
    if snap.link(&uplink).is_none() {
        return Err(Error::FindUplink(format!(
            "interface `{uplink}` does not exist"
        )));
    }
    let tap_uid = match a.tap_user {
        Some(u) => Some(uid_of(&u)?),
        None => previous.and_then(|h| h.tap_uid),
    };
    let tap_gid = match a.tap_group {
        Some(g) => Some(gid_of(&g)?),
        None => previous.and_then(|h| h.tap_gid),
    };
    let egress = match a.egress {
        Some(e) => e.parse::<Egress>().map_err(bad)?,
        None => previous.map(|h| h.egress.clone()).unwrap_or_default(),
    };
    let tailscale_if = a
        .tailscale_if
        .or_else(|| previous.map(|h| h.tailscale_if.clone()))
        .unwrap_or_else(|| "tailscale0".to_string());
    check_ifname(&tailscale_if).map_err(bad)?;
    Ok(Host {
        uplink,
        tap_uid,
        tap_gid,
        egress,
        tailscale_if,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_file_when_example_then_parses_and_flags_win() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/host.json");
        let args = HostArgs {
            host_file: Some(example.into()),
            egress: Some("all".into()),
            ..Default::default()
        };
        let m = merged(&args).unwrap();
        assert_eq!(m.uplink.as_deref(), Some("eth0"));
        assert_eq!(m.tap_user.as_deref(), Some("tinyvmm"));
        assert_eq!(m.egress.as_deref(), Some("all"));
        assert_eq!(m.tailscale_if.as_deref(), Some("tailscale0"));
    }

    #[test]
    fn host_file_when_unknown_key_then_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.json");
        std::fs::write(&p, r#"{"uplnk": "eth0"}"#).unwrap();
        let args = HostArgs {
            host_file: Some(p),
            ..Default::default()
        };
        assert!(matches!(merged(&args), Err(Error::ParseConfig { .. })));
    }

    fn net(address: &str) -> VmNet {
        VmNet {
            vm: "vm1".into(),
            source: "vm1.json".into(),
            tap: "vm-vm1".into(),
            bridge: "br-vm1".into(),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            address: address.parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
        }
    }

    #[test]
    fn subnet_range_when_vm_inside_then_ok_else_refused_naming_vm() {
        let args = |r: &str| HostArgs {
            subnet_range: Some(r.into()),
            ..Default::default()
        };
        let nets = [net("10.1.0.2/24")];
        assert!(check_subnet_range(&args("10.1.0.0/16"), &nets).is_ok());
        assert!(check_subnet_range(&HostArgs::default(), &nets).is_ok());

        match check_subnet_range(&args("10.2.0.0/16"), &nets) {
            Err(Error::Validate(p)) => assert_eq!(
                p,
                ["vm1.json: VM vm1 subnet 10.1.0.0/24 lies outside this host's subnet_range 10.2.0.0/16"]
            ),
            other => panic!("{other:?}"),
        }
        // A VM subnet wider than the range is outside it too.
        let wide = [net("10.1.0.2/8")];
        assert!(check_subnet_range(&args("10.1.0.0/16"), &wide).is_err());
        assert!(matches!(
            check_subnet_range(&args("10.1.0.0"), &nets),
            Err(Error::HostSettings(_))
        ));
    }

    #[test]
    fn ids_when_numeric_or_known_names_then_resolved() {
        assert_eq!(uid_of("1234").unwrap(), 1234);
        assert_eq!(uid_of("root").unwrap(), 0);
        assert_eq!(gid_of("root").unwrap(), 0);
        assert!(uid_of("no-such-user-netctl").is_err());
    }
}
