//! Traffic tests: stand-in VMs on the real TAPs netctl creates, inside test namespaces.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use common::packet::*;
use common::vm::StandInVm;
use common::*;

const QUIET: Duration = Duration::from_millis(1200);
const WAIT: Duration = Duration::from_secs(3);

fn vm_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, i, 0, 2)
}
fn gw_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, i, 0, 1)
}

fn start_vm(t: &Topo, i: u8) -> (StandInVm, MacB) {
    let vm = StandInVm::start(
        &t.host.name,
        &format!("vm-vm{i}"),
        vm_mac(i),
        vm_ip(i),
        gw_ip(i),
    );
    let gw = vm
        .resolve_gw()
        .expect("ARP for the own gateway must be answered");
    (vm, gw)
}

/// Sends ICMP echo, UDP and TCP SYN probes from `vm` to `dst`.
fn probe(vm: &StandInVm, gw: MacB, dst: Ipv4Addr, tag: u16) {
    let icmp = icmp_echo(8, tag, 1, b"probe");
    vm.send(&vm.ip_frame(gw, vm.mac, vm.ip, dst, PROTO_ICMP, &icmp));
    let u = udp(vm.ip, dst, 40000 + tag, 7, b"probe");
    vm.send(&vm.ip_frame(gw, vm.mac, vm.ip, dst, PROTO_UDP, &u));
    let syn = Tcp {
        sport: 41000 + tag,
        dport: 22,
        seq: 1000,
        ack: 0,
        flags: TCP_SYN,
        data: &[],
    };
    vm.send(&vm.ip_frame(gw, vm.mac, vm.ip, dst, PROTO_TCP, &tcp(vm.ip, dst, &syn)));
}

fn from(src: Ipv4Addr) -> impl Fn(&Parsed) -> bool {
    move |p: &Parsed| p.ip.as_ref().is_some_and(|i| i.src == src)
}

