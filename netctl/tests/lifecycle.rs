//! apply / re-apply / status / down, changes, and failure injection, in test namespaces.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::packet::*;
use common::vm::StandInVm;
use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn state_files(t: &Topo) -> usize {
    std::fs::read_dir(t.dir.path().join("state")).map_or(0, |d| d.count())
}

#[test]
fn apply_when_repeated_then_noop_and_down_leaves_no_trace() {
    let t = Topo::new();
    // Someone else's table: netctl must never touch it.
    let foreign = "table ip other {\n chain passthru {\n  type filter hook forward priority 10; policy accept;\n  iifname \"br-vm1\" counter\n }\n}\n";
    let path = t.dir.path().join("other.nft");
    std::fs::write(&path, foreign).unwrap();
    t.host.exec(&["nft", "-f", path.to_str().unwrap()]);
    let other = || t.host.exec(&["nft", "list", "table", "ip", "other"]);
    let other_before = other();
    let before = t.snapshot();
    let files: Vec<PathBuf> = (1..=3).map(|i| t.vm_file(i)).collect();
    let mut args = vec!["apply"];
    args.extend(files.iter().map(|p| s(p)));
    args.extend(["--tap-user", "65534", "--tap-group", "65534"]);
    let out = t.netctl_ok(&args);
    assert!(out.contains("applied"), "{out}");
    let applied = t.snapshot();
    assert_ne!(before, applied);
    let tap = t.host.ip(&["-d", "link", "show", "vm-vm2"]);
    assert!(
        tap.contains("tun type tap pi off vnet_hdr on persist on user nobody group nogroup"),
        "{tap}"
    );
    assert!(tap.contains("master br-vm2"), "{tap}");

    assert_eq!(other_before, other(), "apply touched another table");
    let again = t.netctl_ok(&args[..4]);
    assert!(again.contains("no changes"), "{again}");
    assert!(!again.contains("applied"), "{again}");
    assert_eq!(applied, t.snapshot(), "a second apply changed the host");
    let st = t.netctl_ok(&["status"]);
    assert!(st.contains("status: in sync"), "{st}");

    let mut down = vec!["down"];
    down.extend(files.iter().map(|p| s(p)));
    let out = t.netctl_ok(&down);
    assert!(out.contains("delete link br-vm3"), "{out}");
    assert_eq!(before, t.snapshot(), "down left a trace");
    assert_eq!(state_files(&t), 0);
    let out = t.netctl_ok(&down);
    assert!(out.contains("nothing to remove"), "{out}");
}

#[test]
fn apply_when_vms_added_one_by_one_then_merged_and_down_one_keeps_other() {
    let t = Topo::new();
    let (f1, f2) = (t.vm_file(1), t.vm_file(2));
    t.netctl_ok(&["apply", s(&f1)]);
    t.netctl_ok(&["apply", s(&f2)]);
    let rules = t.host.exec(&["nft", "list", "table", "bridge", "tinyvmm"]);
    assert!(
        rules.contains("\"vm-vm1\"") && rules.contains("\"vm-vm2\""),
        "{rules}"
    );
    t.netctl_ok(&["down", s(&f1)]);
    let links = t.host.ip(&["-br", "link"]);
    assert!(
        !links.contains("br-vm1") && links.contains("br-vm2"),
        "{links}"
    );
    let rules = t.host.exec(&["nft", "list", "table", "bridge", "tinyvmm"]);
    assert!(
        !rules.contains("\"vm-vm1\"") && rules.contains("\"vm-vm2\""),
        "{rules}"
    );
    let st = t.netctl_ok(&["status", s(&f2)]);
    assert!(st.contains("status: in sync"), "{st}");
}

