//! Syntax and shape errors: serde stops at the first, and we name its path and position.

use std::net::Ipv4Addr;

use super::{assert_one, edit, is_deserialize, pos, problems, Fixture};
use crate::{
    load, parse, parse_unchecked, ConfigError, MacAddr, MmioDiscovery, SerialConfig, VmConfig,
    DEFAULT_CMDLINE,
};

#[test]
fn parse_when_config_good_then_every_field_read() {
    let f = Fixture::new();
    let cfg = parse(&f.text, "vm1.json").unwrap();
    assert_eq!(cfg.name, "vm1");
    assert_eq!((cfg.vcpus, cfg.memory_mib, cfg.hugepages), (2, 256, false));
    assert_eq!(cfg.kernel.path.to_str().unwrap(), f.path("bzImage"));
    assert_eq!(
        cfg.kernel.initrd.as_deref().unwrap().to_str().unwrap(),
        f.path("initrd")
    );
    assert_eq!(cfg.kernel.cmdline, "console=ttyS0 quiet");
    assert_eq!(cfg.serial, SerialConfig::File(f.path("serial.log").into()));
    assert!(cfg.boot_timer);
    assert_eq!(cfg.virtio_mmio_discovery, MmioDiscovery::Acpi);
    assert_eq!(cfg.shutdown_grace_secs, 3);
    assert_eq!(cfg.network.len(), 2);
    let n0 = &cfg.network[0];
    assert_eq!(n0.mac, MacAddr([2, 0, 0, 0, 0, 1]));
    assert_eq!(n0.bridge.as_deref(), Some("br-vm1"));
    let addr = n0.address.unwrap();
    assert_eq!((addr.addr, addr.prefix), (Ipv4Addr::new(10, 1, 0, 2), 24));
    assert_eq!(n0.gateway, Some(Ipv4Addr::new(10, 1, 0, 1)));
    assert_eq!(cfg.network[1].bridge, None);
    assert_eq!(cfg.shares[0].tag, "store");
    assert!(cfg.shares[0].read_only);
    assert!(!cfg.shares[1].read_only);
    assert_eq!(
        cfg.control_socket.unwrap().to_str().unwrap(),
        f.path("vm1.sock")
    );
    assert!(cfg.storage.snapshot_on_start);
    assert_eq!(cfg.storage.keep_snapshots, Some(3));
}

#[test]
fn parse_when_optional_fields_absent_then_defaults() {
    let f = Fixture::new();
    let text = format!(
        r#"{{"name": "a", "vcpus": 1, "memory_mib": 16, "kernel": {{"path": "{}"}}}}"#,
        f.path("bzImage")
    );
    let cfg = parse(&text, "min.json").unwrap();
    assert!(!cfg.hugepages && !cfg.boot_timer && cfg.rng);
    assert_eq!(cfg.kernel.initrd, None);
    assert_eq!(cfg.kernel.cmdline, DEFAULT_CMDLINE);
    assert_eq!(
        VmConfig::default_cmdline(),
        "console=ttyS0 reboot=k panic=1"
    );
    assert_eq!(cfg.serial, SerialConfig::Stdout);
    assert_eq!(cfg.virtio_mmio_discovery, MmioDiscovery::Both);
    assert_eq!(cfg.shutdown_grace_secs, 10);
    assert!(cfg.network.is_empty() && cfg.shares.is_empty());
    assert_eq!(cfg.control_socket, None);
    assert_eq!(cfg.storage, Default::default());
    assert_eq!(cfg.virtio_device_count(), 1);
}

#[test]
fn serialize_when_good_config_then_round_trips() {
    let f = Fixture::new();
    let cfg = parse(&f.text, "vm1.json").unwrap();
    let text = serde_json::to_string_pretty(&cfg).unwrap();
    assert_eq!(parse(&text, "again.json").unwrap(), cfg);
    // Every serial form round-trips too.
    for serial in [SerialConfig::None, SerialConfig::Stdout] {
        let c = VmConfig {
            serial,
            ..cfg.clone()
        };
        let t = serde_json::to_string(&c).unwrap();
        assert_eq!(parse(&t, "s.json").unwrap(), c);
    }
}

