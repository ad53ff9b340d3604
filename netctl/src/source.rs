//! Reads the VM config files (the same vmN.json tinyvmm runs) into [`VmNet`] entries.
//!
//! Only the fields netctl needs are read (`name`, `network[]`); the full schema is
//! validated by the `vmconfig` crate when tinyvmm runs the file.

use std::net::Ipv4Addr;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::{Cidr, Mac, VmNet};

#[derive(Deserialize)]
struct FileSubset {
    name: String,
    #[serde(default)]
    network: Vec<NetSubset>,
}

#[derive(Deserialize)]
struct NetSubset {
    tap: String,
    mac: String,
    bridge: Option<String>,
    address: Option<String>,
    gateway: Option<String>,
}

/// What one file contributes: managed entries, and notes about entries netctl skips.
#[derive(Debug, Default)]
pub struct Loaded {
    pub nets: Vec<VmNet>,
    pub notes: Vec<String>,
}

/// Loads every file. Parse and per-field problems of all files are reported together.
pub fn load_files<P: AsRef<Path>>(paths: &[P]) -> Result<Loaded> {
    let mut out = Loaded::default();
    let mut problems = Vec::new();
    for p in paths {
        let p = p.as_ref();
        let text = std::fs::read_to_string(p).map_err(|source| Error::ReadConfig {
            path: p.to_path_buf(),
            source,
        })?;
        let file: FileSubset = serde_json::from_str(&text).map_err(|e| Error::ParseConfig {
            path: p.to_path_buf(),
            msg: e.to_string(),
        })?;
        for (i, n) in file.network.iter().enumerate() {
            let at = format!("{}: network[{i}]", p.display());
            match convert(&file.name, &p.display().to_string(), n, &at) {
                Ok(Some(v)) => out.nets.push(v),
                Ok(None) => out.notes.push(format!(
                    "{at}: tap {} has no `bridge`; netctl does not manage it",
                    n.tap
                )),
                Err(mut e) => problems.append(&mut e),
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
    n: &NetSubset,
    at: &str,
) -> std::result::Result<Option<VmNet>, Vec<String>> {
    let Some(bridge) = &n.bridge else {
        return Ok(None);
    };
    let mut problems = Vec::new();
    let mac = n
        .mac
        .parse::<Mac>()
        .map_err(|e| problems.push(format!("{at}.mac: {e}")))
        .ok();
    let address = match &n.address {
        None => {
            problems.push(format!("{at}.address: required when `bridge` is set"));
            None
        }
        Some(a) => a
            .parse::<Cidr>()
            .map_err(|e| problems.push(format!("{at}.address: {e}")))
            .ok(),
    };
    let gateway = match (&n.gateway, address) {
        (Some(g), _) => g
            .parse::<Ipv4Addr>()
            .map_err(|_| problems.push(format!("{at}.gateway: `{g}` is not an IPv4 address")))
            .ok(),
        // Default: the first host address of the subnet.
        (None, Some(a)) => Some(Ipv4Addr::from(u32::from(a.network()) + 1)),
        (None, None) => None,
    };
    match (mac, address, gateway) {
        (Some(mac), Some(address), Some(gateway)) if problems.is_empty() => Ok(Some(VmNet {
            vm: vm.to_string(),
            source: source.to_string(),
            tap: n.tap.clone(),
            bridge: bridge.clone(),
            mac,
            address,
            gateway,
        })),
        _ => Err(problems),
    }
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
        let f = file(r#"{"name":"vm1","network":[{"tap":"t0","mac":"02:00:00:00:00:01"}]}"#);
        let l = load_files(&[f.path()]).unwrap();
        assert!(l.nets.is_empty());
        assert_eq!(l.notes.len(), 1);
    }

    #[test]
    fn load_when_bad_fields_then_every_problem_reported() {
        let f = file(
            r#"{"name":"vm1","network":[{"tap":"t0","mac":"zz","bridge":"b0","gateway":"x"}]}"#,
        );
        match load_files(&[f.path()]) {
            Err(Error::Validate(p)) => assert_eq!(p.len(), 3, "{p:?}"),
            other => panic!("expected validation error, got {other:?}"),
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
