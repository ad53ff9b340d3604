//! A stand-in VM: the test opens the persistent TAP netctl created (TUNSETIFF by name, from a
//! thread inside the test's host namespace) and reads/writes raw Ethernet frames, exactly as
//! the VMM's virtio-net backend will (IFF_VNET_HDR: a 10-byte virtio_net_hdr before each
//! frame). A background thread answers ARP and ICMP echo requests for the VM's address and
//! UDP on port 7 (echo), and logs every other frame it receives.

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::packet::*;

const VNET_HDR_LEN: usize = 10;

pub struct StandInVm {
    pub mac: MacB,
    pub ip: Ipv4Addr,
    pub gw: Ipv4Addr,
    tx: File,
    log: Arc<Mutex<Vec<Parsed>>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    pad: [u8; 22],
}

fn open_tap(name: &str) -> File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    let mut req = IfReq {
        name: [0; 16],
        flags: 0x0002 | 0x1000 | 0x4000, // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
        pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: req is a valid ifreq-sized buffer; TUNSETIFF reads name and flags.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), 0x4004_54ca, &mut req as *mut IfReq) };
    assert!(
        r >= 0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    f
}

fn reply_for(mac: MacB, ip: Ipv4Addr, p: &Parsed) -> Option<Vec<u8>> {
    if let Some(a) = p.arp {
        if a.op == 1 && a.tpa == ip {
            return Some(eth(a.sha, mac, ETH_ARP, &arp(2, mac, ip, a.sha, a.spa)));
        }
    }
    let i = p.ip.as_ref()?;
    if i.dst != ip {
        return None;
    }
    if i.icmp_type() == Some(8) {
        let mut m = i.payload.clone();
        m[0] = 0;
        m[2] = 0;
        m[3] = 0;
        let c = checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        return Some(eth(p.src, mac, ETH_IP, &ipv4(ip, i.src, PROTO_ICMP, &m)));
    }
    if let Some((sport, 7, data)) = i.udp() {
        let u = udp(ip, i.src, 7, sport, data);
        return Some(eth(p.src, mac, ETH_IP, &ipv4(ip, i.src, PROTO_UDP, &u)));
    }
    None
}

impl StandInVm {
    /// Opens `tap` inside network namespace `ns` and starts answering.
    pub fn start(ns: &str, tap: &str, mac: MacB, ip: Ipv4Addr, gw: Ipv4Addr) -> StandInVm {
        let tap_name = tap.to_string();
        let f = super::in_netns(ns, move || open_tap(&tap_name));
        let mut rx = f.try_clone().expect("dup tap fd");
        let mut replier = f.try_clone().expect("dup tap fd");
        // A read timeout through poll would need more code; a nonblocking fd and short
        // sleeps keep the reader simple and stoppable.
        // SAFETY: F_SETFL on a valid fd we own.
        unsafe {
            let fl = libc::fcntl(rx.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(rx.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l2, s2) = (log.clone(), stop.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s2.load(Ordering::Relaxed) {
                match rx.read(&mut buf) {
                    Ok(n) if n > VNET_HDR_LEN => {
                        let Some(p) = parse(&buf[VNET_HDR_LEN..n]) else {
                            continue;
                        };
                        if let Some(r) = reply_for(mac, ip, &p) {
                            let mut out = vec![0u8; VNET_HDR_LEN];
                            out.extend_from_slice(&r);
                            let _ = replier.write_all(&out);
                        }
                        l2.lock().unwrap().push(p);
                    }
                    _ => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        StandInVm {
            mac,
            ip,
            gw,
            tx: f,
            log,
            stop,
            reader: Some(reader),
        }
    }

    pub fn send(&self, frame: &[u8]) {
        let mut out = vec![0u8; VNET_HDR_LEN];
        out.extend_from_slice(frame);
        (&self.tx).write_all(&out).expect("write frame to tap");
    }

    /// Waits up to `timeout` for a received frame matching `pred` (searching the whole log).
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Parsed) -> bool) -> Option<Parsed> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(p) = self.log.lock().unwrap().iter().find(|p| pred(p)) {
                return Some(p.clone());
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn clear_log(&self) {
        self.log.lock().unwrap().clear();
    }

    /// ARP-resolves the gateway (a real exchange with the host bridge). Retries: right
    /// after the TAP opens, the bridge port needs a moment to come up.
    pub fn resolve_gw(&self) -> Option<MacB> {
        let gw = self.gw;
        for _ in 0..15 {
            self.send(&eth(
                BROADCAST,
                self.mac,
                ETH_ARP,
                &arp(1, self.mac, self.ip, [0; 6], gw),
            ));
            let hit = self.wait_for(Duration::from_millis(200), |p| {
                p.arp.is_some_and(|a| a.op == 2 && a.spa == gw)
            });
            if let Some(p) = hit {
                return p.arp.map(|a| a.sha);
            }
        }
        None
    }

    /// An IPv4 frame to the gateway MAC with the given source MAC/IP (spoofable).
    pub fn ip_frame(
        &self,
        gw_mac: MacB,
        src_mac: MacB,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        l4: &[u8],
    ) -> Vec<u8> {
        eth(gw_mac, src_mac, ETH_IP, &ipv4(src, dst, proto, l4))
    }
}

impl Drop for StandInVm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