#[test]
fn apply_when_two_vms_then_nat_works_and_vms_are_isolated() {
    let t = Topo::new();
    let (f1, f2) = (t.vm_file(1), t.vm_file(2));
    t.netctl_ok(&["apply", f1.to_str().unwrap(), f2.to_str().unwrap()]);
    let (vm1, gw1) = start_vm(&t, 1);
    let (vm2, gw2) = start_vm(&t, 2);

    // VM -> internet over UDP: arrives from the uplink address (NAT), reply comes back.
    let u = udp(vm1.ip, INET_IP, 40001, UDP_PORT, b"hello-vm1");
    vm1.send(&vm1.ip_frame(gw1, vm1.mac, vm1.ip, INET_IP, PROTO_UDP, &u));
    let reply = vm1
        .wait_for(WAIT, |p| {
            p.ip.as_ref()
                .and_then(|i| i.udp())
                .is_some_and(|(s, d, _)| s == UDP_PORT && d == 40001)
        })
        .expect("UDP echo reply reaches the VM");
    let data = String::from_utf8_lossy(reply.ip.as_ref().unwrap().udp().unwrap().2).into_owned();
    assert!(data.starts_with("peer=100.64.0.1:"), "server saw {data}");
    assert_eq!(
        t.udp_seen_payload(b"hello-vm1").map(|a| a.ip()),
        Some(UPLINK_IP.into())
    );

    // VM -> internet over TCP: handshake, data, and the server reports the NAT address.
    let syn = Tcp {
        sport: 40002,
        dport: TCP_PORT,
        seq: 5000,
        ack: 0,
        flags: TCP_SYN,
        data: &[],
    };
    vm1.send(&vm1.ip_frame(
        gw1,
        vm1.mac,
        vm1.ip,
        INET_IP,
        PROTO_TCP,
        &tcp(vm1.ip, INET_IP, &syn),
    ));
    let synack = vm1
        .wait_for(WAIT, |p| {
            p.ip.as_ref()
                .and_then(|i| i.tcp())
                .is_some_and(|s| s.dport == 40002 && s.flags == TCP_SYN | TCP_ACK)
        })
        .expect("SYN-ACK from the internet server");
    let server_seq = synack.ip.as_ref().unwrap().tcp().unwrap().seq;
    let push = Tcp {
        sport: 40002,
        dport: TCP_PORT,
        seq: 5001,
        ack: server_seq + 1,
        flags: TCP_ACK | 0x08,
        data: b"tcp-vm1",
    };
    vm1.send(&vm1.ip_frame(
        gw1,
        vm1.mac,
        vm1.ip,
        INET_IP,
        PROTO_TCP,
        &tcp(vm1.ip, INET_IP, &push),
    ));
    let answer = vm1
        .wait_for(WAIT, |p| {
            p.ip.as_ref()
                .and_then(|i| i.tcp())
                .is_some_and(|s| s.dport == 40002 && !s.data.is_empty())
        })
        .expect("TCP data from the server");
    let text =
        String::from_utf8_lossy(answer.ip.as_ref().unwrap().tcp().unwrap().data).into_owned();
    assert!(text.starts_with("peer=100.64.0.1:"), "server saw {text}");

    // Controls: the own gateway answers ICMP, UDP (port unreachable) and TCP (RST).
    vm1.clear_log();
    probe(&vm1, gw1, gw_ip(1), 1);
    let own = from(gw_ip(1));
    assert!(vm1
        .wait_for(WAIT, |p| own(p)
            && p.ip.as_ref().unwrap().icmp_type() == Some(0))
        .is_some());
    assert!(vm1
        .wait_for(WAIT, |p| own(p)
            && p.ip.as_ref().unwrap().icmp_type() == Some(3))
        .is_some());
    assert!(vm1
        .wait_for(WAIT, |p| own(p)
            && p.ip
                .as_ref()
                .unwrap()
                .tcp()
                .is_some_and(|s| s.flags & TCP_RST != 0))
        .is_some());
    // Control: the host reaches VM2 (so silence below is isolation, not a dead VM).
    let sock = in_netns(&t.host.name, || UdpSocket::bind("0.0.0.0:0").unwrap());
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.send_to(b"host-to-vm2", (vm_ip(2), 7)).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = sock.recv_from(&mut buf).expect("VM2 echoes the host");
    assert_eq!(&buf[..n], b"host-to-vm2");

    // VM1 -> VM2, directly and via VM2's gateway address; and VM2 -> VM1.
    vm1.clear_log();
    vm2.clear_log();
    probe(&vm1, gw1, vm_ip(2), 2);
    probe(&vm1, gw1, gw_ip(2), 3);
    probe(&vm2, gw2, vm_ip(1), 4);
    probe(&vm2, gw2, gw_ip(1), 5);
    std::thread::sleep(QUIET);
    assert!(
        vm2.wait_for(Duration::ZERO, from(vm_ip(1))).is_none(),
        "VM2 got traffic from VM1"
    );
    assert!(
        vm1.wait_for(Duration::ZERO, from(vm_ip(2))).is_none(),
        "VM1 got traffic from VM2"
    );
    assert!(
        vm1.wait_for(Duration::ZERO, from(gw_ip(2))).is_none(),
        "VM2's gateway answered VM1"
    );
    assert!(
        vm2.wait_for(Duration::ZERO, from(gw_ip(1))).is_none(),
        "VM1's gateway answered VM2"
    );

    // Control: without netctl's inet table the same probe gets through, so the silence
    // above is the ruleset's doing.
    t.host.exec(&["nft", "delete", "table", "inet", "tinyvmm"]);
    probe(&vm1, gw1, vm_ip(2), 6);
    assert!(
        vm1.wait_for(WAIT, from(vm_ip(2))).is_some(),
        "control: VM2 answers without rules"
    );
}

