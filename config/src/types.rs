//! The serde types of a VM config file (`vmN.json`).
//!
//! Only syntax and shape are checked here (unknown fields, types, malformed MAC/CIDR strings);
//! everything that needs more than one field or the file system lives in [`crate::validate()`].

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Kernel command line used when the config does not give one.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
/// Seconds between the ACPI power-button press and a hard stop, when not configured.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;

/// One VM, as described by its config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// `[a-z0-9-]`, 1..=32 chars; also names the run lock and the default socket.
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    #[serde(default)]
    pub hugepages: bool,
    pub kernel: KernelConfig,
    #[serde(default)]
    pub serial: SerialConfig,
    /// Print JSON timing lines to stderr (boot timer device writes, exit).
    #[serde(default)]
    pub boot_timer: bool,
    #[serde(default)]
    pub virtio_mmio_discovery: MmioDiscovery,
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    #[serde(default = "default_true")]
    pub rng: bool,
    /// Create the in-kernel i8254 PIT. Linux guests boot without it (LAPIC timer, kvm-clock);
    /// leaving it out saves several ms of VM teardown on some hosts.
    #[serde(default = "default_true")]
    pub pit: bool,
    #[serde(default)]
    pub network: Vec<NetConfig>,
    #[serde(default)]
    pub shares: Vec<ShareConfig>,
    /// virtio-blk disks, in slot order after the other virtio devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<PathBuf>,
    #[serde(default)]
    pub storage: StorageConfig,
}

impl VmConfig {
    /// The kernel command line used when `kernel.cmdline` is absent.
    pub fn default_cmdline() -> &'static str {
        DEFAULT_CMDLINE
    }

    /// Number of virtio-mmio devices this config asks for (rng + network + shares + volumes).
    pub fn virtio_device_count(&self) -> usize {
        usize::from(self.rng) + self.network.len() + self.shares.len() + self.volumes.len()
    }
}

fn default_shutdown_grace_secs() -> u64 {
    DEFAULT_SHUTDOWN_GRACE_SECS
}

fn default_true() -> bool {
    true
}

fn default_cmdline_string() -> String {
    DEFAULT_CMDLINE.to_string()
}

/// Kernel image, optional initrd and command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelConfig {
    /// A bzImage or an uncompressed ELF vmlinux.
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    #[serde(default = "default_cmdline_string")]
    pub cmdline: String,
}

/// Where the guest's COM1 output goes.
///
/// JSON form: `"stdout"`, `"none"` or `{"file": "/path/log"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialConfig {
    #[default]
    Stdout,
    None,
    File(PathBuf),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SerialFile {
    file: PathBuf,
}

impl Serialize for SerialConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SerialConfig::Stdout => s.serialize_str("stdout"),
            SerialConfig::None => s.serialize_str("none"),
            SerialConfig::File(file) => SerialFile { file: file.clone() }.serialize(s),
        }
    }
}

struct SerialVisitor;

impl<'de> Visitor<'de> for SerialVisitor {
    type Value = SerialConfig;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#""stdout", "none" or {"file": "/path"}"#)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SerialConfig, E> {
        match v {
            "stdout" => Ok(SerialConfig::Stdout),
            "none" => Ok(SerialConfig::None),
            other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SerialConfig, A::Error> {
        let inner = SerialFile::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(SerialConfig::File(inner.file))
    }
}

impl<'de> Deserialize<'de> for SerialConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SerialVisitor)
    }
}

/// How the guest learns about virtio-mmio devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MmioDiscovery {
    /// Devices described in the DSDT only.
    Acpi,
    /// `virtio_mmio.device=` arguments on the kernel command line only.
    Cmdline,
    /// Both (the kernel de-duplicates by base address).
    #[default]
    Both,
}

/// One virtio-net device backed by a host TAP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Host TAP interface name (<= 15 bytes).
    pub tap: String,
    pub mac: MacAddr,
    /// Host bridge the TAP joins (netctl).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// The guest's IPv4 address and prefix (netctl).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Cidr>,
    /// Host side of the bridge, the guest's default route (netctl).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// When the TAP does not exist, tinyvmm (as root) creates it: non-persistent, on no
    /// bridge, gone when the VM stops. Without this a missing TAP is an error, so a mistyped
    /// name never quietly gives the guest a disconnected NIC.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
}

/// One virtio-fs share: a host directory served by tinyvmm's own server (`source`), or an
/// external vhost-user-fs backend such as upstream virtiofsd (`socket`). Exactly one of the
/// two is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareConfig {
    /// Mount tag seen by the guest (<= 36 bytes, the virtio-fs config space limit).
    pub tag: String,
    /// The host directory tinyvmm's embedded server shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    /// The unix socket of an external vhost-user-fs backend (it decides what is shared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Serve `source` read-only (source shares only).
    #[serde(default)]
    pub read_only: bool,
}