#[test]
fn parse_when_unknown_field_then_path_and_key_position() {
    let f = Fixture::new();
    let text = f.with(r#""cmdline": "#, r#""cmdlin": "#);
    assert_one(
        &text,
        "kernel.cmdlin",
        r#""cmdlin""#,
        "unknown field `cmdlin`",
    );
    let text = f.with(r#""tap": "vm-vm1b""#, r#""tap": "vm-vm1b", "mtu": 9000"#);
    assert_one(&text, "network[1].mtu", r#""mtu""#, "unknown field `mtu`");
    let text = f.with(r#""boot_timer""#, r#""boot_time""#);
    assert_one(&text, "boot_time", r#""boot_time""#, "unknown field");
}

#[test]
fn parse_when_wrong_type_then_path_and_value_position() {
    let f = Fixture::new();
    let text = f.with(r#""vcpus": 2"#, r#""vcpus": "2""#);
    assert_one(&text, "vcpus", r#""2""#, "invalid type: string");
    let text = f.with(r#""read_only": true"#, r#""read_only": "yes""#);
    assert_one(
        &text,
        "shares[0].read_only",
        r#""yes""#,
        "expected a boolean",
    );
    let text = f.with(r#""memory_mib": 256"#, r#""memory_mib": -5"#);
    assert_one(&text, "memory_mib", "-5", "expected u64");
    let text = f.with(r#""network": ["#, r#""network": [7, "#);
    assert_one(&text, "network[0]", "7,", "invalid type");
    let text = f.with(
        r#""virtio_mmio_discovery": "acpi""#,
        r#""virtio_mmio_discovery": "pci""#,
    );
    assert_one(
        &text,
        "virtio_mmio_discovery",
        r#""pci""#,
        "unknown variant `pci`",
    );
    let text = f.with(r#"{"file": "#, r#"{"fil": "#);
    assert_one(&text, "serial.fil", r#""fil""#, "unknown field `fil`");
    let text = f.with(r#"{"file": "#, r#"{"file": 5, "x": "#);
    assert_one(&text, "serial.file", "5,", "invalid type: integer");
}

#[test]
fn parse_when_serial_string_unknown_then_serial_named() {
    let text = super::TEMPLATE.replace(r#"{"file": "DIR/serial.log"}"#, r#""stderr""#);
    assert_one(
        &text,
        "serial",
        r#""stderr""#,
        r#"expected "stdout", "none""#,
    );
}

#[test]
fn parse_when_required_field_missing_then_field_named_at_its_object() {
    let f = Fixture::new();
    let text = f.with(r#""vcpus": 2,"#, "");
    let ps = problems(&text);
    assert_eq!(ps.len(), 1);
    assert_eq!(
        (ps[0].path.as_str(), ps[0].line, ps[0].column),
        ("vcpus", 1, 1)
    );
    let text = f.with(r#""mac": "02:00:00:00:00:02""#, r#""bridge": "b""#);
    assert_one(
        &text,
        "network[1].mac",
        r#"{"tap": "vm-vm1b""#,
        "missing field `mac`",
    );
}

#[test]
fn parse_when_syntax_error_then_line_and_column_of_the_break() {
    let f = Fixture::new();
    // Missing comma after `"vcpus": 2`: serde stops at the next key.
    let text = f.with(r#""vcpus": 2,"#, r#""vcpus": 2"#);
    let err = parse(&text, "vm1.json").unwrap_err();
    assert!(is_deserialize(&err));
    let p = &err.problems()[0];
    assert_eq!((p.line, p.column), (4, 3), "{p:?}");
    assert_eq!(p.message, "expected `,` or `}`");
    assert_eq!(err.to_string(), "vm1.json:4:3: expected `,` or `}`");

    let err = parse("{\n  \"name\": \"vm1\",\n  \"vcpus\": 2,,\n", "x.json").unwrap_err();
    assert_eq!((err.problems()[0].line, err.problems()[0].column), (3, 14));
    let err = parse("", "empty.json").unwrap_err();
    assert!(err.to_string().starts_with("empty.json:1:1: EOF"), "{err}");
    let err = parse(&format!("{} trailing", f.text), "t.json").unwrap_err();
    assert!(err.to_string().contains("trailing characters"), "{err}");
}

#[test]
fn parse_when_mac_malformed_then_mac_path_and_position() {
    let f = Fixture::new();
    let text = f.with(r#""02:00:00:00:00:02""#, r#""02:00:00:00:00""#);
    let err = parse(&text, "vm1.json").unwrap_err();
    assert!(is_deserialize(&err));
    assert_one(
        &text,
        "network[1].mac",
        r#""02:00:00:00:00""#,
        "MAC address",
    );
}

#[test]
fn parse_when_cidr_malformed_then_address_path() {
    let f = Fixture::new();
    let text = f.with(r#""10.1.0.2/24""#, r#""10.1.0.2""#);
    assert_one(&text, "network[0].address", r#""10.1.0.2""#, "10.1.0.2/24");
    let text = f.with(r#""10.1.0.2/24""#, r#""10.1.0.2/40""#);
    assert_one(&text, "network[0].address", r#""10.1.0.2/40""#, "prefix");
    let text = f.with(r#""gateway": "10.1.0.1""#, r#""gateway": "10.1.0""#);
    assert_one(&text, "network[0].gateway", r#""10.1.0""#, "invalid IPv4");
}

#[test]
fn parse_when_field_duplicated_then_second_key_named() {
    let f = Fixture::new();
    let text = f.with(r#""vcpus": 2,"#, r#""vcpus": 2, "vcpus": 3,"#);
    assert_one(&text, "vcpus", r#""vcpus": 3"#, "duplicate field `vcpus`");
}

#[test]
fn load_when_file_has_problem_then_origin_is_the_path() {
    let f = Fixture::new();
    let file = f.dir.path().join("vm1.json");
    std::fs::write(&file, f.with(r#""vcpus": 2"#, r#""vcpus": 0"#)).unwrap();
    let err = load(&file).unwrap_err();
    let (line, col) = pos(&std::fs::read_to_string(&file).unwrap(), r#"0,"#);
    assert_eq!(
        err.to_string(),
        format!(
            "{}:{line}:{col}: vcpus: must be 1..=32, got 0",
            file.display()
        )
    );
    std::fs::write(&file, &f.text).unwrap();
    assert_eq!(load(&file).unwrap().name, "vm1");
}

#[test]
fn load_when_file_missing_then_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = load(dir.path().join("nope.json")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    assert!(err.problems().is_empty());
}

#[test]
fn parse_unchecked_when_host_paths_absent_then_ok_but_shape_still_checked() {
    let f = Fixture::new();
    let text = edit(&f.text, &f.path("bzImage"), "/nonexistent/bzImage");
    let text = edit(&text, &f.path("store"), "/nonexistent/store");
    assert!(parse(&text, "vm1.json").is_err());
    assert_eq!(parse_unchecked(&text, "vm1.json").unwrap().name, "vm1");
    let text = edit(&text, r#""vcpus": 2"#, r#""vcpus": 99"#);
    let err = parse_unchecked(&text, "vm1.json").unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
    assert_eq!(err.problems()[0].path, "vcpus");
}