#[test]
fn apply_when_vm_spoofs_ip_mac_or_arp_then_frames_dropped() {
    let t = Topo::new();
    t.netctl_ok(&["apply", t.vm_file(1).to_str().unwrap()]);
    let (vm, gw) = start_vm(&t, 1);
    let send_udp = |src_mac: MacB, src: Ipv4Addr, payload: &[u8]| {
        let u = udp(src, INET_IP, 40010, UDP_PORT, payload);
        vm.send(&vm.ip_frame(gw, src_mac, src, INET_IP, PROTO_UDP, &u));
    };
    send_udp(vm.mac, Ipv4Addr::new(10, 1, 0, 99), b"spoof-ip-same-subnet");
    send_udp(vm.mac, vm_ip(2), b"spoof-ip-other-vm");
    send_udp([2, 0, 0, 0, 0, 0x99], vm.ip, b"spoof-mac");
    send_udp(vm.mac, vm.ip, b"legit");
    assert!(
        vm.wait_for(WAIT, from(INET_IP)).is_some(),
        "control: legit frame answered"
    );
    std::thread::sleep(QUIET);
    assert!(t.udp_seen_payload(b"legit").is_some());
    for p in [
        &b"spoof-ip-same-subnet"[..],
        b"spoof-ip-other-vm",
        b"spoof-mac",
    ] {
        assert!(
            t.udp_seen_payload(p).is_none(),
            "{} left the host",
            String::from_utf8_lossy(p)
        );
    }
    // Control: without the bridge table the same spoofed frames do leave.
    t.host
        .exec(&["nft", "delete", "table", "bridge", "tinyvmm"]);
    send_udp(vm.mac, Ipv4Addr::new(10, 1, 0, 99), b"control-spoof-ip");
    send_udp([2, 0, 0, 0, 0, 0x99], vm.ip, b"control-spoof-mac");
    std::thread::sleep(QUIET);
    assert!(
        t.udp_seen_payload(b"control-spoof-ip").is_some(),
        "control: spoofed IP passes without rules"
    );
    assert!(
        t.udp_seen_payload(b"control-spoof-mac").is_some(),
        "control: spoofed MAC passes without rules"
    );
    t.netctl_ok(&["apply", t.vm_file(1).to_str().unwrap()]);

    // ARP: a lie about the sender IP or the sender MAC gets no answer.
    vm.clear_log();
    let liar = Ipv4Addr::new(10, 1, 0, 50);
    vm.send(&eth(
        BROADCAST,
        vm.mac,
        ETH_ARP,
        &arp(1, vm.mac, liar, [0; 6], gw_ip(1)),
    ));
    let fake_mac = [2, 0, 0, 0, 0, 0x98];
    vm.send(&eth(
        BROADCAST,
        vm.mac,
        ETH_ARP,
        &arp(1, fake_mac, vm.ip, [0; 6], gw_ip(1)),
    ));
    std::thread::sleep(QUIET);
    let arp_reply = |p: &Parsed| p.arp.is_some_and(|a| a.op == 2);
    assert!(
        vm.wait_for(Duration::ZERO, arp_reply).is_none(),
        "spoofed ARP was answered"
    );
    assert!(vm.resolve_gw().is_some(), "control: honest ARP is answered");

    // Not IPv4/ARP (here IPv6): dropped at the bridge port; check via the port counters.
    let before = t.host.ip(&["-s", "link", "show", "br-vm1"]);
    vm.send(&eth([0x33, 0x33, 0, 0, 0, 1], vm.mac, 0x86dd, &[0x60; 40]));
    std::thread::sleep(Duration::from_millis(300));
    let after = t.host.ip(&["-s", "link", "show", "br-vm1"]);
    let rx_packets = |s: &str| {
        let lines: Vec<&str> = s.lines().collect();
        let i = lines
            .iter()
            .position(|l| l.trim_start().starts_with("RX:"))
            .unwrap();
        lines[i + 1].split_whitespace().nth(1).unwrap().to_string()
    };
    assert_eq!(
        rx_packets(&before),
        rx_packets(&after),
        "IPv6 frame reached the bridge"
    );
}

#[test]
fn apply_when_egress_allow_list_then_only_listed_ports_leave() {
    let t = Topo::new();
    let f = t.vm_file(1);
    t.netctl_ok(&["apply", f.to_str().unwrap(), "--egress", "tcp:7008"]);
    let (vm, gw) = start_vm(&t, 1);
    let u = udp(vm.ip, INET_IP, 40020, UDP_PORT, b"udp-denied");
    vm.send(&vm.ip_frame(gw, vm.mac, vm.ip, INET_IP, PROTO_UDP, &u));
    let syn = Tcp {
        sport: 40021,
        dport: TCP_PORT,
        seq: 1,
        ack: 0,
        flags: TCP_SYN,
        data: &[],
    };
    vm.send(&vm.ip_frame(
        gw,
        vm.mac,
        vm.ip,
        INET_IP,
        PROTO_TCP,
        &tcp(vm.ip, INET_IP, &syn),
    ));
    let synack = |p: &Parsed| {
        p.ip.as_ref()
            .and_then(|i| i.tcp())
            .is_some_and(|s| s.dport == 40021 && s.flags == TCP_SYN | TCP_ACK)
    };
    assert!(
        vm.wait_for(WAIT, synack).is_some(),
        "allowed TCP port must pass"
    );
    std::thread::sleep(QUIET);
    assert!(
        t.udp_seen_payload(b"udp-denied").is_none(),
        "UDP left despite the allow-list"
    );

    // The stored policy stays in force when a later apply does not repeat it.
    let out = t.netctl_ok(&["plan", f.to_str().unwrap()]);
    assert!(out.contains("egress tcp:7008"), "{out}");
}