/// One virtio-blk disk: a raw image file or a host block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub path: PathBuf,
    /// The guest sees a read-only disk (VIRTIO_BLK_F_RO); the host opens the file read-only.
    pub read_only: bool,
    /// Answer to the guest's GET_ID (`/sys/block/vdX/serial`), at most 20 printable ASCII bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default)]
    pub cache: CacheConfig,
}

/// Host caching of a volume's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheConfig {
    /// O_DIRECT where the file system supports it, else the page cache.
    None,
    /// The host page cache; the guest's flush becomes fdatasync.
    #[default]
    Writeback,
}

/// Per-VM dataset policy (storage crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default)]
    pub snapshot_on_start: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_snapshots: Option<u32>,
}

/// An Ethernet MAC address, written `02:00:00:00:00:01`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Bit 0 of the first octet set means a group (multicast/broadcast) address.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

/// Why a MAC or CIDR string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrParseError {
    #[error("MAC address must be six two-digit hex octets separated by ':', got {0:?}")]
    Mac(String),
    #[error("IPv4 address must look like 10.1.0.2/24, got {0:?}")]
    Cidr(String),
    #[error("IPv4 prefix length must be 0..=32, got {0:?}")]
    Prefix(String),
}

impl FromStr for MacAddr {
    type Err = AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AddrParseError::Mac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for slot in out.iter_mut() {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// An IPv4 address with its prefix length, written `10.1.0.2/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    /// 0..=32 after parsing; validation narrows it to 1..=30.
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        Ipv4Addr::from(bits)
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & u32::from(self.netmask()))
    }

    /// The broadcast address (host bits set).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !u32::from(self.netmask()))
    }

    /// Whether `ip` lies in this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::from(self.netmask());
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl FromStr for Ipv4Cidr {
    type Err = AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| AddrParseError::Cidr(s.to_string()))?;
        let addr = addr
            .parse::<Ipv4Addr>()
            .map_err(|_| AddrParseError::Cidr(s.to_string()))?;
        let prefix = match prefix.parse::<u8>() {
            Ok(p) if p <= 32 && prefix.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => return Err(AddrParseError::Prefix(prefix.to_string())),
        };
        Ok(Ipv4Cidr { addr, prefix })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parse_when_valid_then_octets_and_display_round_trip() {
        let mac: MacAddr = "02:00:00:00:00:0A".parse().unwrap();
        assert_eq!(mac.octets(), [2, 0, 0, 0, 0, 10]);
        assert_eq!(mac.to_string(), "02:00:00:00:00:0a");
    }

    #[test]
    fn mac_parse_when_malformed_then_error() {
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "2:00:00:00:00:01",
            "0g:00:00:00:00:01",
            "02-00-00-00-00-01",
            "+2:00:00:00:00:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn cidr_parse_when_valid_then_subnet_math_is_right() {
        let c: Ipv4Cidr = "10.1.0.2/24".parse().unwrap();
        assert_eq!(c.addr, Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(c.prefix, 24);
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.network(), Ipv4Addr::new(10, 1, 0, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 1, 0, 255));
        assert!(c.contains(Ipv4Addr::new(10, 1, 0, 1)));
        assert!(!c.contains(Ipv4Addr::new(10, 2, 0, 1)));
        let zero: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert_eq!(zero.netmask(), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(c.to_string(), "10.1.0.2/24");
    }

    #[test]
    fn cidr_parse_when_malformed_then_error() {
        for bad in [
            "10.1.0.2",
            "10.1.0.2/33",
            "10.1.0/24",
            "10.1.0.2/+4",
            "10.1.0.2/",
            "x/24",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn serial_deserialize_when_each_form_then_matching_variant() {
        let s: SerialConfig = serde_json::from_str(r#""stdout""#).unwrap();
        assert_eq!(s, SerialConfig::Stdout);
        let s: SerialConfig = serde_json::from_str(r#""none""#).unwrap();
        assert_eq!(s, SerialConfig::None);
        let s: SerialConfig = serde_json::from_str(r#"{"file": "/tmp/x"}"#).unwrap();
        assert_eq!(s, SerialConfig::File("/tmp/x".into()));
        assert!(serde_json::from_str::<SerialConfig>(r#""stderr""#).is_err());
        assert!(serde_json::from_str::<SerialConfig>(r#"{"file": "/x", "y": 1}"#).is_err());
        assert!(serde_json::from_str::<SerialConfig>("3").is_err());
    }
}
