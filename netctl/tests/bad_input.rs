//! Bad input is a clear error before anything changes; plus the namespace guard and
//! tailscale-routes.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Exit status of a bad config, name or command line (README "Exit status").
const INVALID: i32 = 2;
/// Exit status of an operation the host does not allow (missing link, capability, binary).
const FAILED: i32 = 1;

/// Asserts exit status `code` with `needle` in stderr and an unchanged host.
fn assert_refused(t: &Topo, before: &str, out: Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {err}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert_eq!(
        before,
        t.snapshot(),
        "the host changed although apply was refused"
    );
}

fn edit(p: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(p).unwrap();
    assert!(text.contains(from));
    std::fs::write(p, text.replace(from, to)).unwrap();
}

#[test]
fn apply_when_subnets_overlap_then_error_and_nothing_changes() {
    let t = Topo::new();
    let (f1, f2) = (t.vm_file(1), t.vm_file(2));
    edit(&f2, "10.2.0.2/24", "10.1.0.130/25");
    edit(&f2, "10.2.0.1\"", "10.1.0.129\"");
    let before = t.snapshot();
    assert_refused(
        &t,
        &before,
        t.netctl(&["apply", s(&f1), s(&f2)]),
        INVALID,
        "overlaps",
    );
}

#[test]
fn apply_when_duplicate_mac_address_or_names_then_every_problem_reported() {
    let t = Topo::new();
    let (f1, f2) = (t.vm_file(1), t.vm_file(2));
    edit(&f2, "02:00:00:00:00:02", "02:00:00:00:00:01");
    edit(&f2, "\"vm-vm2\"", "\"vm-vm1\"");
    let before = t.snapshot();
    let out = t.netctl(&["apply", s(&f1), s(&f2)]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_refused(&t, &before, out, INVALID, "duplicate mac");
    assert!(err.contains("`vm-vm1` is used by both"), "{err}");

    // Duplicate address (same subnet too) between an applied VM and a new file.
    let f3 = t.vm_file(3);
    edit(&f3, "10.3.0.2/24", "10.1.0.2/24");
    edit(&f3, "10.3.0.1\"", "10.1.0.1\"");
    t.netctl_ok(&["apply", s(&f1)]);
    let before = t.snapshot();
    assert_refused(
        &t,
        &before,
        t.netctl(&["apply", s(&f3)]),
        INVALID,
        "duplicate address",
    );
}

#[test]
fn apply_when_name_longer_than_15_bytes_then_error() {
    let t = Topo::new();
    let f = t.vm_file(1);
    edit(&f, "\"br-vm1\"", "\"br-vm1-far-too-long\"");
    let before = t.snapshot();
    let out = t.netctl(&["apply", s(&f)]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_refused(&t, &before, out, INVALID, "network[0].bridge");
    assert!(err.contains("15"), "{err}");
}

#[test]
fn apply_when_uplink_missing_then_error() {
    let t = Topo::new();
    let f = t.vm_file(1);
    let before = t.snapshot();
    assert_refused(
        &t,
        &before,
        t.netctl(&["apply", s(&f), "--uplink", "nope0"]),
        FAILED,
        "`nope0` does not exist",
    );
    t.host.ip(&["route", "del", "default"]);
    let before = t.snapshot();
    assert_refused(
        &t,
        &before,
        t.netctl(&["apply", s(&f)]),
        FAILED,
        "no IPv4 default route",
    );
}

#[test]
fn apply_when_no_cap_net_admin_then_error() {
    let t = Topo::new();
    let f = t.vm_file(1);
    let before = t.snapshot();
    let state = t.dir.path().join("state");
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.host.name,
            "setpriv",
            "--bounding-set=-net_admin",
            "env",
        ])
        .arg(format!("NETCTL_TEST_NETNS={}", t.host.name))
        .arg(format!("NETCTL_STATE_DIR={}", state.display()))
        .arg(env!("CARGO_BIN_EXE_netctl"))
        .args(["apply", s(&f)])
        .output()
        .expect("run setpriv");
    assert_refused(&t, &before, out, FAILED, "CAP_NET_ADMIN");
}