#[test]
fn apply_when_vm_network_changes_then_old_links_replaced() {
    let t = Topo::new();
    let before = t.snapshot();
    let f = t.vm_file(1);
    t.netctl_ok(&["apply", s(&f)]);
    let text = std::fs::read_to_string(&f).unwrap();
    std::fs::write(
        &f,
        text.replace("br-vm1", "br-new1")
            .replace("vm-vm1", "vm-new1"),
    )
    .unwrap();
    let out = t.netctl_ok(&["apply", s(&f)]);
    assert!(
        out.contains("delete link br-vm1") && out.contains("create bridge br-new1"),
        "{out}"
    );
    let links = t.host.ip(&["-br", "link"]);
    assert!(
        !links.contains("br-vm1") && links.contains("br-new1") && links.contains("vm-new1"),
        "{links}"
    );
    // Only the TAP renamed: the old TAP, still a port of the kept bridge, is replaced.
    let text = std::fs::read_to_string(&f).unwrap();
    std::fs::write(&f, text.replace("vm-new1", "vm-newer1")).unwrap();
    let out = t.netctl_ok(&["apply", s(&f)]);
    assert!(
        out.contains("delete link vm-new1") && !out.contains("delete link br-new1"),
        "{out}"
    );
    let links = t.host.ip(&["-br", "link"]);
    assert!(
        !links.contains("vm-new1 ") && links.contains("vm-newer1"),
        "{links}"
    );
    t.netctl_ok(&["down", s(&f)]);
    assert_eq!(before, t.snapshot());
}

#[test]
fn status_when_link_removed_behind_our_back_then_reports_drift_and_apply_repairs() {
    let t = Topo::new();
    let f = t.vm_file(1);
    t.netctl_ok(&["apply", s(&f)]);
    t.host.ip(&["link", "del", "vm-vm1"]);
    let out = t.netctl(&["status", s(&f)]);
    assert_eq!(out.status.code(), Some(8), "drift is exit 8");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("MISSING   TAP vm-vm1"), "{text}");
    let out = t.netctl_ok(&["apply", s(&f)]);
    assert!(out.contains("create persistent TAP vm-vm1"), "{out}");
    assert!(t.netctl_ok(&["status", s(&f)]).contains("in sync"));
}

#[test]
fn down_when_bridge_preexisted_then_only_what_netctl_made_is_removed() {
    let t = Topo::new();
    t.host.ip(&["link", "add", "br-vm1", "type", "bridge"]);
    let f = t.vm_file(1);
    let out = t.netctl_ok(&["apply", s(&f)]);
    assert!(!out.contains("create bridge"), "{out}");
    t.netctl_ok(&["down", s(&f)]);
    let links = t.host.ip(&["-br", "link"]);
    assert!(
        links.contains("br-vm1"),
        "the user's bridge was deleted: {links}"
    );
    assert!(!links.contains("vm-vm1"), "netctl's TAP was left: {links}");
    assert!(!t
        .host
        .ip(&["-4", "addr", "show", "br-vm1"])
        .contains("10.1.0.1"));
    assert_eq!(t.host.exec(&["nft", "list", "ruleset"]), "");
    assert_eq!(state_files(&t), 0);
}

