//! Hand-made Ethernet frames (ARP, IPv4 with ICMP/UDP/TCP) and a small parser.

#![allow(dead_code)]

use std::net::Ipv4Addr;

pub type MacB = [u8; 6];
pub const BROADCAST: MacB = [0xff; 6];
pub const ETH_IP: u16 = 0x0800;
pub const ETH_ARP: u16 = 0x0806;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn checksum(data: &[u8]) -> u16 {
    csum_fold(csum_add(0, data))
}

pub fn eth(dst: MacB, src: MacB, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// ARP for Ethernet/IPv4; op 1 = request, 2 = reply.
pub fn arp(op: u16, sha: MacB, spa: Ipv4Addr, tha: MacB, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    a
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// ICMP echo: kind 8 = request, 0 = reply.
pub fn icmp_echo(kind: u8, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    csum_add(0, &p)
}

pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let len = 8 + data.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let mut c = csum_fold(csum_add(pseudo(src, dst, PROTO_UDP, len), &u));
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// A TCP segment without options.
pub struct Tcp<'a> {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub data: &'a [u8],
}

pub fn tcp(src: Ipv4Addr, dst: Ipv4Addr, t: &Tcp<'_>) -> Vec<u8> {
    let mut s = Vec::with_capacity(20 + t.data.len());
    s.extend_from_slice(&t.sport.to_be_bytes());
    s.extend_from_slice(&t.dport.to_be_bytes());
    s.extend_from_slice(&t.seq.to_be_bytes());
    s.extend_from_slice(&t.ack.to_be_bytes());
    s.extend_from_slice(&[0x50, t.flags]);
    s.extend_from_slice(&64240u16.to_be_bytes());
    s.extend_from_slice(&[0, 0, 0, 0]);
    s.extend_from_slice(t.data);
    let c = csum_fold(csum_add(pseudo(src, dst, PROTO_TCP, s.len()), &s));
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

/// A parsed frame: only what the tests look at.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub dst: MacB,
    pub src: MacB,
    pub ethertype: u16,
    pub arp: Option<ArpP>,
    pub ip: Option<IpP>,
}

#[derive(Debug, Clone, Copy)]
pub struct ArpP {
    pub op: u16,
    pub sha: MacB,
    pub spa: Ipv4Addr,
    pub tpa: Ipv4Addr,
}

#[derive(Debug, Clone)]
pub struct IpP {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub payload: Vec<u8>,
}

impl IpP {
    pub fn icmp_type(&self) -> Option<u8> {
        (self.proto == PROTO_ICMP)
            .then(|| self.payload.first().copied())
            .flatten()
    }
    /// (sport, dport, data)
    pub fn udp(&self) -> Option<(u16, u16, &[u8])> {
        if self.proto != PROTO_UDP || self.payload.len() < 8 {
            return None;
        }
        let p = &self.payload;
        Some((
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
            &p[8..],
        ))
    }
    pub fn tcp(&self) -> Option<TcpP<'_>> {
        if self.proto != PROTO_TCP || self.payload.len() < 20 {
            return None;
        }
        let p = &self.payload;
        let off = usize::from(p[12] >> 4) * 4;
        Some(TcpP {
            sport: u16::from_be_bytes([p[0], p[1]]),
            dport: u16::from_be_bytes([p[2], p[3]]),
            seq: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            flags: p[13],
            data: p.get(off..).unwrap_or(&[]),
        })
    }
}

/// A parsed TCP segment.
pub struct TcpP<'a> {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub flags: u8,
    pub data: &'a [u8],
}

fn ip4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

pub fn parse(f: &[u8]) -> Option<Parsed> {
    if f.len() < 14 {
        return None;
    }
    let mut p = Parsed {
        dst: f[0..6].try_into().ok()?,
        src: f[6..12].try_into().ok()?,
        ethertype: u16::from_be_bytes([f[12], f[13]]),
        arp: None,
        ip: None,
    };
    let b = &f[14..];
    if p.ethertype == ETH_ARP && b.len() >= 28 {
        p.arp = Some(ArpP {
            op: u16::from_be_bytes([b[6], b[7]]),
            sha: b[8..14].try_into().ok()?,
            spa: ip4(&b[14..18]),
            tpa: ip4(&b[24..28]),
        });
    }
    if p.ethertype == ETH_IP && b.len() >= 20 {
        let ihl = usize::from(b[0] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([b[2], b[3]])).min(b.len());
        p.ip = Some(IpP {
            src: ip4(&b[12..16]),
            dst: ip4(&b[16..20]),
            proto: b[9],
            payload: b.get(ihl..total).unwrap_or(&[]).to_vec(),
        });
    }
    Some(p)
}

#[test]
fn checksum_when_ipv4_header_then_verifies_to_zero() {
    let h = ipv4(
        Ipv4Addr::new(10, 1, 0, 2),
        Ipv4Addr::new(10, 1, 0, 1),
        PROTO_UDP,
        &[],
    );
    assert_eq!(checksum(&h[..20]), 0);
}
