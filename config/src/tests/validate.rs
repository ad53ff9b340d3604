//! Cross-field validation: every problem, each at its own path and value position.

use super::{assert_one, assert_problem, edit, problems, Fixture};
use crate::{parse, validate, validate_with, Checks, VmConfig};

#[test]
fn validate_when_name_bad_then_name_problem() {
    let f = Fixture::new();
    for bad in ["VM1", "vm_1", "", "-vm", &"a".repeat(33)] {
        let text = f.with(r#""name": "vm1""#, &format!(r#""name": "{bad}""#));
        assert_one(&text, "name", &format!(r#""{bad}","#), "");
    }
    let text = f.with(
        r#""name": "vm1""#,
        &format!(r#""name": "{}""#, "a".repeat(32)),
    );
    assert!(parse(&text, "x").is_ok());
}

#[test]
fn validate_when_vcpus_zero_or_too_many_then_vcpus_problem() {
    let f = Fixture::new();
    let text = f.with(r#""vcpus": 2"#, r#""vcpus": 0"#);
    assert_one(&text, "vcpus", "0,", "must be 1..=32, got 0");
    let text = f.with(r#""vcpus": 2"#, r#""vcpus": 33"#);
    assert_one(&text, "vcpus", "33,", "got 33");
}

#[test]
fn validate_when_memory_too_small_or_odd_with_hugepages_then_memory_problem() {
    let f = Fixture::new();
    let text = f.with(r#""memory_mib": 256"#, r#""memory_mib": 15"#);
    assert_one(&text, "memory_mib", "15,", "got 15");
    let text = f.with(r#""memory_mib": 256"#, r#""memory_mib": 2000000"#);
    assert_one(&text, "memory_mib", "2000000,", "got 2000000");
    let text = f.with(r#""memory_mib": 256"#, r#""memory_mib": 257"#);
    let text = edit(&text, r#""hugepages": false"#, r#""hugepages": true"#);
    assert_one(&text, "memory_mib", "257,", "multiple of 2");
}

#[test]
fn validate_when_kernel_file_missing_then_kernel_path_problem() {
    let f = Fixture::new();
    std::fs::remove_file(f.path("bzImage")).unwrap();
    let needle = format!(r#""{}""#, f.path("bzImage"));
    assert_one(&f.text, "kernel.path", &needle, "No such file");
}

#[test]
fn validate_when_kernel_is_a_directory_or_initrd_missing_then_both_reported() {
    let f = Fixture::new();
    std::fs::remove_file(f.path("bzImage")).unwrap();
    std::fs::create_dir(f.path("bzImage")).unwrap();
    std::fs::remove_file(f.path("initrd")).unwrap();
    let ps = problems(&f.text);
    assert_eq!(ps.len(), 2, "{ps:#?}");
    let kernel = format!(r#""{}""#, f.path("bzImage"));
    assert_problem(
        &ps[0],
        &f.text,
        "kernel.path",
        &kernel,
        "not a regular file",
    );
    let initrd = format!(r#""{}""#, f.path("initrd"));
    assert_problem(&ps[1], &f.text, "kernel.initrd", &initrd, "No such file");
}

#[test]
fn validate_when_mac_multicast_or_zero_then_mac_problem() {
    let f = Fixture::new();
    let text = f.with(r#""02:00:00:00:00:02""#, r#""03:00:00:00:00:02""#);
    assert_one(
        &text,
        "network[1].mac",
        r#""03:00:00:00:00:02""#,
        "multicast",
    );
    let text = f.with(r#""02:00:00:00:00:02""#, r#""00:00:00:00:00:00""#);
    assert_one(
        &text,
        "network[1].mac",
        r#""00:00:00:00:00:00""#,
        "all zeros",
    );
}

#[test]
fn validate_when_mac_duplicated_then_second_one_named() {
    let f = Fixture::new();
    let text = f.with(r#""02:00:00:00:00:02""#, r#""02:00:00:00:00:01""#);
    let ps = problems(&text);
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert_eq!(ps[0].path, "network[1].mac");
    assert!(ps[0].message.contains("network[0]"), "{}", ps[0].message);
    let second = text.rfind("02:00:00:00:00:01").unwrap();
    let line = text[..second].matches('\n').count() + 1;
    assert_eq!(ps[0].line, line);
}

#[test]
fn validate_when_tap_too_long_empty_or_duplicated_then_tap_problem() {
    let f = Fixture::new();
    let text = f.with(r#""vm-vm1b""#, r#""vm-vm1b-0123456""#);
    assert!(parse(&text, "x").is_ok(), "15 bytes is the limit");
    let text = f.with(r#""vm-vm1b""#, r#""vm-vm1b-01234567""#);
    assert_one(
        &text,
        "network[1].tap",
        r#""vm-vm1b-01234567""#,
        "1..=15 bytes, got 16",
    );
    let text = f.with(r#""vm-vm1b""#, r#""""#);
    assert_one(&text, "network[1].tap", r#""""#, "got 0");
    let text = f.with(r#""vm-vm1b""#, r#""vm 1""#);
    assert_one(&text, "network[1].tap", r#""vm 1""#, "may not contain");
    let text = f.with(r#""vm-vm1b""#, r#""vm-vm1 ""#);
    assert_one(&text, "network[1].tap", r#""vm-vm1 ""#, "may not contain");
    let text = f.with(r#""tap": "vm-vm1b""#, r#""tap": "vm-vm1""#);
    let ps = problems(&text);
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert_eq!(ps[0].path, "network[1].tap");
    assert!(ps[0].message.contains("duplicate tap"));
}

#[test]
fn validate_when_bridge_bad_then_bridge_problem() {
    let f = Fixture::new();
    let text = f.with(r#""bridge": "br-vm1""#, r#""bridge":"vm-vm1b""#);
    let ps = problems(&text);
    assert_eq!(ps.len(), 1, "{ps:#?}");
    let (line, col) = super::pos(&text, r#""bridge":"vm-vm1b""#);
    assert_eq!(
        (ps[0].line, ps[0].column),
        (line, col + r#""bridge":"#.len())
    );
    assert_eq!(ps[0].path, "network[0].bridge");
    assert!(ps[0].message.contains("also used as a tap"));
    let text = f.with(r#""br-vm1""#, r#""br-vm1-too-long-x""#);
    assert_one(
        &text,
        "network[0].bridge",
        r#""br-vm1-too-long-x""#,
        "1..=15",
    );
}

#[test]
fn validate_when_transient_tap_on_a_bridge_then_transient_problem() {
    let f = Fixture::new();
    let text = f.with(
        r#""bridge": "br-vm1""#,
        r#""bridge": "br-vm1", "transient": true"#,
    );
    assert_one(
        &text,
        "network[0].transient",
        r#"true, "address""#,
        "a transient TAP is on no bridge",
    );
    // Without a bridge the entry is fine, and the flag survives a round trip.
    let text = f.with(
        r#", "bridge": "br-vm1", "address": "10.1.0.2/24", "gateway": "10.1.0.1""#,
        r#", "transient": true"#,
    );
    let vm = parse(&text, "x").unwrap();
    assert!(vm.network[0].transient);
    let json = serde_json::to_string(&vm).unwrap();
    assert!(json.contains(r#""transient":true"#), "{json}");
}

#[test]
fn validate_when_cidr_prefix_or_host_bad_then_address_problem() {
    let f = Fixture::new();
    for (cidr, words) in [
        ("10.1.0.2/31", "1..=30"),
        ("10.1.0.2/0", "1..=30"),
        ("10.1.0.0/24", "network or broadcast"),
        ("10.1.0.255/24", "network or broadcast"),
    ] {
        let text = f.with(r#""10.1.0.2/24""#, &format!(r#""{cidr}""#));
        let ps = problems(&text);
        assert_problem(
            &ps[0],
            &text,
            "network[0].address",
            &format!(r#""{cidr}""#),
            words,
        );
    }
}

#[test]
fn validate_when_gateway_outside_subnet_then_gateway_problem() {
    let f = Fixture::new();
    let text = f.with(r#""10.1.0.1""#, r#""10.2.0.1""#);
    assert_one(
        &text,
        "network[0].gateway",
        r#""10.2.0.1""#,
        "outside the subnet 10.1.0.0/24",
    );
    let text = f.with(r#""10.1.0.1""#, r#""10.1.0.2""#);
    assert_one(&text, "network[0].gateway", r#""10.1.0.2""#, "own address");
    let text = f.with(r#""10.1.0.1""#, r#""10.1.0.255""#);
    assert_one(&text, "network[0].gateway", r#""10.1.0.255""#, "broadcast");
    let text = f.with(r#", "address": "10.1.0.2/24""#, "");
    assert_one(
        &text,
        "network[0].gateway",
        r#""10.1.0.1""#,
        "needs an address",
    );
}

#[test]
fn validate_when_share_tag_duplicated_then_second_tag_named() {
    let f = Fixture::new();
    let text = f.with(r#""tag": "etc""#, r#""tag": "store""#);
    let ps = problems(&text);
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert_eq!(ps[0].path, "shares[1].tag");
    assert!(ps[0]
        .message
        .contains("duplicate tag store, also used by shares[0]"));
    let second = text.rfind(r#""store", "source""#).unwrap();
    let line = text[..second].matches('\n').count() + 1;
    let col = second - text[..second].rfind('\n').unwrap();
    assert_eq!((ps[0].line, ps[0].column), (line, col));
}

#[test]
fn validate_when_share_tag_empty_or_too_long_then_tag_problem() {
    let f = Fixture::new();
    let text = f.with(r#""tag": "etc""#, r#""tag": """#);
    assert_one(&text, "shares[1].tag", r#""""#, "got 0");
    let long = "t".repeat(37);
    let text = f.with(r#""tag": "etc""#, &format!(r#""tag": "{long}""#));
    assert_one(
        &text,
        "shares[1].tag",
        &format!(r#""{long}""#),
        "1..=36 bytes, got 37",
    );
}

#[test]
fn validate_when_share_source_missing_or_file_then_source_problem() {
    let f = Fixture::new();
    std::fs::remove_dir(f.path("etc")).unwrap();
    let needle = format!(r#""{}""#, f.path("etc"));
    assert_one(&f.text, "shares[1].source", &needle, "No such file");
    std::fs::write(f.path("etc"), "").unwrap();
    assert_one(&f.text, "shares[1].source", &needle, "not a directory");
}

#[test]
fn validate_when_parent_dirs_missing_then_serial_and_socket_problems() {
    let f = Fixture::new();
    let text = f.with("serial.log", "nodir/serial.log");
    let text = edit(&text, "vm1.sock", "nodir/vm1.sock");
    let ps = problems(&text);
    assert_eq!(ps.len(), 2, "{ps:#?}");
    let serial = format!(r#""{}""#, f.path("nodir/serial.log"));
    assert_problem(&ps[0], &text, "serial.file", &serial, "parent directory");
    let sock = format!(r#""{}""#, f.path("nodir/vm1.sock"));
    assert_problem(&ps[1], &text, "control_socket", &sock, "parent directory");
}

#[test]
fn validate_when_socket_path_too_long_then_socket_problem() {
    let f = Fixture::new();
    let long = format!("{}.sock", "s".repeat(110));
    let text = f.with("vm1.sock", &long);
    let needle = format!(r#""{}""#, f.path(&long));
    assert_one(&text, "control_socket", &needle, "at most 107");
}

#[test]
fn validate_when_more_than_14_virtio_devices_then_count_problem() {
    let f = Fixture::new();
    // rng + 2 network + 2 shares = 5; 10 more shares make 15.
    let etc = format!(r#"{{"tag": "etc", "source": "{}"}}"#, f.path("etc"));
    let extra: String = (0..10)
        .map(|i| format!(r#", {{"tag": "x{i}", "source": "{}"}}"#, f.path("etc")))
        .collect();
    let text = f.with(&etc, &format!("{etc}{extra}"));
    let (line, column) = super::pos(&text, "[\n    {\"tag\": \"store\"");
    let ps = problems(&text);
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert_eq!(ps[0].path, "shares");
    assert_eq!((ps[0].line, ps[0].column), (line, column));
    assert_eq!(
        ps[0].message,
        "15 virtio devices (rng 1 + network 2 + shares 12), at most 14"
    );
    let text = edit(&text, r#""rng": true"#, r#""rng": false"#);
    assert!(parse(&text, "x").is_ok());
}

#[test]
fn validate_when_many_things_wrong_then_all_reported_in_order() {
    let f = Fixture::new();
    let text = f.with(r#""name": "vm1""#, r#""name": "VM1""#);
    let text = edit(&text, r#""vcpus": 2"#, r#""vcpus": 0"#);
    let text = edit(&text, r#""02:00:00:00:00:02""#, r#""02:00:00:00:00:01""#);
    let text = edit(&text, r#""10.1.0.1""#, r#""10.9.0.1""#);
    let text = edit(&text, r#""tag": "etc""#, r#""tag": "store""#);
    std::fs::remove_file(f.path("initrd")).unwrap();

    let err = parse(&text, "vm1.json").unwrap_err();

    let paths: Vec<&str> = err.problems().iter().map(|p| p.path.as_str()).collect();
    let expected = [
        "name",
        "vcpus",
        "kernel.initrd",
        "network[0].gateway",
        "network[1].mac",
        "shares[1].tag",
    ];
    assert_eq!(paths, expected);
    let rendered = err.to_string();
    let lines: Vec<&str> = rendered.lines().collect();
    assert_eq!(lines.len(), 6);
    let (l, c) = super::pos(&text, r#""VM1""#);
    assert!(
        lines[0].starts_with(&format!("vm1.json:{l}:{c}: name: ")),
        "{}",
        lines[0]
    );
    let (l, c) = super::pos(&text, r#""10.9.0.1""#);
    assert!(
        lines[3].starts_with(&format!("vm1.json:{l}:{c}: network[0].gateway: ")),
        "{}",
        lines[3]
    );
    for (line, path) in lines.iter().zip(expected) {
        assert!(
            line.starts_with("vm1.json:") && line.contains(&format!(": {path}: ")),
            "{line}"
        );
    }
}

#[test]
fn validate_when_config_built_in_code_then_problems_without_positions() {
    let f = Fixture::new();
    let mut cfg: VmConfig = parse(&f.text, "vm1.json").unwrap();
    assert!(validate(&cfg).is_empty());
    cfg.vcpus = 0;
    cfg.kernel.path = f.path("missing").into();
    let ps = validate(&cfg);
    assert_eq!(ps.len(), 2, "{ps:#?}");
    assert_eq!(
        (ps[0].path.as_str(), ps[0].line, ps[0].column),
        ("vcpus", 0, 0)
    );
    assert_eq!(ps[1].path, "kernel.path");
    let ps = validate_with(&cfg, Checks::NO_FILES);
    assert_eq!(ps.len(), 1, "{ps:#?}");
    cfg.kernel.path = "".into();
    let ps = validate_with(&cfg, Checks::NO_FILES);
    assert_eq!(ps[1].path, "kernel.path");
    assert_eq!(ps[1].message, "must not be empty");
}

#[test]
fn validate_when_share_has_socket_instead_of_source_then_ok() {
    let f = Fixture::new();
    let etc = format!(r#""source": "{}""#, f.path("etc"));
    let text = f.with(&etc, &format!(r#""socket": "{}""#, f.path("fs.sock")));

    let cfg = parse(&text, "x").unwrap();

    assert_eq!(cfg.shares[1].source, None);
    assert_eq!(
        cfg.shares[1].socket.as_deref(),
        Some(std::path::Path::new(&f.path("fs.sock")))
    );
}

#[test]
fn validate_when_share_has_both_source_and_socket_then_socket_problem() {
    let f = Fixture::new();
    let etc = format!(r#""source": "{}""#, f.path("etc"));
    let sock = format!(r#""{}""#, f.path("fs.sock"));
    let text = f.with(&etc, &format!(r#"{etc}, "socket": {sock}"#));
    assert_one(&text, "shares[1].socket", &sock, "not both");
}

#[test]
fn validate_when_share_has_neither_source_nor_socket_then_source_problem() {
    let f = Fixture::new();
    let etc = format!(r#", "source": "{}""#, f.path("etc"));
    let text = f.with(&etc, "");
    let ps = problems(&text);
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert_eq!(ps[0].path, "shares[1].source");
    assert!(ps[0].message.contains("give source"), "{}", ps[0].message);
}

#[test]
fn validate_when_share_socket_bad_then_socket_problem() {
    let f = Fixture::new();
    let etc = format!(r#""source": "{}""#, f.path("etc"));
    let nodir = format!(r#""{}""#, f.path("nodir/fs.sock"));
    let text = f.with(&etc, &format!(r#""socket": {nodir}"#));
    assert_one(&text, "shares[1].socket", &nodir, "parent directory");
    let long = format!(r#""{}""#, f.path(&format!("{}.sock", "s".repeat(110))));
    let text = f.with(&etc, &format!(r#""socket": {long}"#));
    assert_one(&text, "shares[1].socket", &long, "at most 107");
}

#[test]
fn validate_when_socket_share_read_only_then_read_only_problem() {
    let f = Fixture::new();
    let store = format!(r#""source": "{}", "read_only": true"#, f.path("store"));
    let sock = format!(r#""socket": "{}", "read_only": true"#, f.path("fs.sock"));
    let text = f.with(&store, &sock);
    let ps = problems(&text);
    assert_eq!(ps.len(), 1, "{ps:#?}");
    let at = text.find(r#""read_only": true"#).unwrap() + r#""read_only": "#.len();
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').unwrap();
    assert_eq!(ps[0].path, "shares[0].read_only");
    assert_eq!((ps[0].line, ps[0].column), (line, column));
    assert!(ps[0].message.contains("source shares only"));
}
