//! Reads the VM config files (the same vmN.json tinyvmm runs, through the `vmconfig` crate:
//! one schema, one validation) into [`VmNet`] entries.

use std::net::Ipv4Addr;
use std::path::Path;

use vmconfig::NetConfig;

use crate::error::{Error, Result};
use crate::model::{Cidr, Mac, VmNet};

/// What the files contribute: managed entries, and notes about entries netctl skips.
#[derive(Debug, Default)]
pub struct Loaded {
    pub nets: Vec<VmNet>,
    pub notes: Vec<String>,
}

/// Loads every file (full vmconfig validation, minus file-system checks). The netctl
/// problems of all files are reported together.
pub fn load_files<P: AsRef<Path>>(paths: &[P]) -> Result<Loaded> {
    let mut out = Loaded::default();
    let mut problems = Vec::new();
    let mut names: std::collections::BTreeMap<String, String> = Default::default();
    for p in paths {
        let p = p.as_ref();
        let origin = p.display().to_string();
        let text = std::fs::read_to_string(p).map_err(|source| Error::ReadConfig {
            path: p.to_path_buf(),
            source,
        })?;
        let cfg = vmconfig::parse_unchecked(&text, &origin).map_err(|e| Error::ParseConfig {
            path: p.to_path_buf(),
            msg: e.to_string(),
        })?;
        if let Some(first) = names.insert(cfg.name.clone(), origin.clone()) {
            problems.push(format!(
                "{origin}: VM name `{}` is also used by {first}",
                cfg.name
            ));
        }
        for (i, n) in cfg.network.iter().enumerate() {
            let at = format!("{origin}: network[{i}]");
            match convert(&cfg.name, &origin, n, &at) {
                Ok(Some(v)) => out.nets.push(v),
                Ok(None) => out.notes.push(format!(
                    "{at}: tap {} has no `bridge`; netctl does not manage it",
                    n.tap
                )),
                Err(e) => problems.push(e),
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Error::Validate(problems))
    }
}

fn convert(
    vm: &str,
    source: &str,
    n: &NetConfig,
    at: &str,
) -> std::result::Result<Option<VmNet>, String> {
    let Some(bridge) = &n.bridge else {
        return Ok(None);
    };
    let Some(a) = n.address else {
        return Err(format!(
            "{at}.address: required when `bridge` is set (netctl)"
        ));
    };
    let address = Cidr {
        addr: a.addr,
        prefix: a.prefix,
    };
    // Default gateway: the first host address of the subnet.
    let gateway = n
        .gateway
        .unwrap_or_else(|| Ipv4Addr::from(u32::from(address.network()) + 1));
    Ok(Some(VmNet {
        vm: vm.to_string(),
        source: source.to_string(),
        tap: n.tap.clone(),
        bridge: bridge.clone(),
        mac: Mac(n.mac.0),
        address,
        gateway,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn load_when_full_entry_then_gateway_default_and_fields_read() {
        let f = file(
            r#"{"name":"vm1","vcpus":1,"memory_mib":64,"kernel":{"path":"/k"},
               "network":[{"tap":"vm-vm1","mac":"02:00:00:00:00:01","bridge":"br-vm1",
                           "address":"10.1.0.2/24"}]}"#,
        );
        let l = load_files(&[f.path()]).unwrap();
        assert_eq!(l.nets.len(), 1);
        let n = &l.nets[0];
        assert_eq!(
            (n.vm.as_str(), n.tap.as_str(), n.bridge.as_str()),
            ("vm1", "vm-vm1", "br-vm1")
        );
        assert_eq!(n.gateway, Ipv4Addr::new(10, 1, 0, 1));
    }

    #[test]
    fn load_when_no_bridge_then_skipped_with_note() {
        let f = file(
            r#"{"name":"vm1","vcpus":1,"memory_mib":64,"kernel":{"path":"/k"},
               "network":[{"tap":"t0","mac":"02:00:00:00:00:01"}]}"#,
        );
        let l = load_files(&[f.path()]).unwrap();
        assert!(l.nets.is_empty());
        assert_eq!(l.notes.len(), 1);
    }

    #[test]
    fn load_when_bridge_without_address_in_two_files_then_both_reported() {
        let text = r#"{"name":"vm1","vcpus":1,"memory_mib":64,"kernel":{"path":"/k"},
                       "network":[{"tap":"t0","mac":"02:00:00:00:00:01","bridge":"b0"}]}"#;
        let (a, b) = (file(text), file(&text.replace("vm1", "vm2")));
        match load_files(&[a.path(), b.path()]) {
            Err(Error::Validate(p)) => assert_eq!(p.len(), 2, "{p:?}"),
            other => panic!("expected validation error, got {other:?}"),
        }
    }

    #[test]
    fn load_when_two_files_name_the_same_vm_then_error() {
        let text = r#"{"name":"vm1","vcpus":1,"memory_mib":64,"kernel":{"path":"/k"}}"#;
        let (a, b) = (file(text), file(text));
        match load_files(&[a.path(), b.path()]) {
            Err(Error::Validate(p)) => assert!(p[0].contains("also used by"), "{p:?}"),
            other => panic!("expected validation error, got {other:?}"),
        }
    }

    #[test]
    fn load_when_bad_mac_then_vmconfig_error_with_position() {
        let f = file(
            r#"{"name":"vm1","vcpus":1,"memory_mib":64,"kernel":{"path":"/k"},
               "network":[{"tap":"t0","mac":"zz","bridge":"b0"}]}"#,
        );
        match load_files(&[f.path()]) {
            Err(Error::ParseConfig { msg, .. }) => assert!(msg.contains("network[0].mac"), "{msg}"),
            other => panic!("expected parse error, got {other:?}"),
        }
    }

    #[test]
    fn load_when_syntax_error_then_parse_error() {
        let f = file("{\"name\": ");
        assert!(matches!(
            load_files(&[f.path()]),
            Err(Error::ParseConfig { .. })
        ));
    }
}
