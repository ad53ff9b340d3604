//! The shipped examples/vm*.json parse, validate (without host files, which live on the real
//! host) and agree with the seed layout netctl and storage expect.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::fleet::check_fleet;
use crate::{load_with, Checks, MacAddr, SerialConfig, VmConfig};

fn example_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

fn load_examples() -> Vec<(PathBuf, VmConfig)> {
    example_files()
        .into_iter()
        .map(|p| {
            let cfg = load_with(&p, Checks::NO_FILES).unwrap_or_else(|e| panic!("{e}"));
            (p, cfg)
        })
        .collect()
}

#[test]
fn examples_when_loaded_unchecked_then_all_valid() {
    let examples = load_examples();
    let names: Vec<&str> = examples.iter().map(|(_, c)| c.name.as_str()).collect();
    assert_eq!(names, ["vm1", "vm2", "vm3", "vm4"]);
    for (path, cfg) in &examples {
        assert_eq!(path.file_stem().unwrap().to_str(), Some(cfg.name.as_str()));
    }
}

#[test]
fn examples_when_compared_then_match_seed_layout() {
    for (n, (_, cfg)) in (1u8..).zip(load_examples()) {
        let name = format!("vm{n}");
        assert_eq!((cfg.vcpus, cfg.memory_mib), (2, 1024), "{name}");
        assert_eq!(
            cfg.kernel.path,
            PathBuf::from(format!("/var/lib/microvms/{name}/kernel/bzImage"))
        );
        assert_eq!(
            cfg.kernel.initrd,
            Some(PathBuf::from(format!(
                "/var/lib/microvms/{name}/kernel/initrd"
            )))
        );
        assert_eq!(cfg.serial, SerialConfig::Stdout);
        assert_eq!(
            cfg.control_socket,
            Some(PathBuf::from(format!("/run/tinyvmm/{name}.sock")))
        );
        let [net] = cfg.network.as_slice() else {
            panic!("{name}: expected one network")
        };
        assert_eq!(net.tap, format!("vm-{name}"));
        assert_eq!(net.bridge.as_deref(), Some(format!("br-{name}").as_str()));
        assert_eq!(net.mac, MacAddr([2, 0, 0, 0, 0, n]));
        let addr = net.address.unwrap();
        assert_eq!((addr.addr, addr.prefix), (Ipv4Addr::new(10, n, 0, 2), 24));
        assert_eq!(net.gateway, Some(Ipv4Addr::new(10, n, 0, 1)));
        let shares: Vec<(&str, String, bool)> = cfg
            .shares
            .iter()
            .map(|s| {
                (
                    s.tag.as_str(),
                    s.source.as_ref().unwrap().display().to_string(),
                    s.read_only,
                )
            })
            .collect();
        let base = format!("/var/lib/microvms/{name}");
        assert_eq!(
            shares,
            [
                ("nix-store", "/nix/store".to_string(), true),
                ("etc", format!("{base}/etc"), false),
                ("var", format!("{base}/var"), false),
            ]
        );
    }
}

#[test]
fn examples_when_checked_as_fleet_then_no_collisions() {
    let configs: Vec<VmConfig> = load_examples().into_iter().map(|(_, c)| c).collect();
    assert_eq!(check_fleet(&configs), []);
}
