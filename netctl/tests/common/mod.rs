//! Test topology in namespaces the test creates (never the root namespace):
//!
//! ```text
//!   [vm stand-ins: the test process on TAPs vm-vmN]
//!          |  (bridges br-vmN, 10.N.0.1/24)
//!   "host" namespace: netctl runs here (ip netns exec), uplink up0 100.64.0.1/24,
//!          |            default route via 100.64.0.2
//!   "inet" namespace: eth0 100.64.0.2/24, UDP echo :7007 and TCP echo :7008 that
//!                     report the peer address they saw. No route back to 10.0.0.0/8,
//!                     so only NATed traffic can be answered.
//! ```

#![allow(dead_code)]

pub mod packet;
pub mod vm;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Runs a command, panicking with its output on failure.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace owned by the test, deleted on drop (also on panic).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("nctl{}-{n}-{tag}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// `ip -n NAME args…`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// `ip netns exec NAME args…`
    pub fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `f` on a thread that has joined namespace `ns`; sockets and TAP fds it opens stay
/// in that namespace after the thread ends.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// What the echo servers saw: (peer address, payload).
pub type Seen = Arc<Mutex<Vec<(SocketAddr, Vec<u8>)>>>;

pub const UDP_PORT: u16 = 7007;
pub const TCP_PORT: u16 = 7008;
pub const INET_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
pub const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

pub struct Topo {
    pub host: Netns,
    pub inet: Netns,
    pub dir: tempfile::TempDir,
    pub udp_seen: Seen,
    pub tcp_seen: Seen,
}

impl Topo {
    pub fn new() -> Topo {
        let host = Netns::new("host");
        let inet = Netns::new("inet");
        host.ip(&[
            "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &inet.name,
        ]);
        host.ip(&["addr", "add", "100.64.0.1/24", "dev", "up0"]);
        host.ip(&["link", "set", "up0", "up"]);
        host.ip(&["route", "add", "default", "via", "100.64.0.2"]);
        inet.ip(&["addr", "add", "100.64.0.2/24", "dev", "eth0"]);
        inet.ip(&["link", "set", "eth0", "up"]);
        // Wait for the veth carrier so snapshots taken right away are stable.
        for _ in 0..200 {
            if host
                .ip(&["-br", "link", "show", "up0"])
                .split_whitespace()
                .nth(1)
                == Some("UP")
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let udp_seen: Seen = Arc::default();
        let tcp_seen: Seen = Arc::default();
        start_echo_servers(&inet.name, udp_seen.clone(), tcp_seen.clone());
        Topo {
            host,
            inet,
            dir: tempfile::tempdir().expect("tempdir"),
            udp_seen,
            tcp_seen,
        }
    }

    /// Writes vmN.json (10.N.0.2/24 on br-vmN, TAP vm-vmN, MAC 02:00:00:00:00:N).
    pub fn vm_file(&self, i: u8) -> PathBuf {
        write_vm_file(self.dir.path(), i)
    }

    /// Runs the netctl binary inside the host namespace, guarded by NETCTL_TEST_NETNS.
    pub fn netctl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let state = self.dir.path().join("state");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host.name, "env"]);
        cmd.arg(format!("NETCTL_TEST_NETNS={}", self.host.name));
        cmd.arg(format!("NETCTL_STATE_DIR={}", state.display()));
        cmd.arg(format!("TINYVMM_RUN_DIR={}", self.run_dir().display()));
        for (k, v) in env {
            cmd.arg(format!("{k}={v}"));
        }
        cmd.arg(env!("CARGO_BIN_EXE_netctl"));
        cmd.args(args);
        cmd.current_dir(self.dir.path());
        cmd.output().expect("run netctl")
    }

    /// The tinyvmm run-lock directory the test's netctl looks at.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn netctl(&self, args: &[&str]) -> Output {
        self.netctl_env(args, &[])
    }

    /// Like [`Topo::netctl`] but asserts success and returns stdout.
    pub fn netctl_ok(&self, args: &[&str]) -> String {
        let out = self.netctl(args);
        assert!(
            out.status.success(),
            "netctl {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Everything netctl could have touched in the host namespace (bridge timers, which
    /// tick by themselves, left out).
    pub fn snapshot(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}",
            drop_timers(&self.host.ip(&["-d", "link", "show"])),
            self.host.ip(&["-4", "addr", "show"]),
            self.host.exec(&["nft", "list", "ruleset"]),
            self.host.exec(&["sysctl", "net.ipv4.ip_forward"]),
        )
    }

    pub fn udp_seen_payload(&self, payload: &[u8]) -> Option<SocketAddr> {
        let seen = self.udp_seen.lock().unwrap();
        seen.iter().find(|(_, p)| p == payload).map(|(a, _)| *a)
    }
}

/// Removes `<name>_timer <value>` pairs from `ip -d link` output.
pub fn drop_timers(text: &str) -> String {
    let mut out = Vec::new();
    let mut skip = false;
    for tok in text.split_whitespace() {
        if skip {
            skip = false;
            continue;
        }
        if tok.ends_with("_timer") {
            skip = true;
            continue;
        }
        out.push(tok);
    }
    out.join(" ")
}

pub fn write_vm_file(dir: &Path, i: u8) -> PathBuf {
    let p = dir.join(format!("vm{i}.json"));
    let text = format!(
        r#"{{
  "name": "vm{i}", "vcpus": 1, "memory_mib": 64,
  "kernel": {{ "path": "/nonexistent/bzImage" }},
  "network": [ {{ "tap": "vm-vm{i}", "mac": "02:00:00:00:{:02x}:{:02x}", "bridge": "br-vm{i}",
                  "address": "10.{i}.0.2/24", "gateway": "10.{i}.0.1" }} ]
}}"#,
        i / 100,
        i % 100
    );
    std::fs::write(&p, text).expect("write vm file");
    p
}

pub fn vm_mac(i: u8) -> [u8; 6] {
    [2, 0, 0, 0, i / 100, i % 100]
}

fn start_echo_servers(ns: &str, udp_seen: Seen, tcp_seen: Seen) {
    let (udp, tcp) = in_netns(ns, || {
        let u = UdpSocket::bind((INET_IP, UDP_PORT)).expect("bind udp echo");
        let t = TcpListener::bind((INET_IP, TCP_PORT)).expect("bind tcp echo");
        (u, t)
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = udp.recv_from(&mut buf) {
            udp_seen.lock().unwrap().push((peer, buf[..n].to_vec()));
            let reply = format!("peer={peer} {}", String::from_utf8_lossy(&buf[..n]));
            let _ = udp.send_to(reply.as_bytes(), peer);
        }
    });
    std::thread::spawn(move || {
        for conn in tcp.incoming() {
            let Ok(mut c) = conn else { break };
            let seen = tcp_seen.clone();
            std::thread::spawn(move || {
                let peer = c.peer_addr().expect("peer");
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 512];
                let n = c.read(&mut buf).unwrap_or(0);
                seen.lock().unwrap().push((peer, buf[..n].to_vec()));
                let _ = c.write_all(format!("peer={peer}").as_bytes());
            });
        }
    });
}