#[test]
fn apply_when_failure_injected_then_previous_state_restored() {
    let t = Topo::new();
    let (f1, f2) = (t.vm_file(1), t.vm_file(2));
    let empty = t.snapshot();
    for step in [
        "before-ruleset",
        "after-ruleset",
        "mid-links",
        "after-links",
        "before-state",
    ] {
        // From nothing: a failed first apply leaves nothing.
        let out = t.netctl_env(&["apply", s(&f1), s(&f2)], &[("NETCTL_FAIL_AT", step)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("rolled back"),
            "{step}: {err}"
        );
        assert_eq!(
            empty,
            t.snapshot(),
            "failed first apply at {step} left changes"
        );
        assert_eq!(state_files(&t), 0, "{step}");
    }
    t.netctl_ok(&["apply", s(&f1)]);
    let one = t.snapshot();
    let state_one = std::fs::read_dir(t.dir.path().join("state"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let state_text = std::fs::read_to_string(&state_one).unwrap();
    for step in ["after-ruleset", "mid-links", "after-links", "before-state"] {
        let out = t.netctl_env(&["apply", s(&f1), s(&f2)], &[("NETCTL_FAIL_AT", step)]);
        assert!(!out.status.success(), "{step}");
        assert_eq!(
            one,
            t.snapshot(),
            "failed apply at {step} did not restore the previous state"
        );
        assert_eq!(
            state_text,
            std::fs::read_to_string(&state_one).unwrap(),
            "{step}"
        );
    }
    t.netctl_ok(&["apply", s(&f1), s(&f2)]);
    t.netctl_ok(&["down", s(&f1), s(&f2)]);
    assert_eq!(empty, t.snapshot());
}

#[test]
fn apply_when_crash_midway_then_vms_stay_isolated_and_state_allows_cleanup() {
    let t = Topo::new();
    // Forwarding already on (a host that routes for other reasons): only the ruleset
    // stands between the VMs while netctl is half done.
    t.host.exec(&["sysctl", "-w", "net.ipv4.ip_forward=1"]);
    let before = t.snapshot();
    let (f1, f2) = (t.vm_file(1), t.vm_file(2));
    let out = t.netctl_env(
        &["apply", s(&f1), s(&f2)],
        &[("NETCTL_FAIL_AT", "exit:after-links")],
    );
    assert_eq!(
        out.status.code(),
        Some(99),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ip = |i: u8, h: u8| Ipv4Addr::new(10, i, 0, h);
    let vm1 = StandInVm::start(&t.host.name, "vm-vm1", vm_mac(1), ip(1, 2), ip(1, 1));
    let _vm2 = StandInVm::start(&t.host.name, "vm-vm2", vm_mac(2), ip(2, 2), ip(2, 1));
    let gw = vm1.resolve_gw().expect("gateway answers");
    for dst in [ip(1, 1), ip(2, 2), ip(2, 1)] {
        let icmp = icmp_echo(8, 7, 1, b"x");
        vm1.send(&vm1.ip_frame(gw, vm1.mac, vm1.ip, dst, PROTO_ICMP, &icmp));
    }
    let reply_from = |a: Ipv4Addr| {
        move |p: &Parsed| {
            p.ip.as_ref()
                .is_some_and(|i| i.src == a && i.icmp_type() == Some(0))
        }
    };
    assert!(
        vm1.wait_for(Duration::from_secs(3), reply_from(ip(1, 1)))
            .is_some(),
        "control"
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        vm1.wait_for(Duration::ZERO, reply_from(ip(2, 2))).is_none(),
        "VM2 reachable after crash"
    );
    assert!(
        vm1.wait_for(Duration::ZERO, reply_from(ip(2, 1))).is_none(),
        "VM2 gateway reachable"
    );
    drop(vm1);
    drop(_vm2);

    // The intent log lets down remove what the crashed apply created.
    t.netctl_ok(&["down", s(&f1), s(&f2)]);
    assert_eq!(before, t.snapshot());
}

/// Opens the TAP as an unprivileged user: python3 opens /dev/net/tun as root (it is 0600
/// on these machines), drops to `uid`/`uid` and then does TUNSETIFF, where the kernel checks
/// the TAP's owner and group.
fn open_tap_as(t: &Topo, uid: &str, tap: &str) -> std::process::Output {
    let py = format!(
        "import fcntl,os,struct\nfd=os.open('/dev/net/tun',os.O_RDWR)\n\
         os.setgroups([]);os.setgid({uid});os.setuid({uid})\n\
         fcntl.ioctl(fd,0x400454ca,struct.pack('16sH22x',b'{tap}',0x5002))\nprint('opened')"
    );
    std::process::Command::new("ip")
        .args(["netns", "exec", &t.host.name, "python3", "-c", &py])
        .output()
        .expect("python3 is needed for this test (Debian: python3)")
}

#[test]
fn apply_when_tap_user_set_then_only_that_user_can_open_the_tap() {
    let t = Topo::new();
    let f = t.vm_file(1);
    t.netctl_ok(&[
        "apply",
        s(&f),
        "--tap-user",
        "65534",
        "--tap-group",
        "65534",
    ]);
    let ok = open_tap_as(&t, "65534", "vm-vm1");
    assert!(
        ok.status.success(),
        "owner could not open: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let denied = open_tap_as(&t, "65533", "vm-vm1");
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Operation not permitted"));
    // Ownership drift is repaired by the next apply.
    t.netctl_ok(&[
        "apply",
        s(&f),
        "--tap-user",
        "65533",
        "--tap-group",
        "65533",
    ]);
    assert!(open_tap_as(&t, "65533", "vm-vm1").status.success());
    assert!(!open_tap_as(&t, "65534", "vm-vm1").status.success());
}

#[test]
fn down_when_vm_running_then_refused_unless_forced() {
    let t = Topo::new();
    let (f1, f2) = (t.vm_file(1), t.vm_file(2));
    t.netctl_ok(&["apply", s(&f1), s(&f2)]);
    let lock = vmconfig::RunLock::acquire(&t.run_dir(), "vm1").expect("take vm1's run lock");
    let before = t.snapshot();
    let out = t.netctl(&["down", s(&f1), s(&f2)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "refused is exit 7: {err}");
    assert!(err.contains("running VM(s) vm1"), "{err}");
    assert_eq!(before, t.snapshot(), "a refused down changed the host");
    // `--run-dir` (as tinyvmm's) wins over $TINYVMM_RUN_DIR: vm2's lock is held only in
    // another dir, and a down of vm2 that names that dir is refused.
    let elsewhere = t.dir.path().join("other-run");
    let other = vmconfig::RunLock::acquire(&elsewhere, "vm2").expect("take vm2's lock there");
    let out = t.netctl(&["down", s(&f2), "--run-dir", elsewhere.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.contains("running VM(s) vm2"), "{err}");
    assert_eq!(before, t.snapshot(), "a refused down changed the host");
    drop(other);
    t.netctl_ok(&["down", s(&f2)]);
    t.netctl_ok(&["down", s(&f1), "--force"]);
    drop(lock);
    assert!(!t.host.ip(&["-br", "link"]).contains("br-vm"));
}

#[test]
fn apply_when_two_run_concurrently_then_both_vms_end_up_managed() {
    let t = Topo::new();
    let files: Vec<PathBuf> = (1..=6).map(|i| t.vm_file(i)).collect();
    std::thread::scope(|sc| {
        for f in &files {
            let t = &t;
            sc.spawn(move || t.netctl_ok(&["apply", s(f)]));
        }
    });
    let rules = t.host.exec(&["nft", "list", "table", "bridge", "tinyvmm"]);
    for i in 1..=6 {
        assert!(
            rules.contains(&format!("\"vm-vm{i}\"")),
            "vm{i} lost: {rules}"
        );
    }
    let mut args = vec!["status"];
    args.extend(files.iter().map(|p| s(p)));
    assert!(t.netctl_ok(&args).contains("status: in sync"));
}

#[test]
fn status_when_rules_changed_outside_netctl_then_drift_and_apply_restores() {
    let t = Topo::new();
    let f = t.vm_file(1);
    t.netctl_ok(&["apply", s(&f)]);
    let good = t.snapshot();
    // Same table, same comment, but the VM-to-VM drops are gone.
    t.host
        .exec(&["nft", "flush", "chain", "inet", "tinyvmm", "forward"]);
    let out = t.netctl(&["status", s(&f)]);
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("modified outside netctl"));
    let out = t.netctl_ok(&["apply", s(&f)]);
    assert!(out.contains("replace nftables tables"), "{out}");
    assert_eq!(good, t.snapshot());
    assert!(t.netctl_ok(&["apply", s(&f)]).contains("no changes"));
    // A changed set element is caught too.
    t.host.exec(&[
        "nft",
        "delete",
        "element",
        "bridge",
        "tinyvmm",
        "taps",
        "{",
        "\"vm-vm1\"",
        "}",
    ]);
    assert!(t
        .netctl_ok(&["apply", s(&f)])
        .contains("replace nftables tables"));
    assert_eq!(good, t.snapshot());
}