#[test]
fn apply_when_traffic_from_tailscale_interface_then_reaches_vm_but_not_from_uplink() {
    let t = Topo::new();
    let ts = Netns::new("ts");
    t.host.ip(&[
        "link",
        "add",
        "tailscale0",
        "type",
        "veth",
        "peer",
        "name",
        "ts0",
        "netns",
        &ts.name,
    ]);
    t.host
        .ip(&["addr", "add", "100.100.0.1/24", "dev", "tailscale0"]);
    t.host.ip(&["link", "set", "tailscale0", "up"]);
    ts.ip(&["addr", "add", "100.100.0.2/24", "dev", "ts0"]);
    ts.ip(&["link", "set", "ts0", "up"]);
    ts.ip(&["route", "add", "10.1.0.0/24", "via", "100.100.0.1"]);
    t.inet
        .ip(&["route", "add", "10.1.0.0/24", "via", "100.64.0.1"]);
    t.netctl_ok(&["apply", t.vm_file(1).to_str().unwrap()]);
    let (vm, _gw) = start_vm(&t, 1);

    let sock = in_netns(&ts.name, || UdpSocket::bind("100.100.0.2:0").unwrap());
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.send_to(b"from-tailnet", (vm_ip(1), 7)).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = sock
        .recv_from(&mut buf)
        .expect("tailnet reaches the VM and gets the reply");
    assert_eq!(&buf[..n], b"from-tailnet");

    let sock = in_netns(&t.inet.name, || UdpSocket::bind("100.64.0.2:0").unwrap());
    sock.set_read_timeout(Some(QUIET)).unwrap();
    sock.send_to(b"from-internet", (vm_ip(1), 7)).unwrap();
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "the uplink side must not reach the VM"
    );
    assert!(vm.wait_for(Duration::ZERO, from(INET_IP)).is_none());
}

#[test]
fn apply_when_four_vms_then_each_reaches_internet_and_no_pair_connects() {
    let t = Topo::new();
    let files: Vec<_> = (1..=4).map(|i| t.vm_file(i)).collect();
    let mut args = vec!["apply"];
    args.extend(files.iter().map(|p| p.to_str().unwrap()));
    t.netctl_ok(&args);
    let vms: Vec<(StandInVm, MacB)> = (1..=4).map(|i| start_vm(&t, i)).collect();
    for (i, (vm, gw)) in vms.iter().enumerate() {
        let payload = format!("four-{i}");
        let u = udp(vm.ip, INET_IP, 40100, UDP_PORT, payload.as_bytes());
        vm.send(&vm.ip_frame(*gw, vm.mac, vm.ip, INET_IP, PROTO_UDP, &u));
        assert!(
            vm.wait_for(WAIT, from(INET_IP)).is_some(),
            "vm{} gets no answer",
            i + 1
        );
        assert_eq!(
            t.udp_seen_payload(payload.as_bytes()).map(|a| a.ip()),
            Some(UPLINK_IP.into())
        );
    }
    for (vm, _) in &vms {
        vm.clear_log();
    }
    for (a, (vm, gw)) in vms.iter().enumerate() {
        for b in 1..=4u8 {
            if usize::from(b) != a + 1 {
                probe(vm, *gw, vm_ip(b), 10 + b as u16);
                probe(vm, *gw, gw_ip(b), 20 + b as u16);
            }
        }
    }
    std::thread::sleep(QUIET);
    for (a, (vm, _)) in vms.iter().enumerate() {
        for b in 1..=4u8 {
            if usize::from(b) != a + 1 {
                assert!(
                    vm.wait_for(Duration::ZERO, from(vm_ip(b))).is_none(),
                    "vm{} heard vm{b}",
                    a + 1
                );
                assert!(
                    vm.wait_for(Duration::ZERO, from(gw_ip(b))).is_none(),
                    "vm{} heard gw of vm{b}",
                    a + 1
                );
            }
        }
    }
}