#[test]
fn apply_when_nft_binary_missing_then_error() {
    let t = Topo::new();
    let f = t.vm_file(1);
    let before = t.snapshot();
    let out = t.netctl_env(&["apply", s(&f)], &[("PATH", "/nonexistent-netctl-test")]);
    assert_refused(&t, &before, out, FAILED, "`nft` binary was not found");
}

#[test]
fn apply_when_name_taken_by_another_kind_of_device_then_error() {
    let t = Topo::new();
    t.host.ip(&[
        "link", "add", "vm-vm1", "type", "veth", "peer", "name", "other0",
    ]);
    let f = t.vm_file(1);
    let before = t.snapshot();
    assert_refused(
        &t,
        &before,
        t.netctl(&["apply", s(&f)]),
        FAILED,
        "vm-vm1 exists but is a veth device",
    );
}

#[test]
fn apply_when_netns_guard_names_another_namespace_then_refuses() {
    let t = Topo::new();
    let other = Netns::new("other");
    let f = t.vm_file(1);
    let before = t.snapshot();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &t.host.name, "env"])
        .arg(format!("NETCTL_TEST_NETNS={}", other.name))
        .arg(format!(
            "NETCTL_STATE_DIR={}",
            t.dir.path().join("state").display()
        ))
        .arg(env!("CARGO_BIN_EXE_netctl"))
        .args(["apply", s(&f)])
        .output()
        .unwrap();
    assert_refused(&t, &before, out, FAILED, "refusing to run");
}

#[test]
fn plan_when_files_given_then_prints_ruleset_and_changes_nothing() {
    let t = Topo::new();
    let before = t.snapshot();
    let out = t.netctl_ok(&["plan", s(&t.vm_file(1)), "--egress", "tcp:80,tcp:443"]);
    assert!(out.contains("+ create bridge br-vm1"), "{out}");
    assert!(out.contains("table bridge tinyvmm {"), "{out}");
    assert!(out.contains("tcp dport { 80, 443 } accept"), "{out}");
    assert_eq!(before, t.snapshot());
}

#[test]
fn tailscale_routes_when_files_given_then_lists_subnets_and_apply_needs_tailscale() {
    let t = Topo::new();
    let (f1, f2) = (t.vm_file(1), t.vm_file(2));
    let out = t.netctl_ok(&["tailscale-routes", s(&f2), s(&f1)]);
    assert_eq!(out.trim(), "10.1.0.0/24,10.2.0.0/24");

    let out = t.netctl_env(
        &["tailscale-routes", s(&f1), "--apply"],
        &[("PATH", "/nonexistent-netctl-test")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`tailscale` was not found"));

    // Tailscale itself is not installable here: a stand-in `tailscale` records its argv.
    let bin = t.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = t.dir.path().join("tailscale.args");
    let script = format!("#!/bin/sh\necho \"$@\" > {}\n", log.display());
    let fake = bin.join("tailscale");
    std::fs::write(&fake, script).unwrap();
    std::process::Command::new("chmod")
        .args(["+x", s(&fake)])
        .status()
        .unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let out = t.netctl_env(
        &["tailscale-routes", s(&f1), s(&f2), "--apply"],
        &[("PATH", &path)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        args.trim(),
        "set --advertise-routes=10.1.0.0/24,10.2.0.0/24"
    );
}

#[test]
fn apply_when_bridge_has_other_ports_then_error() {
    let t = Topo::new();
    t.host.ip(&["link", "add", "br-vm1", "type", "bridge"]);
    t.host.ip(&[
        "link", "add", "lan0", "type", "veth", "peer", "name", "lan1",
    ]);
    t.host.ip(&["link", "set", "lan0", "master", "br-vm1"]);
    let f = t.vm_file(1);
    let before = t.snapshot();
    assert_refused(
        &t,
        &before,
        t.netctl(&["apply", s(&f)]),
        FAILED,
        "bridge br-vm1 already has other ports (lan0)",
    );
}
